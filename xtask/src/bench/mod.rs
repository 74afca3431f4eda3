//! `cargo xtask bench`: figures as ratios against a baseline measured in the
//! same run, interleaved over rounds, median and spread.
//!
//! Per packet (`per_packet`): ns/packet of each path against an empty program.
//!
//! Forwarding rate (`forwarding`): packets/s and gateway CPU time per packet
//! through veth namespaces driven by trafgen, for plain routing, nftables and
//! ovpn-lb, as ratios to plain routing.
//!
//! End to end (`end_to_end`): the goodput of one TCP flow through N real
//! OpenVPN tunnels under conditions that limit them (CPU quota, equal and
//! unequal shapers, unequal path delays), the hosts sending wire segments
//! or GSO super-packets with CUBIC or BBR, for one tunnel and, at each N,
//! ovpn-lb round robin, ovpn-lb packet mode, nftables numgen and MPTCP on
//! the hosts; efficiency = goodput / (N x one
//! tunnel), or / the sum of the single tunnels when they differ. Plus a
//! trace of each tunnel's backlog under round robin and packet mode.
//!
//! Scale-out (`scale_out`, with `--scale-out`): gateway pairs behind BGP
//! routers and VRRP under faults, and one pair against two.
//!
//! The plots (`plot`) draw the ratios; the end-to-end figures their own.

use std::{fs, process::Command, sync::atomic::Ordering, thread, time::Instant};

mod end_to_end;
mod forwarding;
mod jumbo;
mod per_packet;
mod plot;
mod scale_out;

use anyhow::{Result, bail, ensure};

use crate::{
    build, setup,
    tools::{bpf_object, is_root, release_loader, stop_flag, workspace_root},
};

#[derive(clap::Args, Clone)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "command-line switches, one per optional part"
)]
pub struct BenchArgs {
    /// Tunnels in the N-tunnel variants.
    #[arg(long, default_value_t = 4)]
    pub tunnels: usize,
    /// CPU share of each OpenVPN process under the quota conditions, percent.
    #[arg(long, default_value_t = 15)]
    pub cpu_quota: u32,
    /// End-to-end conditions, comma-separated: quota (every OpenVPN at
    /// --cpu-quota), quota-a (gateway A's only), shaped (every tunnel at
    /// --shaper), unequal (--unequal-shapers), delay (--shaper, and
    /// --path-delays). --matrix: all of them.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "quota,shaped,unequal"
    )]
    pub conditions: Vec<end_to_end::Condition>,
    /// How the hosts send, comma-separated: segments (wire segments), gso
    /// (GSO super-packets). Every condition runs each.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "segments,gso"
    )]
    pub lan: Vec<Lan>,
    /// The hosts' congestion control, comma-separated: cubic, bbr.
    /// --matrix: both.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "cubic")]
    pub congestion: Vec<end_to_end::Congestion>,
    /// The whole end-to-end matrix: every condition, both ways of sending,
    /// CUBIC and BBR (long: about 8 hours at the defaults on 2 cores).
    #[arg(long)]
    pub matrix: bool,
    /// Condition delay: tunnel k's one-way WAN delay, ms, comma-separated
    /// (N tunnels take the first N).
    #[arg(long, value_delimiter = ',', default_value = "5,5,30,30")]
    pub path_delays: Vec<u32>,
    /// The ovpn-lb labs' `path_delay_max_ms` (how much of a longer path
    /// packet spray counts); default: the loader's.
    #[arg(long)]
    pub path_delay_max_ms: Option<u64>,
    /// Shape only gateway A's OpenVPN (default: both gateways', as an
    /// operator shapes both ends of a link).
    #[arg(long)]
    pub one_sided_shaping: bool,
    /// Give OpenVPN the generator's txqueuelen, sndbuf and rcvbuf (default:
    /// OpenVPN's own defaults, as an operator's existing configuration has).
    #[arg(long)]
    pub tuned_openvpn: bool,
    /// Condition shaped: each tunnel's OpenVPN --shaper, bytes/s (OpenVPN
    /// shapes only up to about 1000000).
    #[arg(long, default_value_t = 1_000_000)]
    pub shaper: u32,
    /// Condition unequal: tunnel k's OpenVPN --shaper, bytes/s,
    /// comma-separated (N tunnels take the first N).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000000,250000,500000,333333"
    )]
    pub unequal_shapers: Vec<u32>,
    /// Seconds of each backlog trace (one flow under round robin and one
    /// under packet mode at the largest N, per condition); 0: none.
    #[arg(long, default_value_t = 3.0)]
    pub trace_seconds: f64,
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
    /// Tunnel counts N for the sprayed modes, comma-separated (default: 2
    /// and --tunnels).
    #[arg(long, value_delimiter = ',')]
    pub sweep: Vec<usize>,
    /// Also measure one tunnel at tun-mtu 1500 against 9000 (`jumbo`).
    #[arg(long)]
    pub jumbo: bool,
    /// Also measure gateway pairs behind BGP routers and VRRP (`scale_out`):
    /// faults and their cost, BFD under load, 16 flows over one pair
    /// against two (at --cpu-quota, --seconds per run).
    #[arg(long)]
    pub scale_out: bool,
    /// --scale-out: tries of each fault and rounds of the scale figure.
    #[arg(long, default_value_t = 5)]
    pub scale_out_tries: usize,
    /// --scale-out: seconds of full load while BFD flaps are counted.
    #[arg(long, default_value_t = 60)]
    pub scale_out_load_seconds: u32,
}

/// How the hosts send (`--lan`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lan {
    /// Wire segments: TSO/GSO off at the hosts, GRO off at the gateways.
    Segments,
    /// GSO super-packets: the hosts' veths' defaults.
    Gso,
}

impl BenchArgs {
    /// `--matrix` applied: every condition, both ways of sending, both
    /// congestion controls.
    pub fn with_matrix(mut self) -> Self {
        if self.matrix {
            self.conditions = end_to_end::Condition::ALL.to_vec();
            self.lan = vec![Lan::Segments, Lan::Gso];
            self.congestion = vec![end_to_end::Congestion::Cubic, end_to_end::Congestion::Bbr];
        }
        self
    }

    /// Every hosts' setting each condition runs: `--congestion` x `--lan`.
    pub fn hosts(&self) -> Vec<end_to_end::Hosts> {
        let mut out = Vec::new();
        for &congestion in &self.congestion {
            for &lan in &self.lan {
                out.push(end_to_end::Hosts {
                    segments: lan == Lan::Segments,
                    congestion,
                });
            }
        }
        out
    }

    /// The tunnel counts measured, ascending, --tunnels among them.
    pub fn sweep(&self) -> Vec<usize> {
        let mut sweep = if self.sweep.is_empty() {
            vec![2.min(self.tunnels)]
        } else {
            self.sweep.clone()
        };
        sweep.push(self.tunnels);
        sweep.retain(|&k| k > 0);
        sweep.sort_unstable();
        sweep.dedup();
        sweep
    }
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

pub fn run(args: &BenchArgs) -> Result<()> {
    let args = &args.clone().with_matrix();
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
    let png = plot::draw(
        &results_dir,
        &plot::Data {
            machine: machine(),
            per_packet: &ratios,
            forwarding: forwarding.as_ref(),
        },
    )?;
    println!("plot: {}", png.display());
    if !args.no_end_to_end {
        ensure!(!interrupted.load(Ordering::Relaxed), "interrupted");
        let out = end_to_end::run(args, &results_dir, &interrupted)?;
        let file = results_dir.join("end-to-end.md");
        fs::write(&file, &out.markdown)?;
        println!("\n{}\nwritten to {}", out.markdown, file.display());
        for figure in &out.figures {
            println!("plot: {}", figure.display());
        }
    }
    if args.jumbo {
        ensure!(!interrupted.load(Ordering::Relaxed), "interrupted");
        jumbo::run(args, &interrupted, &results_dir)?;
    }
    if args.scale_out {
        ensure!(!interrupted.load(Ordering::Relaxed), "interrupted");
        scale_out::run(args, &interrupted, &results_dir)?;
    }
    println!(
        "total benchmark time: {:.0} s (`cargo xtask bench`)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
