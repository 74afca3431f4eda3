//! The Markdown tables and the plot's ratios, from the measured windows.

use std::{fmt::Write as _, time::Instant};

use ovpn_lb::config::file;

use super::{
    super::{median, spread},
    FLOWS, GEN_CPU, Options, Results, machine_line,
    network::DeviceKind,
    trafgen::MIXES,
    variants::{Setup, Variant},
};

/// A ratio to plain routing over rounds: (median, min, max).
pub type Ratio = (f64, f64, f64);

/// One variant's ratios, per mix.
pub struct SummaryRow {
    /// Label in the plot.
    pub label: String,
    /// Forwarded packets/s.
    pub pps: Vec<Ratio>,
    /// Gateway CPU time per forwarded packet.
    pub cpu: Vec<Ratio>,
}

/// Ratios to plain routing, per variant and mix.
pub struct Summary {
    pub mixes: Vec<String>,
    pub rows: Vec<SummaryRow>,
}

/// Per round: (median, min, max) of `f(round)`.
pub(super) fn over_rounds(n: usize, f: impl Fn(usize) -> f64) -> Ratio {
    let r: Vec<f64> = (0..n).map(f).collect();
    let (lo, hi) = spread(&r);
    (median(r), lo, hi)
}

/// Indices of the calibration row and of the baseline.
pub(super) fn calibration_and_base(variants: &[Variant]) -> (usize, usize) {
    let cal = variants
        .iter()
        .position(|v| matches!(v.setup, Setup::IngressDrop))
        .expect("a calibration row");
    let base = variants
        .iter()
        .position(|v| matches!(v.setup, Setup::PlainRouting))
        .expect("a plain routing row");
    (cal, base)
}

/// Gateway CPU per packet of variant `v` in round `r`: its figure minus the
/// calibration row's.
pub(super) fn gateway_ns(results: &Results, cal: usize, v: usize, m: usize, r: usize) -> f64 {
    results[v][m][r].ns_per_packet - results[cal][m][r].ns_per_packet
}

/// A table header: the variant, then one column per mix.
pub(super) fn header(md: &mut String) {
    let _ = write!(md, "| variant |");
    for m in MIXES {
        let _ = write!(md, " {} |", m.label());
    }
    let _ = write!(md, "\n| --- |");
    for _ in MIXES {
        let _ = write!(md, " ---: |");
    }
    md.push('\n');
}

pub(super) fn fmt_ratio(r: Ratio) -> String {
    format!("{:.2} ({:.2}-{:.2})", r.0, r.1, r.2)
}

pub(super) fn table(
    variants: &[Variant],
    results: &Results,
    opts: &Options,
    started: Instant,
) -> (String, Summary) {
    let (cal, base) = calibration_and_base(variants);
    let rounds = results[base][0].len();
    let mut md = machine_line(format_args!(
        "trafgen (netsniff-ng 0.6.8, one worker, blocking sends) and all the gateway's work on CPU {GEN_CPU}; {FLOWS} UDP flows; {} devices; {} rounds interleaved, {:.1} s windows, median (min-max) over rounds. Forwarded = tx_packets + tx_dropped of the devices. CPU = run time of trafgen's worker and ksoftirqd/{GEN_CPU} (schedstat) per packet; gateway CPU = that minus the calibration row's.",
        opts.tunnels, opts.rounds, opts.seconds
    ));
    let mut summary = Summary {
        mixes: MIXES.iter().map(|m| m.label()).collect(),
        rows: Vec::new(),
    };
    let _ = writeln!(
        md,
        "Gateway packets per CPU-second, as a ratio to plain routing (higher is better), and gateway CPU time per forwarded packet in ns:\n"
    );
    header(&mut md);
    for (v, variant) in variants.iter().enumerate() {
        if v == cal {
            continue;
        }
        let _ = write!(md, "| {} |", variant.name);
        let mut pps_row = Vec::new();
        let mut cpu_row = Vec::new();
        for m in 0..MIXES.len() {
            let ns = over_rounds(rounds, |r| gateway_ns(results, cal, v, m, r));
            let cap = over_rounds(rounds, |r| {
                gateway_ns(results, cal, base, m, r) / gateway_ns(results, cal, v, m, r)
            });
            if v == base {
                let _ = write!(md, " 1 ({:.0} ns) |", ns.0);
            } else {
                let _ = write!(md, " **{}** ({:.0} ns) |", fmt_ratio(cap), ns.0);
            }
            cpu_row.push(cap);
            pps_row.push(over_rounds(rounds, |r| {
                results[v][m][r].pps / results[base][m][r].pps
            }));
        }
        md.push('\n');
        summary.rows.push(SummaryRow {
            label: variant.short.clone(),
            pps: pps_row,
            cpu: cpu_row,
        });
    }
    raw_tables(&mut md, variants, results);
    let wrong: u64 = results.iter().flatten().flatten().map(|w| w.wrong).sum();
    let sampled: u64 = results.iter().flatten().flatten().map(|w| w.drained).sum();
    let _ = writeln!(
        md,
        "\nPackets sampled at the devices and checked (source prefix per device, TTL 63): {sampled}, wrong: {wrong}."
    );
    targets(&mut md, variants, results);
    let _ = writeln!(
        md,
        "\nForwarding part: {:.0} s.",
        started.elapsed().as_secs_f64()
    );
    (md, summary)
}

/// A table: `title`, the header, then per variant its name and
/// `cell(variant, mix)` for every mix.
pub(super) fn table_of(
    md: &mut String,
    title: &str,
    variants: &[Variant],
    cell: impl Fn(usize, usize) -> String,
) {
    let _ = writeln!(md, "\n{title}\n");
    header(md);
    for (v, variant) in variants.iter().enumerate() {
        let _ = write!(md, "| {} |", variant.name);
        for m in 0..MIXES.len() {
            let _ = write!(md, " {} |", cell(v, m));
        }
        md.push('\n');
    }
}

/// The tables of raw figures: packets/s and CPU per packet with the generator.
pub(super) fn raw_tables(md: &mut String, variants: &[Variant], results: &Results) {
    let (cal, base) = calibration_and_base(variants);
    let rounds = results[base][0].len();
    table_of(
        md,
        "Packets/s forwarded with trafgen on the same CPU (so each figure includes the generator's cost), and as a ratio to plain routing:",
        variants,
        |v, m| {
            let runs = &results[v][m];
            let k = over_rounds(rounds, |r| runs[r].pps / 1e3);
            if v == cal {
                format!("{:.0} k received", k.0)
            } else if v == base {
                format!("{:.0} k ({:.0}-{:.0})", k.0, k.1, k.2)
            } else {
                let r = over_rounds(rounds, |r| runs[r].pps / results[base][m][r].pps);
                format!("{:.0} k = {}", k.0, fmt_ratio(r))
            }
        },
    );
    table_of(
        md,
        &format!(
            "CPU time per packet, generator and gateway together, ns (min-max), and the share of CPU {GEN_CPU} they got:"
        ),
        variants,
        |v, m| {
            let runs = &results[v][m];
            let ns = over_rounds(rounds, |r| runs[r].ns_per_packet);
            let share = over_rounds(rounds, |r| runs[r].share);
            format!(
                "{:.0} ({:.0}-{:.0}), {:.0}%",
                ns.0,
                ns.1,
                ns.2,
                share.0 * 100.0
            )
        },
    );
}

/// The issues' targets: ovpn-lb tc on tun >= 1.3x plain routing, >= 1.5x
/// nftables numgen and >= 0.95x round robin; ovpn-lb XDP on TAP >= 2x plain routing; on gateway
/// packets per CPU-second and, for reference, on packets/s with the
/// generator on the same CPU.
pub(super) fn targets(md: &mut String, variants: &[Variant], results: &Results) {
    let (_, base) = calibration_and_base(variants);
    let find = |f: &dyn Fn(&Variant) -> bool| variants.iter().position(f);
    let ovpn_lb = |v: &Variant| matches!(v.setup, Setup::OvpnLb { .. });
    let tc_tun = find(&|v| ovpn_lb(v) && v.device == DeviceKind::Tun);
    let xdp_tap = find(&|v| {
        ovpn_lb(v)
            && matches!(&v.setup, Setup::OvpnLb { config, .. } if config.hook.as_deref() == Some("xdp"))
    });
    let numgen = find(&|v| matches!(v.setup, Setup::NftNumgen));
    // Round robin without the ring accounting: packet spray's pick and
    // accounting together may cost it 5 % at most.
    let round_robin = find(&|v| {
        matches!(&v.setup, Setup::OvpnLb { config, account_rings }
            if config.spray == file::Spray::RoundRobin && !account_rings)
    });
    if let Some(lb) = tc_tun {
        let mut against = vec![(base, 1.3)];
        against.extend(numgen.map(|n| (n, 1.5)));
        against.extend(round_robin.map(|r| (r, 0.95)));
        target(md, variants, results, lb, &against);
    }
    if let Some(lb) = xdp_tap {
        target(md, variants, results, lb, &[(base, 2.0)]);
    }
}

pub(super) fn target(
    md: &mut String,
    variants: &[Variant],
    results: &Results,
    lb: usize,
    against: &[(usize, f64)],
) {
    let (cal, base) = calibration_and_base(variants);
    let rounds = results[base][0].len();
    let _ = writeln!(md, "\nTargets for {}:\n", variants[lb].name);
    for &(other, want) in against {
        for capacity in [true, false] {
            let mut worst = f64::INFINITY;
            let mut parts = Vec::new();
            for (m, mix) in MIXES.iter().enumerate() {
                let r = over_rounds(rounds, |r| {
                    if capacity {
                        gateway_ns(results, cal, other, m, r) / gateway_ns(results, cal, lb, m, r)
                    } else {
                        results[lb][m][r].pps / results[other][m][r].pps
                    }
                })
                .0;
                worst = worst.min(r);
                parts.push(format!("{} {r:.2}", mix.label()));
            }
            let verdict = if worst >= want {
                "met".to_owned()
            } else {
                format!("missed by {:.2}", want - worst)
            };
            let _ = writeln!(
                md,
                "- {} >= {want}x {}: {verdict} (worst mix {worst:.2}; {})",
                if capacity {
                    "gateway packets per CPU-second"
                } else {
                    "packets/s with the generator on the same CPU"
                },
                variants[other].name,
                parts.join(", ")
            );
        }
    }
}
