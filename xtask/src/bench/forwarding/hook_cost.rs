//! Hook cost, a diagnostic round after the timed ones: what each of
//! ovpn-lb's programs costs per packet, from the kernel's own statistics
//! (`BPF_ENABLE_STATS`, on only while this round holds its descriptor, so
//! the timed rounds run without them), for two kinds of traffic:
//!
//! - into the tunnels: the forwarding traffic of the timed rounds;
//! - elsewhere: the same packets to a prefix the gateway routes out of a veth
//!   (past the LAN program, which passes it). The ring accounting's hooks are
//!   host-wide (every packet any device sends, every buffer the host
//!   frees): this is what they cost traffic that never meets a tunnel.
//!
//! Per program: invocations per packet and ns per invocation (the kernel's
//! `run_time_ns` over `run_cnt`, the program alone, without the
//! trampoline or tracepoint that calls it).

use std::{collections::BTreeMap, fmt::Write as _, thread, time::Duration};

use anyhow::{Context as _, Result, ensure};
use aya::{
    programs::loaded_programs,
    sys::{Stats, enable_stats},
};
use ovpn_lb_common::maps::programs;

use super::{
    Options, WARM_UP,
    network::{DeviceKind, Topology},
    sleep_checked,
    trafgen::{Destination, Mix, Trafgen},
    variants::{Active, Setup, Variant},
};

/// The traffic: IPv4 64-byte frames, where the per-packet cost shows most.
const MIX: Mix = Mix {
    v6: false,
    frame: 64,
    to: Destination::Tunnels,
};

/// Per program: run count and run time, ns.
type Counts = BTreeMap<String, (u64, u64)>;
/// Per program: invocations per packet and ns per invocation.
type Costs = Vec<(String, f64, f64)>;

/// Every ovpn-lb program's counts now, by name (as the kernel keeps it, cut
/// to 15 bytes).
fn counts() -> Counts {
    let ours: Vec<String> = programs::TC
        .iter()
        .chain(programs::XDP)
        .copied()
        .chain(programs::TRACING.iter().map(|t| t.name))
        .map(|n| n.chars().take(15).collect())
        .collect();
    let mut counts = Counts::new();
    for info in loaded_programs().flatten() {
        let Some(name) = info.name_as_str().map(str::to_owned) else {
            continue;
        };
        if ours.contains(&name) {
            let entry = counts.entry(name).or_default();
            entry.0 += info.run_count();
            entry.1 += u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
        }
    }
    counts
}

/// One variant, one kind of traffic: per program, (invocations per packet,
/// ns per invocation), and the packets.
fn measure(topo: &Topology, to: Destination, opts: &Options) -> Result<(Costs, u64)> {
    let mix = Mix { to, ..MIX };
    let secs = WARM_UP.as_secs_f64() + opts.seconds + 10.0;
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a positive packet count well within u64"
    )]
    let count = (super::RATE_CEILING_PPS as f64 * secs) as u64;
    let mut generator = Trafgen::start(topo, mix, count)?;
    sleep_checked(WARM_UP, &opts.interrupted)?;
    ensure!(
        generator.running(),
        "trafgen ended early:\n{}",
        generator.output()
    );
    let sent = |topo: &Topology| -> Result<u64> {
        let sample = topo.sample(&[])?;
        Ok(match to {
            Destination::Tunnels => sample.devices.iter().sum(),
            Destination::Elsewhere => sample.elsewhere,
        })
    };
    let (p0, c0) = (sent(topo)?, counts());
    sleep_checked(Duration::from_secs_f64(opts.seconds), &opts.interrupted)?;
    let (p1, c1) = (sent(topo)?, counts());
    generator.stop();
    let packets = p1.saturating_sub(p0);
    ensure!(packets > 0, "no packet went {}", to.describe());
    #[expect(clippy::cast_precision_loss, reason = "counters far below 2^52")]
    let rows = c1
        .iter()
        .filter_map(|(name, &(runs, ns))| {
            let (runs0, ns0) = c0.get(name).copied().unwrap_or_default();
            let runs = runs.saturating_sub(runs0);
            (runs > 0).then(|| {
                (
                    name.clone(),
                    runs as f64 / packets as f64,
                    ns.saturating_sub(ns0) as f64 / runs as f64,
                )
            })
        })
        .collect();
    Ok((rows, packets))
}

/// The round: each ovpn-lb variant on tun devices, each kind of traffic;
/// returns its Markdown section.
pub(super) fn run(variants: &[Variant], opts: &Options, seq: &mut usize) -> Result<String> {
    let _stats = enable_stats(Stats::RunTime)
        .context("BPF_ENABLE_STATS (Linux 5.8 or later) for the hook cost")?;
    let mut md = format!(
        "\nHook cost (a diagnostic round after the timed ones, with the kernel's BPF run-time statistics on; {}, {:.1} s per window). Per program: invocations per packet, ns per invocation (the program's own run time). Into the tunnels: the forwarded packets; elsewhere: the same packets to a prefix the gateway routes out of a veth, past the LAN program, with the hooks attached.\n\n| variant | traffic | program | invocations per packet | ns per invocation | ns per packet |\n| --- | --- | --- | ---: | ---: | ---: |\n",
        MIX.label(),
        opts.seconds
    );
    for variant in variants
        .iter()
        .filter(|v| v.device == DeviceKind::Tun && matches!(v.setup, Setup::OvpnLb { .. }))
    {
        for to in [Destination::Tunnels, Destination::Elsewhere] {
            *seq += 1;
            let topo = Topology::new(variant.device, opts.tunnels, *seq)?;
            let active = Active::up(&topo, variant, &opts.bin)
                .with_context(|| format!("setting up {}", variant.name))?;
            // The loader's start-up has settled (probes, first schedule).
            thread::sleep(Duration::from_millis(300));
            let (rows, packets) = measure(&topo, to, opts)
                .with_context(|| format!("hook cost: {}, {}", variant.name, to.describe()))?;
            drop(active);
            let total: f64 = rows.iter().map(|(_, per, ns)| per * ns).sum();
            println!(
                "forwarding: hook cost {:<50} {:<22} {packets} packets, {total:.1} ns per packet in ovpn-lb's programs",
                variant.name,
                to.describe()
            );
            for (name, per, ns) in rows {
                let _ = writeln!(
                    md,
                    "| {} | {} | {name} | {per:.2} | {ns:.1} | {:.1} |",
                    variant.name,
                    to.describe(),
                    per * ns
                );
            }
            let _ = writeln!(
                md,
                "| {} | {} | **all** | | | **{total:.1}** |",
                variant.name,
                to.describe()
            );
        }
    }
    Ok(md)
}
