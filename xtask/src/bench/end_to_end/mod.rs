//! End to end: the goodput of one TCP flow (iperf3, CUBIC or BBR) from
//! host A to host B through N real OpenVPN tunnels.
//!
//! - `condition`: what limits the tunnels (CPU quota, equal or unequal
//!   OpenVPN shapers, unequal path delays);
//! - `variant`: what is measured under each: one tunnel, and at each N
//!   ovpn-lb round robin, ovpn-lb packet mode and nftables numgen, with
//!   wire segments and GSO super-packets, and MPTCP on the hosts beside;
//! - `labs`: the labs of a condition, built side by side;
//! - `iperf`: one flow and its kernel counters;
//! - `results`: runs per variant and round, ratios within a round;
//! - `backlog`: a trace of each tunnel's ring backlog during one flow;
//! - `report`, `plot`: the Markdown and the figures.
//!
//! Every round runs every variant once (the baselines first, the rest in an
//! order rotated per round), so that drift over the run falls on all alike.

mod backlog;
mod condition;
pub mod iperf;
mod labs;
mod plot;
mod report;
mod results;
mod variant;

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{Result, bail};
use ovpn_lb::config::file::Spray;

pub use condition::Condition;
pub use variant::{Congestion, Hosts};

use self::{
    labs::Labs,
    results::Measured,
    variant::{Mode, Variant},
};
use crate::{
    bench::{BenchArgs, machine},
    tools::{release_loader, workspace_root},
};

/// The report (Markdown) and the figures written.
pub struct Output {
    pub markdown: String,
    pub figures: Vec<PathBuf>,
}

fn stop_if(interrupted: &AtomicBool) -> Result<()> {
    if interrupted.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Runs every condition of `args`; figures go to `results_dir`.
pub fn run(args: &BenchArgs, results_dir: &Path, interrupted: &AtomicBool) -> Result<Output> {
    let started = Instant::now();
    let base = workspace_root().join("target/bench");
    let _ = fs::remove_dir_all(&base);
    let mut measured = Vec::new();
    for &condition in &args.conditions {
        stop_if(interrupted)?;
        measured.push(one_condition(args, condition, &base, interrupted)?);
    }
    let mut markdown = report::head(args, &args.conditions);
    for m in &measured {
        markdown.push_str(&report::condition(args, m));
        markdown.push('\n');
    }
    if args.trace_seconds > 0.0 {
        markdown.push_str(&report::trace_method(args.trace_seconds));
    }
    let machine = machine();
    let mut figures = vec![plot::goodput(results_dir, &machine, &measured)?];
    figures.extend(plot::backlog(results_dir, &machine, &measured)?);
    let _ = writeln!(
        markdown,
        "\nEnd-to-end part: {:.0} s.",
        started.elapsed().as_secs_f64()
    );
    Ok(Output { markdown, figures })
}

fn one_condition(
    args: &BenchArgs,
    condition: Condition,
    base: &Path,
    interrupted: &AtomicBool,
) -> Result<Measured> {
    let started = Instant::now();
    let sweep = args.sweep();
    let variants = variant::list(condition, &sweep, &args.hosts());
    println!(
        "bench: condition {}: {}; building its labs",
        condition.name(),
        condition.describe(args)
    );
    let labs = Labs::up(
        condition,
        args,
        &variants,
        &base.join(condition.name()),
        &release_loader(),
    )?;
    println!(
        "bench: condition {}: labs up in {:.0} s",
        condition.name(),
        started.elapsed().as_secs_f64()
    );
    let mut m = Measured::new(condition, variants.clone());
    for round in 0..args.rounds {
        let (baselines, mut rest): (Vec<usize>, Vec<usize>) =
            (0..variants.len()).partition(|&i| variants[i].is_baseline());
        if !rest.is_empty() {
            let len = rest.len();
            rest.rotate_left(round % len);
        }
        for i in baselines.into_iter().chain(rest) {
            stop_if(interrupted)?;
            let v = &variants[i];
            let (lab, numgen) = labs.prepare(v, round);
            let mptcp = v.mode == Mode::Mptcp;
            let r = iperf::iperf(lab, args.seconds, v.hosts.congestion, mptcp)?;
            drop(numgen);
            println!(
                "bench: {} round {}/{} {}: {:.2} Mbit/s, {} retransmits, {} reorder events, {} out-of-order segments, {} far-side UDP drops, {} tunnel departures",
                condition.name(),
                round + 1,
                args.rounds,
                progress_name(args, condition, v, round, labs.max()),
                r.mbit_per_s,
                r.retransmits,
                r.reorder,
                r.ofo,
                r.far_drops,
                r.departures
            );
            m.runs[i].push(r);
        }
    }
    if args.trace_seconds > 0.0 {
        let n = labs.max();
        for spray in [Spray::RoundRobin, Spray::Packet] {
            stop_if(interrupted)?;
            let Some(lab) = labs.ovpn_lb(n, spray) else {
                continue;
            };
            // The first way the hosts send (`--lan`, `--congestion`).
            let hosts = args.hosts()[0];
            // A trace is a diagnosis, not a figure: one that fails (a
            // tunnel device gone meanwhile) is said, and the run's
            // measurements are kept.
            match backlog::trace(lab, args.trace_seconds, hosts) {
                Ok(t) => {
                    println!(
                        "bench: {} backlog trace, {n} tunnels, {}{}: {} samples ({}), {:.2} Mbit/s, {} retransmits",
                        condition.name(),
                        variant::spray_label(spray),
                        hosts.suffix(),
                        t.samples.len(),
                        t.source.name(),
                        t.run.mbit_per_s,
                        t.run.retransmits
                    );
                    m.traces.push((spray, t));
                }
                Err(e) => println!(
                    "bench: {} backlog trace, {n} tunnels, {}{}: not taken: {e:#}",
                    condition.name(),
                    variant::spray_label(spray),
                    hosts.suffix(),
                ),
            }
        }
    }
    drop(labs);
    println!(
        "bench: condition {} done in {:.0} s",
        condition.name(),
        started.elapsed().as_secs_f64()
    );
    Ok(m)
}

/// A variant's name in the progress lines: a single tunnel says which.
fn progress_name(
    args: &BenchArgs,
    condition: Condition,
    v: &Variant,
    round: usize,
    max: usize,
) -> String {
    let label = v.label(args, condition);
    match (v.mode, v.single_tunnel(round, max)) {
        (Mode::Single(None), Some(k)) => format!("{label} (tun{k})"),
        _ => label,
    }
}
