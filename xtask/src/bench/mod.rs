//! `cargo xtask bench`: figures as ratios against a baseline measured in the
//! same run, interleaved over rounds, median and spread.
//!
//! Per packet (`per_packet`): ns/packet of each path against an empty program.
//!
//! Forwarding rate (`forwarding`): packets/s and gateway CPU time per packet
//! through veth namespaces driven by trafgen, for plain routing, nftables and
//! ovpn-lb, as ratios to plain routing.
//!
//! End to end: the goodput of one TCP flow (iperf3, the kernel's default
//! congestion control) through OpenVPN processes each held to the same CPU
//! quota: one tunnel (plain routing), 1..N tunnels sprayed by ovpn-lb, N
//! tunnels in flow mode. Efficiency = N-tunnel goodput / (N x one-tunnel goodput).
//!
//! The plot (`plot`) draws the ratios and the goodput against N.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Instant,
};

mod forwarding;
mod jumbo;
mod per_packet;
mod plot;

use anyhow::{Context as _, Result, bail, ensure};
use ovpn_lb_tests::{
    lab::{HOST_B, Lab, Options, Side},
    netns,
    traffic::iperf3_server,
};

use crate::{
    build, setup,
    tools::{bpf_object, is_root, release_loader, stop_flag, workspace_root},
};

#[derive(clap::Args, Clone)]
pub struct BenchArgs {
    /// Tunnels in the N-tunnel variants.
    #[arg(long, default_value_t = 4)]
    pub tunnels: usize,
    /// CPU share of each OpenVPN process, percent.
    #[arg(long, default_value_t = 15)]
    pub cpu_quota: u32,
    /// Rounds; every round runs every variant once, in turn.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u32,
    /// Skip the end-to-end OpenVPN runs (the slow part).
    #[arg(long)]
    pub no_end_to_end: bool,
    /// Skip the forwarding-rate part (trafgen through veth namespaces).
    #[arg(long)]
    pub no_forwarding: bool,
    /// Seconds per forwarding-rate window (each after a 0.7 s warm-up).
    #[arg(long, default_value_t = 2.0)]
    pub fwd_seconds: f64,
    /// Tunnel counts for the sprayed goodput against N, comma-separated
    /// (default: 1 to --tunnels).
    #[arg(long, value_delimiter = ',')]
    pub sweep: Vec<usize>,
    /// Also measure one tunnel at tun-mtu 1500 against 9000 (`jumbo`).
    #[arg(long)]
    pub jumbo: bool,
}

/// One iperf3 run's outcome.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    mbit_per_s: f64,
    retransmits: u64,
    /// Sender-side reordering events (nstat `TcpExt`*Reorder).
    reorder: u64,
    /// Segments the receiver queued out of order (nstat `TcpExtTCPOFOQueue`).
    ofo: u64,
}

const REORDER_COUNTERS: &[&str] = &[
    "TcpExtTCPSACKReorder",
    "TcpExtTCPTSReorder",
    "TcpExtTCPRenoReorder",
    "TcpExtTCPReorder",
];

fn nstat(ns: &str) -> BTreeMap<String, u64> {
    let out = netns::command(ns, "nstat").args(["-asz", "-j"]).output();
    let Ok(out) = out else { return BTreeMap::new() };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["kernel"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>, names: &[&str]) -> u64 {
    names
        .iter()
        .map(|n| {
            after
                .get(*n)
                .unwrap_or(&0)
                .saturating_sub(*before.get(*n).unwrap_or(&0))
        })
        .sum()
}

fn iperf(lab: &Lab, seconds: u32) -> Result<Run> {
    let (ha, hb) = (lab.host(Side::A), lab.host(Side::B));
    let server = iperf3_server(&hb);
    let (sa, sb) = (nstat(&ha), nstat(&hb));
    let out = netns::command(&ha, "iperf3")
        .args(["-J", "-c", HOST_B, "-t", &seconds.to_string()])
        .output()
        .context("running iperf3")?;
    let (ea, eb) = (nstat(&ha), nstat(&hb));
    drop(server);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    Ok(Run {
        mbit_per_s: v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e6,
        retransmits: v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
        reorder: delta(&ea, &sa, REORDER_COUNTERS),
        ofo: delta(&eb, &sb, &["TcpExtTCPOFOQueue"]),
    })
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

pub(super) fn spread(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

/// A results file's first line: the machine, then what was measured how.
pub(super) fn machine_line(method: std::fmt::Arguments) -> String {
    format!("Machine: {}. {method}\n\n", machine())
}

pub(super) fn machine() -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let cores = thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let openvpn = Command::new("openvpn")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let openvpn: String = openvpn
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    format!("{cores} cores ({cpu}), Linux {}, {openvpn}", kernel.trim())
}

/// One end-to-end setup.
struct Setup {
    name: String,
    tag: String,
    tunnels: usize,
    /// ovpn-lb on both gateways (false: plain routing over one tunnel).
    loaders: bool,
    flow_mode: bool,
    /// OpenVPN `dev tap` tunnels, with this hook (`hook`).
    tap: Option<&'static str>,
}

fn setups(args: &BenchArgs) -> Vec<Setup> {
    let n = args.tunnels;
    let mut sweep: Vec<usize> = if args.sweep.is_empty() {
        (1..=n).collect()
    } else {
        args.sweep.clone()
    };
    sweep.push(n);
    sweep.retain(|&k| k > 0);
    sweep.sort_unstable();
    sweep.dedup();
    let mut v = vec![Setup {
        name: "1 tunnel, plain routing".into(),
        tag: "obone".into(),
        tunnels: 1,
        loaders: false,
        flow_mode: false,
        tap: None,
    }];
    for k in sweep {
        v.push(Setup {
            name: format!(
                "{k} tunnel{}, ovpn-lb packet spray",
                if k == 1 { "" } else { "s" }
            ),
            tag: format!("obs{k}"),
            tunnels: k,
            loaders: true,
            flow_mode: false,
            tap: None,
        });
    }
    v.push(Setup {
        name: format!("{n} tunnels, ovpn-lb flow mode"),
        tag: "obflw".into(),
        tunnels: n,
        loaders: true,
        flow_mode: true,
        tap: None,
    });
    // What TAP's extra Ethernet header costs through OpenVPN, and the hooks.
    v.push(Setup {
        name: "1 TAP tunnel, plain routing".into(),
        tag: "obtap1".into(),
        tunnels: 1,
        loaders: false,
        flow_mode: false,
        tap: Some("tc"),
    });
    for hook in ["tc", "xdp"] {
        v.push(Setup {
            name: format!("{n} TAP tunnels, ovpn-lb packet spray, {hook}"),
            tag: format!("obtap{hook}"),
            tunnels: n,
            loaders: true,
            flow_mode: false,
            tap: Some(hook),
        });
    }
    v
}

/// The Markdown table of the end-to-end runs; setup 0 is the baseline.
fn end_to_end_table(args: &BenchArgs, setups: &[Setup], results: &[Vec<Run>]) -> String {
    let base_mbit = median(results[0].iter().map(|r| r.mbit_per_s).collect());
    let mut table = machine_line(format_args!(
        "One iperf3 TCP flow, default congestion control, {} s per run, {} rounds interleaved, median (min-max). Each OpenVPN process held to {}% of a CPU (cgroup cpu quota, 10 ms period).",
        args.seconds, args.rounds, args.cpu_quota
    ));
    let _ = writeln!(
        table,
        "| setup | goodput Mbit/s | efficiency vs N x 1 tunnel | retransmits | sender reorder events | receiver out-of-order segments |"
    );
    let _ = writeln!(table, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for (i, (setup, runs)) in setups.iter().zip(results).enumerate() {
        let mbit: Vec<f64> = runs.iter().map(|r| r.mbit_per_s).collect();
        let (lo, hi) = spread(&mbit);
        #[expect(clippy::cast_precision_loss, reason = "small counts")]
        let eff: Vec<f64> = mbit
            .iter()
            .map(|m| m / (setup.tunnels as f64 * base_mbit))
            .collect();
        let (elo, ehi) = spread(&eff);
        #[expect(clippy::cast_precision_loss, reason = "small counts")]
        let med = |f: fn(&Run) -> u64| median(runs.iter().map(|r| f(r) as f64).collect());
        let _ = writeln!(
            table,
            "| {} | {:.1} ({lo:.1}-{hi:.1}) | {} | {:.0} | {:.0} | {:.0} |",
            setup.name,
            median(mbit.clone()),
            if i == 0 {
                "1 (baseline)".to_owned()
            } else {
                format!("{:.2} ({elo:.2}-{ehi:.2})", median(eff.clone()))
            },
            med(|r| r.retransmits),
            med(|r| r.reorder),
            med(|r| r.ofo),
        );
    }
    table
}

/// Goodput against N for the plot.
fn goodput_curve(args: &BenchArgs, setups: &[Setup], results: &[Vec<Run>]) -> plot::Goodput {
    let stats = |runs: &[Run]| {
        let mbit: Vec<f64> = runs.iter().map(|r| r.mbit_per_s).collect();
        let (lo, hi) = spread(&mbit);
        (median(mbit), lo, hi)
    };
    let mut curve = plot::Goodput {
        base: stats(&results[0]).0,
        sprayed: Vec::new(),
        flow: None,
        quota: args.cpu_quota,
    };
    for (setup, runs) in setups.iter().zip(results).skip(1) {
        if setup.tap.is_some() {
            continue;
        }
        let (m, lo, hi) = stats(runs);
        if setup.flow_mode {
            curve.flow = Some((setup.tunnels, m, lo, hi));
        } else {
            curve.sprayed.push((setup.tunnels, m, lo, hi));
        }
    }
    curve
}

fn end_to_end(args: &BenchArgs, interrupted: &AtomicBool) -> Result<(String, plot::Goodput)> {
    let started = Instant::now();
    let bin = release_loader();
    let base = workspace_root().join("target/bench");
    let _ = fs::remove_dir_all(&base);
    let setups = setups(args);
    println!(
        "bench: building {} labs (OpenVPN held to {}% of a CPU each): {}",
        setups.len(),
        args.cpu_quota,
        setups
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    );
    let mut labs: Vec<Lab> = Vec::new();
    for s in &setups {
        if interrupted.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        labs.push(Lab::up(
            &base.join(&s.tag),
            &s.tag,
            &bin,
            Options {
                tunnels: s.tunnels,
                loaders: s.loaders,
                flow_mode: s.flow_mode,
                cpu_quota_percent: Some(args.cpu_quota),
                tap: s.tap.is_some(),
                hook: s.tap.map(str::to_owned),
                ..Options::default()
            },
        ));
    }
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); setups.len()];
    for round in 0..args.rounds {
        for (i, (setup, lab)) in setups.iter().zip(&labs).enumerate() {
            if interrupted.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            let r = iperf(lab, args.seconds)?;
            println!(
                "bench: round {}/{} {}: {:.1} Mbit/s, {} retransmits, {} reorder events, {} out-of-order segments",
                round + 1,
                args.rounds,
                setup.name,
                r.mbit_per_s,
                r.retransmits,
                r.reorder,
                r.ofo
            );
            results[i].push(r);
        }
    }
    drop(labs);
    let mut table = end_to_end_table(args, &setups, &results);
    let _ = writeln!(
        table,
        "\nEnd-to-end part: {:.0} s.",
        started.elapsed().as_secs_f64()
    );
    Ok((table, goodput_curve(args, &setups, &results)))
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if !is_root() {
        bail!("the benchmark builds network namespaces: run as root");
    }
    setup::run()?;
    build::all()?;
    let started = Instant::now();
    // Ctrl-C or SIGTERM: finish the step under way, then tear down and stop.
    let interrupted = stop_flag()?;
    let results_dir = workspace_root().join("results");
    fs::create_dir_all(&results_dir)?;
    let floor = bpf_object("bench-floor");
    let (per_packet, ratios) = per_packet::run(&floor, args.rounds.max(3))?;
    fs::write(results_dir.join("per-packet.md"), &per_packet)?;
    println!("\n{per_packet}");
    let forwarding = if args.no_forwarding {
        None
    } else {
        ensure!(!interrupted.load(Ordering::Relaxed), "interrupted");
        let (md, summary) = forwarding::run(&forwarding::Options {
            tunnels: args.tunnels,
            rounds: args.rounds,
            seconds: args.fwd_seconds,
            bin: release_loader(),
            interrupted: interrupted.clone(),
        })?;
        fs::write(results_dir.join("forwarding.md"), &md)?;
        println!("\n{md}");
        Some(summary)
    };
    let goodput = if args.no_end_to_end {
        None
    } else {
        let (table, curve) = end_to_end(args, &interrupted)?;
        let file = results_dir.join("end-to-end.md");
        fs::write(&file, &table)?;
        println!("\n{table}\nwritten to {}", file.display());
        Some(curve)
    };
    if args.jumbo {
        jumbo::run(args, &interrupted, &results_dir)?;
    }
    let png = plot::draw(
        &results_dir,
        &plot::Data {
            machine: machine(),
            per_packet: &ratios,
            forwarding: forwarding.as_ref(),
            goodput: goodput.as_ref(),
        },
    )?;
    println!("plot: {}", png.display());
    println!(
        "total benchmark time: {:.0} s (`cargo xtask bench`)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
