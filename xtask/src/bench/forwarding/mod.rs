//! Forwarding rate: packets/s and CPU time per forwarded packet through a
//! veth/namespace topology, for the kernel's own ways of spreading a LAN over
//! N devices and for ovpn-lb, as ratios to plain routing to one device.
//!
//! ```text
//!  generator netns                         gateway netns
//!  trafgen ─ gen0 ══════ veth ══════ lan0 ─ variant ─┬─> dev0 ─ reader thread
//!                                                    ├─> dev1 ─ reader thread
//!                                                    └─> devN-1 (tun or tap, opened by
//!                                                        this process, sampled by readers)
//! ```
//!
//! **Traffic.** trafgen (netsniff-ng) sends 1024 distinct UDP flows (source
//! host, source and destination ports and destination vary) from the LAN
//! prefix to the remote prefix, in four mixes: IPv4 and IPv6, 64-byte and
//! 1400-byte frames (the size handed to the veth, no FCS). It runs one worker,
//! which trafgen itself pins to CPU 0, with blocking sends (`-t 0ns`, its
//! "slow path"): its zero-copy ring needs a socket send buffer it can only get
//! by raising `net.core.wmem_max`, which is read-only inside a network
//! namespace, and a full buffer makes the ring path give up.
//!
//! **Where the work runs, and how it is timed.** Everything a packet costs
//! runs on CPU 0 inside trafgen's `sendto`: the veth hands the packet to CPU
//! 0's backlog and the softirq that drains it (receive, the variant, transmit
//! into the device) runs when the send re-enables bottom halves, or in
//! `ksoftirqd/0` when it is deferred. CPU 0 is therefore saturated the whole
//! window, never idle, with no inter-CPU wake-ups, and its work is charged to
//! two tasks whose run time the scheduler keeps to the nanosecond
//! (`/proc/PID/schedstat`): trafgen's worker and `ksoftirqd/0`. CPU time per
//! packet = their run time over the window / packets, unaffected by other
//! processes sharing the CPU (they lower packets/s, not that). The generator's
//! own share is measured by a calibration row that drops every packet at
//! `lan0` ingress (nftables netdev `drop`); gateway CPU per packet = a
//! variant's figure minus that row's, in the same round and mix.
//!
//! Why not the gateway on its own CPU (RPS) and `/proc/stat` busy time: tried
//! first. trafgen's blocking path tops out near 600 kpps here, below what the
//! faster variants forward, so the gateway CPU idles between packets and pays
//! an IPI and an idle exit per batch, more the faster the variant (runs were
//! bimodal); and this kernel has no `CONFIG_IRQ_TIME_ACCOUNTING` and stops the
//! tick when idle, so `/proc/stat` misses softirq bursts between idle periods.
//!
//! **What is counted.** Forwarded = `tx_packets + tx_dropped` summed over the N
//! devices (`/proc/net/dev` inside the gateway namespace). A packet handed to a
//! device whose queue is full is dropped there, after the gateway did all its
//! work for it. The readers (on CPU 1) take only a sample (up to 64 packets
//! every 20 ms per device, never waiting on the device, so no wake-ups are
//! charged to CPU 0) and check each: it must carry the source the variant
//! should produce on that device (translated into 100.64.k.0/24 /
//! `fd64:0:0:k::/64` on device k, or the LAN source for plain routing) and a
//! TTL/hop limit decremented to 63. Draining every packet would move freeing
//! the packets to CPU 1 for the variants with more devices.
//!
//! Every round runs every variant once (rotating which goes first) and, for
//! each variant, every mix; figures are medians over rounds of each round's
//! ratio to plain routing in the same round, with the spread (min-max). Each
//! variant runs in namespaces built for it and removed after it. With one
//! gateway namespace for all, plain routing cost 10-15 % more in the rounds
//! after the other variants had run there than in the first; a likely cause is
//! that once policy rules have existed in a namespace, its route lookups take
//! the rules path for good (`fib_has_custom_rules` is never cleared).

mod hook_cost;
mod network;
mod report;
mod trafgen;
mod variants;

use std::{
    fmt::Write as _,
    fs,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, ensure};

use super::machine_line;
use network::Topology;
pub use report::Summary;
use report::table;
use trafgen::{MIXES, Mix, Trafgen};
use variants::{Active, Setup, Variant, variants};

/// CPU that trafgen's one worker runs on (trafgen pins worker i to CPU i), and
/// with it all the gateway's work.
const GEN_CPU: usize = 0;
/// CPU for the readers and this process's sampling.
const AUX_CPU: usize = 1;
/// Packets each reader takes per device and turn, and how often.
const READ_BATCH: usize = 64;
const READ_EVERY: Duration = Duration::from_millis(20);
/// Distinct 5-tuples in every traffic mix.
const FLOWS: usize = 1024;
/// Warm-up before each window: trafgen compiles its packets and ramps up.
const WARM_UP: Duration = Duration::from_millis(700);
/// An upper bound on trafgen's rate, for its `-n` packet count: it then ends
/// by itself even if this process dies before it stops it.
const RATE_CEILING_PPS: u64 = 3_000_000;

/// Counters of one moment.
struct Sample {
    at: Instant,
    /// Per device: `tx_packets + tx_dropped`.
    devices: Vec<u64>,
    lan_rx: u64,
    /// `tx_packets + tx_dropped` of the veth for traffic elsewhere.
    elsewhere: u64,
    /// Run time of trafgen's worker and `ksoftirqd/0`, ns.
    runtime_ns: u64,
    drained: u64,
    wrong: u64,
}

/// One measurement window's outcome.
#[derive(Clone, Copy, Debug, Default)]
struct Window {
    /// Forwarded packets/s (for the calibration row: received on `lan0`).
    pps: f64,
    /// Packets/s received on `lan0`.
    offered: f64,
    /// CPU time of generator and gateway per packet, ns.
    ns_per_packet: f64,
    /// Share of the window trafgen's worker and `ksoftirqd/0` ran: under 1
    /// when something else took CPU 0.
    share: f64,
    /// Smallest device's share of the forwarded packets.
    min_share: f64,
    drained: u64,
    wrong: u64,
}

fn window(before: &Sample, after: &Sample, forwards: bool) -> Window {
    #[expect(clippy::cast_precision_loss, reason = "counters far below 2^52")]
    let f = |x: u64| x as f64;
    let per_device: Vec<u64> = after
        .devices
        .iter()
        .zip(&before.devices)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let forwarded: u64 = per_device.iter().sum();
    let received = after.lan_rx.saturating_sub(before.lan_rx);
    let packets = if forwards { forwarded } else { received };
    let secs = after.at.duration_since(before.at).as_secs_f64();
    let runtime = after.runtime_ns.saturating_sub(before.runtime_ns);
    Window {
        pps: f(packets) / secs,
        offered: f(received) / secs,
        ns_per_packet: f(runtime) / f(packets.max(1)),
        share: f(runtime) / 1e9 / secs,
        min_share: f(per_device.iter().copied().min().unwrap_or(0)) / f(forwarded.max(1)),
        drained: after.drained - before.drained,
        wrong: after.wrong - before.wrong,
    }
}

/// Run time of a task so far, ns (`/proc/PID/schedstat`, first field).
fn runtime_ns(pid: u32) -> Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .with_context(|| format!("reading /proc/{pid}/schedstat"))?;
    text.split_whitespace()
        .next()
        .and_then(|x| x.parse().ok())
        .ok_or_else(|| anyhow!("bad /proc/{pid}/schedstat: {text}"))
}

/// Processes whose parent is `parent`, and the one named `comm` (by scanning /proc).
fn find_pids(parent: Option<u32>, comm: Option<&str>) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // pid (comm) state ppid ...
            let Some((head, tail)) = stat.rsplit_once(')') else {
                return false;
            };
            let name = head.split_once('(').map_or("", |(_, n)| n);
            let ppid = tail.split_whitespace().nth(1).and_then(|x| x.parse().ok());
            parent.is_none_or(|p| ppid == Some(p)) && comm.is_none_or(|c| c == name)
        })
        .collect()
}

/// Options of the forwarding part.
pub struct Options {
    pub tunnels: usize,
    pub rounds: usize,
    pub seconds: f64,
    /// The `ovpn-lb` binary.
    pub bin: PathBuf,
    /// Set by SIGINT/SIGTERM: stop between windows and tear down.
    pub interrupted: Arc<AtomicBool>,
}

type Results = Vec<Vec<Vec<Window>>>;

fn sleep_checked(d: Duration, interrupted: &AtomicBool) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        ensure!(!interrupted.load(Ordering::Relaxed), "interrupted");
        thread::sleep(Duration::from_millis(20).min(end - Instant::now()));
    }
    Ok(())
}

/// trafgen sending `mix`, past its warm-up, with packets for a window to
/// spare.
fn warmed_up(topo: &Topology, mix: Mix, opts: &Options) -> Result<Trafgen> {
    let secs = WARM_UP.as_secs_f64() + opts.seconds + 10.0;
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a positive packet count well within u64"
    )]
    let count = (RATE_CEILING_PPS as f64 * secs) as u64;
    let mut generator = Trafgen::start(topo, mix, count)?;
    sleep_checked(WARM_UP, &opts.interrupted)?;
    ensure!(
        generator.running(),
        "trafgen ended early:\n{}",
        generator.output()
    );
    Ok(generator)
}

fn measure(
    topo: &Topology,
    variant: &Variant,
    mix: Mix,
    opts: &Options,
    ksoftirqd: u32,
) -> Result<Window> {
    let mut generator = warmed_up(topo, mix, opts)?;
    let mut tasks = find_pids(Some(generator.child.id()), None);
    ensure!(
        !tasks.is_empty(),
        "trafgen has no worker process:\n{}",
        generator.output()
    );
    tasks.push(ksoftirqd);
    let before = topo.sample(&tasks)?;
    sleep_checked(Duration::from_secs_f64(opts.seconds), &opts.interrupted)?;
    let after = topo.sample(&tasks)?;
    ensure!(
        generator.running(),
        "trafgen ended during the window:\n{}",
        generator.output()
    );
    generator.stop();
    Ok(window(
        &before,
        &after,
        !matches!(variant.setup, Setup::IngressDrop),
    ))
}

/// Runs the forwarding part; returns the Markdown and the plot's ratios.
pub fn run(opts: &Options) -> Result<(String, Summary)> {
    let started = Instant::now();
    let cpus = thread::available_parallelism().map_or(1, std::num::NonZero::get);
    ensure!(
        cpus > AUX_CPU,
        "the forwarding benchmark needs CPUs {GEN_CPU} and {AUX_CPU}"
    );
    let ksoftirqd = *find_pids(None, Some(&format!("ksoftirqd/{GEN_CPU}")))
        .first()
        .ok_or_else(|| anyhow!("no ksoftirqd/{GEN_CPU}"))?;
    let variants = variants(opts.tunnels);
    println!(
        "forwarding: {} variants x {} traffic mixes x {} rounds, {:.1} s windows; trafgen and the gateway on CPU {GEN_CPU}, readers on CPU {AUX_CPU}; each variant in fresh namespaces ofwd-{}-<n>-{{gen,gw}}",
        variants.len(),
        MIXES.len(),
        opts.rounds,
        opts.seconds,
        std::process::id()
    );
    let mut results: Results = vec![vec![Vec::new(); MIXES.len()]; variants.len()];
    let mut seq = 0;
    for round in 0..opts.rounds {
        for i in 0..variants.len() {
            let vi = (i + round) % variants.len();
            let variant = &variants[vi];
            // Fresh namespaces for every variant: nothing one leaves behind
            // (policy rules, nftables state, neighbours) can change another's
            // figures.
            seq += 1;
            let topo = &Topology::new(variant.device, opts.tunnels, seq)
                .with_context(|| format!("building the topology for {}", variant.name))?;
            let active = Active::up(topo, variant, &opts.bin)
                .with_context(|| format!("setting up {}", variant.name))?;
            for (mi, mix) in MIXES.iter().enumerate() {
                let w = measure(topo, variant, *mix, opts, ksoftirqd)
                    .with_context(|| format!("{}, {}", variant.name, mix.label()))?;
                println!(
                    "forwarding: round {}/{} {:<50} {:<11} {:>4.0} kpps, {:>5.0} ns/packet (CPU {GEN_CPU} {:>3.0}% ours), {:.3} of received, smallest device share {:.2}, sampled {} ({} wrong)",
                    round + 1,
                    opts.rounds,
                    variant.name,
                    mix.label(),
                    w.pps / 1e3,
                    w.ns_per_packet,
                    w.share * 100.0,
                    w.pps / w.offered.max(1.0),
                    w.min_share,
                    w.drained,
                    w.wrong
                );
                if w.wrong > 0 {
                    eprintln!(
                        "warning: {} sampled packets did not look as {} should forward them; the first: {}",
                        w.wrong,
                        variant.name,
                        topo.take_first_wrong()
                    );
                }
                results[vi][mi].push(w);
            }
            drop(active);
        }
    }
    let (mut md, summary) = table(&variants, &results, opts, started);
    // A diagnostic: its failure costs its own section, not the timed rounds.
    match hook_cost::run(&variants, opts, &mut seq) {
        Ok(section) => md.push_str(&section),
        Err(e) => {
            eprintln!("warning: the hook cost round failed: {e:#}");
            let _ = writeln!(md, "\nHook cost: not measured ({e:#}).");
        }
    }
    Ok((md, summary))
}

#[cfg(test)]
mod tests {
    use ovpn_lb::config::file;
    use ovpn_lb_tests::{loader::loader_bin, require_root, serial};

    use super::{Active, Setup, Topology, variants};

    /// Every variant's set-up and teardown, on a small topology, without
    /// trafgen: what the benchmark builds still builds.
    #[test]
    fn every_variant_sets_up_samples_and_tears_down() {
        if !require_root("every_variant_sets_up_samples_and_tears_down") {
            return;
        }
        let _alone = serial();
        for (seq, variant) in variants(2).iter().enumerate() {
            let topo = Topology::new(variant.device, 2, 1000 + seq).unwrap();
            let active = Active::up(&topo, variant, &loader_bin())
                .unwrap_or_else(|e| panic!("{}: {e:#}", variant.name));
            let sample = topo.sample(&[std::process::id()]).unwrap();
            assert_eq!(sample.devices.len(), 2, "{}", variant.name);
            // The rings are accounted where packet spray or the bench's
            // setting asks, and only there.
            if let Setup::OvpnLb {
                config,
                account_rings,
            } = &variant.setup
            {
                let log = std::fs::read_to_string(topo.dir.join("ovpn-lb.log")).unwrap();
                let asked = config.spray == file::Spray::Packet || *account_rings;
                let accounted = log.contains("rings accounted by");
                // A kernel without ring hooks says why instead.
                let impossible = log.contains("cannot see the tunnels' rings")
                    || log.contains("rings not accounted");
                assert!(
                    if asked && config.hook.as_deref() != Some("xdp") {
                        accounted || impossible
                    } else {
                        !accounted
                    },
                    "{}: the ring accounting\n{log}",
                    variant.name
                );
            }
            drop(active);
        }
    }
}
