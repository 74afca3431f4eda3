//! One TCP connection over unequal tunnels, through real OpenVPN: gateway
//! A's OpenVPN shapes its four tunnels to different rates (`--shaper`), the
//! hosts send wire segments, then GSO super-packets, and both gateways
//! spray with `spray = "packet"`, the earliest-departure pick.

use std::net::SocketAddr;

use ovpn_lb::config::file::Spray;
use ovpn_lb_tests::{
    lab::{HOST_B, Lab, Options, Side, growth},
    root_alone,
    traffic::tcp_transfer,
};

/// Gateway A's `--shaper` per tunnel, bytes/s: two tunnels twice as fast as
/// the other two (OpenVPN shapes only up to about 1,000,000 B/s).
const SHAPERS: [u32; 4] = [1_000_000, 1_000_000, 500_000, 500_000];
/// About 15 s at these rates, even under round robin (each of two runs).
const BYTES: usize = 30 << 20;
/// A faster tunnel carries at least this many times the packets of a slower
/// one: well clear of round robin's 1, below the ratio of the rates.
const AT_LEAST: f64 = 1.25;

/// What gateway A did during one transfer.
struct Carried {
    /// Bytes sprayed into each tunnel (a GSO super-packet is one sprayed
    /// packet of many segments: bytes compare across both).
    bytes: Vec<u64>,
    /// Times each tunnel left the rotation (its probes went unanswered).
    departures: Vec<u64>,
}

/// Sends [`BYTES`] over one connection from host A to host B on `lab`, the
/// hosts sending wire segments or not, and checks that they arrived intact.
fn transfer(lab: &Lab, segments: bool) -> Carried {
    lab.set_wire_segments(segments);
    let (before, left_before) = (lab.tunnel_stats(Side::A), lab.departures(Side::A));
    let listen = SocketAddr::new(HOST_B.parse().unwrap(), 5001);
    let t = tcp_transfer(&lab.host(Side::A), &lab.host(Side::B), listen, BYTES, || {});
    assert_eq!(t.received_bytes, BYTES, "{}", lab.diagnose());
    assert_eq!(t.received_sha256, t.sent_sha256, "SHA-256 differs");
    let carried = Carried {
        bytes: growth(&before, &lab.tunnel_stats(Side::A), |s| s.tx_bytes),
        departures: growth(&left_before, &lab.departures(Side::A), |d| *d),
    };
    eprintln!(
        "wire segments {segments}: bytes sprayed per tunnel: {:?}; departures from the rotation: {:?}",
        carried.bytes, carried.departures
    );
    carried
}

/// The transfer arrives intact, with wire segments and with GSO
/// super-packets from the hosts; each faster tunnel carries clearly more
/// than each slower one, every tunnel carries its part, and no tunnel
/// leaves the rotation. (Round robin gives every tunnel the same share: the
/// slow tunnels' rings fill with seconds of data, their probes go
/// unanswered and they leave the rotation again and again, 9-10 times each
/// in one such transfer, which makes them carry less for the wrong reason;
/// departures fail the test.)
#[test]
fn faster_tunnels_carry_more_and_the_transfer_arrives_intact() {
    let Some(_alone) = root_alone() else { return };
    let lab = Lab::for_test(
        "ou",
        Options {
            shaper: SHAPERS.to_vec(),
            spray: Spray::Packet,
            ..Options::default()
        },
    );
    for segments in [true, false] {
        let Carried { bytes, departures } = transfer(&lab, segments);
        assert!(
            departures.iter().all(|&d| d == 0),
            "wire segments {segments}: tunnels left the rotation (probes unanswered behind full rings): {departures:?}; bytes {bytes:?}\n{}",
            lab.diagnose()
        );
        let total: u64 = bytes.iter().sum();
        for (k, &b) in bytes.iter().enumerate() {
            // A starved tunnel fails here rather than dividing by nothing
            // below: each carries at least a fifth of its rate's share.
            let share = u64::from(SHAPERS[k]) * total / u64::from(SHAPERS.iter().sum::<u32>());
            assert!(
                b * 5 >= share,
                "tun{k} carried {b} bytes of {total}, its rate's share is {share}: {bytes:?}"
            );
        }
        for (fast, &fast_rate) in SHAPERS.iter().enumerate() {
            for (slow, &slow_rate) in SHAPERS.iter().enumerate() {
                // Nor does a slower tunnel carry too little: with wire
                // segments at most twice the ratio of the rates. A merged
                // packet goes whole to one tunnel, and the pick keeps it
                // off a slower one whose drain of it would come late, so
                // with super-packets the slower tunnels carry less (4.3
                // times seen at a 2:1 ratio); the fifth of a share above
                // still fails a starved one.
                #[expect(clippy::cast_precision_loss, reason = "byte counts")]
                let ratio = bytes[fast] as f64 / bytes[slow] as f64;
                let slack = if segments { 2.0 } else { 4.0 };
                let at_most = slack * f64::from(fast_rate) / f64::from(slow_rate);
                assert!(
                    fast_rate <= slow_rate || (ratio >= AT_LEAST && ratio <= at_most),
                    "wire segments {segments}: tun{fast} ({fast_rate} B/s) carried {ratio:.2} times the bytes of tun{slow} ({slow_rate} B/s), want {AT_LEAST} to {at_most}: {bytes:?}"
                );
            }
        }
    }
}
