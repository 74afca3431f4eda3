//! End to end through real OpenVPN TAP tunnels (`dev tap`): the built-in lab
//! with `Options::tap`, once under the tc hook and once under native XDP, each
//! lab running every check in turn: the hook actually attached, ping, TCP from a
//! host with transmit checksum offload on (SHA-256 compared at the far end)
//! and UDP over IPv4 and IPv6 with real addresses seen at the far end, every
//! tunnel carrying part at both gateways, the restore path taken (in XDP mode:
//! straight to the LAN device), nothing dropped, and no LAN or translated
//! address in the clear on the WAN.

use std::{net::SocketAddr, process::Command, time::Instant};

use ovpn_lb::status::Counters;
use ovpn_lb_common::{Reason, reason::Outcome};
use ovpn_lb_tests::{
    lab::{CLEAR_TEXT, HOST_A, HOST_A6, HOST_B, HOST_B6, Lab, Options, Side, growth},
    ping::{ping, ping_background},
    root_alone,
    traffic::{Capture, tcp_transfer, udp_exchange},
};

const TUNNELS: usize = 4;

fn lab(hook: &str) -> Lab {
    Lab::for_test(
        "ot",
        Options {
            tunnels: TUNNELS,
            tap: true,
            hook: Some(hook.to_owned()),
            ..Options::default()
        },
    )
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// `ethtool -k DEV` in namespace `ns`: the state of `feature` ("on"/"off").
fn offload(ns: &str, dev: &str, feature: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ethtool", "-k", dev])
        .output()
        .expect("ethtool (Debian package ethtool)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{feature}: ")))
        .map_or_else(
            || panic!("ethtool -k {dev} in {ns} lists no {feature}:\n{text}"),
            |v| v.split_whitespace().next().unwrap_or("").to_owned(),
        )
}

/// The XDP program on `dev` in namespace `ns`, as `ip -j link` reports it:
/// (attach mode, program name from `bpftool prog show`). Mode 1 is native
/// (driver), 2 generic (skb).
fn xdp_program(ns: &str, dev: &str) -> Option<(u64, String)> {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "-d", "link", "show", dev])
        .output()
        .unwrap();
    let links: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("ip -j link show {dev}: {e}"));
    let xdp = links[0].get("xdp")?;
    let mode = xdp["mode"].as_u64()?;
    let id = xdp["prog"]["id"].as_u64()?;
    let out = Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string(), "-j"])
        .output()
        .unwrap();
    let prog: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Some((mode, prog["name"].as_str().unwrap_or("?").to_owned()))
}

/// Counter growth between two readings: per tunnel (tx, rx) packets, per
/// reason packets.
struct Delta {
    tx: Vec<u64>,
    rx: Vec<u64>,
    reasons: Vec<u64>,
}

impl Delta {
    fn between(before: &Counters, after: &Counters) -> Self {
        Self {
            tx: growth(&before.tunnels, &after.tunnels, |t| t.tx_packets),
            rx: growth(&before.tunnels, &after.tunnels, |t| t.rx_packets),
            reasons: growth(&before.reasons, &after.reasons, |r| r.packets),
        }
    }

    fn reason(&self, r: Reason) -> u64 {
        self.reasons[r as usize]
    }

    fn nonzero_reasons(&self) -> String {
        Reason::ALL
            .iter()
            .zip(&self.reasons)
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| format!("{}={n}", r.name()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The hosts send with transmit checksum offload on, and the hook asked for is
/// the one attached at both gateways.
fn assert_hook(lab: &Lab, hook: &str) {
    let (ha, hb) = (lab.host(Side::A), lab.host(Side::B));
    // The hosts send with transmit checksum offload on (the veth default): TCP
    // and UDP leave host A with partial checksums the datapath must complete.
    for host in [&ha, &hb] {
        assert_eq!(
            offload(host, "lan", "tx-checksumming"),
            "on",
            "{host}: transmit checksum offload must be on"
        );
    }

    // The hook asked for is the one attached.
    for side in [Side::A, Side::B] {
        let gw = lab.gw(side);
        let lan = xdp_program(&gw, "lan");
        let taps: Vec<_> = (0..TUNNELS)
            .map(|k| xdp_program(&gw, &lab.dev(k)))
            .collect();
        if hook == "xdp" {
            assert_eq!(
                lan,
                Some((1, "lan_ingress_xdp".to_owned())),
                "gateway {side:?}: native XDP on the LAN\n{}",
                lab.diagnose()
            );
            for (k, t) in taps.iter().enumerate() {
                assert_eq!(
                    t.as_ref(),
                    Some(&(1, "tunnel_ingress_xdp".to_owned())),
                    "gateway {side:?}: native XDP on tap{k}\n{}",
                    lab.diagnose()
                );
            }
            // The hosts' veth ends have GRO, so the gateways' LAN veths can
            // transmit XDP frames.
            assert_eq!(
                offload(&lab.host(side), "lan", "generic-receive-offload"),
                "on"
            );
        } else {
            assert_eq!(lan, None, "gateway {side:?}: no XDP on the LAN under tc");
            assert!(
                taps.iter().all(Option::is_none),
                "gateway {side:?}: no XDP on the taps under tc: {taps:?}"
            );
        }
    }
}

/// Ping, TCP with SHA-256 compared, and UDP from host A to host B, over IPv4
/// and IPv6; host B sees host A's real address.
fn exchange_traffic(lab: &Lab) {
    let (ha, hb) = (lab.host(Side::A), lab.host(Side::B));
    for target in [HOST_B, HOST_B6] {
        assert_eq!(
            ping(&ha, target, 20, "0.01"),
            (20, 20),
            "ping {target}\n{}",
            lab.diagnose()
        );
    }
    for (listen, from, bytes) in [
        (addr(HOST_B, 5001), HOST_A, 8 << 20),
        (addr(HOST_B6, 5002), HOST_A6, 4 << 20),
    ] {
        let t = tcp_transfer(&ha, &hb, listen, bytes, || {});
        assert_eq!(t.received_bytes, bytes, "{listen}\n{}", lab.diagnose());
        assert_eq!(
            t.received_sha256, t.sent_sha256,
            "SHA-256 differs ({listen})"
        );
        assert_eq!(
            t.peer.ip().to_string(),
            from,
            "the destination must see the real source"
        );
    }
    for (server, from) in [(addr(HOST_B, 5353), HOST_A), (addr(HOST_B6, 5354), HOST_A6)] {
        let (echoed, peer) = udp_exchange(&ha, &hb, server, 200);
        assert_eq!(echoed, 200, "UDP echoes over {server}\n{}", lab.diagnose());
        assert_eq!(peer.ip().to_string(), from);
    }
}

/// What the gateways counted for `exchange_traffic`.
fn assert_counters(lab: &Lab, hook: &str, before: &[Counters; 2], after: &[Counters; 2]) {
    for (side, (b, a)) in [Side::A, Side::B].into_iter().zip(before.iter().zip(after)) {
        let d = Delta::between(b, a);
        println!(
            "{hook}: gateway {side:?}: tx {:?} rx {:?} reasons: {}",
            d.tx,
            d.rx,
            d.nonzero_reasons()
        );
        // Gateway A sprays the data, gateway B the ACKs and echoes: every
        // tunnel carries part each way.
        assert!(
            d.tx.iter().all(|&n| n > 50) && d.rx.iter().all(|&n| n > 50),
            "gateway {side:?}: every tunnel must carry part: tx {:?} rx {:?}",
            d.tx,
            d.rx
        );
        let dropped: Vec<String> = Reason::ALL
            .iter()
            .filter(|r| r.outcome() == Outcome::Dropped && d.reason(**r) > 0)
            .map(|r| format!("{}={}", r.name(), d.reason(*r)))
            .collect();
        assert!(
            dropped.is_empty(),
            "gateway {side:?} dropped packets: {dropped:?}"
        );
        if hook == "xdp" {
            assert!(
                d.reason(Reason::RestoredToLan) > 100,
                "gateway {side:?}: XDP restores must go straight to the LAN: {}\n{}",
                d.nonzero_reasons(),
                lab.diagnose()
            );
        } else {
            assert!(
                d.reason(Reason::Restored) > 100 && d.reason(Reason::RestoredToLan) == 0,
                "gateway {side:?}: tc restores are handed to the kernel: {}",
                d.nonzero_reasons()
            );
        }
    }
}

/// Host B turns GRO off on its LAN veth, so gateway B's `lan` can no longer
/// transmit XDP frames: the loader must see the feature change and send
/// restores through the kernel (no loss), then back straight to the LAN once
/// GRO is on again.
fn lan_xmit_follows_the_host_gro(lab: &Lab) {
    let hb = lab.host(Side::B);
    let set_gro = |on: &str| {
        lab.exec(&hb, &["ethtool", "-K", "lan", "gro", on]);
        // The loader hears of it through a netlink notification.
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    let restores = |c: &Counters| {
        let n = |r: Reason| c.reasons[r as usize].packets;
        (n(Reason::Restored), n(Reason::RestoredToLan))
    };
    let ha = lab.host(Side::A);
    set_gro("off");
    let before = restores(&lab.counters(Side::B));
    let (sent, received) = ping(&ha, HOST_B, 20, "0.05");
    let after = restores(&lab.counters(Side::B));
    assert_eq!(
        received,
        sent,
        "pings lost with GRO off on host B's veth; gateway B's loader said:\n{}",
        std::fs::read_to_string(lab.dir.join("ovpn-lb-b.log")).unwrap_or_default()
    );
    assert!(
        after.0 - before.0 >= 20 && after.1 == before.1,
        "with no ndo-xmit on B's lan, restores must go to the kernel: restored {before:?} -> {after:?}"
    );
    set_gro("on");
    let (sent, received) = ping(&ha, HOST_B, 20, "0.05");
    let again = restores(&lab.counters(Side::B));
    assert_eq!(received, sent, "pings lost after GRO came back on");
    assert!(
        again.1 - after.1 >= 20,
        "restores must go straight to the LAN again: {after:?} -> {again:?}"
    );
}

/// Everything one TAP lab checks, under `hook` ("tc" or "xdp").
fn tap_lab_end_to_end(hook: &str) {
    let started = Instant::now();
    let mut lab = lab(hook);
    let up = started.elapsed();
    assert_hook(&lab, hook);

    let capture = Capture::start(&lab.gw(Side::A), "wan", &lab.dir.join("wan.pcap"));
    let before = [lab.counters(Side::A), lab.counters(Side::B)];
    exchange_traffic(&lab);
    let after = [lab.counters(Side::A), lab.counters(Side::B)];
    assert_counters(&lab, hook, &before, &after);

    if hook == "xdp" {
        lan_xmit_follows_the_host_gro(&lab);
    }
    restarts_lose_nothing(&mut lab);

    capture
        .stop()
        .assert_none(CLEAR_TEXT, "LAN addresses in the clear on the WAN");
    println!(
        "{hook}: lab up in {:.1} s, checks in {:.1} s",
        up.as_secs_f64(),
        started.elapsed().saturating_sub(up).as_secs_f64()
    );
}

/// kill -9 of gateway A's loader and a new run, then a takeover on gateway
/// B, with 100 pings a second that must all come back: a restart keeps each
/// TAP tunnel's far-end MAC in the datapath while its device stays the same.
fn restarts_lose_nothing(lab: &mut Lab) {
    let ha = lab.host(Side::A);
    let pings = ping_background(&ha, HOST_B, 300, "0.01");
    std::thread::sleep(std::time::Duration::from_millis(500));
    lab.kill_loader(Side::A);
    lab.start_loader(Side::A);
    std::thread::sleep(std::time::Duration::from_millis(500));
    lab.start_loader(Side::B);
    let (sent, received) = pings.wait();
    assert_eq!((sent, received), (300, 300), "pings lost across restarts");
    let c = lab.counters(Side::A);
    assert_eq!(
        c.reasons[Reason::NoNextHop as usize].packets,
        0,
        "{}",
        lab.diagnose()
    );
}

#[test]
fn tap_tunnels_under_tc() {
    let Some(_alone) = root_alone() else { return };
    tap_lab_end_to_end("tc");
}

#[test]
fn tap_tunnels_under_native_xdp() {
    let Some(_alone) = root_alone() else { return };
    tap_lab_end_to_end("xdp");
}
