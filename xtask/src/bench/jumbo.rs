//! `cargo xtask bench --jumbo`: what a large tunnel MTU (the generator's
//! `--tun-mtu 9000`) buys one tunnel, and what it costs.
//!
//! One OpenVPN tunnel, ovpn-lb on both gateways, hosts whose LAN MTU is
//! 9000, a WAN of MTU 1500. At OpenVPN's default tunnel MTU (1500) OpenVPN
//! clamps TCP's MSS so that its datagrams fit the WAN: nothing is
//! fragmented, and OpenVPN handles one packet per 1.4 kB. At tun-mtu 9000
//! (with `mssfix 0`) the hosts send 9000-byte packets, OpenVPN handles one
//! per 9 kB, and the kernel cuts each datagram into 7 fragments on the
//! WAN. Both with each OpenVPN process free and held to the benchmark's
//! CPU quota. One iperf3 flow per run, the four setups interleaved over the
//! rounds; the ratio of 9000 to 1500 is taken per round, then the median.

use std::{
    fmt::Write as _,
    fs,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use ovpn_lb_tests::lab::{Lab, Options, Side};

use super::{
    BenchArgs,
    end_to_end::{
        Congestion,
        iperf::{Run, delta, iperf, nstat},
    },
    machine_line, median, spread,
};
use crate::tools::{release_loader, workspace_root};

/// The LAN and WAN MTUs of every setup.
const LAN_MTU: u32 = 9000;
const WAN_MTU: u32 = 1500;
/// The jumbo tunnel MTU, against OpenVPN's default.
const JUMBO_TUN_MTU: u32 = 9000;
const DEFAULT_TUN_MTU: u32 = 1500;

/// One setup: a tunnel MTU (`None`: OpenVPN's default, MSS clamped) and a
/// CPU quota (`None`: free).
struct Setup {
    tun_mtu: Option<u32>,
    quota: Option<u32>,
}

impl Setup {
    fn tag(&self) -> String {
        format!(
            "objm{}q{}",
            self.tun_mtu.unwrap_or(DEFAULT_TUN_MTU),
            self.quota.unwrap_or(0)
        )
    }

    fn quota_text(&self) -> String {
        self.quota
            .map_or_else(|| "none".to_owned(), |q| format!("{q} %"))
    }
}

/// One run: the flow, and what the gateways spent on it.
#[derive(Clone, Copy, Default)]
struct Sample {
    run: Run,
    /// Fragments both gateways cut (nstat `IpFragCreates`), per second.
    fragments_per_s: f64,
    /// CPU time of both gateways' OpenVPN processes, percent of one CPU.
    openvpn_cpu_percent: f64,
}

/// Run time of a process so far, in nanoseconds (`/proc/PID/schedstat`).
fn run_time_ns(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn openvpn_run_time_ns(lab: &Lab) -> u64 {
    Side::BOTH
        .iter()
        .filter_map(|&side| lab.openvpn(side, 0).pid())
        .map(run_time_ns)
        .sum()
}

fn sample(lab: &Lab, seconds: u32) -> Result<Sample> {
    let gateways = Side::BOTH.map(|side| lab.gw(side));
    let fragments_before: Vec<_> = gateways.iter().map(|g| nstat(g)).collect();
    let cpu_before = openvpn_run_time_ns(lab);
    let started = Instant::now();
    let run = iperf(lab, seconds, Congestion::Cubic, false)?;
    let elapsed = started.elapsed().as_secs_f64();
    #[expect(
        clippy::cast_precision_loss,
        reason = "counts and nanoseconds, for rates"
    )]
    let cpu_seconds = openvpn_run_time_ns(lab).saturating_sub(cpu_before) as f64 / 1e9;
    let fragments: u64 = gateways
        .iter()
        .zip(&fragments_before)
        .map(|(g, before)| delta(&nstat(g), before, &["IpFragCreates"]))
        .sum();
    #[expect(clippy::cast_precision_loss, reason = "counts, for a rate")]
    let fragments_per_s = fragments as f64 / elapsed;
    Ok(Sample {
        run,
        fragments_per_s,
        openvpn_cpu_percent: 100.0 * cpu_seconds / elapsed,
    })
}

fn setups(quota: u32) -> Vec<Setup> {
    [None, Some(quota)]
        .into_iter()
        .flat_map(|quota| [None, Some(JUMBO_TUN_MTU)].map(|tun_mtu| Setup { tun_mtu, quota }))
        .collect()
}

/// The Markdown table: per setup the goodput and its costs, and per quota
/// the jumbo tunnel's goodput as a ratio to the default one, per round.
fn table(args: &BenchArgs, setups: &[Setup], samples: &[Vec<Sample>]) -> String {
    let mut t = machine_line(format_args!(
        "One OpenVPN tunnel (TLS, AES-256-GCM), ovpn-lb on both gateways, hosts' LAN MTU {LAN_MTU}, WAN MTU {WAN_MTU}. One iperf3 TCP flow, default congestion control, {} s per run, {} rounds interleaved, median (min-max). Tunnel MTU {DEFAULT_TUN_MTU} is OpenVPN's default (MSS clamped to fit the WAN); {JUMBO_TUN_MTU} is `ovpn-lb generate --tun-mtu {JUMBO_TUN_MTU}` (`mssfix 0`: the WAN fragments each datagram). CPU quota: each OpenVPN process held to that share of a CPU (cgroup, 10 ms period). Fragments: IP fragments both gateways cut (nstat IpFragCreates). OpenVPN CPU: run time of both gateways' OpenVPN processes (schedstat), percent of one CPU.",
        args.seconds, args.rounds
    ));
    let _ = writeln!(
        t,
        "| tunnel MTU | CPU quota | goodput Mbit/s | 9000 / 1500 | retransmits | WAN fragments/s | OpenVPN CPU % (A + B) | OpenVPN CPU s per GB |"
    );
    let _ = writeln!(
        t,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (i, (setup, runs)) in setups.iter().zip(samples).enumerate() {
        let mbit: Vec<f64> = runs.iter().map(|s| s.run.mbit_per_s).collect();
        let (lo, hi) = spread(&mbit);
        let ratio = if setup.tun_mtu.is_some() {
            let base = &samples[i - 1];
            let ratios: Vec<f64> = runs
                .iter()
                .zip(base)
                .map(|(j, b)| j.run.mbit_per_s / b.run.mbit_per_s)
                .collect();
            let (rlo, rhi) = spread(&ratios);
            format!("**{:.2}** ({rlo:.2}-{rhi:.2})", median(ratios))
        } else {
            "1 (baseline)".to_owned()
        };
        #[expect(clippy::cast_precision_loss, reason = "small counts")]
        let retransmits = median(runs.iter().map(|s| s.run.retransmits as f64).collect());
        let cpu = median(runs.iter().map(|s| s.openvpn_cpu_percent).collect());
        // CPU seconds per second over gigabytes per second.
        let cpu_per_gb = median(
            runs.iter()
                .map(|s| (s.openvpn_cpu_percent / 100.0) / (s.run.mbit_per_s / 8000.0))
                .collect(),
        );
        let _ = writeln!(
            t,
            "| {} | {} | {:.1} ({lo:.1}-{hi:.1}) | {ratio} | {retransmits:.0} | {:.0} | {cpu:.0} | {cpu_per_gb:.1} |",
            setup.tun_mtu.unwrap_or(DEFAULT_TUN_MTU),
            setup.quota_text(),
            median(mbit),
            median(runs.iter().map(|s| s.fragments_per_s).collect()),
        );
    }
    t
}

/// Measures every setup, writes `jumbo.md` into `results` and prints it.
pub fn run(args: &BenchArgs, interrupted: &AtomicBool, results: &Path) -> Result<()> {
    let started = Instant::now();
    let base = workspace_root().join("target/bench-jumbo");
    let _ = fs::remove_dir_all(&base);
    let setups = setups(args.cpu_quota);
    println!(
        "bench: jumbo tunnels: {} labs of one tunnel (LAN MTU {LAN_MTU}, WAN MTU {WAN_MTU})",
        setups.len()
    );
    let mut labs = Vec::new();
    for setup in &setups {
        if interrupted.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        labs.push(Lab::up(
            &base.join(setup.tag()),
            &setup.tag(),
            &release_loader(),
            Options {
                tunnels: 1,
                tun_mtu: setup.tun_mtu,
                lan_mtu: Some(LAN_MTU),
                wan_mtu: WAN_MTU,
                cpu_quota_percent: setup.quota,
                ..Options::default()
            },
        ));
    }
    let mut samples: Vec<Vec<Sample>> = setups.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds {
        for ((setup, lab), runs) in setups.iter().zip(&labs).zip(&mut samples) {
            if interrupted.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            let s = sample(lab, args.seconds)?;
            println!(
                "bench: jumbo round {}/{} tunnel MTU {}, quota {}: {:.1} Mbit/s, {} retransmits, {:.0} WAN fragments/s, OpenVPN CPU {:.0} %",
                round + 1,
                args.rounds,
                setup.tun_mtu.unwrap_or(DEFAULT_TUN_MTU),
                setup.quota_text(),
                s.run.mbit_per_s,
                s.run.retransmits,
                s.fragments_per_s,
                s.openvpn_cpu_percent
            );
            runs.push(s);
        }
    }
    drop(labs);
    let mut md = table(args, &setups, &samples);
    let _ = writeln!(
        md,
        "\nJumbo part: {:.0} s.",
        started.elapsed().as_secs_f64()
    );
    let file = results.join("jumbo.md");
    fs::write(&file, &md).with_context(|| format!("writing {}", file.display()))?;
    println!("\n{md}\nwritten to {}", file.display());
    Ok(())
}
