//! The backlog trace: how much each of gateway A's tunnels holds, sampled
//! every 10 ms while one flow runs.
//!
//! A tun device queues in its ring (`tx_ring`, `txqueuelen` entries), which
//! OpenVPN drains; the kernel exports no occupancy for it, and the qdisc in
//! front stays empty (`tun_net_xmit` never stops the queue). Two counters
//! bracket the ring instead: the loader's per-tunnel `tx_packets` and
//! `tx_bytes` (`TUNNEL_STATS`, counted when the program sprays a packet into
//! the tunnel) and the device's `tx_packets` and `tx_bytes` (counted when
//! OpenVPN reads a packet) and `tx_dropped` (the ring was full). The backlog
//! is sprayed - read - dropped, each counted from a reading with the tunnels
//! idle. In bytes the two agree: the loader counts IP bytes and a tun
//! device's `tx_bytes` are IP bytes too (OpenVPN's tun has no packet
//! information header); dropped packets are counted at the mean size
//! sprayed. With wire segments one sprayed packet is one ring entry (a GSO
//! aggregate would count once at the loader and once per segment at the
//! device). The loader's probes, and the far gateway's that gateway A
//! reflects, enter the ring without being counted as sprayed: their steady
//! rate is measured at rest before the flow and taken off (probes beyond it,
//! a gateway announcing a change, are not: 76 B each). What OpenVPN has
//! read and holds (encrypting, or waiting out its shaper) is not in the ring
//! and not counted.

use std::{
    fs,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use ovpn_lb::status::Counters;
use ovpn_lb_tests::{
    lab::{Lab, Side},
    netns,
};

use super::{
    iperf::{Run, iperf},
    variant::Congestion,
};

/// Time between samples.
pub const EVERY: Duration = Duration::from_millis(10);
/// Time the flow runs before sampling starts (past slow start).
const WARM_UP: Duration = Duration::from_secs(1);
/// Time at rest over which the probes' share of the counters is measured.
const CALIBRATION: Duration = Duration::from_secs(1);

/// One sample: seconds since sampling began, and per tunnel the backlog.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub t: f64,
    pub bytes: Vec<f64>,
    pub packets: Vec<f64>,
}

/// A trace and the flow's outcome.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    pub samples: Vec<Sample>,
    pub run: Run,
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
struct Reading {
    at: Instant,
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
    Ok(Reading {
        at,
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
    let (packets, bytes) = unread(rest, now)
        .iter()
        .zip(drift)
        .map(|((p, b), (dp, db))| (p - dp * since, b - db * since))
        .unzip();
    Sample { t, bytes, packets }
}

/// Runs one flow on `lab` and samples gateway A's tunnels every [`EVERY`]
/// for `seconds`, from [`WARM_UP`] after the flow starts.
///
/// Probes (the loader's own, and the far gateway's reflected back) enter
/// the rings without being counted as sprayed, at a steady rate; that rate
/// is measured over [`CALIBRATION`] at rest before the flow and taken off.
pub fn trace(lab: &Lab, seconds: f64, congestion: Congestion) -> Result<Trace> {
    let devices: Vec<String> = (0..lab.options.tunnels).map(|k| lab.dev(k)).collect();
    let gw = lab.gw(Side::A);
    let (ready_tx, ready_rx) = mpsc::channel();
    // The flow outlives the sampling by a second on either side.
    let flow_seconds = Duration::from_secs_f64(seconds) + WARM_UP * 2;
    let flow_seconds = u32::try_from(flow_seconds.as_secs() + 1)?;
    thread::scope(|scope| {
        let sampling = scope.spawn(|| -> Result<Vec<Sample>> {
            netns::join(&gw);
            let calibrated = (|| -> Result<_> {
                let first = read(lab, &devices)?;
                thread::sleep(CALIBRATION);
                let rest = read(lab, &devices)?;
                let span = rest.at.duration_since(first.at).as_secs_f64();
                let drift: Vec<(f64, f64)> = unread(&first, &rest)
                    .into_iter()
                    .map(|(p, b)| (p / span, b / span))
                    .collect();
                Ok((rest, drift))
            })();
            let _ = ready_tx.send(());
            let (rest, drift) = calibrated?;
            thread::sleep(WARM_UP);
            let start = Instant::now();
            let mut samples = Vec::new();
            let mut next = start;
            while start.elapsed().as_secs_f64() < seconds {
                let now = read(lab, &devices)?;
                let t = now.at.duration_since(start).as_secs_f64();
                samples.push(backlog(&rest, &drift, &now, t));
                next += EVERY;
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            Ok(samples)
        });
        let _ = ready_rx.recv();
        let run = iperf(lab, flow_seconds, congestion, false);
        let samples = sampling
            .join()
            .map_err(|_| anyhow!("the backlog sampler panicked"))?
            .context("sampling the backlog")?;
        Ok(Trace { samples, run: run? })
    })
}
