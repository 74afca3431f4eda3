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

use std::{collections::BTreeMap, fmt::Write as _, fs, thread, time::Duration};

use anyhow::{Context as _, Result, ensure};
use aya::{
    programs::loaded_programs,
    sys::{Stats, enable_stats},
};
use ovpn_lb::{datapath::attach::pinned_program, pins::Layout};
use ovpn_lb_common::maps::programs;

use super::{
    Options,
    network::{DeviceKind, Topology},
    sleep_checked,
    trafgen::{Destination, Mix},
    variants::{Active, Setup, Variant},
    warmed_up,
};

/// The traffic: IPv4 64-byte frames, where the per-packet cost shows most.
const MIX: Mix = Mix {
    v6: false,
    frame: 64,
    to: Destination::Tunnels,
};

/// Per program id: its name, run count and run time, ns.
type Counts = BTreeMap<u32, (String, u64, u64)>;
/// Per program: name, invocations per packet and ns per invocation.
type Costs = Vec<(String, f64, f64)>;

/// The programs behind the links the loader of `layout` pinned (the
/// tracing links' pins carry the full name; the kernel keeps 15 bytes).
fn programs_of(layout: &Layout) -> Result<BTreeMap<u32, Option<String>>> {
    let links = layout.links();
    let mut ids = BTreeMap::new();
    for entry in fs::read_dir(&links).with_context(|| format!("{}", links.display()))? {
        let pin = entry?.path();
        if let Some(id) = pinned_program(&pin) {
            let name = pin
                .file_name()
                .and_then(|n| n.to_str()?.strip_suffix("-raw_tp"))
                .map(str::to_owned);
            ids.entry(id).or_insert(name);
        }
    }
    Ok(ids)
}

/// The full name of a program the kernel names `short`, where only one
/// of the object's programs starts so.
fn full_name(short: &str) -> String {
    let mut names = programs::TC
        .iter()
        .chain(programs::XDP)
        .copied()
        .chain(programs::TRACING.iter().map(|t| t.name))
        .filter(|n| n.starts_with(short));
    match (names.next(), names.next()) {
        (Some(name), None) => name.to_owned(),
        _ => short.to_owned(),
    }
}

/// The counts of programs `ids` now.
fn counts(ids: &BTreeMap<u32, Option<String>>) -> Counts {
    loaded_programs()
        .flatten()
        .filter_map(|info| {
            let name = ids
                .get(&info.id())?
                .clone()
                .unwrap_or_else(|| full_name(info.name_as_str().unwrap_or("?")));
            let ns = u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
            Some((info.id(), (name, info.run_count(), ns)))
        })
        .collect()
}

/// One variant, one kind of traffic: per program, (invocations per packet,
/// ns per invocation), and the packets.
fn measure(
    topo: &Topology,
    layout: &Layout,
    to: Destination,
    opts: &Options,
) -> Result<(Costs, u64)> {
    let ids = programs_of(layout)?;
    let mut generator = warmed_up(topo, Mix { to, ..MIX }, opts)?;
    let sent = |topo: &Topology| -> Result<u64> {
        let sample = topo.sample(&[])?;
        Ok(match to {
            Destination::Tunnels => sample.devices.iter().sum(),
            Destination::Elsewhere => sample.elsewhere,
        })
    };
    let (p0, c0) = (sent(topo)?, counts(&ids));
    sleep_checked(Duration::from_secs_f64(opts.seconds), &opts.interrupted)?;
    let (p1, c1) = (sent(topo)?, counts(&ids));
    generator.stop();
    let packets = p1.saturating_sub(p0);
    ensure!(packets > 0, "no packet went {}", to.describe());
    #[expect(clippy::cast_precision_loss, reason = "counters far below 2^52")]
    let rows = c1
        .iter()
        .filter_map(|(id, (name, runs, ns))| {
            let (_, runs0, ns0) = c0.get(id).cloned().unwrap_or_default();
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
            let Active::Loader { site, .. } = &active else {
                unreachable!("an ovpn-lb variant runs the loader")
            };
            let (rows, packets) = measure(&topo, &site.layout, to, opts)
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
