//! What `run` publishes about itself (a small JSON state file) and what
//! `status` prints from it and from the pinned counter maps.

use std::{fs, io::Write as _, path::Path, thread, time::Duration};

use anyhow::{Context as _, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use ovpn_lb_common::{Reason, ReasonStats, TunnelStats, maps::names, reason::Outcome};
use serde::{Deserialize, Serialize};

use crate::pins::Layout;

/// Written by `run` on every change; read by `status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    /// PID of the `run` that wrote this.
    pub pid: u32,
    /// False once that `run` has exited (the datapath may still be attached).
    pub running: bool,
    pub config: String,
    pub mode: String,
    /// "tc" or "xdp".
    #[serde(default)]
    pub hook: String,
    pub lan_interface: String,
    pub tunnels: Vec<TunnelState>,
    /// Managed neighbour entries `run` made for TAP tunnels; `detach` removes them.
    #[serde(default)]
    pub neighbours: Vec<ManagedNeighbour>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManagedNeighbour {
    pub device: String,
    pub addr: std::net::IpAddr,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TunnelState {
    pub id: u32,
    pub device: String,
    /// 0 while the device does not exist.
    pub ifindex: u32,
    pub weight: u32,
    /// `up` (in the rotation), `joining` (healthy, waiting out the up-delay) or `down`.
    pub state: String,
    /// Last state `OpenVPN`'s management interface reported, if one is configured.
    pub openvpn: Option<String>,
}

impl State {
    /// Writes atomically (temporary file, then rename).
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn write(&self, layout: &Layout) -> Result<()> {
        let path = layout.state_file();
        let tmp = path.with_extension("json.tmp");
        let mut f = fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
        fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// # Errors
    /// If there is no readable state file.
    pub fn read(layout: &Layout) -> Result<Self> {
        let path = layout.state_file();
        let text = fs::read_to_string(&path).with_context(|| {
            format!(
                "no ovpn-lb state at {} (is `ovpn-lb run` attached?)",
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
    }
}

/// Counters summed over CPUs, read from the pinned maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub tunnels: Vec<TunnelStats>,
    pub reasons: Vec<ReasonStats>,
}

fn per_cpu<T: aya::Pod + Default + Copy>(
    path: &Path,
    n: u32,
    add: impl Fn(T, &T) -> T,
) -> Result<Vec<T>> {
    let data = MapData::from_pin(path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    let map: PerCpuArray<_, T> = Map::from_map_data(data)?.try_into()?;
    (0..n)
        .map(|i| Ok(map.get(&i, 0)?.iter().fold(T::default(), &add)))
        .collect()
}

impl Counters {
    /// # Errors
    /// If the pinned maps cannot be read.
    pub fn read(layout: &Layout, tunnels: u32) -> Result<Self> {
        let maps = layout.maps();
        let tunnels = per_cpu(&maps.join(names::TUNNEL_STATS), tunnels, TunnelStats::plus)?;
        let count = u32::try_from(Reason::ALL.len())?;
        let reasons = per_cpu(&maps.join(names::REASON_STATS), count, ReasonStats::plus)?;
        Ok(Self { tunnels, reasons })
    }
}

/// The stable `status --json` document.
#[derive(Debug, Serialize)]
pub struct Report {
    pub running: bool,
    pub pid: u32,
    pub mode: String,
    /// "tc" or "xdp".
    pub hook: String,
    pub lan_interface: String,
    pub interval_seconds: f64,
    pub tunnels: Vec<TunnelReport>,
    pub reasons: Vec<ReasonReport>,
}

#[derive(Debug, Serialize)]
pub struct TunnelReport {
    pub id: u32,
    pub device: String,
    pub state: String,
    pub weight: u32,
    pub openvpn: Option<String>,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets_per_second: f64,
    pub tx_bits_per_second: f64,
    pub rx_packets_per_second: f64,
    pub rx_bits_per_second: f64,
}

#[derive(Debug, Serialize)]
pub struct ReasonReport {
    pub reason: &'static str,
    pub outcome: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

#[expect(clippy::cast_precision_loss, reason = "rates are for display")]
fn rate(after: u64, before: u64, seconds: f64) -> f64 {
    after.saturating_sub(before) as f64 / seconds
}

/// Samples the counters twice, `interval` apart.
///
/// # Errors
/// If the state file or the pinned maps cannot be read.
pub fn report(layout: &Layout, interval: Duration) -> Result<Report> {
    let state = State::read(layout)?;
    let n = u32::try_from(state.tunnels.len())?;
    let before = Counters::read(layout, n)?;
    thread::sleep(interval);
    let after = Counters::read(layout, n)?;
    let secs = interval.as_secs_f64().max(1e-3);
    let tunnels = state
        .tunnels
        .iter()
        .zip(after.tunnels.iter().zip(&before.tunnels))
        .map(|(t, (a, b))| TunnelReport {
            id: t.id,
            device: t.device.clone(),
            state: t.state.clone(),
            weight: t.weight,
            openvpn: t.openvpn.clone(),
            tx_packets: a.tx_packets,
            tx_bytes: a.tx_bytes,
            rx_packets: a.rx_packets,
            rx_bytes: a.rx_bytes,
            tx_packets_per_second: rate(a.tx_packets, b.tx_packets, secs),
            tx_bits_per_second: 8.0 * rate(a.tx_bytes, b.tx_bytes, secs),
            rx_packets_per_second: rate(a.rx_packets, b.rx_packets, secs),
            rx_bits_per_second: 8.0 * rate(a.rx_bytes, b.rx_bytes, secs),
        })
        .collect();
    let reasons = Reason::ALL
        .iter()
        .zip(&after.reasons)
        .map(|(r, s)| ReasonReport {
            reason: r.name(),
            outcome: match r.outcome() {
                Outcome::Forwarded => "forwarded",
                Outcome::Passed => "passed",
                Outcome::Dropped => "dropped",
            },
            packets: s.packets,
            bytes: s.bytes,
        })
        .collect();
    Ok(Report {
        running: state.running,
        pid: state.pid,
        mode: state.mode,
        hook: state.hook,
        lan_interface: state.lan_interface,
        interval_seconds: secs,
        tunnels,
        reasons,
    })
}

/// `status` as a table.
#[must_use]
pub fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let loader = if r.running {
        format!("running (pid {})", r.pid)
    } else {
        "stopped (datapath still attached)".to_owned()
    };
    let _ = writeln!(
        out,
        "ovpn-lb: loader {loader}, spray {}, hook {}, LAN {}",
        r.mode, r.hook, r.lan_interface
    );
    let _ = writeln!(
        out,
        "{:>3} {:<12} {:<8} {:>6} {:>12} {:>14} {:>10} {:>12} {:>12} {:>14} {:>10} {:>12}  openvpn",
        "id",
        "device",
        "state",
        "weight",
        "tx packets",
        "tx bytes",
        "tx pkt/s",
        "tx bit/s",
        "rx packets",
        "rx bytes",
        "rx pkt/s",
        "rx bit/s"
    );
    for t in &r.tunnels {
        let _ = writeln!(
            out,
            "{:>3} {:<12} {:<8} {:>6} {:>12} {:>14} {:>10.0} {:>12.0} {:>12} {:>14} {:>10.0} {:>12.0}  {}",
            t.id,
            t.device,
            t.state,
            t.weight,
            t.tx_packets,
            t.tx_bytes,
            t.tx_packets_per_second,
            t.tx_bits_per_second,
            t.rx_packets,
            t.rx_bytes,
            t.rx_packets_per_second,
            t.rx_bits_per_second,
            t.openvpn.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(
        out,
        "\n{:<20} {:<10} {:>12} {:>14}",
        "reason", "outcome", "packets", "bytes"
    );
    for s in &r.reasons {
        let _ = writeln!(
            out,
            "{:<20} {:<10} {:>12} {:>14}",
            s.reason, s.outcome, s.packets, s.bytes
        );
    }
    out
}
