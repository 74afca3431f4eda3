//! `cargo xtask bench --scale-out`: gateway pairs behind BGP routers (and
//! VRRP), in the lab with two pairs of two real OpenVPN tunnels.
//!
//! - Faults, each tried `--scale-out-tries` times (5) and put right after
//!   each try: how long each site router took to leave the faulty pair,
//!   what the ping streams lost (on that pair, elsewhere), whether the TCP
//!   transfers arrived intact, and the rejoin. A gone gateway cannot be put
//!   right: each of its tries builds a lab of its own.
//! - 60 s at full load: BFD session flaps on both routers (there should be
//!   none: BFD at 100 ms x 3 on a busy machine).
//! - Scale: 16 TCP flows (one iperf3) through one pair (the other drained
//!   by its maintenance files) against both, each OpenVPN process held to a
//!   CPU quota so that the pairs, not the machine, limit; interleaved
//!   rounds, ratio per round; each pair's share of the bytes; the
//!   machine's idle CPU meanwhile (a round without idle says nothing).
//! - VRRP: a failure and a drain of the address holder.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use ovpn_lb::generate::ha::HaKind;
use ovpn_lb_tests::{
    failover::{self, Fault, Outcome, Rejoin, Trial, all_pairs, maintenance_file},
    lab::{Gw, HOST_B, Lab, Options, Side},
    netns,
    traffic::{iperf3_goodput_mbit, iperf3_server},
};

use super::{BenchArgs, machine_line, median, spread};
use crate::tools::{release_loader, workspace_root};

const A1: Gw = Gw {
    pair: 0,
    side: Side::A,
};

fn options(ha: HaKind, cpu_quota: Option<u32>) -> Options {
    Options {
        tunnels: 2,
        pairs: 2,
        ha: Some(ha),
        cpu_quota_percent: cpu_quota,
        ..Options::default()
    }
}

fn build(base: &Path, tag: &str, options: Options) -> Lab {
    let dir = base.join(tag);
    let _ = fs::remove_dir_all(&dir);
    Lab::up(&dir, tag, &release_loader(), options)
}

/// Every try of one fault.
struct Tries {
    fault: Fault,
    outcomes: Vec<Outcome>,
    rejoins: Vec<Rejoin>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// "median (min-max)" of `values`, or "-" when there are none.
fn dist(values: &[f64], digits: usize) -> String {
    if values.is_empty() {
        return "-".to_owned();
    }
    let (lo, hi) = spread(values);
    format!(
        "{:.digits$} ({lo:.digits$}-{hi:.digits$})",
        median(values.to_vec())
    )
}

fn row(t: &Tries) -> String {
    let left = |side: usize| -> Vec<f64> {
        t.outcomes
            .iter()
            .filter_map(|o| o.left[side].map(ms))
            .collect()
    };
    let stayed = |side: usize| t.outcomes.iter().filter(|o| o.left[side].is_none()).count();
    let on_pair: Vec<f64> = t
        .outcomes
        .iter()
        .map(|o| f64::from(o.worst_on_pair()))
        .collect();
    let elsewhere: Vec<f64> = t
        .outcomes
        .iter()
        .map(|o| f64::from(o.worst_elsewhere()))
        .collect();
    let broken: usize = t
        .outcomes
        .iter()
        .map(|o| o.transfers.iter().filter(|x| !x.1).count())
        .sum();
    let transfers: usize = t.outcomes.iter().map(|o| o.transfers.len()).sum();
    let back: Vec<f64> = t.rejoins.iter().filter_map(|r| r.back[0].map(ms)).collect();
    let rejoin_lost: Vec<f64> = t.rejoins.iter().map(|r| f64::from(r.lost())).collect();
    let left_text = |side: usize| {
        let text = dist(&left(side), 0);
        match stayed(side) {
            0 => text,
            n => format!("{text}; stayed {n}x"),
        }
    };
    // Tries during which the other pair withdrew or lost a BFD session
    // (the machine's doing, not the fault's) are counted in, and named.
    let disturbed = t
        .outcomes
        .iter()
        .zip(
            t.rejoins
                .iter()
                .map(|r| r.disturbed)
                .chain(std::iter::repeat(0)),
        )
        .filter(|(o, r)| o.disturbed + r > 0)
        .count();
    let tries = match disturbed {
        0 => t.outcomes.len().to_string(),
        n => format!("{} ({n} disturbed)", t.outcomes.len()),
    };
    format!(
        "| {} | {tries} | {} | {} | {} | {} of {transfers} | {} | {} |",
        t.fault.describe(),
        left_text(0),
        left_text(1),
        dist(&on_pair, 0),
        transfers - broken,
        dist(&elsewhere, 0),
        if t.rejoins.is_empty() {
            "-".to_owned()
        } else {
            format!("{} ms, lost {}", dist(&back, 0), dist(&rejoin_lost, 0))
        },
    )
}

fn table_head(t: &mut String) {
    let _ = writeln!(
        t,
        "| fault | tries | router A left the pair, ms | router B left the pair, ms | pings lost by a stream on the pair (at 100/s) | transfers intact | lost by a stream elsewhere | rejoin: both routers back, pings lost |"
    );
    let _ = writeln!(
        t,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
}

fn check(interrupted: &AtomicBool) -> Result<()> {
    if interrupted.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// `tries` of each fault that can be put right, on one lab.
fn faults(
    lab: &mut Lab,
    faults: &[Fault],
    tries: usize,
    interrupted: &AtomicBool,
) -> Result<Vec<Tries>> {
    let mut out = Vec::new();
    let trial = Trial::default();
    for &fault in faults {
        let mut t = Tries {
            fault,
            outcomes: Vec::new(),
            rejoins: Vec::new(),
        };
        for i in 0..tries {
            check(interrupted)?;
            let o = failover::inject(lab, fault, &trial);
            println!("bench: scale-out try {}/{tries}: {}", i + 1, o.summary());
            t.outcomes.push(o);
            let r = failover::restore(lab, fault, &trial);
            println!("bench: scale-out rejoin: {}", r.summary());
            t.rejoins.push(r);
            // Settle: every pair healthy and announced again.
            thread::sleep(Duration::from_secs(2));
        }
        out.push(t);
    }
    Ok(out)
}

/// A gone gateway: each try on a lab of its own.
fn gone(base: &Path, tries: usize, interrupted: &AtomicBool) -> Result<Tries> {
    let trial = Trial::default();
    let fault = Fault::GatewayGone(A1);
    let mut t = Tries {
        fault,
        outcomes: Vec::new(),
        rejoins: Vec::new(),
    };
    for i in 0..tries {
        check(interrupted)?;
        let mut lab = build(base, &format!("sog{i}"), options(HaKind::Bgp, None));
        let o = failover::inject(&mut lab, fault, &trial);
        println!("bench: scale-out try {}/{tries}: {}", i + 1, o.summary());
        t.outcomes.push(o);
    }
    Ok(t)
}

/// BFD sessions that went down on both routers while `seconds` of full
/// load ran (iperf3, 8 flows each way); (flaps, goodput Mbit/s).
fn full_load(lab: &Lab, seconds: u32) -> Result<(u64, f64)> {
    let down_events = |lab: &Lab| lab.bfd_session_downs(|_, _| false);
    let before = down_events(lab);
    let server = iperf3_server(&lab.host(Side::B));
    let out = netns::command(&lab.host(Side::A), "iperf3")
        .args([
            "-J",
            "-c",
            HOST_B,
            "-P",
            "8",
            "--bidir",
            "-t",
            &seconds.to_string(),
        ])
        .output()
        .context("iperf3")?;
    drop(server);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mbit = iperf3_goodput_mbit(&v);
    Ok((down_events(lab) - before, mbit))
}

/// The machine's CPU: (idle, total) jiffies so far, every core.
fn cpu_jiffies() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // idle and iowait
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (idle, fields.iter().sum())
}

/// One scale round: goodput of 16 flows, each pair's share of the bytes
/// sprayed at site A, and the machine's idle share.
#[derive(Clone, Copy, Debug, Default)]
struct Scale {
    mbit_per_s: f64,
    shares: [f64; 2],
    idle: f64,
}

fn tx_bytes(lab: &Lab, pair: usize) -> u64 {
    lab.tunnel_stats(Gw::new(pair, Side::A))
        .iter()
        .map(|t| t.tx_bytes)
        .sum()
}

#[expect(
    clippy::cast_precision_loss,
    reason = "byte counts and jiffies, for shares"
)]
fn scale_round(lab: &Lab, seconds: u32) -> Result<Scale> {
    let server = iperf3_server(&lab.host(Side::B));
    let bytes_before = [0, 1].map(|p| tx_bytes(lab, p));
    let (idle_before, total_before) = cpu_jiffies();
    let out = netns::command(&lab.host(Side::A), "iperf3")
        .args(["-J", "-c", HOST_B, "-P", "16", "-t", &seconds.to_string()])
        .output()
        .context("iperf3")?;
    let (idle_after, total_after) = cpu_jiffies();
    drop(server);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 -J")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let bytes = [0, 1].map(|p| tx_bytes(lab, p) - bytes_before[p]);
    let sum = (bytes[0] + bytes[1]).max(1) as f64;
    Ok(Scale {
        mbit_per_s: iperf3_goodput_mbit(&v),
        shares: bytes.map(|b| b as f64 / sum),
        idle: (idle_after - idle_before) as f64 / (total_after - total_before).max(1) as f64,
    })
}

/// Pair 2 drained (its maintenance files on both gateways), or not; waits
/// until both routers route as that says.
fn one_pair(lab: &Lab, only: bool) -> Result<()> {
    for side in Side::BOTH {
        let path = maintenance_file(lab, Gw::new(1, side));
        if only {
            fs::write(&path, "")?;
        } else {
            let _ = fs::remove_file(&path);
        }
    }
    let want: Vec<usize> = if only { vec![0] } else { all_pairs(lab) };
    for side in Side::BOTH {
        if failover::wait_route(lab, side, &want, Instant::now(), Duration::from_secs(20)).is_none()
        {
            bail!("router {side} does not route through pairs {want:?}");
        }
    }
    // The flows' first seconds are not the routers' convergence.
    thread::sleep(Duration::from_secs(1));
    Ok(())
}

fn scale(args: &BenchArgs, lab: &Lab, interrupted: &AtomicBool) -> Result<Vec<(Scale, Scale)>> {
    let mut rounds = Vec::new();
    for round in 0..args.scale_out_tries {
        check(interrupted)?;
        one_pair(lab, true)?;
        let one = scale_round(lab, args.seconds)?;
        check(interrupted)?;
        one_pair(lab, false)?;
        let two = scale_round(lab, args.seconds)?;
        println!(
            "bench: scale-out scale round {}/{}: one pair {:.1} Mbit/s (idle {:.0} %), two pairs {:.1} Mbit/s (idle {:.0} %, shares {:.0} % / {:.0} %): {:.2}x",
            round + 1,
            args.scale_out_tries,
            one.mbit_per_s,
            100.0 * one.idle,
            two.mbit_per_s,
            100.0 * two.idle,
            100.0 * two.shares[0],
            100.0 * two.shares[1],
            two.mbit_per_s / one.mbit_per_s.max(1e-9)
        );
        rounds.push((one, two));
    }
    Ok(rounds)
}

/// A round counts only with the machine idle at least this much (else the
/// machine, not the pairs, was the limit).
const MIN_IDLE: f64 = 0.05;

fn scale_table(t: &mut String, args: &BenchArgs, rounds: &[(Scale, Scale)]) {
    let valid: Vec<&(Scale, Scale)> = rounds
        .iter()
        .filter(|(one, two)| one.idle >= MIN_IDLE && two.idle >= MIN_IDLE)
        .collect();
    let _ = writeln!(
        t,
        "\n16 TCP flows (iperf3 -P 16, {} s) from host A to host B, every OpenVPN process held to {} % of a CPU: through one pair (pair 2 drained by its maintenance files) and through both, interleaved, {} round(s), of which {} with the machine idle at least {:.0} % (the others are void and left out). Median (min-max).\n",
        args.seconds,
        args.cpu_quota,
        rounds.len(),
        valid.len(),
        100.0 * MIN_IDLE
    );
    let _ = writeln!(
        t,
        "| | goodput Mbit/s | two / one | pair 1 share of the bytes | pair 2 share | machine idle % |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: | ---: | ---: |");
    let one: Vec<f64> = valid.iter().map(|(o, _)| o.mbit_per_s).collect();
    let two: Vec<f64> = valid.iter().map(|(_, w)| w.mbit_per_s).collect();
    let ratio: Vec<f64> = valid
        .iter()
        .map(|(o, w)| w.mbit_per_s / o.mbit_per_s.max(1e-9))
        .collect();
    let idle = |f: &dyn Fn(&(Scale, Scale)) -> f64| -> Vec<f64> {
        valid.iter().map(|r| 100.0 * f(r)).collect()
    };
    let _ = writeln!(
        t,
        "| one pair | {} | 1 | 100 % | 0 % | {} |",
        dist(&one, 1),
        dist(&idle(&|r| r.0.idle), 0)
    );
    let _ = writeln!(
        t,
        "| two pairs | {} | **{}** | {} % | {} % | {} |",
        dist(&two, 1),
        dist(&ratio, 2),
        dist(&idle(&|r| r.1.shares[0]), 0),
        dist(&idle(&|r| r.1.shares[1]), 0),
        dist(&idle(&|r| r.1.idle), 0)
    );
}

/// Measures everything, writes `scale-out.md` into `results` and prints it.
pub fn run(args: &BenchArgs, interrupted: &AtomicBool, results: &Path) -> Result<()> {
    let started = Instant::now();
    let base: PathBuf = workspace_root().join("target/bench-scale-out");
    let _ = fs::remove_dir_all(&base);
    let tries = args.scale_out_tries;
    let mut md = machine_line(format_args!(
        "Two gateway pairs of two OpenVPN tunnels each (TLS, AES-256-GCM) between the lab's sites, ovpn-lb on every gateway, FRR on every gateway and on each site's router (eBGP, BFD 100 ms x 3, ECMP by L4 hash), every file from `ovpn-lb generate --pairs 2`. Faults on gateway A1 (pair 1, site A), {tries} tries each: 4 ping streams at 100/s from host A's 4 addresses, 3 TCP transfers (6 MB each at 2 MB/s, SHA-256 checked) beside them, the fault 1 s in; each stream and transfer classified by the pair it crossed before the fault (counters in the routers' bridges). The routers were polled every 10 ms."
    ));
    table_head(&mut md);
    let mut lab = build(&base, "sobgp", options(HaKind::Bgp, None));
    let mut rows = faults(
        &mut lab,
        &[
            Fault::KillOpenVpn(A1),
            Fault::LanDown(A1),
            Fault::KillLoader(A1),
            Fault::KillBgpd(A1),
            Fault::Maintenance(A1),
            Fault::Sigterm(A1),
        ],
        tries,
        interrupted,
    )?;
    check(interrupted)?;
    let (flaps, load_mbit) = full_load(&lab, args.scale_out_load_seconds)?;
    println!("bench: scale-out full load: {flaps} BFD flaps, {load_mbit:.0} Mbit/s");
    drop(lab);
    rows.push(gone(&base, tries, interrupted)?);
    for t in &rows {
        let _ = writeln!(md, "{}", row(t));
    }
    let _ = writeln!(
        md,
        "\n{} s at full load (iperf3, 8 flows each way, {load_mbit:.0} Mbit/s received): {flaps} BFD session(s) went down on the routers.",
        args.scale_out_load_seconds
    );
    check(interrupted)?;
    let quota_lab = build(&base, "soscale", options(HaKind::Bgp, Some(args.cpu_quota)));
    let rounds = scale(args, &quota_lab, interrupted)?;
    drop(quota_lab);
    scale_table(&mut md, args, &rounds);
    check(interrupted)?;
    let mut vrrp = build(&base, "sovrrp", options(HaKind::Vrrp, None));
    let vrrp_rows = faults(
        &mut vrrp,
        &[
            Fault::KillOpenVpn(A1),
            Fault::Maintenance(Gw::new(1, Side::A)),
        ],
        tries,
        interrupted,
    );
    drop(vrrp);
    let _ = writeln!(
        md,
        "\nVRRP (keepalived on the gateways, the hosts on their LAN, the virtual address .1 their next hop; no preemption, so the address stays where it went): \"left the pair\" is the virtual address moving to the other pair's gateway; \"rejoin\" until the gateway's health file says 0 again. The drain is of the address holder (after the failure, pair 2's gateway).\n"
    );
    table_head(&mut md);
    for t in &vrrp_rows? {
        let _ = writeln!(md, "{}", row(t));
    }
    let _ = writeln!(
        md,
        "\nScale-out part: {:.0} s (`cargo xtask bench --scale-out`).",
        started.elapsed().as_secs_f64()
    );
    let file = results.join("scale-out.md");
    fs::write(&file, &md).with_context(|| format!("writing {}", file.display()))?;
    println!("\n{md}\nwritten to {}", file.display());
    Ok(())
}
