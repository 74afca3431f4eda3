//! End to end through real OpenVPN: the built-in lab, with ovpn-lb on both
//! gateways (or one gateway against plain routes), and traffic between the
//! LAN hosts.

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use ovpn_lb::config::file::Spray;
use ovpn_lb_common::{Reason, TunnelStats, queue::unpack};
use ovpn_lb_tests::{
    lab::{CLEAR_TEXT, HOST_A, HOST_A6, HOST_B, HOST_B6, Lab, Options, Peer, Side, growth},
    ping::{ping, ping_background},
    process, root_alone,
    traffic::{Capture, tcp_transfer, udp_exchange},
};

/// A probe datagram in a tunnel's ring (IP, UDP and the 48-byte payload).
const PROBE_BYTES: u64 = 76;

fn lab(options: Options) -> Lab {
    Lab::for_test("oe", options)
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// tx packets per tunnel grown between two readings.
fn tx_delta(before: &[TunnelStats], after: &[TunnelStats]) -> Vec<u64> {
    growth(before, after, |s| s.tx_packets)
}

/// Each tunnel's share of `counts` is within 5 % of its share of `weights`.
fn assert_shares(counts: &[u64], weights: &[u32]) {
    let total: u64 = counts.iter().sum();
    let wsum: u32 = weights.iter().sum();
    assert!(total > 0, "no packets counted");
    for (k, (&c, &w)) in counts.iter().zip(weights).enumerate() {
        #[expect(clippy::cast_precision_loss, reason = "shares")]
        let (share, want) = (c as f64 / total as f64, f64::from(w) / f64::from(wsum));
        assert!(
            (share - want).abs() <= 0.05 * want,
            "tunnel {k}: share {share:.4}, weight share {want:.4}; counts {counts:?}"
        );
    }
}

#[test]
fn connectivity_v4_v6_with_real_addresses_and_weighted_shares() {
    let Some(_alone) = root_alone() else { return };
    let weights = vec![1, 1, 1, 2];
    // Weights are round robin's (packet spray measures instead).
    let lab = lab(Options {
        weights: weights.clone(),
        spray: Spray::RoundRobin,
        ..Options::default()
    });
    let (ha, hb) = (lab.host(Side::A), lab.host(Side::B));
    let capture = Capture::start(&lab.gw(Side::A), "wan", &lab.dir.join("wan.pcap"));

    let v4 = ping(&ha, HOST_B, 20, "0.01");
    assert_eq!(v4, (20, 20), "{}", lab.diagnose());
    assert_eq!(
        ping(&ha, HOST_B6, 20, "0.01"),
        (20, 20),
        "{}",
        lab.diagnose()
    );

    let before = lab.tunnel_stats(Side::A);
    for (listen, from) in [(addr(HOST_B, 5001), HOST_A), (addr(HOST_B6, 5002), HOST_A6)] {
        let t = tcp_transfer(&ha, &hb, listen, 4 << 20, || {});
        assert_eq!(t.received_sha256, t.sent_sha256);
        assert_eq!(
            t.peer.ip().to_string(),
            from,
            "the destination must see the real source"
        );
    }
    assert_shares(&tx_delta(&before, &lab.tunnel_stats(Side::A)), &weights);

    for (server, from) in [(addr(HOST_B, 5353), HOST_A), (addr(HOST_B6, 5354), HOST_A6)] {
        let (echoed, peer) = udp_exchange(&ha, &hb, server, 200);
        assert_eq!(echoed, 200);
        assert_eq!(peer.ip().to_string(), from);
    }
    // Gateway B sprays the replies: its tunnels carry the same weighted shares.
    let b = lab.tunnel_stats(Side::B);
    assert_shares(
        &b.iter().map(|s| s.tx_packets).collect::<Vec<_>>(),
        &weights,
    );

    let capture = capture.stop();
    capture.assert_none(CLEAR_TEXT, "LAN addresses in the clear on the WAN");
    assert!(
        capture.read("udp").len() > 1000,
        "the capture saw too little OpenVPN traffic"
    );
}

/// The lab flow `cargo xtask kernels` runs on every kernel: two gateways,
/// two real OpenVPN tunnels, the default spray (round robin where the
/// kernel cannot run packet spray's accounting), 10 MB each way of the
/// families, every byte hashed at both ends.
#[test]
fn two_tunnels_carry_ten_megabytes_v4_and_v6() {
    let Some(_alone) = root_alone() else { return };
    let lab = lab(Options {
        tunnels: 2,
        ..Options::default()
    });
    let (ha, hb) = (lab.host(Side::A), lab.host(Side::B));
    for (listen, from) in [(addr(HOST_B, 5001), HOST_A), (addr(HOST_B6, 5002), HOST_A6)] {
        let before = lab.tunnel_stats(Side::A);
        let t = tcp_transfer(&ha, &hb, listen, 10 << 20, || {});
        assert_eq!(t.received_bytes, 10 << 20, "{}", lab.diagnose());
        assert_eq!(
            t.received_sha256, t.sent_sha256,
            "SHA-256 differs over {listen}"
        );
        assert_eq!(
            t.peer.ip().to_string(),
            from,
            "the far host sees the real source"
        );
        let carried = tx_delta(&before, &lab.tunnel_stats(Side::A));
        assert!(
            carried.iter().all(|&c| c > 100),
            "both tunnels carry the one connection over {listen}: {carried:?}"
        );
    }
    // Where the loader runs packet spray's ring accounting, it follows both
    // rings (where it could not, the loader must not run it): every packet
    // sprayed into a tunnel counted in and, the traffic over, read out.
    let state = ovpn_lb::status::State::read(&lab.layout(Side::A)).expect("the state file");
    let kernel = state.kernel.expect("the loader reports the kernel");
    if kernel.ring_accounting {
        thread::sleep(Duration::from_millis(500));
        let after = lab.counters(Side::A);
        for (k, (q, t)) in after.queues.iter().zip(&after.tunnels).enumerate() {
            assert!(
                unpack(q.deq.read).packets >= t.tx_packets,
                "tunnel {k}: reads of sprayed packets went uncounted: {q:?} {t:?}"
            );
            // The probes go on: one may be in a ring at the reading.
            let left = q.backlog();
            assert!(
                left.packets <= 1 && left.bytes <= PROBE_BYTES,
                "tunnel {k}: a backlog left: {left:?}, {q:?}"
            );
        }
    } else {
        assert!(
            kernel.fallbacks.iter().any(|f| f.name == "round_robin"),
            "no ring accounting, and no round-robin fallback stated: {kernel:?}"
        );
    }
}

#[test]
fn fifty_megabytes_arrive_intact_over_every_tunnel() {
    let Some(_alone) = root_alone() else { return };
    let lab = lab(Options::default());
    let before = lab.tunnel_stats(Side::A);
    let t = tcp_transfer(
        &lab.host(Side::A),
        &lab.host(Side::B),
        addr(HOST_B, 5001),
        50 << 20,
        || {},
    );
    assert_eq!(t.received_bytes, 50 << 20);
    assert_eq!(t.received_sha256, t.sent_sha256, "SHA-256 differs");
    let carried = tx_delta(&before, &lab.tunnel_stats(Side::A));
    assert!(
        carried.iter().all(|&c| c > 100),
        "every tunnel carries part of the one connection: {carried:?}"
    );
    // Packet spray picked by the rings' accounting, which followed every
    // ring: every packet sprayed into a tunnel counted in, and, the traffic
    // over, every byte counted out. (Whether a reader's drain rate got
    // measured depends on the machine: a reader that keeps up never
    // accumulates a window of busy time, and is priced at the default.)
    thread::sleep(Duration::from_millis(500));
    let after = lab.counters(Side::A);
    // The hosts send GSO super-packets: one sprayed packet is several in
    // the ring, so the ring counts at least what was sprayed.
    for (k, (q, t)) in after.queues.iter().zip(&after.tunnels).enumerate() {
        let (queued, read) = (unpack(q.enq.queued), unpack(q.deq.read));
        assert!(queued.packets >= t.tx_packets, "tunnel {k}: {q:?} {t:?}");
        assert!(
            read.packets >= t.tx_packets,
            "tunnel {k}: reads of sprayed packets went uncounted: {q:?} {t:?}"
        );
        // Nothing of the transfer left; the probes go on, so one may be
        // in a ring at the reading (seen on a loaded machine).
        let left = q.backlog();
        assert!(
            left.packets <= 1 && left.bytes <= PROBE_BYTES,
            "tunnel {k}: a backlog left: {left:?}, {q:?}"
        );
        assert!(
            q.deq.resync_bytes * 100 <= queued.bytes,
            "tunnel {k}: over 1 % of the bytes set right by resyncs: {q:?}"
        );
    }
}

#[test]
fn transfers_survive_tunnel_and_loader_faults() {
    let Some(_alone) = root_alone() else { return };
    let mut lab = lab(Options {
        up_delay_ms: 500,
        ..Options::default()
    });
    let (ha, hb) = (lab.host(Side::A), lab.host(Side::B));

    fault_kill_openvpn(&mut lab, &ha, &hb);
    fault_link_down_up(&lab, &ha, &hb);
    fault_kill_loader(&mut lab, &ha, &hb);
    fault_all_tunnels_down(&lab, &ha);
}

/// Killing one OpenVPN process mid-transfer; then restarting it.
fn fault_kill_openvpn(lab: &mut Lab, ha: &str, hb: &str) {
    // 1. Kill one OpenVPN process mid-transfer.
    let lab_ref = &*lab;
    let t = tcp_transfer(ha, hb, addr(HOST_B, 5001), 30 << 20, || {
        thread::sleep(Duration::from_millis(300));
        lab_ref.kill_openvpn(Side::A, 2);
    });
    assert_eq!(t.received_sha256, t.sent_sha256, "after killing OpenVPN A2");
    let frozen = lab.tunnel_stats(Side::A)[2].tx_packets;
    let t = tcp_transfer(ha, hb, addr(HOST_B, 5002), 5 << 20, || {});
    assert_eq!(t.received_sha256, t.sent_sha256);
    assert_eq!(
        lab.tunnel_stats(Side::A)[2].tx_packets,
        frozen,
        "a dead tunnel's counters must stop"
    );
    lab.start_openvpn(Side::A, 2);
    lab.wait_connected(Side::A, 2, Duration::from_secs(20));
    thread::sleep(Duration::from_millis(1500));
    let t = tcp_transfer(ha, hb, addr(HOST_B, 5003), 5 << 20, || {});
    assert_eq!(t.received_sha256, t.sent_sha256);
    assert!(
        lab.tunnel_stats(Side::A)[2].tx_packets > frozen,
        "the restarted tunnel must carry traffic again"
    );
}

/// `ip link set tunX down`, then up, mid-transfer.
fn fault_link_down_up(lab: &Lab, ha: &str, hb: &str) {
    let lab_ref = lab;
    let t = tcp_transfer(ha, hb, addr(HOST_B, 5004), 30 << 20, || {
        thread::sleep(Duration::from_millis(200));
        lab_ref.ip(&lab_ref.gw(Side::A), &["link", "set", "tun1", "down"]);
        thread::sleep(Duration::from_millis(300));
        lab_ref.ip(&lab_ref.gw(Side::A), &["link", "set", "tun1", "up"]);
    });
    assert_eq!(t.received_sha256, t.sent_sha256, "across tun1 down/up");
}

/// kill -9 of gateway A's loader and a new run, mid-transfer, with 100 pings a second.
fn fault_kill_loader(lab: &mut Lab, ha: &str, hb: &str) {
    // 3. kill -9 of gateway A's loader and a new run, mid-transfer, with 100
    //    pings a second that must all come back.
    let pings = ping_background(ha, HOST_B, 300, "0.01");
    let t = tcp_transfer(ha, hb, addr(HOST_B, 5005), 30 << 20, || {
        thread::sleep(Duration::from_millis(300));
        lab.kill_loader(Side::A);
        lab.start_loader(Side::A);
    });
    assert_eq!(
        t.received_sha256, t.sent_sha256,
        "across kill -9 and restart of the loader"
    );
    let (sent, received) = pings.wait();
    assert_eq!(
        (sent, received),
        (300, 300),
        "pings lost across the loader restart"
    );
}

/// Gateway A's `no_tunnel` count, as `ovpn-lb status --json` reports it.
fn no_tunnel_drops(lab: &Lab) -> u64 {
    let report = lab.loader(Side::A).status("0.1");
    report["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == "no_tunnel")
        .unwrap()["packets"]
        .as_u64()
        .unwrap()
}

/// All tunnels down: packets are dropped and counted, nothing leaks.
fn fault_all_tunnels_down(lab: &Lab, ha: &str) {
    // 4. All tunnels down: packets are dropped and counted, nothing leaks.
    let capture = Capture::start(&lab.gw(Side::A), "wan", &lab.dir.join("down.pcap"));
    for k in 0..4 {
        lab.ip(
            &lab.gw(Side::A),
            &["link", "set", &format!("tun{k}"), "down"],
        );
    }
    thread::sleep(Duration::from_millis(100));
    let dropped_before = no_tunnel_drops(lab);
    assert_eq!(ping(ha, HOST_B, 10, "0.01"), (10, 0));
    capture
        .stop()
        .assert_none(CLEAR_TEXT, "leaked in the clear with all tunnels down");
    let dropped_after = no_tunnel_drops(lab);
    assert_eq!(
        dropped_after - dropped_before,
        10,
        "every ping dropped as no_tunnel\n{}",
        lab.diagnose()
    );
}

#[test]
fn one_sided_flow_mode_against_plain_openvpn_routes() {
    let Some(_alone) = root_alone() else { return };
    let lab = lab(Options {
        peer: Peer::PlainRoutes,
        ..Options::default()
    });
    let (ha, hb) = (lab.host(Side::A), lab.host(Side::B));
    assert_eq!(ping(&ha, HOST_B, 20, "0.01"), (20, 20));
    assert_eq!(ping(&ha, HOST_B6, 20, "0.01"), (20, 20));
    let before = lab.tunnel_stats(Side::A);
    let t = tcp_transfer(&ha, &hb, addr(HOST_B, 5001), 8 << 20, || {});
    assert_eq!(t.received_sha256, t.sent_sha256);
    // The plain far end sees our per-tunnel translated address...
    let seen = t.peer.ip().to_string();
    assert!(
        seen.starts_with("100.64.") && seen.ends_with(".5"),
        "far host saw {seen}"
    );
    // ...and in flow mode the connection stays on one tunnel, whose replies
    // came back through it and were restored (the transfer completed).
    let after = lab.tunnel_stats(Side::A);
    let busy: Vec<usize> = (0..4)
        .filter(|&k| after[k].tx_packets - before[k].tx_packets > 100)
        .collect();
    assert_eq!(
        busy.len(),
        1,
        "flow mode spread one connection: {:?}",
        tx_delta(&before, &after)
    );
    assert!(after[busy[0]].rx_packets - before[busy[0]].rx_packets > 100);
    let (echoed, peer) = udp_exchange(&ha, &hb, addr(HOST_B, 5353), 50);
    assert_eq!(echoed, 50);
    assert!(peer.ip().to_string().starts_with("100.64."));
}

/// `ping ARGS` from `ns`: its whole output.
fn ping_output(ns: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-n", "-W", "1"])
        .args(args)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn over_the_tunnel_mtu_nothing_leaves_in_the_clear() {
    let Some(_alone) = root_alone() else { return };
    let lab = lab(Options::default());
    let (ga, gb, ha) = (lab.gw(Side::A), lab.gw(Side::B), lab.host(Side::A));
    // Tunnels narrower than the LAN, and a default route out of the WAN, as
    // on every real gateway: the reproduction of the cleartext leak.
    for gw in [&ga, &gb] {
        for k in 0..4 {
            lab.ip(gw, &["link", "set", &format!("tun{k}"), "mtu", "1400"]);
        }
    }
    lab.ip(
        &ga,
        &["route", "add", "default", "via", "172.30.0.2", "dev", "wan"],
    );
    lab.ip(&ga, &["-6", "route", "add", "default", "dev", "wan"]);
    // Let the loaders see the new MTUs.
    thread::sleep(Duration::from_millis(300));
    let wan = Capture::start(&ga, "wan", &lab.dir.join("wan.pcap"));
    let far = Capture::start(&gb, "tun0", &lab.dir.join("tun0.pcap"));

    // DF clear: fragmented by gateway A's kernel (first, before host A caches
    // a path MTU and fragments by itself), through a tunnel, answered.
    let frag = ping_output(&ha, &["-c", "3", "-s", "1450", "-M", "dont", HOST_B]);
    assert!(frag.contains("3 received"), "{frag}");
    // DF set: the sender learns the tunnel MTU.
    let df = ping_output(&ha, &["-c", "3", "-s", "1450", "-M", "do", HOST_B]);
    assert!(
        df.contains("mtu = 1400") || df.contains("mtu=1400"),
        "no fragmentation-needed with the tunnel MTU:\n{df}"
    );
    // IPv6 never fragments on the way: packet too big.
    let v6 = ping_output(&ha, &["-6", "-c", "3", "-s", "1450", HOST_B6]);
    assert!(v6.contains("mtu=1400") || v6.contains("mtu = 1400"), "{v6}");
    // No tunnel left: unreachable, still nothing on the WAN.
    for k in 0..4 {
        lab.ip(&ga, &["link", "set", &format!("tun{k}"), "down"]);
    }
    thread::sleep(Duration::from_millis(300));
    let none = ping_output(&ha, &["-c", "2", "-s", "1450", "-M", "dont", HOST_B]);
    assert!(none.contains("0 received"), "{none}");
    for k in 0..4 {
        lab.ip(&ga, &["link", "set", &format!("tun{k}"), "up"]);
    }

    let (wan, far) = (wan.stop(), far.stop());
    wan.assert_none(CLEAR_TEXT, "LAN addresses in the clear on the WAN");
    // Fragments cross the tunnel translated both ways, like sprayed packets:
    // gateway A's arrive from 100.64.0.5, gateway B's replies leave from
    // 100.65.0.5; never from a real LAN address.
    let fragments = far.read("ip[6:2] & 0x3fff != 0");
    assert!(fragments.len() >= 12, "{fragments:?}");
    assert!(
        fragments
            .iter()
            .all(|l| l.contains("IP 100.64.0.5 >") || l.contains("IP 100.65.0.5 >")),
        "untranslated fragments: {fragments:?}"
    );
}

/// Loaders stopped (the datapath left attached, as `systemctl stop` leaves
/// it) and one of gateway A's OpenVPN processes killed and started again,
/// which makes a new device: the gone tunnel is passed over, so at most its
/// share of a ping stream is lost (the far gateway, with no loader either,
/// still sprays replies into its end of that tunnel until it is back).
#[test]
fn a_tunnel_restarted_while_no_loader_runs_costs_at_most_its_share() {
    let Some(_alone) = root_alone() else { return };
    let mut lab = lab(Options::default());
    for side in Side::BOTH {
        let pid = lab.signal_loader(side, libc::SIGTERM).expect("a loader");
        process::wait_gone(pid);
    }
    let before = lab.counters(Side::A);
    let pings = ping_background(&lab.host(Side::A), HOST_B, 400, "0.01");
    thread::sleep(Duration::from_millis(500));
    lab.kill_openvpn(Side::A, 1);
    thread::sleep(Duration::from_millis(200));
    lab.start_openvpn(Side::A, 1);
    lab.wait_connected(Side::A, 1, Duration::from_secs(20));
    let (sent, received) = pings.wait();
    let after = lab.counters(Side::A);
    let grew = |r: Reason| after.reasons[r as usize].packets - before.reasons[r as usize].packets;
    assert_eq!(sent, 400);
    // Gateway A drops nothing: the gone tunnel is passed over.
    assert_eq!(grew(Reason::TunnelGone), 0, "{}", lab.diagnose());
    let lost = sent - received;
    assert!(
        lost <= sent / 4 + 4,
        "{lost} of {sent} pings lost with one tunnel of four restarting:\n{}",
        lab.diagnose()
    );
}

/// An OpenVPN process paused (`SIGSTOP`) stops reading its tunnel's ring:
/// packet spray passes the tunnel over within a few packets, long before
/// the probes (three missed answers) take it out of the rotation.
#[test]
fn a_paused_openvpn_is_passed_over_before_the_probes_notice() {
    let Some(_alone) = root_alone() else { return };
    let lab = lab(Options::default());
    let pid = lab.openvpn(Side::A, 2).pid().expect("OpenVPN A2");
    let pings = ping_background(&lab.host(Side::A), HOST_B, 300, "0.005");
    thread::sleep(Duration::from_millis(300));
    let departed = lab.departures(Side::A)[2];
    process::signal(pid, libc::SIGSTOP);
    let stopped = Instant::now();
    let at_stop = lab.tunnel_stats(Side::A)[2].tx_packets;
    // Until the probes notice (three missed answers) and the loader takes
    // the tunnel out, the datapath alone keeps traffic off it: a few
    // packets at most (a reader counts as stopped once two are queued and
    // it has not read for 10 ms), however long the probes take; round
    // robin would give it a quarter of the pings meanwhile.
    let noticed = process::wait_until(Duration::from_secs(3), Duration::from_millis(5), || {
        lab.departures(Side::A)[2] > departed
    });
    let noticed_after = stopped.elapsed();
    let at_notice = lab.tunnel_stats(Side::A)[2].tx_packets;
    process::signal(pid, libc::SIGCONT);
    let (sent, received) = pings.wait();
    assert!(noticed, "the probes never noticed the paused tunnel");
    assert!(
        at_notice - at_stop <= 3,
        "{} packets sprayed into the paused tunnel until the probes noticed ({noticed_after:?}):\n{}",
        at_notice - at_stop,
        lab.diagnose()
    );
    // The few stuck in its ring come out when it resumes: nothing lost.
    assert_eq!((sent, received), (300, 300), "{}", lab.diagnose());
}
