//! Nothing LAN-related leaves a gateway outside a tunnel, whoever sends it.
//! The built-in lab with real OpenVPN and a default route out of the WAN on
//! both gateways, as on a real gateway, and a capture on the WAN that must
//! see no LAN, remote or translated address in any header: an excluded
//! address (routed by the kernel, through a tunnel), a far traceroute whose
//! TTL expires at the gateway and a LAN host that is down (the gateway's own
//! ICMP errors about restored packets), a tunnel device recreated while no
//! loader runs (a LAN host answering the peer's translated address), and,
//! as the last line, the WAN guard dropping what a route of the operator's
//! own sends out of the WAN.

use std::{fs, thread, time::Duration};

use ovpn_lb::{config::file::Spray, status::Counters};
use ovpn_lb_common::Reason;
use ovpn_lb_tests::{
    lab::{CLEAR_TEXT, HOST_A, HOST_A6, HOST_B, Lab, Options, Side, WAN, WAN_DEV, grown},
    netns,
    ping::ping,
    process::{wait_gone, wait_until},
    root_alone,
    traffic::Capture,
};

/// `ping ARGS` from namespace `ns`: its whole output.
fn ping_output(ns: &str, args: &[&str]) -> String {
    let out = netns::command(ns, "ping").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn nothing_lan_related_leaves_the_wan_in_the_clear() {
    let Some(_alone) = root_alone() else { return };
    let mut lab = Lab::for_test("ct", Options::default());
    let (ga, gb) = (lab.gw(Side::A), lab.gw(Side::B));
    // Each gateway's default route leads out of its WAN, both families.
    for (gw, far) in [(&ga, WAN[1]), (&gb, WAN[0])] {
        lab.ip(gw, &["route", "add", "default", "via", far, "dev", WAN_DEV]);
        lab.ip(gw, &["-6", "route", "add", "default", "dev", WAN_DEV]);
    }
    // Gateway A leaves gateway B's own LAN addresses to the kernel.
    let mut config = lab.loader_config(Side::A);
    config.exclude = vec!["192.168.20.1/32".into(), "fd00:b::1/128".into()];
    let path = lab.dir.join("gateway-a-exclude.toml");
    fs::write(&path, config.to_toml().unwrap()).unwrap();
    lab.start_loader_with(Side::A, &path);
    let capture = Capture::start(&ga, WAN_DEV, &lab.dir.join("wan.pcap"));
    let before = [lab.counters(Side::A), lab.counters(Side::B)];

    excluded_addresses(&lab, &before[0]);
    icmp_errors_about_restored_packets(&lab);
    replies_to_the_peers_translation(&mut lab);
    lab.start_loader_with(Side::A, &path);
    let after = [lab.counters(Side::A), lab.counters(Side::B)];
    for (side, (b, a)) in ["A", "B"].iter().zip(before.iter().zip(&after)) {
        assert_eq!(
            grown(b, a, Reason::CleartextBlocked),
            0,
            "gateway {side}: the routes, not the guard, kept all that in the tunnels"
        );
    }

    the_guard_is_the_last_line(&lab, &after[0]);
    let capture = capture.stop();
    capture.assert_none(CLEAR_TEXT, "LAN-related addresses in the clear on the WAN");
    assert!(
        capture.read("udp").len() > 100,
        "the capture saw too little of the tunnels' traffic"
    );
}

/// An excluded address: the kernel routes it into a tunnel, where it is
/// translated, and gateway B's answer (its own traffic) comes back the same
/// way.
fn excluded_addresses(lab: &Lab, before: &Counters) {
    let ha = lab.host(Side::A);
    for target in ["192.168.20.1", "fd00:b::1"] {
        assert_eq!(ping(&ha, target, 5, "0.1"), (5, 5), "{}", lab.diagnose());
    }
    let now = lab.counters(Side::A);
    assert!(
        grown(before, &now, Reason::NotRemote) >= 10,
        "excluded: not sprayed"
    );
    assert!(
        grown(before, &now, Reason::TranslatedOnEgress) >= 10,
        "excluded: translated on a tunnel's egress"
    );
}

/// A far traceroute whose TTL expires at gateway A, and a LAN host there
/// that is down: gateway A's ICMP errors about the restored packets go back
/// through a tunnel.
fn icmp_errors_about_restored_packets(lab: &Lab) {
    let hb = lab.host(Side::B);
    // TTL 2 from host B expires at gateway A.
    let out = ping_output(
        &hb,
        &["-n", "-c", "2", "-i", "0.2", "-W", "2", "-t", "2", HOST_A],
    );
    assert!(out.contains("Time to live exceeded"), "{out}");
    let out = ping_output(
        &hb,
        &["-n", "-c", "2", "-i", "0.2", "-W", "2", "-t", "2", HOST_A6],
    );
    assert!(out.contains("Time exceeded"), "{out}");

    // Gateway A's host unreachable.
    let down6 = {
        let hb = hb.clone();
        thread::spawn(move || ping_output(&hb, &["-n", "-c", "1", "-W", "6", "fd00:a::77"]))
    };
    let out = ping_output(&hb, &["-n", "-c", "1", "-W", "6", "192.168.10.77"]);
    assert!(out.contains("Destination Host Unreachable"), "{out}");
    let out = down6.join().unwrap();
    assert!(out.contains("Address unreachable"), "{out}");
}

/// No loader on gateway A, and tunnel 1's OpenVPN restarted (a new device,
/// no program on it): host B's packets arriving there are not restored, and
/// host A answers gateway B's translated address. Those answers are routed
/// into a tunnel and restored at gateway B. (Gateway B does not probe, or
/// it would notice that its probes on tunnel 1 go unanswered and stop using
/// it: link and OpenVPN state alone decide. It sprays round robin, so that
/// pings reach tunnel 1 for certain: packet spray may pass over a tunnel
/// whose far OpenVPN has just restarted, and did, once in CI.)
fn replies_to_the_peers_translation(lab: &mut Lab) {
    let hb = lab.host(Side::B);
    let mut quiet = lab.loader_config(Side::B);
    quiet.probe_interval_ms = 0;
    quiet.spray = Spray::RoundRobin;
    let quiet_path = lab.dir.join("gateway-b-no-probes.toml");
    fs::write(&quiet_path, quiet.to_toml().unwrap()).unwrap();
    lab.start_loader_with(Side::B, &quiet_path);
    let pid = lab.signal_loader(Side::A, libc::SIGTERM).expect("loader");
    wait_gone(pid);
    wait_gone(lab.kill_openvpn(Side::A, 1).expect("OpenVPN"));
    lab.start_openvpn(Side::A, 1);
    lab.wait_connected(Side::A, 1, Duration::from_secs(20));
    let b_uses_tun1 = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        lab.loader(Side::B)
            .try_status("0.1")
            .is_some_and(|s| s["tunnels"][1]["state"] == "up")
    });
    assert!(
        b_uses_tun1,
        "gateway B never took tunnel 1 back\n{}",
        lab.diagnose()
    );
    let unrestored = lab.counters(Side::A);
    let (sent, received) = ping(&hb, HOST_A, 40, "0.05");
    eprintln!("pings B -> A, tun1 recreated on A without a loader: {received} of {sent} answered");
    assert!(
        grown(
            &unrestored,
            &lab.counters(Side::A),
            Reason::TranslatedOnEgress
        ) > 0,
        "host A's answers to the peer's translated address went into a tunnel\n{}",
        lab.diagnose()
    );
}

/// The last line: a rule and table of the operator's own send the
/// gateway's traffic for the far LAN out of the WAN. The guard drops it and
/// counts it.
fn the_guard_is_the_last_line(lab: &Lab, before: &Counters) {
    let ga = lab.gw(Side::A);
    let rule = "iif lo to 192.168.20.0/24 lookup 100 priority 100";
    let route = format!("192.168.20.0/24 via {} dev {WAN_DEV} table 100", WAN[1]);
    let ip = |verb: &str, object: &str, spec: &str| {
        let mut args = vec![object, verb];
        args.extend(spec.split_whitespace());
        lab.ip(&ga, &args);
    };
    ip("add", "route", &route);
    ip("add", "rule", rule);
    let out = ping_output(&ga, &["-n", "-c", "3", "-i", "0.2", "-W", "1", HOST_B]);
    ip("del", "rule", rule);
    let blocked = grown(before, &lab.counters(Side::A), Reason::CleartextBlocked);
    assert!(blocked >= 3, "the guard counted {blocked}: {out}");
}
