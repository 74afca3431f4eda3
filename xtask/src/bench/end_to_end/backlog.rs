//! The backlog trace: how much each of gateway A's tunnels holds, sampled
//! every 10 ms while one flow runs.
//!
//! A tun device queues in its ring (`tx_ring`, `txqueuelen` entries), which
//! OpenVPN drains; the kernel exports no occupancy for it, and the qdisc in
//! front stays empty (`tun_net_xmit` never stops the queue). Two sources
//! give it, the first where it can:
//! - [`Source::Rings`]: the loader's ring accounting (`RINGS`: queued -
//!   read, counted by the kernel hooks as packets enter and leave the ring).
//!   It is exact, probes included, and counts a GSO packet as the segments
//!   it becomes. Packet spray always accounts; round robin only with
//!   `OVPN_LB_ACCOUNT_RINGS=1` in the bench's environment.
//! - [`Source::Counters`]: two counters bracket the ring: the loader's
//!   per-tunnel `tx_packets` and `tx_bytes` (`TUNNEL_STATS`, counted when
//!   the program sprays a packet into the tunnel) and the device's
//!   `tx_packets` and `tx_bytes` (counted when OpenVPN reads a packet) and
//!   `tx_dropped` (the ring was full). The backlog is sprayed - read -
//!   dropped, each counted from a reading with the tunnels idle. In bytes
//!   the two agree: the loader counts IP bytes and a tun device's
//!   `tx_bytes` are IP bytes too (OpenVPN's tun has no packet information
//!   header); dropped packets are counted at the mean size sprayed. Only
//!   wire segments can be traced so: a GSO packet counts once at the loader
//!   and once per segment, with its headers, at the device. The loader's
//!   probes, and the far gateway's that gateway A reflects, enter the ring
//!   without being counted as sprayed: their steady rate is measured at
//!   rest before the flow and taken off (probes beyond it, a gateway
//!   announcing a change, are not: 76 B each).
//!
//! What OpenVPN has read and holds (encrypting, or waiting out its shaper)
//! is in neither.

use std::{
    fs,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use ovpn_lb::{
    datapath::rings::ACCOUNT_ENV,
    probe::now_ns,
    status::{Counters, RingReport},
};
use ovpn_lb_common::queue::TunnelQueue;
use ovpn_lb_tests::{
    lab::{Lab, Side},
    netns,
};

use super::{
    iperf::{Run, iperf},
    variant::Hosts,
};

/// Time between samples.
pub const EVERY: Duration = Duration::from_millis(10);
/// Time the flow runs before sampling starts (past slow start).
const WARM_UP: Duration = Duration::from_secs(1);
/// Time at rest over which the probes' share of the counters is measured.
const CALIBRATION: Duration = Duration::from_secs(1);

/// One sample: seconds since sampling began, and each tunnel's ring.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub t: f64,
    pub rings: Vec<Ring>,
}

/// One tunnel's ring in a sample.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ring {
    pub bytes: f64,
    pub packets: f64,
    /// From the ring accounting only: packet spray's drain estimate,
    /// bytes/s (`None`: not measured), and whether it would see the reader
    /// stopped (passed over until it reads again).
    pub drain: Option<f64>,
    pub stopped: bool,
}

/// Where a trace's backlog comes from (the module's documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Rings,
    Counters,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Self::Rings => "ring accounting",
            Self::Counters => "sprayed - read",
        }
    }
}

/// A trace and the flow's outcome.
#[derive(Clone, Debug)]
pub struct Trace {
    pub samples: Vec<Sample>,
    pub run: Run,
    pub hosts: Hosts,
    pub source: Source,
    /// Per tunnel, its share of the bytes sprayed while sampling.
    pub shares: Vec<f64>,
}

/// A tun device's transmit counters.
#[derive(Clone, Copy, Debug, Default)]
struct DeviceTx {
    bytes: u64,
    packets: u64,
    dropped: u64,
}

/// Transmit counters of `devices` in the calling thread's namespace, from
/// `/proc/thread-self/net/dev` (sysfs would show the namespace it was
/// mounted in).
fn device_tx(devices: &[String]) -> Result<Vec<DeviceTx>> {
    let text = fs::read_to_string("/proc/thread-self/net/dev")?;
    devices
        .iter()
        .map(|dev| {
            let line = text
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{dev}:")))
                .ok_or_else(|| anyhow!("{dev} is not in /proc/net/dev"))?;
            let fields: Vec<u64> = line
                .split_once(':')
                .map(|(_, rest)| rest)
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect();
            // Receive: 8 fields; transmit: bytes packets errs drop ...
            let get = |i: usize| fields.get(i).copied().unwrap_or(0);
            Ok(DeviceTx {
                bytes: get(8),
                packets: get(9),
                dropped: get(11),
            })
        })
        .collect()
}

/// What both sides counted at one moment.
#[derive(Clone)]
struct Reading {
    at: Instant,
    /// The same moment on the programs' clock.
    mono_ns: u64,
    devices: Vec<DeviceTx>,
    loader: Counters,
}

fn read(lab: &Lab, devices: &[String]) -> Result<Reading> {
    // The device first: a packet read before the loader's reading has been
    // sprayed before it too.
    let at = Instant::now();
    let devices = device_tx(devices)?;
    let n = u32::try_from(lab.options.tunnels)?;
    let loader = Counters::read(&lab.layout(Side::A), n)?;
    // After the maps: a reader is judged stopped as of their reading.
    let mono_ns = now_ns();
    Ok(Reading {
        at,
        mono_ns,
        devices,
        loader,
    })
}

/// Per tunnel, (packets, bytes) sprayed but not read or dropped between
/// two readings.
#[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
fn unread(from: &Reading, to: &Reading) -> Vec<(f64, f64)> {
    to.devices
        .iter()
        .zip(&from.devices)
        .zip(to.loader.tunnels.iter().zip(&from.loader.tunnels))
        .map(|((d, d0), (l, l0))| {
            let sprayed = (l.tx_packets - l0.tx_packets) as f64;
            let sprayed_bytes = (l.tx_bytes - l0.tx_bytes) as f64;
            let dropped = (d.dropped - d0.dropped) as f64;
            let mean = if sprayed > 0.0 {
                sprayed_bytes / sprayed
            } else {
                0.0
            };
            (
                sprayed - (d.packets - d0.packets) as f64 - dropped,
                sprayed_bytes - (d.bytes - d0.bytes) as f64 - dropped * mean,
            )
        })
        .collect()
}

/// The backlog at `now`, counted from `rest` (the tunnels idle), less
/// `drift` (per tunnel, packets and bytes per second) for the time since.
fn backlog(rest: &Reading, drift: &[(f64, f64)], now: &Reading, t: f64) -> Sample {
    let since = now.at.duration_since(rest.at).as_secs_f64();
    let rings = unread(rest, now)
        .iter()
        .zip(drift)
        .map(|((p, b), (dp, db))| Ring {
            bytes: b - db * since,
            packets: p - dp * since,
            ..Ring::default()
        })
        .collect();
    Sample { t, rings }
}

/// Where to read the backlog from, given the ring accounting at the start
/// and the end of a second at rest: the accounting if it counted the probes
/// that passed meanwhile (a map an earlier loader left holds counts that do
/// not move), else the counters, which bracket wire segments only.
fn pick_source(before: &[TunnelQueue], after: &[TunnelQueue], segments: bool) -> Result<Source> {
    if before
        .iter()
        .zip(after)
        .any(|(b, a)| b.enq.queued != a.enq.queued)
    {
        Ok(Source::Rings)
    } else if segments {
        Ok(Source::Counters)
    } else {
        bail!(
            "GSO super-packets are traced only from the ring accounting, which this loader does \
             not run (round robin runs it with {ACCOUNT_ENV}=1 in the bench's environment)"
        )
    }
}

/// The backlog at `now` as the ring accounting counts it, with what packet
/// spray makes of each ring.
#[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
fn ring_backlog(now: &Reading, t: f64) -> Sample {
    let rings = now
        .loader
        .queues
        .iter()
        .map(|q| {
            let report = RingReport::new(q, now.mono_ns);
            let b = q.backlog();
            Ring {
                bytes: b.bytes as f64,
                packets: b.packets as f64,
                drain: Some(report.drain_bytes_per_second as f64).filter(|&d| d > 0.0),
                stopped: report.reader_stopped,
            }
        })
        .collect();
    Sample { t, rings }
}

/// Per tunnel, its share of the bytes sprayed between two readings.
#[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
fn byte_shares(from: &Reading, to: &Reading) -> Vec<f64> {
    let sprayed: Vec<f64> = to
        .loader
        .tunnels
        .iter()
        .zip(&from.loader.tunnels)
        .map(|(l, l0)| (l.tx_bytes - l0.tx_bytes) as f64)
        .collect();
    let all: f64 = sprayed.iter().sum();
    sprayed
        .iter()
        .map(|b| if all > 0.0 { b / all } else { 0.0 })
        .collect()
}

/// Runs one flow on `lab`, its hosts sending as `hosts` says, and samples
/// gateway A's tunnels every [`EVERY`] for `seconds`, from [`WARM_UP`]
/// after the flow starts.
///
/// # Errors
/// GSO super-packets where the rings are not accounted (the counters
/// cannot bracket them), a counter that cannot be read, or the flow's.
pub fn trace(lab: &Lab, seconds: f64, hosts: Hosts) -> Result<Trace> {
    lab.set_wire_segments(hosts.segments);
    let devices: Vec<String> = (0..lab.options.tunnels).map(|k| lab.dev(k)).collect();
    let gw = lab.gw(Side::A);
    let (ready_tx, ready_rx) = mpsc::channel();
    // The flow outlives the sampling by a second on either side.
    let flow_seconds = Duration::from_secs_f64(seconds) + WARM_UP * 2;
    let flow_seconds = u32::try_from(flow_seconds.as_secs() + 1)?;
    thread::scope(|scope| {
        let sampling = scope.spawn(|| -> Result<(Vec<Sample>, Source, Vec<f64>)> {
            netns::join(&gw);
            let calibrated = (|| -> Result<_> {
                let first = read(lab, &devices)?;
                thread::sleep(CALIBRATION);
                let rest = read(lab, &devices)?;
                let source =
                    pick_source(&first.loader.queues, &rest.loader.queues, hosts.segments)?;
                let rested = rest.at.duration_since(first.at).as_secs_f64();
                let drift: Vec<(f64, f64)> = unread(&first, &rest)
                    .into_iter()
                    .map(|(p, b)| (p / rested, b / rested))
                    .collect();
                Ok((rest, drift, source))
            })();
            let _ = ready_tx.send(calibrated.is_ok());
            let (rest, drift, source) = calibrated?;
            thread::sleep(WARM_UP);
            let start = Instant::now();
            let mut samples = Vec::new();
            let mut next = start;
            // The first and the last reading: the shares between them.
            let mut ends: Option<(Reading, Reading)> = None;
            while start.elapsed().as_secs_f64() < seconds {
                let now = read(lab, &devices)?;
                let t = now.at.duration_since(start).as_secs_f64();
                samples.push(match source {
                    Source::Rings => ring_backlog(&now, t),
                    Source::Counters => backlog(&rest, &drift, &now, t),
                });
                match &mut ends {
                    Some((_, last)) => *last = now,
                    None => ends = Some((now.clone(), now)),
                }
                next += EVERY;
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            let shares = ends.map_or_else(Vec::new, |(from, to)| byte_shares(&from, &to));
            Ok((samples, source, shares))
        });
        let run = if ready_rx.recv().unwrap_or(false) {
            Some(iperf(lab, flow_seconds, hosts.congestion, false))
        } else {
            None
        };
        let (samples, source, shares) = sampling
            .join()
            .map_err(|_| anyhow!("the backlog sampler panicked"))?
            .context("sampling the backlog")?;
        let run = run.ok_or_else(|| anyhow!("the flow did not run"))??;
        Ok(Trace {
            samples,
            run,
            hosts,
            source,
            shares,
        })
    })
}

#[cfg(test)]
mod tests {
    use ovpn_lb::config::file::Spray;
    use ovpn_lb_common::TunnelStats;
    use ovpn_lb_common::queue::{TunnelQueue, count};
    use ovpn_lb_tests::{
        lab::{Lab, Options, Side, growth},
        root_alone,
    };

    use super::{Source, pick_source, trace};
    use crate::bench::end_to_end::{Congestion, Hosts};

    fn queued(packets: u64) -> TunnelQueue {
        let mut q = TunnelQueue::default();
        q.enq.queued = (0..packets).fold(0, |c, _| c + count(76));
        q
    }

    #[test]
    fn the_rings_are_read_only_where_their_accounting_moves() {
        let (idle, moved) = ([queued(3), queued(5)], [queued(3), queued(9)]);
        // Live accounting: whichever way the hosts send.
        for segments in [true, false] {
            assert_eq!(pick_source(&idle, &moved, segments).unwrap(), Source::Rings);
        }
        // Counts an earlier loader left, or none: wire segments are
        // bracketed by the counters, super-packets refused.
        for before in [idle, [TunnelQueue::default(); 2]] {
            assert_eq!(
                pick_source(&before, &before, true).unwrap(),
                Source::Counters
            );
            let refused = pick_source(&before, &before, false)
                .unwrap_err()
                .to_string();
            assert!(refused.contains("OVPN_LB_ACCOUNT_RINGS=1"), "{refused}");
        }
    }

    /// One flow of GSO super-packets over two shaped tunnels under packet
    /// spray: super-packets were sprayed (more bytes per sprayed packet
    /// than a segment holds), the trace reads the ring accounting, sees the
    /// rings hold more than a segment, counts them in segments (no ring
    /// entry above the tunnel's MTU, which a super-packet counted whole
    /// would be), has packet spray's drain estimate for each tunnel, and
    /// both tunnels carry a share.
    #[test]
    fn a_trace_of_super_packets_counts_their_segments_in_the_rings() {
        let Some(_alone) = root_alone() else { return };
        let lab = Lab::for_test(
            "bt",
            Options {
                tunnels: 2,
                shaper: vec![1_000_000],
                shaper_both: true,
                spray: Spray::Packet,
                ..Options::default()
            },
        );
        let hosts = Hosts {
            segments: false,
            congestion: Congestion::Cubic,
        };
        let before = lab.tunnel_stats(Side::A);
        let t = trace(&lab, 2.0, hosts).unwrap_or_else(|e| panic!("{e:#}\n{}", lab.diagnose()));
        let after = lab.tunnel_stats(Side::A);
        let sprayed = |f: fn(&TunnelStats) -> u64| growth(&before, &after, f).iter().sum::<u64>();
        let (bytes, packets) = (sprayed(|s| s.tx_bytes), sprayed(|s| s.tx_packets));
        assert!(
            bytes > packets * 1500,
            "no super-packets sprayed: {bytes} B in {packets} packets"
        );
        assert_eq!(t.source, Source::Rings);
        assert!(t.samples.len() >= 100, "{} samples", t.samples.len());
        let largest = t
            .samples
            .iter()
            .flat_map(|s| s.rings.iter().map(|r| r.bytes))
            .fold(0.0, f64::max);
        eprintln!(
            "{:.2} Mbit/s, {bytes} B in {packets} sprayed packets, largest ring backlog {largest} B",
            t.run.mbit_per_s
        );
        assert!(
            largest > 1500.0,
            "the rings never held a segment's worth: {largest} B"
        );
        for s in &t.samples {
            for r in &s.rings {
                assert!(
                    r.bytes <= r.packets * 1500.0,
                    "at {:.2} s: {} B in {} ring entries",
                    s.t,
                    r.bytes,
                    r.packets
                );
            }
        }
        assert!(
            t.samples.iter().all(|s| s.rings.len() == 2),
            "a sample without both rings"
        );
        for k in 0..2 {
            assert!(
                t.samples.iter().any(|s| s.rings[k].drain.is_some()),
                "tun{k}'s drain estimate was never measured"
            );
        }
        let all: f64 = t.shares.iter().sum();
        assert!((all - 1.0).abs() < 1e-9, "shares {:?}", t.shares);
        assert!(t.shares.iter().all(|&s| s > 0.1), "shares {:?}", t.shares);
    }
}
