//! The Grafana dashboard parses, and every metric it queries is one the
//! exporter emits (the exporter's own tests pin `metrics::FAMILIES` to its output).

use ovpn_lb::metrics;
use serde_json::Value;

const DASHBOARD: &str = include_str!("../../dashboards/ovpn-lb.json");

fn expressions(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query", Value::String(s)) => out.push(s.clone()),
                    _ => expressions(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| expressions(v, out)),
        _ => {}
    }
}

/// Identifiers in a `PromQL` expression that name ovpn-lb metrics.
fn metric_names(expr: &str) -> Vec<&str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("ovpnlb_"))
        .collect()
}

#[test]
fn dashboard_parses_and_uses_only_exported_metrics() {
    let dashboard: Value =
        serde_json::from_str(DASHBOARD).expect("dashboards/ovpn-lb.json is JSON");
    let mut exprs = Vec::new();
    expressions(&dashboard, &mut exprs);
    let used: Vec<&str> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    assert!(!used.is_empty(), "the dashboard queries no ovpn-lb metric");
    for name in &used {
        assert!(
            metrics::series_names().any(|n| n == *name),
            "the dashboard uses {name}, which the exporter does not emit"
        );
    }
    // It shows what operators watch: throughput, share, drops, state, and
    // the probes' round trips and the causes of departures.
    for needed in [
        "ovpnlb_tunnel_rtt_seconds",
        "ovpnlb_tunnel_probe_rtt_seconds_bucket",
        "ovpnlb_tunnel_departures_total",
        "ovpnlb_tunnel_tx_bytes_total",
        "ovpnlb_tunnel_tx_packets_total",
        "ovpnlb_packets_total",
        "ovpnlb_tunnel_up",
    ] {
        assert!(used.contains(&needed), "no panel uses {needed}");
    }
    let titles: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for word in ["Throughput", "share", "Drops", "state"] {
        assert!(
            titles.iter().any(|t| t.contains(word)),
            "no panel about {word}: {titles:?}"
        );
    }
}
