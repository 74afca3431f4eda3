//! A real Prometheus server (Debian's) scrapes a running loader; its answers
//! agree with `bpftool`'s dump of the same pinned maps, and `promtool` finds
//! nothing to say about the exposition.

use std::{
    fmt::Write as _,
    fs,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use ovpn_lb::metrics;
use ovpn_lb_tests::{
    gateway::{GatewayLab, http_get},
    netns,
    process::{Spawned, run},
    root_alone,
};
use serde_json::Value;

fn start_prometheus(lab: &GatewayLab) -> Spawned {
    let dir = lab.scratch.dir.join("prometheus");
    fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    fs::write(
        &config,
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: ovpn-lb\n    static_configs:\n      - targets: ['127.0.0.1:9477']\n",
    )
    .unwrap();
    let child = netns::command(lab.gw.name(), "prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .args(["--web.listen-address=127.0.0.1:9090", "--log.level=warn"])
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus (Debian package `prometheus`; cargo xtask setup installs it)");
    let server = Spawned(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = lab
            .gw
            .enter(|| std::net::TcpStream::connect("127.0.0.1:9090").is_ok())
            && http_get(&lab.gw, "127.0.0.1:9090", "/-/ready").0 == 200;
        if ready {
            return server;
        }
        assert!(Instant::now() < deadline, "prometheus did not become ready");
        thread::sleep(Duration::from_millis(200));
    }
}

/// Result vector of an instant query.
fn query(lab: &GatewayLab, promql: &str) -> Vec<Value> {
    let (status, body) = http_get(
        &lab.gw,
        "127.0.0.1:9090",
        &format!("/api/v1/query?query={promql}"),
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// A sample's value; Prometheus sends it as a decimal string.
fn value(sample: &Value) -> u64 {
    let text = sample["value"][1].as_str().unwrap();
    text.parse()
        .unwrap_or_else(|_| panic!("not a whole number: {text}"))
}

/// `tx_packets` per tunnel id, summed over CPUs, from `bpftool map dump pinned`.
fn bpftool_tx_packets(lab: &GatewayLab) -> Vec<(u64, u64)> {
    let path = lab.scratch.layout().pin_root.join("maps/TUNNEL_STATS");
    let text = run(
        "bpftool",
        &["map", "dump", "pinned", path.to_str().unwrap()],
    );
    for field in ["tx_packets", "tx_bytes", "rx_packets", "rx_bytes"] {
        assert!(
            text.contains(&format!("\"{field}\"")),
            "bpftool shows no {field}"
        );
    }
    let json: Value = serde_json::from_str(&run(
        "bpftool",
        &["-j", "map", "dump", "pinned", path.to_str().unwrap()],
    ))
    .unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .map(|e| &e["formatted"])
        .map(|e| {
            let sum = e["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["value"]["tx_packets"].as_u64().unwrap())
                .sum();
            (e["key"].as_u64().unwrap(), sum)
        })
        .collect()
}

#[test]
fn prometheus_scrapes_what_bpftool_shows() {
    let Some(_alone) = root_alone() else { return };
    // With [announce], so that its families have series too.
    let lab = GatewayLab::new(200);
    let mut config = std::fs::read_to_string(&lab.config).unwrap();
    let maintenance = lab.scratch.dir.join("maintenance");
    let _ = write!(
        config,
        "\n[announce]\ndrain_ms = 0\nmaintenance_file = \"{}\"\n",
        maintenance.display()
    );
    std::fs::write(&lab.config, config).unwrap();
    let loader = lab.start_loader(&[]);
    let _prometheus = start_prometheus(&lab);

    let pings = lab.ping(90, "0.01").wait();
    assert_eq!(pings, (90, 90));
    // No traffic from here on: wait for a scrape that saw it all.
    let dump = bpftool_tx_packets(&lab);
    let deadline = Instant::now() + Duration::from_secs(20);
    let series = loop {
        let series = query(&lab, "ovpnlb_tunnel_tx_packets_total");
        let total: u64 = series.iter().map(value).sum();
        if series.len() == 3 && total == 90 {
            break series;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus never saw all 90 packets: {series:?}"
        );
        thread::sleep(Duration::from_millis(300));
    };
    for s in &series {
        let tunnel: u64 = s["metric"]["tunnel"].as_str().unwrap().parse().unwrap();
        assert_eq!(s["metric"]["device"], format!("ovt{tunnel}"));
        assert_eq!(s["metric"]["job"], "ovpn-lb");
        let from_bpftool = dump.iter().find(|(k, _)| *k == tunnel).unwrap().1;
        assert_eq!(
            value(s),
            from_bpftool,
            "tunnel {tunnel}: Prometheus vs bpftool"
        );
        // Per-CPU cursors: with two CPUs receiving, shares are near, not exactly, a third.
        assert!(
            (25..=35).contains(&value(s)),
            "tunnel {tunnel}: {}",
            value(s)
        );
    }
    for s in query(&lab, "ovpnlb_tunnel_up") {
        assert_eq!(value(&s), 1, "{s}");
    }
    let announced = query(&lab, "ovpnlb_announced");
    assert_eq!(
        announced.iter().map(value).collect::<Vec<_>>(),
        [1],
        "{announced:?}"
    );
    let in_rotation = query(&lab, "ovpnlb_tunnels_in_rotation");
    assert_eq!(in_rotation.iter().map(value).collect::<Vec<_>>(), [3]);
    assert_eq!(query(&lab, "up").iter().map(value).collect::<Vec<_>>(), [1]);
    // Every exported family reached Prometheus.
    for name in metrics::series_names() {
        assert!(!query(&lab, &name).is_empty(), "Prometheus has no {name}");
    }

    // promtool has nothing to say about the exposition.
    let exposition = lab.scrape();
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(promtool.stdin.as_mut().unwrap(), exposition.as_bytes()).unwrap();
    let result = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(
        result.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );

    lab.stop_and_detach(loader);
}
