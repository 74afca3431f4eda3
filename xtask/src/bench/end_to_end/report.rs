//! The end-to-end report: a Markdown table per condition, and the backlog
//! traces' method and summary.

use std::fmt::Write as _;

use ovpn_lb::config::file::Spray;

use super::{
    backlog::{EVERY, Ring, Source, Trace},
    condition::Condition,
    results::{Measured, Stat},
    variant::spray_label,
};
use crate::bench::BenchArgs;

fn ratio(s: Option<Stat>) -> String {
    s.map_or_else(
        || "-".to_owned(),
        |s| format!("{:.2} ({:.2}-{:.2})", s.median, s.min, s.max),
    )
}

/// The section of one condition.
pub fn condition(args: &BenchArgs, m: &Measured) -> String {
    let mut t = String::new();
    let c = m.condition;
    let _ = writeln!(t, "### Condition `{}`: {}\n", c.name(), c.describe(args));
    let baseline = if c.unequal() {
        "the sum of the same round's single-tunnel goodputs of the N tunnels used (each tunnel is measured alone every round)"
    } else {
        "N x the same round's single-tunnel goodput (the baseline tunnel takes turns, tun0, tun1, ...)"
    };
    let _ = writeln!(
        t,
        "One iperf3 flow host A -> host B (CUBIC unless the row says BBR), {} s per run, {} rounds interleaved, median (min-max). The hosts' LAN veths send TCP segments (TSO/GSO off, the gateways' GRO off), as an Ethernet NIC puts them on the wire, unless the row says \"GSO super-packets\" (TSO/GSO on: each super-packet reaches the gateway, and is sprayed, whole, as behind a virtual switch or a NIC with GRO). Efficiency = goodput / {baseline}, with the same hosts' setting as the row. \"vs round robin\" = goodput / ovpn-lb round robin's at the same N in the same round. Far gateway UDP drops: gateway B's `UdpRcvbufErrors` (its OpenVPN did not keep up). Tunnel departures: times gateway A's loader took a tunnel out of its rotation during the run (its probes unanswered, as behind a ring full of seconds of data).\n",
        args.seconds, args.rounds,
    );
    let _ = writeln!(
        t,
        "| setup | goodput Mbit/s | efficiency | vs round robin | retransmits | sender reorder events | receiver out-of-order segments | far gateway UDP drops | tunnel departures |"
    );
    let _ = writeln!(
        t,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (i, v) in m.variants.iter().enumerate() {
        let Some(g) = m.stat(i, |r| r.mbit_per_s) else {
            continue;
        };
        #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        let count = |f: fn(&super::iperf::Run) -> u64| {
            m.stat(i, |r| f(r) as f64)
                .map_or_else(|| "-".to_owned(), |s| format!("{:.0}", s.median))
        };
        let efficiency = if v.is_baseline() {
            "baseline".to_owned()
        } else {
            ratio(Stat::of(&m.efficiency(i)))
        };
        let _ = writeln!(
            t,
            "| {} | {:.2} ({:.2}-{:.2}) | {efficiency} | {} | {} | {} | {} | {} | {} |",
            v.label(args, c),
            g.median,
            g.min,
            g.max,
            if v.is_baseline() {
                "-".to_owned()
            } else {
                ratio(Stat::of(&m.vs_round_robin(i)))
            },
            count(|r| r.retransmits),
            count(|r| r.reorder),
            count(|r| r.ofo),
            count(|r| r.far_drops),
            count(|r| r.departures),
        );
    }
    if !m.traces.is_empty() {
        t.push('\n');
        t.push_str(&traces(&m.traces));
    }
    t
}

/// The method of the backlog traces, once per report.
pub fn trace_method(seconds: f64) -> String {
    format!(
        "Backlog traces (`backlog.png`): one flow at the largest N under ovpn-lb round robin and under packet spray, the hosts sending the first way asked (`--lan`, `--congestion`), gateway A's tunnels sampled every {} ms for {seconds} s from 1 s into the flow. A tun device queues in its ring, which OpenVPN drains and whose occupancy Linux does not export. Where the loader accounts its rings (packet spray always; round robin with `OVPN_LB_ACCOUNT_RINGS=1` in the bench's environment) the backlog is the ring accounting's own (`ring accounting`: queued - read, as the kernel hooks count packets into and out of the ring, probes included, a GSO packet as its segments). Otherwise (`sprayed - read`, wire segments only) it is read between two counters: the loader's per-tunnel tx counters (`TUNNEL_STATS`, counted when a packet is sprayed) minus the device's `tx_packets`/`tx_bytes` (counted when OpenVPN reads) and `tx_dropped` (ring full), from an idle reading; both count IP bytes (a dropped packet at the mean size sprayed), and the probes, which enter the ring uncounted as sprayed, are taken off at the steady rate measured over 1 s at rest before the flow (single probes, 76 B, leave under 0.5 KB of error either way; probes beyond that rate, a gateway announcing a change, show as a negative backlog of about 76 B each). Either way, a packet OpenVPN has read and holds (encrypting, or waiting out its shaper) is not counted. Each tunnel's share is of the bytes sprayed while sampling.\n",
        EVERY.as_millis()
    )
}

fn traces(traces: &[(Spray, Trace)]) -> String {
    let mut t = String::from(
        "Per tunnel during the trace: backlog, mean / largest, KB (packets); its share of the bytes sprayed; from the ring accounting also packet spray's drain estimate, mean (min-max) MB/s over the samples that had one, and the share of samples in which it would see the reader stopped:\n\n| mode | hosts send | backlog from | goodput Mbit/s | retransmits |",
    );
    let tunnels = traces
        .iter()
        .map(|(_, tr)| tr.samples.first().map_or(0, |s| s.rings.len()))
        .max()
        .unwrap_or(0);
    for k in 0..tunnels {
        let _ = write!(t, " tun{k} |");
    }
    let _ = write!(
        t,
        "\n| --- | --- | --- | ---: | ---: |{}\n",
        " ---: |".repeat(tunnels)
    );
    for (spray, trace) in traces {
        let hosts = trace.hosts.describe();
        let _ = write!(
            t,
            "| {} | {hosts} | {} | {:.2} | {} |",
            spray_label(*spray),
            trace.source.name(),
            trace.run.mbit_per_s,
            trace.run.retransmits
        );
        for k in 0..tunnels {
            let rings: Vec<&Ring> = trace
                .samples
                .iter()
                .filter_map(|s| s.rings.get(k))
                .collect();
            let col = |f: fn(&Ring) -> Option<f64>| -> Vec<f64> {
                rings.iter().filter_map(|r| f(r)).collect()
            };
            let (bytes, packets) = (col(|r| Some(r.bytes)), col(|r| Some(r.packets)));
            #[expect(clippy::cast_precision_loss, reason = "sample counts")]
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
            let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
            let _ = write!(
                t,
                " {:.1} / {:.1} ({:.0} / {:.0}), {:.0} %",
                mean(&bytes) / 1000.0,
                max(&bytes) / 1000.0,
                mean(&packets),
                max(&packets),
                trace.shares.get(k).copied().unwrap_or(0.0) * 100.0
            );
            if trace.source == Source::Rings {
                let drain = col(|r| r.drain);
                #[expect(clippy::cast_precision_loss, reason = "sample counts")]
                let stopped = rings.iter().filter(|r| r.stopped).count() as f64 * 100.0
                    / rings.len().max(1) as f64;
                let _ = write!(
                    t,
                    ", {:.2} MB/s ({:.2}-{:.2}), stopped {stopped:.0} %",
                    mean(&drain) / 1e6,
                    drain.iter().copied().reduce(f64::min).unwrap_or(0.0) / 1e6,
                    max(&drain) / 1e6,
                );
            }
            t.push_str(" |");
        }
        t.push('\n');
    }
    t
}

/// The report's head: the machine, and what the conditions share.
pub fn head(args: &BenchArgs, conditions: &[Condition]) -> String {
    crate::bench::machine_line(format_args!(
        "End to end: one TCP flow through N real OpenVPN tunnels (TLS, AES-256-GCM) in network namespaces, conditions {}; tunnel counts N = {}; ratios taken within each round.",
        conditions
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", "),
        args.sweep()
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    ))
}
