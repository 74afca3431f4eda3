//! The Prometheus endpoint: `GET /metrics` on the configured address.
//!
//! Values are read from the pinned per-CPU maps and summed when Prometheus
//! scrapes, so a scrape costs the packet path nothing. Series are keyed by
//! tunnel id and device name, both stable across device re-creation and
//! loader restarts (the counter maps stay pinned), so counters only go up.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    thread,
};

use anyhow::{Context as _, Result, anyhow};
use ovpn_lb_common::{Reason, reason::Outcome};
use prometheus::{
    Encoder as _, IntCounterVec, IntGaugeVec, Opts, TextEncoder, core::Collector,
    proto::MetricFamily,
};

use crate::{pins::Layout, status::Counters};

/// What the exporter knows of each tunnel besides its counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TunnelView {
    pub device: String,
    pub up: bool,
    /// Weight in the live schedule: 0 while out of the rotation.
    pub weight: u32,
}

/// Shared between the run loop (writer) and the exporter (reader).
pub type Tunnels = Arc<Mutex<Vec<TunnelView>>>;

/// Every metric name the exporter emits (the dashboard test checks against it).
pub const METRIC_NAMES: &[&str] = &[
    "ovpnlb_tunnel_tx_packets_total",
    "ovpnlb_tunnel_tx_bytes_total",
    "ovpnlb_tunnel_rx_packets_total",
    "ovpnlb_tunnel_rx_bytes_total",
    "ovpnlb_tunnel_up",
    "ovpnlb_tunnel_weight",
    "ovpnlb_packets_total",
    "ovpnlb_bytes_total",
    "ovpnlb_build_info",
];

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}

const TUNNEL_LABELS: &[&str] = &["tunnel", "device"];
const REASON_LABELS: &[&str] = &["reason", "outcome"];

/// Fresh metric vectors: built on every scrape from the maps' absolute values.
struct Families {
    tx_packets: IntCounterVec,
    tx_bytes: IntCounterVec,
    rx_packets: IntCounterVec,
    rx_bytes: IntCounterVec,
    up: IntGaugeVec,
    weight: IntGaugeVec,
    packets: IntCounterVec,
    bytes: IntCounterVec,
    build: IntGaugeVec,
}

impl Families {
    fn new() -> Self {
        Self {
            tx_packets: counter(
                "ovpnlb_tunnel_tx_packets_total",
                "Packets sprayed into the tunnel.",
                TUNNEL_LABELS,
            ),
            tx_bytes: counter(
                "ovpnlb_tunnel_tx_bytes_total",
                "IP bytes sprayed into the tunnel.",
                TUNNEL_LABELS,
            ),
            rx_packets: counter(
                "ovpnlb_tunnel_rx_packets_total",
                "Packets that arrived from the tunnel.",
                TUNNEL_LABELS,
            ),
            rx_bytes: counter(
                "ovpnlb_tunnel_rx_bytes_total",
                "IP bytes that arrived from the tunnel.",
                TUNNEL_LABELS,
            ),
            up: gauge(
                "ovpnlb_tunnel_up",
                "1 while the tunnel is in the rotation, else 0.",
                TUNNEL_LABELS,
            ),
            weight: gauge(
                "ovpnlb_tunnel_weight",
                "The tunnel's weight in the live schedule (0 out of rotation).",
                TUNNEL_LABELS,
            ),
            packets: counter(
                "ovpnlb_packets_total",
                "Packets the datapath handled, by reason and outcome.",
                REASON_LABELS,
            ),
            bytes: counter(
                "ovpnlb_bytes_total",
                "Bytes the datapath handled, by reason and outcome.",
                REASON_LABELS,
            ),
            build: gauge(
                "ovpnlb_build_info",
                "Always 1; labels say which build is running.",
                &["version"],
            ),
        }
    }

    fn collectors(&self) -> [&dyn Collector; 9] {
        [
            &self.tx_packets,
            &self.tx_bytes,
            &self.rx_packets,
            &self.rx_bytes,
            &self.up,
            &self.weight,
            &self.packets,
            &self.bytes,
            &self.build,
        ]
    }
}

fn outcome_label(r: Reason) -> &'static str {
    match r.outcome() {
        Outcome::Forwarded => "forwarded",
        Outcome::Passed => "passed",
        Outcome::Dropped => "dropped",
    }
}

/// The metric families for the given tunnels and counters (none: the maps
/// could not be read, and only the build info is exposed).
fn families(tunnels: &[TunnelView], counters: Option<&Counters>) -> Vec<MetricFamily> {
    let f = Families::new();
    f.build
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    if let Some(counters) = counters {
        for (k, (view, stats)) in tunnels.iter().zip(&counters.tunnels).enumerate() {
            let id = k.to_string();
            let labels = [id.as_str(), view.device.as_str()];
            f.tx_packets
                .with_label_values(&labels)
                .inc_by(stats.tx_packets);
            f.tx_bytes.with_label_values(&labels).inc_by(stats.tx_bytes);
            f.rx_packets
                .with_label_values(&labels)
                .inc_by(stats.rx_packets);
            f.rx_bytes.with_label_values(&labels).inc_by(stats.rx_bytes);
            f.up.with_label_values(&labels).set(i64::from(view.up));
            f.weight
                .with_label_values(&labels)
                .set(i64::from(view.weight));
        }
        for (r, s) in Reason::ALL.iter().zip(&counters.reasons) {
            let labels = [r.name(), outcome_label(*r)];
            f.packets.with_label_values(&labels).inc_by(s.packets);
            f.bytes.with_label_values(&labels).inc_by(s.bytes);
        }
    }
    f.collectors().iter().flat_map(|c| c.collect()).collect()
}

fn encode(families: &[MetricFamily]) -> Result<String> {
    let mut out = Vec::new();
    TextEncoder::new().encode(families, &mut out)?;
    Ok(String::from_utf8(out)?)
}

/// Renders the exposition text for the current values.
///
/// # Errors
/// If encoding fails.
pub fn render(layout: &Layout, tunnels: &Tunnels) -> Result<String> {
    let tunnels = tunnels.lock().map(|t| t.clone()).unwrap_or_default();
    let counters = Counters::read(layout, u32::try_from(tunnels.len())?).ok();
    encode(&families(&tunnels, counters.as_ref()))
}

/// Binds `listen` now (so a bad address fails before anything is attached) and
/// serves `/metrics` from a thread.
///
/// # Panics
/// Never: the content-type header is a constant.
///
/// # Errors
/// If the address cannot be bound.
pub fn serve(listen: SocketAddr, layout: Layout, tunnels: Tunnels) -> Result<()> {
    let server = tiny_http::Server::http(listen)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("serving metrics on {listen} (metrics.listen)"))?;
    thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let content_type = tiny_http::Header::from_bytes(
                &b"Content-Type"[..],
                TextEncoder::new().format_type().as_bytes(),
            )
            .expect("a valid header");
            for request in server.incoming_requests() {
                let response =
                    if request.url() == "/metrics" || request.url().starts_with("/metrics?") {
                        match render(&layout, &tunnels) {
                            Ok(text) => tiny_http::Response::from_string(text)
                                .with_header(content_type.clone()),
                            Err(e) => tiny_http::Response::from_string(format!("{e:#}\n"))
                                .with_status_code(500),
                        }
                    } else {
                        tiny_http::Response::from_string("ovpn-lb: metrics are at /metrics\n")
                            .with_status_code(404)
                    };
                let _ = request.respond(response);
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use ovpn_lb_common::{ReasonStats, TunnelStats};

    use super::*;

    fn sample() -> String {
        let tunnels = vec![
            TunnelView {
                device: "tun0".into(),
                up: true,
                weight: 2,
            },
            TunnelView {
                device: "tun1".into(),
                up: false,
                weight: 0,
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
        };
        encode(&families(&tunnels, Some(&counters))).unwrap()
    }

    #[test]
    fn emits_exactly_the_documented_names_with_help_and_type() {
        let text = sample();
        let mut typed: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
            .collect();
        let helped = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        typed.sort_unstable();
        let mut want = METRIC_NAMES.to_vec();
        want.sort_unstable();
        assert_eq!(typed, want);
        assert_eq!(helped, METRIC_NAMES.len());
    }

    #[test]
    fn values_and_labels() {
        let text = sample();
        for line in [
            "ovpnlb_tunnel_tx_packets_total{device=\"tun0\",tunnel=\"0\"} 10",
            "ovpnlb_tunnel_rx_bytes_total{device=\"tun0\",tunnel=\"0\"} 700",
            "ovpnlb_tunnel_up{device=\"tun1\",tunnel=\"1\"} 0",
            "ovpnlb_tunnel_weight{device=\"tun0\",tunnel=\"0\"} 2",
            "ovpnlb_packets_total{outcome=\"dropped\",reason=\"no_tunnel\"} 9",
            "# TYPE ovpnlb_tunnel_tx_packets_total counter",
            "# TYPE ovpnlb_tunnel_up gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        let version = format!(
            "ovpnlb_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&version));
    }
}
