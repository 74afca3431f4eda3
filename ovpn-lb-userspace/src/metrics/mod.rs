//! The Prometheus metrics: each family declared once in [`FAMILIES`] (name,
//! help, type, labels, and how its samples come out of a [`Snapshot`]);
//! adding a metric is adding one entry. `server` serves them over HTTP.
//!
//! Counter values are read from the pinned per-CPU maps and summed when
//! Prometheus scrapes, so a scrape costs the packet path nothing. Series are
//! keyed by tunnel id and device name, both stable across device re-creation
//! and loader restarts (the counter maps stay pinned), so counters only go up.

pub mod server;

use std::{
    fmt::Write as _,
    sync::{Arc, Mutex},
};

use ovpn_lb_common::{Reason, queue::TunnelQueue};

use crate::{
    announce::Block,
    health::Cause,
    pins::Layout,
    probe::{RTT_BUCKETS, Rtt},
    status::{Counters, State},
};

/// What the exporter knows of each tunnel besides its counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TunnelView {
    pub device: String,
    pub up: bool,
    /// Weight in the live schedule: 0 while out of the rotation.
    pub weight: u32,
    /// Probe round trips, while the tunnel is probed.
    pub rtt: Option<Rtt>,
    pub probes_sent: u64,
    pub probes_answered: u64,
    /// Times it left the rotation, by cause (in `Cause::ALL` order).
    pub departures: [u64; 4],
}

/// What the exporter knows of the announcement (`[announce]`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AnnounceView {
    pub announced: bool,
    pub transitions: u64,
    /// Why it is withdrawn (empty while announced).
    pub blocks: Vec<Block>,
}

/// What the run loop shows the exporter besides the pinned counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    pub tunnels: Vec<TunnelView>,
    /// `None` without `[announce]`.
    pub announce: Option<AnnounceView>,
}

/// Shared between the run loop (writer) and the exporter (reader).
pub type Views = Arc<Mutex<View>>;

/// Everything one scrape shows.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub tunnels: Vec<TunnelView>,
    pub announce: Option<AnnounceView>,
    /// `None` when the pinned maps cannot be read.
    pub counters: Option<Counters>,
    /// The hooks packet spray's ring accounting runs on, from the state
    /// file; `None` while it is off.
    pub ring_accounting: Option<String>,
    /// When the counters were read (monotonic ns).
    pub now_ns: u64,
    /// The kernel and its fallbacks, as the loader's state file says.
    pub kernel: Option<crate::datapath::kernel::Report>,
}

impl Snapshot {
    /// Reads the counters now.
    #[must_use]
    pub fn take(layout: &Layout, views: &Views) -> Self {
        let view = views.lock().map(|v| v.clone()).unwrap_or_default();
        let counters = u32::try_from(view.tunnels.len())
            .ok()
            .and_then(|n| Counters::read(layout, n).ok());
        let state = State::read(layout).ok();
        let (ring_accounting, kernel) =
            state.map_or((None, None), |s| (s.ring_accounting, s.kernel));
        Self {
            tunnels: view.tunnels,
            announce: view.announce,
            counters,
            ring_accounting,
            now_ns: crate::probe::now_ns(),
            kernel,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Counter,
    Gauge,
    /// Samples are `_bucket` (cumulative, `le` label last), `_sum` and
    /// `_count`, as [`histogram`] lays them out.
    Histogram,
}

/// One sample: label values (in the family's label order) and the value.
/// Histogram samples carry a name suffix and the `le` bound as a last label.
pub type Sample = (Vec<String>, f64);

/// One metric family.
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub samples: fn(&Snapshot) -> Vec<Sample>,
}

const TUNNEL: &[&str] = &["tunnel", "device"];
const REASON: &[&str] = &["reason", "outcome"];

fn tunnel_labels(k: usize, view: &TunnelView) -> Vec<String> {
    vec![k.to_string(), view.device.clone()]
}

#[expect(clippy::cast_precision_loss, reason = "Prometheus values are doubles")]
fn u64_value(n: u64) -> f64 {
    n as f64
}

/// Samples of a per-tunnel family from its views.
fn per_tunnel(s: &Snapshot, value: impl Fn(&TunnelView) -> f64) -> Vec<Sample> {
    s.tunnels
        .iter()
        .enumerate()
        .map(|(k, v)| (tunnel_labels(k, v), value(v)))
        .collect()
}

/// Samples of a per-tunnel figure read from the pinned maps: `table` picks
/// the per-tunnel rows (traffic counters, ring accounting), `value` the
/// figure.
fn per_tunnel_read<T>(
    s: &Snapshot,
    table: impl Fn(&Counters) -> &[T],
    value: impl Fn(&T) -> u64,
) -> Vec<Sample> {
    let Some(c) = &s.counters else {
        return Vec::new();
    };
    s.tunnels
        .iter()
        .zip(table(c))
        .enumerate()
        .map(|(k, (v, row))| (tunnel_labels(k, v), u64_value(value(row))))
        .collect()
}

/// Samples of a per-tunnel traffic counter.
fn per_tunnel_counter(
    s: &Snapshot,
    value: impl Fn(&ovpn_lb_common::TunnelStats) -> u64,
) -> Vec<Sample> {
    per_tunnel_read(s, |c| &c.tunnels, value)
}

/// Samples of a per-tunnel figure of the ring accounting.
fn per_tunnel_ring(s: &Snapshot, value: impl Fn(&TunnelQueue) -> u64) -> Vec<Sample> {
    per_tunnel_read(s, |c| &c.queues, value)
}

#[expect(clippy::cast_precision_loss, reason = "Prometheus values are doubles")]
fn per_reason(s: &Snapshot, value: impl Fn(&ovpn_lb_common::ReasonStats) -> u64) -> Vec<Sample> {
    let Some(c) = &s.counters else {
        return Vec::new();
    };
    Reason::ALL
        .iter()
        .zip(&c.reasons)
        .map(|(r, stats)| {
            (
                vec![r.name().to_owned(), r.outcome().name().to_owned()],
                value(stats) as f64,
            )
        })
        .collect()
}

/// A per-tunnel histogram of probe round trips, in seconds: per tunnel its
/// cumulative buckets, then sum and count; the name suffix is the first
/// label value (`_bucket`, `_sum`, `_count`), cut off by the encoder.
#[expect(clippy::cast_precision_loss, reason = "Prometheus values are doubles")]
fn histogram(s: &Snapshot) -> Vec<Sample> {
    let mut out = Vec::new();
    for (k, v) in s.tunnels.iter().enumerate() {
        let Some(rtt) = &v.rtt else { continue };
        let mut cumulative = 0;
        for (i, le) in RTT_BUCKETS
            .iter()
            .map(ToString::to_string)
            .chain(["+Inf".to_owned()])
            .enumerate()
        {
            cumulative += rtt.buckets.get(i).copied().unwrap_or(0);
            out.push((
                vec!["_bucket".into(), k.to_string(), v.device.clone(), le],
                cumulative as f64,
            ));
        }
        out.push((
            vec!["_sum".into(), k.to_string(), v.device.clone()],
            rtt.sum_ns as f64 / 1e9,
        ));
        out.push((
            vec!["_count".into(), k.to_string(), v.device.clone()],
            rtt.count as f64,
        ));
    }
    out
}

/// Every family the exporter emits, in order.
pub const FAMILIES: &[Family] = &[
    Family {
        name: "ovpnlb_kernel_info",
        help: "1, labelled with the kernel's release and how tc programs attach (tcx or legacy-tc).",
        kind: Kind::Gauge,
        labels: &["release", "tc_hook"],
        samples: |s| {
            s.kernel
                .iter()
                .map(|k| (vec![k.release.clone(), k.tc_hook.clone()], 1.0))
                .collect()
        },
    },
    Family {
        name: "ovpnlb_kernel_fallback",
        help: "1 for each fallback in force for a feature the kernel lacks, 0 for the others: legacy_tc, round_robin (packet spray without its ring accounting), csum_retry (IPv6 checksums without BPF_F_IPV6), no_xdp (no XDP hook on this kernel).",
        kind: Kind::Gauge,
        labels: &["fallback"],
        samples: |s| {
            s.kernel
                .iter()
                .flat_map(|k| {
                    crate::datapath::kernel::FALLBACKS.iter().map(|&name| {
                        let on = k.fallbacks.iter().any(|f| f.name == name);
                        (vec![name.to_owned()], if on { 1.0 } else { 0.0 })
                    })
                })
                .collect()
        },
    },
    Family {
        name: "ovpnlb_tunnel_tx_packets_total",
        help: "Packets sprayed into the tunnel.",
        kind: Kind::Counter,
        labels: TUNNEL,
        samples: |s| per_tunnel_counter(s, |t| t.tx_packets),
    },
    Family {
        name: "ovpnlb_tunnel_tx_bytes_total",
        help: "IP bytes sprayed into the tunnel.",
        kind: Kind::Counter,
        labels: TUNNEL,
        samples: |s| per_tunnel_counter(s, |t| t.tx_bytes),
    },
    Family {
        name: "ovpnlb_tunnel_rx_packets_total",
        help: "Packets that arrived from the tunnel.",
        kind: Kind::Counter,
        labels: TUNNEL,
        samples: |s| per_tunnel_counter(s, |t| t.rx_packets),
    },
    Family {
        name: "ovpnlb_tunnel_rx_bytes_total",
        help: "IP bytes that arrived from the tunnel.",
        kind: Kind::Counter,
        labels: TUNNEL,
        samples: |s| per_tunnel_counter(s, |t| t.rx_bytes),
    },
    Family {
        name: "ovpnlb_tunnel_ring_backlog_bytes",
        help: "Bytes queued in the tunnel device's ring, not yet read by OpenVPN (packet spray).",
        kind: Kind::Gauge,
        labels: TUNNEL,
        samples: |s| per_tunnel_ring(s, |q| q.backlog().bytes),
    },
    Family {
        name: "ovpnlb_tunnel_ring_drain_bytes_per_second",
        help: "How fast OpenVPN reads the tunnel's ring while it has work (packet spray; 0 unmeasured).",
        kind: Kind::Gauge,
        labels: TUNNEL,
        samples: |s| per_tunnel_ring(s, |q| q.deq.drain.bytes_per_second()),
    },
    Family {
        name: "ovpnlb_tunnel_ring_reader_stopped",
        help: "1 while OpenVPN has stopped reading the tunnel's ring (packets wait and no read for 10 ms past the one it holds, or the ring is full): packet spray passes the tunnel over.",
        kind: Kind::Gauge,
        labels: TUNNEL,
        samples: |s| per_tunnel_ring(s, |q| u64::from(q.snapshot().stopped(s.now_ns))),
    },
    Family {
        name: "ovpnlb_ring_accounting_info",
        help: "The hooks packet spray's ring accounting runs on (fexit, tp_btf or raw_tp); absent while it is off.",
        kind: Kind::Gauge,
        labels: &["hooks"],
        samples: |s| {
            s.ring_accounting
                .iter()
                .map(|h| (vec![h.clone()], 1.0))
                .collect()
        },
    },
    Family {
        name: "ovpnlb_tunnel_ring_full_drops_total",
        help: "Packets the kernel dropped because the tunnel device's ring was full (packet spray).",
        kind: Kind::Counter,
        labels: TUNNEL,
        samples: |s| per_tunnel_ring(s, |q| q.enq.refused),
    },
    Family {
        name: "ovpnlb_tunnel_up",
        help: "1 while the tunnel is in the rotation, else 0.",
        kind: Kind::Gauge,
        labels: TUNNEL,
        samples: |s| per_tunnel(s, |v| f64::from(u8::from(v.up))),
    },
    Family {
        name: "ovpnlb_tunnel_weight",
        help: "The tunnel's weight in the live schedule (0 out of rotation).",
        kind: Kind::Gauge,
        labels: TUNNEL,
        samples: |s| per_tunnel(s, |v| f64::from(v.weight)),
    },
    Family {
        name: "ovpnlb_tunnel_probe_rtt_seconds",
        help: "Round-trip time of the tunnel's probes, queues at both ends included.",
        kind: Kind::Histogram,
        labels: TUNNEL,
        samples: histogram,
    },
    Family {
        name: "ovpnlb_tunnel_rtt_seconds",
        help: "Probe round trip: last, smoothed (1/8 per sample) and smallest.",
        kind: Kind::Gauge,
        labels: &["tunnel", "device", "stat"],
        samples: |s| {
            let mut out = Vec::new();
            for (k, v) in s.tunnels.iter().enumerate() {
                let Some(rtt) = &v.rtt else { continue };
                for (stat, ns) in [
                    ("last", rtt.last),
                    ("smoothed", rtt.smoothed),
                    ("min", rtt.min),
                ] {
                    #[expect(clippy::cast_precision_loss, reason = "Prometheus values are doubles")]
                    let seconds = ns as f64 / 1e9;
                    out.push((
                        vec![k.to_string(), v.device.clone(), stat.to_owned()],
                        seconds,
                    ));
                }
            }
            out
        },
    },
    Family {
        name: "ovpnlb_tunnel_probes_sent_total",
        help: "Probes sent into the tunnel.",
        kind: Kind::Counter,
        labels: TUNNEL,
        samples: |s| per_tunnel(s, |v| u64_value(v.probes_sent)),
    },
    Family {
        name: "ovpnlb_tunnel_probes_answered_total",
        help: "Probes of ours that came back answered.",
        kind: Kind::Counter,
        labels: TUNNEL,
        samples: |s| per_tunnel(s, |v| u64_value(v.probes_answered)),
    },
    Family {
        name: "ovpnlb_tunnel_departures_total",
        help: "Times the tunnel left the rotation, by cause (link, openvpn, next_hop, probe).",
        kind: Kind::Counter,
        labels: &["tunnel", "device", "cause"],
        samples: |s| {
            let mut out = Vec::new();
            for (k, v) in s.tunnels.iter().enumerate() {
                for (cause, n) in Cause::ALL.iter().zip(v.departures) {
                    out.push((
                        vec![k.to_string(), v.device.clone(), cause.name().to_owned()],
                        u64_value(n),
                    ));
                }
            }
            out
        },
    },
    Family {
        name: "ovpnlb_packets_total",
        help: "Packets the datapath handled, by reason and outcome.",
        kind: Kind::Counter,
        labels: REASON,
        samples: |s| per_reason(s, |r| r.packets),
    },
    Family {
        name: "ovpnlb_bytes_total",
        help: "Bytes the datapath handled, by reason and outcome.",
        kind: Kind::Counter,
        labels: REASON,
        samples: |s| per_reason(s, |r| r.bytes),
    },
    Family {
        name: "ovpnlb_tunnels_in_rotation",
        help: "Tunnels in the rotation now.",
        kind: Kind::Gauge,
        labels: &[],
        samples: |s| {
            let n = s.tunnels.iter().filter(|v| v.up).count();
            vec![(Vec::new(), u64_value(n as u64))]
        },
    },
    Family {
        name: "ovpnlb_announced",
        help: "1 while this gateway announces the remote prefixes ([announce]), else 0.",
        kind: Kind::Gauge,
        labels: &[],
        samples: |s| {
            s.announce
                .iter()
                .map(|a| (Vec::new(), f64::from(u8::from(a.announced))))
                .collect()
        },
    },
    Family {
        name: "ovpnlb_announce_transitions_total",
        help: "Times the announcement changed (announced or withdrawn) since the loader started.",
        kind: Kind::Counter,
        labels: &[],
        samples: |s| {
            s.announce
                .iter()
                .map(|a| (Vec::new(), u64_value(a.transitions)))
                .collect()
        },
    },
    Family {
        name: "ovpnlb_announce_blocked",
        help: "1 for each reason the announcement is withdrawn now, else 0.",
        kind: Kind::Gauge,
        labels: &["reason"],
        samples: |s| {
            let Some(a) = &s.announce else {
                return Vec::new();
            };
            Block::ALL
                .iter()
                .map(|b| {
                    (
                        vec![b.name().to_owned()],
                        f64::from(u8::from(a.blocks.contains(b))),
                    )
                })
                .collect()
        },
    },
    Family {
        name: "ovpnlb_build_info",
        help: "Always 1; labels say which build is running.",
        kind: Kind::Gauge,
        labels: &["version"],
        samples: |_| vec![(vec![env!("CARGO_PKG_VERSION").to_owned()], 1.0)],
    },
];

/// Every metric family the exporter emits.
pub fn names() -> impl Iterator<Item = &'static str> {
    FAMILIES.iter().map(|f| f.name)
}

/// Every series name a query may use: the families, and a histogram's
/// `_bucket`, `_sum` and `_count`.
pub fn series_names() -> impl Iterator<Item = String> {
    FAMILIES.iter().flat_map(|f| {
        let suffixes: &[&str] = if f.kind == Kind::Histogram {
            &["_bucket", "_sum", "_count"]
        } else {
            &[""]
        };
        suffixes.iter().map(move |s| format!("{}{s}", f.name))
    })
}

/// A label value in the text format: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text exposition format (version 0.0.4) of `snapshot`.
#[must_use]
pub fn encode(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    for f in FAMILIES {
        let kind = match f.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {kind}", f.name);
        for (mut values, value) in (f.samples)(snapshot) {
            let (suffix, names): (String, Vec<&str>) = if f.kind == Kind::Histogram {
                let suffix = values.remove(0);
                let mut names = f.labels.to_vec();
                if suffix == "_bucket" {
                    names.push("le");
                }
                (suffix, names)
            } else {
                (String::new(), f.labels.to_vec())
            };
            // Sorted by name, as the reference client libraries print them.
            let mut pairs: Vec<(&str, &String)> = names.iter().copied().zip(&values).collect();
            pairs.sort_unstable_by_key(|(l, _)| *l);
            let labels: Vec<String> = pairs
                .iter()
                .map(|(l, v)| format!("{l}=\"{}\"", escape(v)))
                .collect();
            if labels.is_empty() {
                let _ = writeln!(out, "{}{suffix} {value}", f.name);
            } else {
                let _ = writeln!(out, "{}{suffix}{{{}}} {value}", f.name, labels.join(","));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use ovpn_lb_common::{
        ReasonStats, TunnelStats,
        queue::{Dequeued, Enqueued, count},
    };

    use super::*;

    fn sample() -> String {
        let tunnels = vec![
            TunnelView {
                device: "tun0".into(),
                up: true,
                weight: 2,
                rtt: Some({
                    let mut t = crate::probe::Tracker::default();
                    t.start(0);
                    let seq = t.send(0);
                    t.answer(seq, 0, 0, 3_000_000);
                    t.rtt
                }),
                probes_sent: 1,
                probes_answered: 1,
                departures: [0, 0, 0, 2],
            },
            TunnelView {
                device: "tu\"n1".into(),
                up: false,
                weight: 0,
                ..TunnelView::default()
            },
        ];
        let counters = Counters {
            tunnels: vec![
                TunnelStats {
                    tx_packets: 10,
                    tx_bytes: 1000,
                    rx_packets: 7,
                    rx_bytes: 700,
                },
                TunnelStats::default(),
            ],
            reasons: Reason::ALL
                .iter()
                .map(|&r| ReasonStats {
                    packets: r as u64,
                    bytes: 0,
                })
                .collect(),
            queues: vec![
                TunnelQueue {
                    enq: Enqueued {
                        queued: count(2000) + count(1500),
                        refused: 3,
                        ..Enqueued::default()
                    },
                    deq: Dequeued {
                        read: count(2000),
                        ..Dequeued::default()
                    },
                },
                TunnelQueue::default(),
            ],
        };
        encode(&Snapshot {
            tunnels,
            announce: Some(AnnounceView {
                announced: false,
                transitions: 3,
                blocks: vec![Block::LanDown],
            }),
            counters: Some(counters),
            ring_accounting: Some("fexit".to_owned()),
            now_ns: 0,
            kernel: Some(crate::datapath::kernel::Report {
                release: "6.1.0-57-amd64".into(),
                tc_hook: "legacy-tc".into(),
                ring_accounting: false,
                fallbacks: vec![crate::datapath::kernel::Fallback {
                    name: "legacy_tc".into(),
                    what: "tc programs attach as filters".into(),
                }],
            }),
        })
    }

    #[test]
    fn emits_exactly_the_declared_names_with_help_and_type() {
        let text = sample();
        let typed: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
            .collect();
        let helped = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        assert_eq!(typed, names().collect::<Vec<_>>());
        assert_eq!(helped, FAMILIES.len());
    }

    #[test]
    fn values_labels_and_escaping() {
        let text = sample();
        let no_tunnel = Reason::NoTunnel as u32;
        for line in [
            "ovpnlb_tunnel_tx_packets_total{device=\"tun0\",tunnel=\"0\"} 10".to_owned(),
            "ovpnlb_tunnel_rx_bytes_total{device=\"tun0\",tunnel=\"0\"} 700".to_owned(),
            "ovpnlb_tunnel_up{device=\"tu\\\"n1\",tunnel=\"1\"} 0".to_owned(),
            "ovpnlb_tunnel_weight{device=\"tun0\",tunnel=\"0\"} 2".to_owned(),
            "ovpnlb_tunnel_ring_backlog_bytes{device=\"tun0\",tunnel=\"0\"} 1500".to_owned(),
            "ovpnlb_tunnel_ring_full_drops_total{device=\"tun0\",tunnel=\"0\"} 3".to_owned(),
            // Refused since its last read: passed over.
            "ovpnlb_tunnel_ring_reader_stopped{device=\"tun0\",tunnel=\"0\"} 1".to_owned(),
            "ovpnlb_tunnel_ring_reader_stopped{device=\"tu\\\"n1\",tunnel=\"1\"} 0".to_owned(),
            "ovpnlb_ring_accounting_info{hooks=\"fexit\"} 1".to_owned(),
            format!("ovpnlb_packets_total{{outcome=\"dropped\",reason=\"no_tunnel\"}} {no_tunnel}"),
            "ovpnlb_kernel_info{release=\"6.1.0-57-amd64\",tc_hook=\"legacy-tc\"} 1".to_owned(),
            "ovpnlb_kernel_fallback{fallback=\"legacy_tc\"} 1".to_owned(),
            "ovpnlb_kernel_fallback{fallback=\"no_xdp\"} 0".to_owned(),
            "# TYPE ovpnlb_tunnel_tx_packets_total counter".to_owned(),
            "# TYPE ovpnlb_tunnel_up gauge".to_owned(),
            "# TYPE ovpnlb_tunnel_probe_rtt_seconds histogram".to_owned(),
            "ovpnlb_tunnel_probe_rtt_seconds_bucket{device=\"tun0\",le=\"0.002\",tunnel=\"0\"} 0"
                .to_owned(),
            "ovpnlb_tunnel_probe_rtt_seconds_bucket{device=\"tun0\",le=\"0.005\",tunnel=\"0\"} 1"
                .to_owned(),
            "ovpnlb_tunnel_probe_rtt_seconds_bucket{device=\"tun0\",le=\"+Inf\",tunnel=\"0\"} 1"
                .to_owned(),
            "ovpnlb_tunnel_probe_rtt_seconds_sum{device=\"tun0\",tunnel=\"0\"} 0.003".to_owned(),
            "ovpnlb_tunnel_probe_rtt_seconds_count{device=\"tun0\",tunnel=\"0\"} 1".to_owned(),
            "ovpnlb_tunnel_departures_total{cause=\"probe\",device=\"tun0\",tunnel=\"0\"} 2"
                .to_owned(),
            "ovpnlb_tunnels_in_rotation 1".to_owned(),
            "ovpnlb_announced 0".to_owned(),
            "ovpnlb_announce_transitions_total 3".to_owned(),
            "ovpnlb_announce_blocked{reason=\"lan_down\"} 1".to_owned(),
            "ovpnlb_announce_blocked{reason=\"maintenance\"} 0".to_owned(),
            format!(
                "ovpnlb_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
