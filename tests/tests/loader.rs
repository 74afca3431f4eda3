//! The `ovpn-lb` binary on a gateway in namespaces: refusing bad configuration,
//! attach and detach, restarts without a lost ping, tunnel health from link
//! events and from OpenVPN's management interface, recreated devices.

use std::{
    fmt::Write as _,
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use aya::programs::TcAttachType;
use ovpn_lb::datapath::{
    Datapath,
    attach::{TcHook, tc_programs},
    rings,
};
use ovpn_lb_common::{
    maps::programs,
    queue::{RingHooks, TunnelQueue, unpack},
};
use ovpn_lb_tests::{
    gateway::{GatewayLab, Responder, TUNNEL_COUNT, http_get, sample},
    process::{run, wait_until},
    root_alone,
};

const SIGTERM: i32 = 15;
const SIGKILL: i32 = 9;

/// How the loader attaches tc programs on this kernel (tcx, or legacy tc
/// where the kernel has no tcx or `OVPN_LB_TC_HOOK=legacy` says so).
fn hook() -> TcHook {
    TcHook::detect().0
}

/// The hook's word in the loader's log lines: "tcx ingress", "tc ingress".
fn kind() -> &'static str {
    match hook() {
        TcHook::Tcx => "tcx",
        TcHook::Legacy => "tc",
    }
}

/// Programs attached at `iface`'s ingress in the gateway namespace (tcx
/// links or tc filters), by the kernel's name for them, sorted.
fn tc_names(lab: &GatewayLab, iface: &'static str) -> Vec<String> {
    tc_names_at(lab, iface, TcAttachType::Ingress)
}

fn tc_names_at(lab: &GatewayLab, iface: &'static str, at: TcAttachType) -> Vec<String> {
    let mut names: Vec<String> = lab.gw.enter(move || match tc_programs(hook(), iface, at) {
        Ok(progs) => progs
            .into_iter()
            // The kernel keeps 15 characters of a program's name.
            .map(|(_, name)| name.chars().take(15).collect())
            .collect(),
        Err(e) => panic!("listing tc programs on {iface}: {e:#}"),
    });
    names.sort();
    names
}

/// The gateway's policy rules (IPv4), as `ip rule` prints them.
fn rules(lab: &GatewayLab) -> String {
    run("ip", &["-n", lab.gw.name(), "rule", "show"])
}

fn all_devices() -> Vec<&'static str> {
    vec!["lan0", "ovt0", "ovt1", "ovt2"]
}

/// (link id, program id) of every link the loader pinned, as bpftool
/// reports them; under legacy tc, where the program is pinned in the
/// filter's stead, (0, program id). (The directories beside them mark the
/// clsact qdiscs the loader added.)
fn pinned_links(lab: &GatewayLab) -> Vec<(u64, u64)> {
    let dir = lab.scratch.layout().pin_root.join("links");
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|path| !path.is_dir())
        .map(|path| {
            let path = path.to_str().unwrap();
            let link = std::process::Command::new("bpftool")
                .args(["-j", "link", "show", "pinned", path])
                .output()
                .unwrap();
            if link.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&link.stdout).unwrap();
                (v["id"].as_u64().unwrap(), v["prog_id"].as_u64().unwrap())
            } else {
                let json = run("bpftool", &["-j", "prog", "show", "pinned", path]);
                let v: serde_json::Value = serde_json::from_str(&json).unwrap();
                (0, v["id"].as_u64().unwrap())
            }
        })
        .collect()
}

/// Ids bpftool lists for `bpftool -j <object> show`.
fn bpftool_ids(object: &str) -> Vec<u64> {
    let json = run("bpftool", &["-j", object, "show"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["id"].as_u64())
        .collect()
}

fn assert_nothing_attached(lab: &GatewayLab) {
    for dev in all_devices() {
        for at in [TcAttachType::Ingress, TcAttachType::Egress] {
            assert!(
                tc_names_at(lab, dev, at).is_empty(),
                "{dev} still has {:?}",
                tc_names_at(lab, dev, at)
            );
        }
    }
    let rules = rules(lab);
    assert!(
        !rules.contains("lookup 7600") && !rules.contains("unreachable"),
        "ovpn-lb's rules left behind:\n{rules}"
    );
    assert!(
        !lab.scratch.layout().pin_root.exists(),
        "pins left in {}",
        lab.scratch.layout().pin_root.display()
    );
    assert!(
        !lab.scratch.layout().run_dir.exists(),
        "files left in {}",
        lab.scratch.layout().run_dir.display()
    );
    let qdiscs = run("tc", &["-n", lab.gw.name(), "qdisc", "show"]);
    assert!(
        !qdiscs.contains("clsact"),
        "a clsact qdisc was left: {qdiscs}"
    );
}

#[test]
fn bad_configuration_is_refused_before_anything_is_attached() {
    let Some(_alone) = root_alone() else { return };
    let lab = GatewayLab::new(200);
    let good = std::fs::read_to_string(&lab.config).unwrap();
    // (what the operator got wrong, what it should have been, what check says)
    let cases = [
        (
            "\"lan0\"",
            "\"lan9\"",
            "lan.interface = \"lan9\": no such network interface",
        ),
        (
            "\"ovt2\"",
            "\"lan0\"",
            "tunnel[2].device = \"lan0\" is the LAN interface",
        ),
        (
            "\"ovt2\"",
            "\"lo\"",
            "tunnel[2].device = \"lo\" is not a layer-3 point-to-point device",
        ),
        (
            "100.64.1.0/24",
            "100.64.1.0/25",
            "is /25 but the LAN prefix is /24",
        ),
        (
            "100.64.1.0/24",
            "100.64.0.0/24",
            "duplicates tunnel[0].translate[0]",
        ),
        (
            "192.168.10.0/24",
            "192.168.10.0/2x",
            "the length must be a number from 0 to 32",
        ),
        (
            "up_delay_ms = 200",
            "up_delay_ms = = 200",
            "TOML syntax error at line 4",
        ),
    ]
    .map(|(good_text, bad_text, expected)| (good.replace(good_text, bad_text), expected));
    for (text, expected) in cases {
        std::fs::write(&lab.config, text).unwrap();
        for command in ["check", "run"] {
            let out = lab.ovpn_lb(&[command, "--config", lab.config.to_str().unwrap()]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
            assert!(
                stderr.contains(expected),
                "{command}: want {expected:?} in:\n{stderr}"
            );
            assert!(stderr.contains("nothing was attached"));
            assert_nothing_attached(&lab);
        }
    }
}

#[test]
fn attach_then_detach_leaves_nothing() {
    let Some(_alone) = root_alone() else { return };
    let lab = GatewayLab::new(200);
    // Someone else's tcx program on the LAN interface, there before us.
    let (release, keep) = std::sync::mpsc::channel::<()>();
    let (attached_tx, attached) = std::sync::mpsc::channel();
    let foreign = lab.gw.spawn(move || {
        let mut other = Datapath::load().unwrap();
        other
            .attach_ingress(programs::TUNNEL_INGRESS_ETH, "lan0")
            .unwrap();
        attached_tx.send(()).unwrap();
        let _ = keep.recv();
    });
    attached.recv().unwrap();

    let loader = lab.start_loader(&[]);
    assert_eq!(tc_names(&lab, "lan0"), ["lan_ingress", "tunnel_ingress_"]);
    assert!(
        loader.log_text().contains(&format!(
            "lan0 also has {} ingress program tunnel_ingress_",
            kind()
        )),
        "{}",
        loader.log_text()
    );
    for dev in ["ovt0", "ovt1", "ovt2"] {
        assert_eq!(tc_names(&lab, dev), ["tunnel_ingress"]);
        assert_eq!(
            tc_names_at(&lab, dev, TcAttachType::Egress),
            ["tunnel_egress"]
        );
    }
    // The kernel path: LAN traffic for the remote prefix is routed by
    // ovpn-lb's table, with nothing behind it but `unreachable`.
    let rules = rules(&lab);
    assert!(
        rules.contains("7600:\tfrom all to 10.20.30.0/24 iif lan0 lookup 7600")
            && rules.contains("7601:\tfrom all to 10.20.30.0/24 iif lan0 unreachable"),
        "{rules}"
    );
    let table = run(
        "ip",
        &["-n", lab.gw.name(), "route", "show", "table", "7600"],
    );
    assert!(table.contains("default dev ovt0"), "{table}");
    assert_eq!(lab.in_rotation(), [0, 1, 2]);
    // The foreign program hands packets on, so ours still sprays them.
    assert_eq!(lab.ping(9, "0.01").wait(), (9, 9));
    let ours = pinned_links(&lab);
    let log = loader.log_text();
    let hooks = RingHooks::ALL
        .into_iter()
        .find(|h| log.contains(&format!("rings accounted by {}", h.name())));
    // SIGTERM keeps the datapath (documented), and says so.
    assert_eq!(loader.stop(SIGTERM), Some(0));
    assert_eq!(tc_names(&lab, "lan0"), ["lan_ingress", "tunnel_ingress_"]);
    let status = lab.ovpn_lb(&["status", "--json", "--interval", "0.1"]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["running"], false);
    assert_eq!(json["tunnels"].as_array().unwrap().len(), TUNNEL_COUNT);
    assert_eq!(json["kernel"]["tc_hook"], hook().name(), "{json}");
    let accounting = json["kernel"]["ring_accounting"] == true;
    assert_eq!(accounting, hooks.is_some(), "{json}\n{log}");
    assert_eq!(
        ours.len(),
        7 + hooks.map_or(0, |h| ring_programs_running(h, &log).len()),
        "LAN ingress, ingress and egress of 3 tunnels, and the ring accounting programs of packet spray where they run ({}): {ours:?}",
        hooks.map_or("none", RingHooks::name)
    );

    let out = lab.ovpn_lb(&["detach"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Only the foreign program is left on the LAN interface, and bpftool no
    // longer lists any of our links or programs.
    assert_eq!(tc_names(&lab, "lan0"), ["tunnel_ingress_"]);
    // (The kernel frees a tracing program after an RCU grace period once
    // its link is gone: give it a moment.)
    let deadline = Instant::now() + ovpn_lb_tests::slowed(Duration::from_secs(2));
    let (links, progs) = loop {
        let ids = (bpftool_ids("link"), bpftool_ids("prog"));
        let gone = ours
            .iter()
            .all(|(link, prog)| !ids.0.contains(link) && !ids.1.contains(prog));
        if gone || Instant::now() > deadline {
            break ids;
        }
        thread::sleep(Duration::from_millis(50));
    };
    for (link, prog) in &ours {
        assert!(!links.contains(link), "bpftool still lists link {link}");
        assert!(!progs.contains(prog), "bpftool still lists program {prog}");
    }
    release.send(()).unwrap();
    foreign.join().unwrap();
    if hook() == TcHook::Legacy {
        // The clsact qdisc was there before ovpn-lb (the other program's),
        // so detach left it: its owner removes it.
        let qdiscs = run("tc", &["-n", lab.gw.name(), "qdisc", "show", "dev", "lan0"]);
        assert!(qdiscs.contains("clsact"), "{qdiscs}");
        run(
            "tc",
            &["-n", lab.gw.name(), "qdisc", "del", "dev", "lan0", "clsact"],
        );
    }
    assert_nothing_attached(&lab);

    // --detach-on-exit tears down on the signal instead (and, legacy tc,
    // removes the clsact qdiscs it added itself).
    let loader = lab.start_loader(&["--detach-on-exit"]);
    assert_eq!(tc_names(&lab, "lan0"), ["lan_ingress"]);
    assert_eq!(loader.stop(SIGTERM), Some(0));
    assert_nothing_attached(&lab);
}

#[test]
fn restarts_lose_no_pings() {
    let Some(_alone) = root_alone() else { return };
    let lab = GatewayLab::new(200);
    let first = lab.start_loader(&[]);
    // 100 pings per second for 5 seconds.
    let ping = lab.ping(500, "0.01");
    thread::sleep(Duration::from_millis(1200));
    // A second run takes over: the first is told to stop, leaves the datapath
    // attached, and the second replaces the programs in place.
    let second = lab.start_loader(&[]);
    assert_eq!(first.wait(Duration::from_secs(5)), Some(0));
    let log = second.log_text();
    assert!(log.contains("run: stopping `ovpn-lb run` pid"), "{log}");
    let replaced = format!(
        "lan_ingress on lan0 ({} ingress): replaced in place",
        kind()
    );
    assert!(log.contains(&replaced), "{log}");
    thread::sleep(Duration::from_millis(1200));
    assert_eq!(second.stop(SIGKILL), None, "killed by a signal");
    // It could not say it stopped; status finds out.
    let status = lab.ovpn_lb(&["status", "--json", "--interval", "0.1"]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["running"], false, "{json}");
    assert!(
        json["exit_error"]
            .as_str()
            .is_some_and(|e| e.contains("is gone")),
        "{json}"
    );
    // After kill -9 the links stay pinned, so the next run replaces in place too.
    let third = lab.start_loader(&[]);
    assert!(third.log_text().contains(&replaced), "{}", third.log_text());

    let (sent, received) = ping.wait();
    assert_eq!((sent, received), (500, 500), "pings lost across restarts");
    // The exporter reads the same maps: with no traffic between, the values agree.
    let metrics = lab.scrape();
    for k in 0..3 {
        let s = lab.tunnel_stats(k);
        // Every tunnel carried part of the 500 across the restarts. Packet
        // spray passes over a reader that stalls, as the responders do on
        // a loaded machine, so the thirds are far from exact: 60 on one
        // tunnel in an emulated 6.8 guest beside another guest.
        assert!(
            s.tx_packets >= 25 && s.rx_packets >= 25,
            "tunnel {k}: {s:?}"
        );
        let series = format!("ovpnlb_tunnel_tx_packets_total{{device=\"ovt{k}\",tunnel=\"{k}\"}}");
        #[expect(clippy::cast_precision_loss, reason = "small counts")]
        let want = s.tx_packets as f64;
        assert_eq!(
            sample(&metrics, &series),
            Some(want),
            "{series} in\n{metrics}"
        );
        let up = format!("ovpnlb_tunnel_up{{device=\"ovt{k}\",tunnel=\"{k}\"}}");
        assert_eq!(sample(&metrics, &up), Some(1.0));
    }
    assert_eq!(third.stop(SIGTERM), Some(0));
    assert!(lab.ovpn_lb(&["detach"]).status.success());
}

#[test]
fn a_tunnel_going_down_leaves_within_100ms_and_rejoins_after_the_up_delay() {
    let Some(_alone) = root_alone() else { return };
    let (lab, loader) = GatewayLab::running(500);
    assert_eq!(lab.in_rotation(), [0, 1, 2]);

    // Timed from before `ip` starts: the whole path from the command to the
    // schedule packets read.
    // The loader keeps each tunnel's MTU in the datapath, following changes.
    assert_eq!(lab.tunnel_config(2).mtu, 1500);
    lab.gw.ip(&["link", "set", "ovt2", "mtu", "1300"]);
    let deadline = Instant::now() + Duration::from_secs(2);
    while lab.tunnel_config(2).mtu != 1300 {
        assert!(
            Instant::now() < deadline,
            "TUNNELS[2].mtu stayed {}",
            lab.tunnel_config(2).mtu
        );
        thread::sleep(Duration::from_millis(5));
    }

    let start = Instant::now();
    lab.gw.ip(&["link", "set", "ovt1", "down"]);
    let left = lab.wait_rotation_since(start, Duration::from_secs(2), |r| r == [0, 2]);
    assert!(
        left < Duration::from_millis(100),
        "tunnel 1 left the rotation after {left:?}"
    );

    let start = Instant::now();
    lab.gw.ip(&["link", "set", "ovt1", "up"]);
    let back = lab.wait_rotation_since(start, Duration::from_secs(3), |r| r == [0, 1, 2]);
    assert!(
        back >= Duration::from_millis(450) && back < Duration::from_secs(1),
        "tunnel 1 rejoined after {back:?}, want the 500 ms up-delay"
    );
    eprintln!("link down -> out of rotation: {left:?}; link up -> back in: {back:?}");
    lab.stop_and_detach(loader);
}

#[test]
fn a_recreated_tunnel_device_is_picked_up() {
    let Some(_alone) = root_alone() else { return };
    let (mut lab, loader) = GatewayLab::running(300);
    // OpenVPN exiting without persist-tun: the device disappears.
    let start = Instant::now();
    lab.responders[1] = None;
    let left = lab.wait_rotation_since(start, Duration::from_secs(2), |r| r == [0, 2]);
    assert!(left < Duration::from_millis(100), "{left:?}");
    eprintln!("device removed -> out of rotation: {left:?}");
    // ...and its restart makes a new device with a new ifindex.
    lab.responders[1] = Some(Responder::start(&lab.gw, "ovt1", 1));
    lab.gw.ip(&["link", "set", "ovt1", "up"]);
    lab.wait_rotation(Duration::from_secs(3), |r| r == [0, 1, 2]);
    assert!(
        loader
            .log_text()
            .contains("tunnel 1 (ovt1): device is ifindex"),
        "{}",
        loader.log_text()
    );

    // Traffic rides the new device both ways.
    let before = lab.tunnel_stats(1);
    let pings = lab.ping(30, "0.01").wait();
    assert_eq!(pings, (30, 30));
    // Packet spray: a share, not a third (the new device starts unmeasured);
    // every echo it carried came back by it.
    let after = lab.tunnel_stats(1);
    let carried = after.tx_packets - before.tx_packets;
    assert!((3..=27).contains(&carried), "{carried} of 30");
    assert_eq!(after.rx_packets - before.rx_packets, carried);
    lab.stop_and_detach(loader);
}

/// A stand-in for OpenVPN's management interface: each accepted connection
/// gets the states sent on the channel, one `>STATE:` line each; `None` closes it.
fn fake_management(lab: &GatewayLab, port: u16) -> mpsc::Sender<Option<&'static str>> {
    let (tx, rx) = mpsc::channel::<Option<&'static str>>();
    let (ready_tx, ready_rx) = mpsc::channel();
    drop(lab.gw.spawn(move || {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        ready_tx.send(()).unwrap();
        for (n, conn) in listener.incoming().enumerate() {
            let mut conn = conn.unwrap();
            conn.write_all(
                b">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info\r\n",
            )
            .unwrap();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "state on", "connection {n}");
            loop {
                match rx.recv() {
                    Ok(Some(state)) => {
                        let _ = write!(conn, ">STATE:1700000000,{state},,10.8.0.1,,,,\r\n");
                    }
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
    }));
    ready_rx.recv().unwrap();
    tx
}

#[test]
fn openvpn_management_state_drives_health() {
    let Some(_alone) = root_alone() else { return };
    let lab = GatewayLab::with_tunnels(300, |k, tunnel| {
        if k == 0 {
            tunnel.management = Some("127.0.0.1:17505".into());
        }
    });
    let mgmt = fake_management(&lab, 17505);
    mgmt.send(Some("CONNECTED")).unwrap();
    let loader = lab.start_loader(&[]);
    lab.wait_rotation(Duration::from_secs(3), |r| r == [0, 1, 2]);

    let start = Instant::now();
    mgmt.send(Some("RECONNECTING")).unwrap();
    let left = lab.wait_rotation_since(start, Duration::from_secs(2), |r| r == [1, 2]);
    assert!(left < Duration::from_millis(100), "{left:?}");
    eprintln!("RECONNECTING -> out of rotation: {left:?}");

    mgmt.send(Some("CONNECTED")).unwrap();
    let back = lab.wait_rotation(Duration::from_secs(3), |r| r == [0, 1, 2]);
    assert!(
        back >= Duration::from_millis(250),
        "rejoined after {back:?}, before the up-delay"
    );

    // Losing the management connection falls back to link state (up), and the
    // loader reconnects: a fresh EXITING then takes the tunnel out.
    mgmt.send(None).unwrap();
    thread::sleep(Duration::from_millis(300));
    assert_eq!(lab.in_rotation(), [0, 1, 2]);
    mgmt.send(Some("EXITING")).unwrap();
    lab.wait_rotation(Duration::from_secs(3), |r| r == [1, 2]);
    let status = lab.ovpn_lb(&["status", "--json", "--interval", "0.1"]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["tunnels"][0]["openvpn"], "EXITING");
    assert_eq!(json["tunnels"][0]["state"], "down");
    lab.stop_and_detach(loader);
}

#[test]
fn a_missing_tunnel_device_is_a_warning_and_joins_when_it_appears() {
    let Some(_alone) = root_alone() else { return };
    let mut lab = GatewayLab::new(300);
    // OpenVPN for tunnel 2 has not started yet.
    lab.responders[2] = None;
    let checked = lab.ovpn_lb(&["check", "--config", lab.config.to_str().unwrap()]);
    assert!(checked.status.success(), "{checked:?}");
    assert!(
        String::from_utf8_lossy(&checked.stderr)
            .contains("tunnel[2].device = \"ovt2\" does not exist (yet)"),
        "{checked:?}"
    );
    let loader = lab.start_loader(&[]);
    assert_eq!(lab.in_rotation(), [0, 1]);
    lab.responders[2] = Some(Responder::start(&lab.gw, "ovt2", 2));
    lab.gw.ip(&["link", "set", "ovt2", "up"]);
    let joined = lab.wait_rotation(Duration::from_secs(3), |r| r == [0, 1, 2]);
    eprintln!("device created -> in the rotation after {joined:?} (up-delay 300 ms)");
    assert_eq!(
        tc_names_at(&lab, "ovt2", TcAttachType::Egress),
        ["tunnel_egress"]
    );
    let pings = lab.ping(30, "0.01").wait();
    assert_eq!(pings, (30, 30));
    lab.stop_and_detach(loader);
}

#[test]
fn a_device_of_the_wrong_kind_stays_out_until_replaced() {
    let Some(_alone) = root_alone() else { return };
    let (mut lab, loader) = GatewayLab::running(200);
    lab.responders[1] = None;
    lab.wait_rotation(Duration::from_secs(2), |r| r == [0, 2]);
    // Something else takes the name: an Ethernet device, not a tun.
    lab.gw.ip(&[
        "link", "add", "ovt1", "type", "veth", "peer", "name", "ovt1p",
    ]);
    lab.gw.ip(&["link", "set", "ovt1", "up"]);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(lab.in_rotation(), [0, 2], "a veth is no tun tunnel");
    assert!(
        loader
            .log_text()
            .contains("ovt1 (Ethernet) does not fit kind = \"tun\""),
        "{}",
        loader.log_text()
    );
    assert!(tc_names(&lab, "ovt1").is_empty());
    lab.gw.ip(&["link", "del", "ovt1"]);
    lab.responders[1] = Some(Responder::start(&lab.gw, "ovt1", 1));
    lab.gw.ip(&["link", "set", "ovt1", "up"]);
    lab.wait_rotation(Duration::from_secs(3), |r| r == [0, 1, 2]);
    lab.stop_and_detach(loader);
}

#[test]
fn lost_notifications_are_made_up_for() {
    let Some(_alone) = root_alone() else { return };
    let (mut lab, loader) = GatewayLab::running(200);
    // Stop the loader, fill its notification socket with a storm of link
    // events, then remove a tunnel device: its notification has no room.
    let pid = libc::pid_t::try_from(loader.pid()).unwrap();
    // SAFETY: signals to the loader this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    storm(&lab, 0, 400);
    lab.responders[1] = None;
    let start = Instant::now();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let left = lab.wait_rotation_since(start, Duration::from_secs(5), |r| r == [0, 2]);
    eprintln!("after an overrun, the removed device left the rotation in {left:?}");
    assert!(left < Duration::from_secs(2), "{left:?}");
    assert!(
        loader.log_text().contains("notifications were lost"),
        "{}",
        loader.log_text()
    );
    lab.stop_and_detach(loader);
}

#[test]
fn a_storm_of_links_while_the_loader_reads_loses_no_removal() {
    // Devices made by the hundred (containers starting) overflow
    // the loader's notification socket while it is asking the kernel
    // things: no question may wait for ever on a lost answer (it did, on
    // one shared socket), and a tunnel removed in the storm must leave.
    let Some(_alone) = root_alone() else { return };
    let (mut lab, loader) = GatewayLab::running(200);
    for round in 0..3 {
        storm(&lab, round, 400);
        lab.responders[1] = None;
        let left = lab.wait_rotation(Duration::from_secs(10), |r| r == [0, 2]);
        eprintln!("round {round}: the removed device left the rotation in {left:?}");
        lab.responders[1] = Some(Responder::start(&lab.gw, "ovt1", 1));
        lab.gw.ip(&["link", "set", "ovt1", "up"]);
        lab.wait_rotation(Duration::from_secs(10), |r| r == [0, 1, 2]);
    }
    assert!(
        loader.log_text().contains("notifications were lost"),
        "no storm overflowed the socket: {}",
        loader.log_text()
    );
    lab.stop_and_detach(loader);
}

/// Adds `pairs` veth pairs (named after `tag`) to the gateway's namespace in
/// one batch: a burst of notifications. The namespace's end deletes them.
fn storm(lab: &GatewayLab, tag: usize, pairs: usize) {
    let batch = lab.scratch.dir.join(format!("storm-{tag}.batch"));
    let mut text = String::new();
    for i in 0..pairs {
        let _ = writeln!(text, "link add s{tag}t{i} type veth peer name s{tag}p{i}");
    }
    std::fs::write(&batch, text).unwrap();
    run(
        "ip",
        &["-n", lab.gw.name(), "-batch", batch.to_str().unwrap()],
    );
}

#[test]
fn detach_stops_a_running_loader_first() {
    let Some(_alone) = root_alone() else { return };
    let (lab, loader) = GatewayLab::running(200);
    let out = lab.ovpn_lb(&["detach"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("detach: stopping `ovpn-lb run` pid"),
        "{out:?}"
    );
    assert_eq!(
        loader.wait(Duration::from_secs(5)),
        Some(0),
        "the loader exits first"
    );
    assert_nothing_attached(&lab);
}

#[test]
fn takeover_never_signals_a_stale_pid_and_detach_keeps_a_foreign_bpffs() {
    let Some(_alone) = root_alone() else { return };
    let lab = GatewayLab::new(200);
    let run_dir = lab.scratch.layout().run_dir;
    std::fs::create_dir_all(&run_dir).unwrap();
    // Someone holds the lock for 2 s, and a stale state (running: false)
    // names that process: a new run must wait, not signal it.
    let holder = std::process::Command::new("flock")
        .arg(run_dir.join("run.lock"))
        .args(["sleep", "2"])
        .spawn()
        .unwrap();
    std::fs::write(
        run_dir.join("state.json"),
        format!(
            r#"{{"pid": {}, "running": false, "config": "", "lan_interface": "lan0", "tunnels": []}}"#,
            holder.id()
        ),
    )
    .unwrap();
    let mut holder = holder;
    let loader = lab.start_loader(&[]);
    let status = holder.wait().unwrap();
    assert!(
        status.success(),
        "the lock holder was signalled: {status:?}"
    );
    assert!(
        loader
            .log_text()
            .contains("held by a loader that is starting")
    );
    assert_eq!(loader.stop(SIGTERM), Some(0));
    // The scratch bpffs was mounted by the test, not by run: detach keeps it.
    assert!(lab.ovpn_lb(&["detach"]).status.success());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let ours = lab.scratch.dir.join("bpf");
    assert!(
        mounts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == ours.to_str()),
        "detach unmounted a bpffs it did not mount"
    );
}

#[test]
fn metrics_endpoint_survives_hostile_clients() {
    let Some(_alone) = root_alone() else { return };
    let (lab, loader) = GatewayLab::running(200);
    // Room for a thousand sockets in this process.
    // SAFETY: plain rlimit calls on a struct we own.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim);
        lim.rlim_cur = lim.rlim_max.min(65_536);
        libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim);
    }
    let (idle, endless) = lab.gw.enter(|| {
        let idle: Vec<std::net::TcpStream> = (0..1000)
            .filter_map(|_| std::net::TcpStream::connect("127.0.0.1:9477").ok())
            .collect();
        // A header line that never ends.
        let mut endless = std::net::TcpStream::connect("127.0.0.1:9477").unwrap();
        endless
            .write_all(b"GET /metrics HTTP/1.1\r\nX-Endless: ")
            .unwrap();
        let chunk = vec![b'a'; 64 * 1024];
        let mut sent = 0;
        while sent < 4 << 20 {
            if endless.write_all(&chunk).is_err() {
                break; // The server hung up on it: what we want.
            }
            sent += chunk.len();
        }
        (idle, endless)
    });
    assert!(
        idle.len() >= 900,
        "only {} connections were accepted",
        idle.len()
    );
    let start = Instant::now();
    let text = lab.scrape();
    let took = start.elapsed();
    eprintln!("scrape with 1000 idle connections and an endless header open: {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(text.contains("ovpnlb_tunnel_up"), "{text}");
    // Only GET of the two paths.
    let (status, _) = http_get(&lab.gw, "127.0.0.1:9477", "/nope");
    assert_eq!(status, 404);
    let (status, body) = http_get(&lab.gw, "127.0.0.1:9477", "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    // The loader stayed small.
    let statm = std::fs::read_to_string(format!("/proc/{}/status", loader.pid())).unwrap();
    let rss_kb: u64 = statm
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    eprintln!("loader RSS: {rss_kb} kB");
    assert!(rss_kb < 64 * 1024, "loader grew to {rss_kb} kB");
    drop((idle, endless));
    lab.stop_and_detach(loader);
}

/// Each set of ring hooks, forced in turn (`OVPN_LB_RING_HOOKS`), runs and
/// counts: the log, `status` and `doctor` name it, the metrics carry it,
/// and pings through the tunnels are counted into and out of their rings.
/// Where no set from the forced one down runs (Linux 6.1 lacks both
/// tracepoint sets), packet spray falls back to round robin, says so
/// everywhere, and forwards.
#[test]
fn every_set_of_ring_hooks_accounts_the_rings_and_says_which_runs() {
    let Some(_alone) = root_alone() else { return };
    let lab = GatewayLab::new(200);
    for wanted in RingHooks::ALL {
        let loader = lab.start_loader_with_env(&[], &[(rings::HOOKS_ENV, wanted.name())]);
        let log = loader.log_text();
        // A kernel may refuse a set (this machine refuses fexit programs
        // at load, before verification: EPERM): the loader says why and
        // takes the next.
        let Some(hooks) = RingHooks::ALL
            .into_iter()
            .filter(|&h| h >= wanted)
            .find(|h| log.contains(&format!("rings accounted by {}", h.name())))
        else {
            // Each set's refusal, and the fallback's own line, which
            // carries the last refusal (fexit's, where the others were
            // not tried).
            let why = log
                .lines()
                .filter(|l| l.contains("ring accounting: ") || l.contains("sprays round robin"))
                .collect::<Vec<_>>()
                .join("\n");
            eprintln!("ring hooks from {} down: none runs\n{why}", wanted.name());
            round_robin_stated_and_forwarding(&lab, &log, wanted.name());
            assert_eq!(loader.stop(SIGTERM), Some(0));
            continue;
        };
        eprintln!(
            "ring hooks from {} down: {} runs",
            wanted.name(),
            hooks.name()
        );
        if hooks != wanted {
            assert!(
                log.contains(&format!("ring accounting: {}: ", wanted.name()))
                    && (log.contains("trying the next hooks") || log.contains("not tried")),
                "{log}"
            );
        }
        // The set's links are pinned (its extras where the kernel took
        // them), and no other set's.
        let running = ring_programs_running(hooks, &log);
        for t in programs::TRACING {
            let pinned = lab.scratch.layout().tracing_link(t.name).exists();
            let wanted = running.contains(t);
            assert_eq!(
                pinned,
                wanted,
                "{}: {} pinned {pinned}",
                hooks.name(),
                t.name
            );
        }
        let before = lab.counters();
        assert_eq!(lab.ping(30, "0.01").wait(), (30, 30));
        thread::sleep(Duration::from_millis(100));
        let after = lab.counters();
        let grown = |f: fn(&TunnelQueue) -> u64| -> u64 {
            after
                .queues
                .iter()
                .zip(&before.queues)
                .map(|(a, b)| f(a).wrapping_sub(f(b)))
                .sum()
        };
        let queued = grown(|q| unpack(q.enq.queued).packets);
        let read = grown(|q| unpack(q.deq.read).packets);
        // 30 pings into the tunnels, and the probes.
        assert!(queued >= 30, "{}: {queued} queued", hooks.name());
        assert!(read >= 30, "{}: {read} read", hooks.name());
        let json = status_json(&lab);
        assert_eq!(json["ring_accounting"], hooks.name(), "{json}");
        let doctor = lab.ovpn_lb(&["doctor", "--config", &lab.config.to_string_lossy()]);
        let text = String::from_utf8_lossy(&doctor.stdout);
        assert!(
            text.contains(&format!("(hooks: {})", hooks.name())),
            "{text}"
        );
        let metrics = lab.scrape();
        let info = format!("ovpnlb_ring_accounting_info{{hooks=\"{}\"}}", hooks.name());
        assert_eq!(sample(&metrics, &info), Some(1.0), "{metrics}");
        assert_eq!(loader.stop(SIGTERM), Some(0));
    }
    // Hooks the variable does not know: refused with the names it takes,
    // and packet spray walks the slots.
    let loader = lab.start_loader_with_env(&[], &[(rings::HOOKS_ENV, "kprobe")]);
    let log = loader.log_text();
    assert!(log.contains("expected fexit, tp_btf or raw_tp"), "{log}");
    round_robin_stated_and_forwarding(&lab, &log, "kprobe");
    assert_eq!(loader.stop(SIGTERM), Some(0));
    assert!(lab.ovpn_lb(&["detach"]).status.success());
}

/// The programs of ring hooks `hooks` that run, by the loader's `log`: the
/// set's own, and each extra it did not say it runs without.
fn ring_programs_running(hooks: RingHooks, log: &str) -> Vec<programs::Tracing> {
    let without =
        |t: &programs::Tracing| log.contains(&format!("{} without {}", hooks.name(), t.name));
    hooks
        .programs()
        .iter()
        .chain(hooks.extras().iter().filter(|t| !without(t)))
        .copied()
        .collect()
}

/// Packet spray without its ring accounting: the loader ran, says in its
/// log, `status` and metrics that it sprays round robin, and pings cross.
fn round_robin_stated_and_forwarding(lab: &GatewayLab, log: &str, wanted: &str) {
    assert!(
        log.contains("packet spray sprays round robin"),
        "{wanted}: no hooks run and no round robin stated:\n{log}"
    );
    let json = status_json(lab);
    assert_eq!(json["ring_accounting"], serde_json::Value::Null, "{json}");
    let fallbacks = json["kernel"]["fallbacks"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        fallbacks.iter().any(|f| f["name"] == "round_robin"),
        "{wanted}: {json}"
    );
    let metrics = lab.scrape();
    assert_eq!(
        sample(&metrics, "ovpnlb_kernel_fallback{fallback=\"round_robin\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(lab.ping(30, "0.01").wait(), (30, 30), "{wanted}");
}

fn status_json(lab: &GatewayLab) -> serde_json::Value {
    let out = lab.ovpn_lb(&["status", "--json", "--interval", "0.1"]);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_plain_peer_is_probed_by_echo_and_leaves_when_the_echoes_stop() {
    let Some(_alone) = root_alone() else { return };
    // No ovpn-lb at the far end (no peer translation): the loader pings an
    // address behind each tunnel instead, which the responders answer.
    let lab = GatewayLab::with_tunnels(200, |_, t| {
        t.peer_translate.clear();
        t.probe_target = Some("10.20.30.1".to_owned());
    });
    let loader = lab.start_loader(&[]);
    lab.wait_rotation(Duration::from_secs(3), |r| r == [0, 1, 2]);
    let deadline = Instant::now() + Duration::from_secs(3);
    while status_json(&lab)["tunnels"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["probe"]["answered"].as_u64().unwrap_or(0) < 5)
    {
        assert!(
            Instant::now() < deadline,
            "echoes unanswered: {}\n{}",
            status_json(&lab),
            loader.log_text()
        );
        thread::sleep(Duration::from_millis(100));
    }
    // Tunnel 1's echo requests dropped on their way out: silence, it leaves.
    let nft = |args: &[&str]| {
        let mut all = vec!["netns", "exec", lab.gw.name(), "nft"];
        all.extend_from_slice(args);
        run("ip", &all);
    };
    nft(&["add", "table", "inet", "mute"]);
    nft(&[
        "add",
        "chain",
        "inet",
        "mute",
        "out",
        "{ type filter hook output priority 0; }",
    ]);
    let start = Instant::now();
    nft(&[
        "add",
        "rule",
        "inet",
        "mute",
        "out",
        "oifname",
        "ovt1",
        "icmp",
        "type",
        "echo-request",
        "drop",
    ]);
    let left = lab.wait_rotation_since(start, Duration::from_secs(2), |r| r == [0, 2]);
    eprintln!("echoes dropped -> out of rotation: {left:?}");
    assert!(left <= Duration::from_millis(500), "{left:?}");
    let json = status_json(&lab);
    assert_eq!(json["tunnels"][1]["cause"], "probe", "{json}");
    assert_eq!(json["tunnels"][1]["departures"]["probe"], 1, "{json}");
    assert!(
        loader.log_text().contains("ovt1=down(probe)"),
        "{}",
        loader.log_text()
    );
    // The echoes answered again: it rejoins after the up-delay.
    nft(&["delete", "table", "inet", "mute"]);
    lab.wait_rotation(Duration::from_secs(3), |r| r == [0, 1, 2]);
    lab.stop_and_detach(loader);
}

/// Sockets the process `pid` holds open.
fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

#[test]
fn a_plain_peers_echo_socket_is_not_leaked_across_device_restarts() {
    let Some(_alone) = root_alone() else { return };
    let mut lab = GatewayLab::with_tunnels(100, |_, t| {
        t.peer_translate.clear();
        t.probe_target = Some("10.20.30.1".to_owned());
    });
    let loader = lab.start_loader(&[]);
    lab.wait_rotation(Duration::from_secs(3), |r| r == [0, 1, 2]);
    let before = open_sockets(loader.pid());
    // OpenVPN restarting without persist-tun, five times: each restart is a
    // new device, pinged from a new socket; the old one must go.
    for _ in 0..5 {
        lab.responders[1] = None;
        lab.wait_rotation(Duration::from_secs(2), |r| r == [0, 2]);
        lab.responders[1] = Some(Responder::start(&lab.gw, "ovt1", 1));
        lab.gw.ip(&["link", "set", "ovt1", "up"]);
        lab.wait_rotation(Duration::from_secs(3), |r| r == [0, 1, 2]);
    }
    let after = open_sockets(loader.pid());
    eprintln!("the loader's sockets: {before} before five device restarts, {after} after");
    assert_eq!(after, before, "{}", loader.log_text());
    lab.stop_and_detach(loader);
}

#[test]
fn a_recreated_lan_device_gets_its_program_within_100ms() {
    let Some(_alone) = root_alone() else { return };
    let (lab, loader) = GatewayLab::running(300);
    lab.wait_rotation(Duration::from_secs(3), |r| r == [0, 1, 2]);
    let old = lab.gw.enter(|| ovpn_lb_tests::netns::ifindex("lan0"));
    // Watches from inside the gateway: when the new device appears, and
    // when the LAN program is on it.
    let watcher = lab.gw.spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        let appeared = loop {
            let now = ovpn_lb_tests::netns::ifindex("lan0");
            if now != 0 && now != old {
                break Instant::now();
            }
            assert!(Instant::now() < deadline, "no new lan0");
            thread::sleep(Duration::from_micros(200));
        };
        loop {
            // The kernel keeps 15 characters of a program's name.
            let attached = tc_programs(hook(), "lan0", TcAttachType::Ingress).is_ok_and(|progs| {
                progs
                    .iter()
                    .any(|(_, name)| programs::LAN_INGRESS.starts_with(name.as_str()))
            });
            if attached {
                return appeared.elapsed();
            }
            assert!(Instant::now() < deadline, "lan_ingress never attached");
            thread::sleep(Duration::from_micros(200));
        }
    });
    // A ping stream through the gateway, across the recreation.
    let stream = lab.ping(200, "0.01");
    thread::sleep(Duration::from_millis(300));
    lab.recreate_lan();
    let took = watcher.join().unwrap();
    eprintln!("LAN device recreated -> its program attached: {took:?}");
    assert!(
        took <= Duration::from_millis(100),
        "{took:?}\n{}",
        loader.log_text()
    );
    let (sent, received) = stream.wait();
    eprintln!("pings across the recreation: {received} of {sent} answered");
    // Once it is back, everything is sprayed again.
    let before: u64 = (0..3).map(|k| lab.tunnel_stats(k).tx_packets).sum();
    assert_eq!(
        lab.ping(50, "0.01").wait(),
        (50, 50),
        "{}",
        loader.log_text()
    );
    let after: u64 = (0..3).map(|k| lab.tunnel_stats(k).tx_packets).sum();
    assert!(after - before >= 50, "sprayed {} of 50", after - before);
    assert!(
        loader.log_text().contains("LAN lan0: device is ifindex"),
        "{}",
        loader.log_text()
    );
    lab.stop_and_detach(loader);
}

/// Watches the rotation for `how_long`: it must hold every tunnel throughout.
fn rotation_stays_whole(lab: &GatewayLab, how_long: Duration, case: &str) {
    let end = Instant::now() + how_long;
    while Instant::now() < end {
        let r = lab.in_rotation();
        assert_eq!(r, [0, 1, 2], "{case}: the rotation lost a tunnel");
        thread::sleep(Duration::from_millis(5));
    }
}

/// The far gateway's answers say what it can use only when it knows: an
/// older peer answering without a view (its loader never wrote one: probes
/// off, not started yet) or a peer saying "unknown" vetoes nothing; a view
/// it has vetoes the tunnels it leaves out; its flags reach `status`.
#[test]
fn the_far_gateways_word_counts_only_when_it_has_one() {
    use ovpn_lb_common::probe::flags;
    let Some(_alone) = root_alone() else { return };
    let (lab, loader) = GatewayLab::running(200);
    lab.wait_rotation(Duration::from_secs(3), |r| r == [0, 1, 2]);
    let says = |view: u64, word: u16| {
        let mut far = lab.far.lock().unwrap();
        far.view = view;
        far.flags = word;
    };
    for (case, word) in [
        ("an older peer without a view", 0),
        ("a peer without a view yet", flags::PRESENT),
    ] {
        says(0, word);
        rotation_stays_whole(&lab, Duration::from_secs(1), case);
    }
    // A view without tunnel 2: out here too, and back with it.
    says(0b011, flags::PRESENT | flags::VIEW_KNOWN);
    lab.wait_rotation(Duration::from_secs(1), |r| r == [0, 1]);
    let json = status_json(&lab);
    assert_eq!(json["tunnels"][2]["cause"], "probe", "{json}");
    says(
        u64::MAX,
        flags::PRESENT | flags::VIEW_KNOWN | flags::LAN_DOWN,
    );
    lab.wait_rotation(Duration::from_secs(2), |r| r == [0, 1, 2]);
    let flagged = wait_until(Duration::from_secs(2), Duration::from_millis(50), || {
        status_json(&lab)["tunnels"][0]["peer_flags"] == serde_json::json!(["lan_down"])
    });
    assert!(flagged, "{}", status_json(&lab));
    assert!(
        loader
            .log_text()
            .contains("tunnel 0 (ovt0): the far gateway says: lan_down"),
        "{}",
        loader.log_text()
    );
    let json = status_json(&lab);
    for k in 0..3 {
        let left = json["tunnels"][k]["departures"]["probe"]
            .as_u64()
            .unwrap_or(0);
        assert_eq!(left, u64::from(k == 2), "tunnel {k}: {json}");
    }
    lab.stop_and_detach(loader);
}

/// A plain peer on an echo-probed tunnel sending probes that say "no
/// tunnel is usable" cannot speak for the far gateway, and a flood of
/// probes on one tunnel cannot crowd out the others' answers: no tunnel
/// leaves.
#[test]
fn a_plain_peer_cannot_veto_and_a_probe_flood_drowns_nothing() {
    use ovpn_lb_common::probe::flags;
    let Some(_alone) = root_alone() else { return };
    let lab = GatewayLab::with_tunnels(200, |k, t| {
        if k == 2 {
            t.peer_translate.clear();
            t.probe_target = Some("10.20.30.1".to_owned());
        }
    });
    let loader = lab.start_loader(&[]);
    lab.wait_rotation(Duration::from_secs(3), |r| r == [0, 1, 2]);
    let answered = |json: &serde_json::Value, k: usize| {
        json["tunnels"][k]["probe"]["answered"]
            .as_u64()
            .unwrap_or_else(|| panic!("tunnel {k}: {json}"))
    };
    let probed = wait_until(Duration::from_secs(3), Duration::from_millis(100), || {
        let json = status_json(&lab);
        (0..3).all(|k| {
            json["tunnels"][k]["probe"]["answered"]
                .as_u64()
                .unwrap_or(0)
                >= 5
        })
    });
    assert!(probed, "{}", status_json(&lab));
    let before = status_json(&lab);
    let known = flags::PRESENT | flags::VIEW_KNOWN;
    lab.far.lock().unwrap().probes = vec![None, Some((u64::MAX, known, 8)), Some((0, known, 1))];
    rotation_stays_whole(&lab, Duration::from_secs(3), "a plain peer's veto, a flood");
    lab.far.lock().unwrap().probes.clear();
    let after = status_json(&lab);
    // The flooded tunnel's own ring is full of its flood's answers, which
    // loses its probes too: it stays in by its traffic. The others' answers
    // all come.
    for k in [0, 2] {
        let grew = answered(&after, k) - answered(&before, k);
        assert!(grew >= 20, "tunnel {k}: {grew} answers in 3 s: {after}");
    }
    for k in 0..3 {
        assert_eq!(
            after["tunnels"][k]["departures"],
            serde_json::json!({}),
            "{after}"
        );
    }
    lab.stop_and_detach(loader);
}

/// Fills `iface`'s tcx ingress up to the kernel's limit of programs, each
/// an instance of the benchmark's empty floor program, until one more is
/// refused (ERANGE). They stay attached while the result lives.
fn fill_tcx(lab: &GatewayLab, iface: &'static str) -> Vec<aya::Ebpf> {
    let object = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/bpfel-unknown-none/release/bench-floor");
    lab.gw.enter(move || {
        let mut attached = Vec::new();
        loop {
            let mut ebpf = aya::Ebpf::load_file(&object).unwrap_or_else(|e| {
                panic!("{}: {e} (cargo xtask build makes it)", object.display())
            });
            let p: &mut aya::programs::SchedClassifier = ebpf
                .program_mut("bench_floor")
                .expect("the floor program")
                .try_into()
                .unwrap();
            p.load().unwrap();
            match p.attach(iface, TcAttachType::Ingress) {
                Ok(_) => attached.push(ebpf),
                Err(e) => {
                    let full = format!("{e:?}").contains("Numerical result out of range");
                    assert!(
                        full && attached.len() > 8,
                        "after {}: {e:?}",
                        attached.len()
                    );
                    return attached;
                }
            }
        }
    })
}

/// The kernel path's rules in the gateway lab: for the remote prefix and
/// the peer's 3 translation prefixes, from the LAN and from the gateway
/// itself (`iif lo`), one `lookup` and one `unreachable` each.
const KERNEL_PATH_RULES: usize = 4 * 2 * 2;

/// ovpn-lb's policy rules (priorities 7599-7601 by default, or around
/// `priority`), as `ip rule` lists them, both families.
fn our_rules(lab: &GatewayLab, priority: u32) -> Vec<String> {
    let band = [priority - 1, priority, priority + 1].map(|p| format!("{p}:"));
    ["-4", "-6"]
        .iter()
        .flat_map(|family| {
            run("ip", &["-n", lab.gw.name(), family, "rule", "show"])
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|l| band.iter().any(|b| l.starts_with(b.as_str())))
        .collect()
}

/// IPv4 routes in table `table` of the gateway (its LAN is IPv4 only).
fn table_routes(lab: &GatewayLab, table: u32) -> String {
    let table = table.to_string();
    run(
        "ip",
        &["-n", lab.gw.name(), "-4", "route", "show", "table", &table],
    )
}

#[test]
fn a_start_that_fails_leaves_nothing_behind() {
    let Some(_alone) = root_alone() else { return };
    if hook() == TcHook::Legacy {
        // Legacy tc has no such limit: the start would succeed (and `run`
        // never return).
        eprintln!(
            "a_start_that_fails_leaves_nothing_behind: fills tcx's ingress, which legacy tc has no limit for: not run under legacy tc"
        );
        return;
    }
    let lab = GatewayLab::new(500);
    // A LAN whose tcx ingress is full: the LAN program, attached last,
    // is refused, after the kernel path's rules and the tunnels' programs.
    let foreign = fill_tcx(&lab, "lan0");
    let config = lab.config.display().to_string();
    let out = lab.ovpn_lb(&["run", "--config", &config]);
    let said = ovpn_lb_tests::process::all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("attaching lan_ingress to lan0") && said.contains("nothing it made is left"),
        "{said}"
    );
    assert!(
        said.contains("removed rule priority 7600 iif lan0"),
        "{said}"
    );
    assert_eq!(our_rules(&lab, 7600), Vec::<String>::new(), "{said}");
    assert_eq!(table_routes(&lab, 7600), "");
    let layout = lab.scratch.layout();
    assert!(!layout.pin_root.exists(), "pins left: {said}");
    assert!(!layout.state_file().exists());
    for dev in ["ovt0", "ovt1", "ovt2"] {
        assert!(tc_names(&lab, dev).is_empty(), "{dev}: {said}");
    }
    // Room again: the next start attaches.
    drop(foreign);
    let loader = lab.start_loader(&[]);
    assert_eq!(
        our_rules(&lab, 7600).len(),
        KERNEL_PATH_RULES,
        "{}",
        rules(&lab)
    );
    lab.stop_and_detach(loader);
}

#[test]
fn a_changed_kernel_route_takes_the_old_rules_and_routes_away() {
    let Some(_alone) = root_alone() else { return };
    let (lab, loader) = GatewayLab::running(500);
    assert_eq!(
        our_rules(&lab, 7600).len(),
        KERNEL_PATH_RULES,
        "{}",
        rules(&lab)
    );
    assert_ne!(table_routes(&lab, 7600), "");
    assert_eq!(loader.stop(SIGTERM), Some(0));
    let text = std::fs::read_to_string(&lab.config).unwrap();
    let mut file = ovpn_lb::config::file::parse(&text).unwrap();
    file.kernel_route.table = 7700;
    file.kernel_route.priority = 7700;
    std::fs::write(&lab.config, file.to_toml().unwrap()).unwrap();
    let loader = lab.start_loader(&[]);
    let log = loader.log_text();
    assert_eq!(our_rules(&lab, 7600), Vec::<String>::new(), "{log}");
    assert_eq!(table_routes(&lab, 7600), "", "{log}");
    assert!(log.contains("(an earlier kernel_route)"), "{log}");
    assert_eq!(
        our_rules(&lab, 7700).len(),
        KERNEL_PATH_RULES,
        "{}",
        rules(&lab)
    );
    assert_ne!(table_routes(&lab, 7700), "");
    lab.stop_and_detach(loader);
    assert_eq!(our_rules(&lab, 7700), Vec::<String>::new());
    assert_eq!(table_routes(&lab, 7700), "");
}

#[test]
fn without_cap_net_raw_a_probing_loader_refuses_to_start() {
    let Some(_alone) = root_alone() else { return };
    let lab = GatewayLab::new(500);
    let site = lab.site();
    let layout = lab.scratch.layout();
    // As a unit without CAP_NET_RAW in its bounding set would run it.
    let out = ovpn_lb_tests::netns::command(lab.gw.name(), "timeout")
        .args(["20", "setpriv", "--bounding-set", "-net_raw"])
        .arg(&site.bin)
        .arg("--pin-root")
        .arg(&layout.pin_root)
        .arg("--run-dir")
        .arg(&layout.run_dir)
        .arg("run")
        .arg("--config")
        .arg(&lab.config)
        .output()
        .unwrap();
    let said = ovpn_lb_tests::process::all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("cannot open the probe sender")
            && said.contains("CAP_NET_RAW")
            && said.contains("probe_interval_ms = 0"),
        "{said}"
    );
    assert_eq!(our_rules(&lab, 7600), Vec::<String>::new(), "{said}");
    assert!(tc_names(&lab, "lan0").is_empty(), "{said}");
}

#[test]
fn packet_spray_refuses_a_multi_queue_tun() {
    let Some(_alone) = root_alone() else { return };
    let mut lab = GatewayLab::new(500);
    // Tunnel 1's device goes with its responder, and comes back as a
    // multi-queue tun: the ring accounting follows one ring per device.
    lab.responders[1] = None;
    let _queue = lab
        .gw
        .enter(|| ovpn_lb_tests::tun::open_multi_queue("ovt1"))
        .unwrap();
    let config = lab.config.display().to_string();
    let out = lab.ovpn_lb(&["check", "--config", &config]);
    let said = ovpn_lb_tests::process::all_output(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains(
            "tunnel[1].device = \"ovt1\" is a multi-queue tun device (one ring per queue): spray = \"packet\" cannot see its queue"
        ),
        "{said}"
    );
    // The same device under round robin, which reads no ring, is fine.
    let text = std::fs::read_to_string(&lab.config).unwrap();
    let mut file = ovpn_lb::config::file::parse(&text).unwrap();
    file.spray = ovpn_lb::config::file::Spray::RoundRobin;
    std::fs::write(&lab.config, file.to_toml().unwrap()).unwrap();
    let out = lab.ovpn_lb(&["check", "--config", &config]);
    assert!(
        out.status.success(),
        "{}",
        ovpn_lb_tests::process::all_output(&out)
    );
}
