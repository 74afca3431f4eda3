//! The kernel's own per-packet spray that the benchmark compares ovpn-lb
//! against (nftables `numgen`, fwmark rules, a routing table per tunnel),
//! on the lab without ovpn-lb: it must spray one connection over every
//! tunnel in both families, and leave nothing behind when dropped.

use std::net::SocketAddr;

use ovpn_lb_tests::{
    lab::{Forwarding, HOST_B, HOST_B6, Lab, Options, Side},
    netns,
    ping::ping,
    root_alone,
    traffic::tcp_transfer,
};

/// Packets each of gateway A's tunnel devices has sent.
fn device_tx(lab: &Lab) -> Vec<u64> {
    (0..lab.options.tunnels)
        .map(|k| {
            let out = lab.ip(&lab.gw(Side::A), &["-j", "-s", "link", "show", &lab.dev(k)]);
            let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j");
            v[0]["stats64"]["tx"]["packets"]
                .as_u64()
                .expect("tx packets")
        })
        .collect()
}

#[test]
fn numgen_sprays_one_connection_over_every_tunnel_and_goes_away() {
    let Some(_alone) = root_alone() else { return };
    let lab = Lab::for_test(
        "on",
        Options {
            forwarding: Forwarding::Routes,
            ..Options::default()
        },
    );
    let (ha, hb, ga) = (lab.host(Side::A), lab.host(Side::B), lab.gw(Side::A));
    let spray = lab.numgen(lab.options.tunnels);
    for target in [HOST_B, HOST_B6] {
        assert_eq!(ping(&ha, target, 20, "0.01"), (20, 20), "{target}");
    }
    for host in [HOST_B, HOST_B6] {
        let before = device_tx(&lab);
        let listen = SocketAddr::new(host.parse().unwrap(), 5001);
        let t = tcp_transfer(&ha, &hb, listen, 4 << 20, || {});
        assert_eq!(t.received_sha256, t.sent_sha256, "SHA-256 differs");
        let carried: Vec<u64> = device_tx(&lab)
            .iter()
            .zip(&before)
            .map(|(a, b)| a - b)
            .collect();
        // numgen counts the packets gateway A forwards, which come over the
        // veth as host A's GSO super-packets (up to 64 KB each): a tunnel
        // that drew big ones carries few wire packets (149 of 3200 seen);
        // none carries nothing.
        assert!(
            carried.iter().all(|&c| c > 50),
            "every tunnel carries part of the connection to {host}: {carried:?}"
        );
    }
    drop(spray);
    let tables = netns::exec(&ga, &["nft", "list", "tables"]);
    assert!(!tables.contains("ovpnlb_numgen"), "{tables}");
    for family in ["-4", "-6"] {
        let rules = lab.ip(&ga, &[family, "rule"]);
        assert!(!rules.contains("fwmark"), "{rules}");
    }
    // The main table's route through tunnel 0 carries on alone.
    let before = device_tx(&lab);
    assert_eq!(ping(&ha, HOST_B, 20, "0.01"), (20, 20));
    let after = device_tx(&lab);
    assert!(after[0] - before[0] >= 20 && after[1..] == before[1..]);
}
