//! One TCP connection over unequal tunnels, through real OpenVPN: gateway
//! A's OpenVPN shapes its four tunnels to different rates (`--shaper`), the
//! hosts send wire segments, and both gateways spray with `spray =
//! "packet"`, the earliest-departure pick.

use std::net::SocketAddr;

use ovpn_lb::config::file::Spray;
use ovpn_lb_tests::{
    lab::{HOST_B, Lab, Options, Side, growth},
    root_alone,
    traffic::tcp_transfer,
};

/// Gateway A's `--shaper` per tunnel, bytes/s: two fast tunnels, a slow and
/// a slower one (OpenVPN shapes only up to about 1,000,000 B/s).
const SHAPERS: [u32; 4] = [1_000_000, 1_000_000, 500_000, 250_000];
/// What fits about 15 s at these rates.
const BYTES: usize = 16 << 20;

/// Sends [`BYTES`] over one connection from host A to host B on a lab with
/// [`SHAPERS`]; checks it arrived intact and returns the packets gateway A
/// sprayed into each tunnel meanwhile.
fn transfer_over_unequal_tunnels() -> Vec<u64> {
    let lab = Lab::for_test(
        "ou",
        Options {
            shaper: SHAPERS.to_vec(),
            spray: Spray::Packet,
            wire_segments: true,
            ..Options::default()
        },
    );
    let before = lab.tunnel_stats(Side::A);
    let listen = SocketAddr::new(HOST_B.parse().unwrap(), 5001);
    let t = tcp_transfer(&lab.host(Side::A), &lab.host(Side::B), listen, BYTES, || {});
    assert_eq!(t.received_bytes, BYTES, "{}", lab.diagnose());
    assert_eq!(t.received_sha256, t.sent_sha256, "SHA-256 differs");
    growth(&before, &lab.tunnel_stats(Side::A), |s| s.tx_packets)
}

/// The transfer arrives intact, every tunnel carrying part of it.
#[test]
fn a_transfer_over_unequal_tunnels_arrives_intact() {
    let Some(_alone) = root_alone() else { return };
    let carried = transfer_over_unequal_tunnels();
    assert!(
        carried.iter().all(|&c| c > 100),
        "every tunnel carries part of the connection: {carried:?}"
    );
}

/// Each faster tunnel carries more packets than each slower one.
///
/// Waits for the earliest-departure pick of `spray = "packet"`: until it
/// lands, "packet" is round robin, which gives every tunnel the same share,
/// and this fails. Take the `ignore` away when it lands; the transfer test
/// above then checks nothing this one does not.
#[test]
#[ignore = "waits for spray = \"packet\" (earliest departure); until then packet is round robin"]
fn faster_tunnels_carry_more_packets() {
    let Some(_alone) = root_alone() else { return };
    let carried = transfer_over_unequal_tunnels();
    for (fast, &fast_rate) in SHAPERS.iter().enumerate() {
        for (slow, &slow_rate) in SHAPERS.iter().enumerate() {
            if fast_rate > slow_rate {
                assert!(
                    carried[fast] > carried[slow],
                    "tun{fast} ({fast_rate} B/s) carried no more than tun{slow} ({slow_rate} B/s): {carried:?}"
                );
            }
        }
    }
}
