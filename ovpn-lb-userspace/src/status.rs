//! What `run` publishes about itself (a small JSON state file) and what
//! `status` prints from it and from the pinned counter maps.

use std::{fs, io::Write as _, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use aya::maps::{Array, Map, MapData, PerCpuArray};
use ovpn_lb_common::{
    Reason, ReasonStats, TunnelStats,
    maps::names,
    queue::{Rings, TunnelQueue},
};
use serde::{Deserialize, Serialize};

use crate::{
    announce::{Block, Flags},
    pins::Layout,
};

/// Written by `run` on every change; read by `status`, `detach` and the next
/// `run`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// PID of the `run` that wrote this.
    pub pid: u32,
    /// False once that `run` has exited (the datapath may still be attached).
    pub running: bool,
    /// Why that `run` exited, when it was not asked to.
    #[serde(default)]
    pub exit_error: Option<String>,
    pub config: String,
    /// "packet" or "flow".
    #[serde(default)]
    pub spray: String,
    /// "tc" or "xdp".
    #[serde(default)]
    pub hook: String,
    /// Packet spray's ring accounting: the hooks it runs on (`fexit`,
    /// `tp_btf` or `raw_tp`), `None` while it is off.
    #[serde(default)]
    pub ring_accounting: Option<String>,
    pub lan_interface: String,
    /// The WAN devices guarded now (nothing of the LAN leaves them in the
    /// clear).
    #[serde(default)]
    pub wan_guard: Vec<String>,
    pub tunnels: Vec<TunnelState>,
    /// Managed neighbour entries `run` made for TAP tunnels; `detach` removes them.
    #[serde(default)]
    pub neighbours: Vec<ManagedNeighbour>,
    /// ovpn-lb's policy rules and table; `detach` removes them. Written
    /// before they are made, so a crash in between leaves them on record.
    #[serde(default)]
    pub kernel_route: Option<crate::kernel_path::Owned>,
    /// Rules and tables of an earlier configuration (another table, priority
    /// or LAN) not yet removed: the next `run` removes them, or `detach`.
    #[serde(default)]
    pub retiring_kernel_routes: Vec<crate::kernel_path::Owned>,
    /// A bpffs `run` mounted itself; `detach` unmounts it, and no other.
    #[serde(default)]
    pub mounted_bpffs: Option<std::path::PathBuf>,
    /// What the kernel offers and the fallbacks in force.
    #[serde(default)]
    pub kernel: Option<crate::datapath::kernel::Report>,
    /// `[announce]`: whether this gateway announces, and why.
    #[serde(default)]
    pub announce: Option<AnnounceState>,
}

/// The announcement as the loader last decided it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct AnnounceState {
    pub announced: bool,
    /// Why not, while withdrawn (empty while announced).
    pub reasons: Vec<Block>,
    /// The verdict and its reasons in words.
    pub explanation: String,
    pub in_rotation: usize,
    pub min_tunnels: usize,
    /// Changes since the loader started.
    pub transitions: u64,
    /// Unix time of the last change (or the start).
    pub since: Option<f64>,
    /// The prefixes the marker routes announce.
    pub prefixes: Vec<String>,
    pub table: u32,
    pub protocol: u8,
    pub metric: u32,
    pub health_file: std::path::PathBuf,
    pub maintenance_file: std::path::PathBuf,
    /// How long a stop drains.
    pub drain_ms: u64,
    /// What this gateway tells the far one of its pair.
    pub flags: Flags,
    /// What the far gateway last said.
    pub far_flags: Flags,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManagedNeighbour {
    pub device: String,
    pub addr: std::net::IpAddr,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TunnelState {
    pub id: u32,
    pub device: String,
    /// 0 while the device does not exist.
    pub ifindex: u32,
    pub weight: u32,
    /// `up` (in the rotation), `joining` (healthy, waiting out the up-delay) or `down`.
    pub state: String,
    /// Why it is not up: `link`, `openvpn`, `next_hop` or `probe`.
    #[serde(default)]
    pub cause: Option<String>,
    /// Unix time of its last joining or leaving the rotation.
    #[serde(default)]
    pub since: Option<f64>,
    /// Last state `OpenVPN`'s management interface reported, if one is configured.
    pub openvpn: Option<String>,
    /// Probe figures, while the tunnel is probed.
    #[serde(default)]
    pub probe: Option<ProbeState>,
    /// Times it left the rotation, by cause.
    #[serde(default)]
    pub departures: std::collections::BTreeMap<String, u64>,
    /// What the far gateway says of itself on this tunnel (`draining`,
    /// `lan_down`); empty when all is well, or it does not say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_flags: Vec<String>,
}

/// A probed tunnel's figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ProbeState {
    pub rtt_last_ms: f64,
    pub rtt_smoothed_ms: f64,
    pub rtt_min_ms: f64,
    pub sent: u64,
    pub answered: u64,
    /// Unanswered share of the probes sent.
    pub loss: f64,
    /// Kept alive by its traffic (packets arriving, its ring read) while
    /// its probes are lost, as in a ring kept full by more than the tunnel
    /// carries.
    #[serde(default)]
    pub kept_by_traffic: bool,
}

impl State {
    /// Whether the `run` that wrote this still runs: it said so and its PID
    /// is an `ovpn-lb` (a `kill -9` or a crash leaves `running` true).
    #[must_use]
    pub fn loader_alive(&self) -> bool {
        self.running
            && fs::read_to_string(format!("/proc/{}/comm", self.pid))
                .is_ok_and(|c| c.trim() == "ovpn-lb")
    }

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

    /// The same without the probe figures, which change with every answer.
    #[must_use]
    pub fn without_probe_figures(&self) -> Self {
        let mut s = self.clone();
        for t in &mut s.tunnels {
            t.probe = None;
        }
        s
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
    /// Each tunnel's ring accounting (all zero while packet spray's
    /// accounting is off).
    pub queues: Vec<TunnelQueue>,
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
        let n = tunnels;
        let tunnels = per_cpu(&maps.join(names::TUNNEL_STATS), n, TunnelStats::plus)?;
        let count = u32::try_from(Reason::ALL.len())?;
        let reasons = per_cpu(&maps.join(names::REASON_STATS), count, ReasonStats::plus)?;
        let path = maps.join(names::RINGS);
        let data = MapData::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        let map: Array<_, Rings> = Map::from_map_data(data)?.try_into()?;
        let rings = map.get(&0, 0)?;
        let queues = rings.tunnels.iter().take(n as usize).copied().collect();
        Ok(Self {
            tunnels,
            reasons,
            queues,
        })
    }
}

/// The stable `status --json` document.
#[derive(Debug, Serialize)]
pub struct Report {
    pub running: bool,
    pub pid: u32,
    /// Why the loader exited, when it stopped on an error.
    pub exit_error: Option<String>,
    /// "packet" or "flow".
    pub spray: String,
    /// "tc" or "xdp".
    pub hook: String,
    /// Packet spray's ring accounting: `fexit`, `tp_btf`, `raw_tp`, or
    /// null while off (packet spray is then round robin).
    pub ring_accounting: Option<String>,
    pub lan_interface: String,
    /// The WAN devices guarded (nothing of the LAN leaves them in the clear).
    pub wan_guard: Vec<String>,
    pub interval_seconds: f64,
    /// The kernel, how tc programs attach, and the fallbacks in force.
    pub kernel: Option<crate::datapath::kernel::Report>,
    /// `[announce]`: whether the gateway announces, and why; null without it.
    pub announce: Option<AnnounceState>,
    pub tunnels: Vec<TunnelReport>,
    pub reasons: Vec<ReasonReport>,
}

#[derive(Debug, Serialize)]
pub struct TunnelReport {
    pub id: u32,
    pub device: String,
    pub state: String,
    /// Why it is not up: `link`, `openvpn`, `next_hop` or `probe`.
    pub cause: Option<String>,
    pub weight: u32,
    pub openvpn: Option<String>,
    pub probe: Option<ProbeState>,
    pub departures: std::collections::BTreeMap<String, u64>,
    /// What the far gateway says of itself on this tunnel (`draining`,
    /// `lan_down`); empty when all is well, or it does not say.
    pub peer_flags: Vec<String>,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets_per_second: f64,
    pub tx_bits_per_second: f64,
    pub rx_packets_per_second: f64,
    pub rx_bits_per_second: f64,
    /// The tunnel's ring, as packet spray sees it.
    pub ring: RingReport,
}

/// A tunnel device's ring (the queue its OpenVPN reads), from the ring
/// accounting: all zero while it is off.
#[derive(Debug, Serialize)]
pub struct RingReport {
    /// Bytes queued and not yet read by OpenVPN.
    pub backlog_bytes: u64,
    /// How fast OpenVPN reads it while it has work (0: not measured yet).
    pub drain_bytes_per_second: u64,
    /// Packets the kernel dropped because the ring was full.
    pub full_drops: u64,
    /// OpenVPN stopped reading (packets wait, no read for 10 ms past the
    /// one it holds) or the ring is full: packet spray passes the tunnel
    /// over until it reads again.
    pub reader_stopped: bool,
}

impl RingReport {
    /// Tunnel `q`'s ring at `now` (monotonic ns).
    #[must_use]
    pub fn new(q: &TunnelQueue, now: u64) -> Self {
        Self {
            backlog_bytes: q.backlog().bytes,
            drain_bytes_per_second: q.deq.drain.bytes_per_second(),
            full_drops: q.enq.refused,
            reader_stopped: q.snapshot().stopped(now),
        }
    }
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
pub async fn report(layout: &Layout, interval: Duration) -> Result<Report> {
    let state = State::read(layout)?;
    let n = u32::try_from(state.tunnels.len())?;
    let before = Counters::read(layout, n)?;
    tokio::time::sleep(interval).await;
    let after = Counters::read(layout, n)?;
    let now = crate::probe::now_ns();
    let secs = interval.as_secs_f64().max(1e-3);
    let tunnels = state
        .tunnels
        .iter()
        .zip(after.tunnels.iter().zip(&before.tunnels))
        .zip(&after.queues)
        .map(|((t, (a, b)), q)| TunnelReport {
            id: t.id,
            device: t.device.clone(),
            state: t.state.clone(),
            cause: t.cause.clone(),
            weight: t.weight,
            openvpn: t.openvpn.clone(),
            probe: t.probe.clone(),
            departures: t.departures.clone(),
            peer_flags: t.peer_flags.clone(),
            tx_packets: a.tx_packets,
            tx_bytes: a.tx_bytes,
            rx_packets: a.rx_packets,
            rx_bytes: a.rx_bytes,
            tx_packets_per_second: rate(a.tx_packets, b.tx_packets, secs),
            tx_bits_per_second: 8.0 * rate(a.tx_bytes, b.tx_bytes, secs),
            rx_packets_per_second: rate(a.rx_packets, b.rx_packets, secs),
            rx_bits_per_second: 8.0 * rate(a.rx_bytes, b.rx_bytes, secs),
            ring: RingReport::new(q, now),
        })
        .collect();
    let reasons = Reason::ALL
        .iter()
        .zip(&after.reasons)
        .map(|(r, s)| ReasonReport {
            reason: r.name(),
            outcome: r.outcome().name(),
            packets: s.packets,
            bytes: s.bytes,
        })
        .collect();
    let running = state.loader_alive();
    let exit_error = match (&state.exit_error, state.running && !running) {
        (None, true) => Some(format!(
            "pid {} is gone without a word (killed, or crashed)",
            state.pid
        )),
        (e, _) => e.clone(),
    };
    Ok(Report {
        running,
        pid: state.pid,
        exit_error,
        spray: state.spray,
        hook: state.hook,
        ring_accounting: state.ring_accounting,
        lan_interface: state.lan_interface,
        wan_guard: state.wan_guard,
        interval_seconds: secs,
        kernel: state.kernel,
        announce: state.announce,
        tunnels,
        reasons,
    })
}

/// `status --check`, for keepalived's `track_script`: 0 announced, 1
/// withdrawn (or nothing to announce: no `[announce]`), 2 not running
/// (no state, or the loader is gone); and one line saying so.
#[must_use]
pub fn check(state: Option<&State>) -> (u8, String) {
    match state.filter(|s| s.loader_alive()) {
        Some(s) => verdict(s),
        None => (
            2,
            "not running: no ovpn-lb run follows this gateway's health".to_owned(),
        ),
    }
}

/// A running loader's announcement as `--check` reports it.
fn verdict(state: &State) -> (u8, String) {
    match &state.announce {
        Some(a) if a.announced => (0, a.explanation.clone()),
        Some(a) => (1, a.explanation.clone()),
        None => (
            1,
            "nothing announced: the configuration has no [announce] section".to_owned(),
        ),
    }
}

/// `value` to three significant digits with an SI prefix and a space:
/// 1234567 -> "1.23 M", 999 -> "999 ".
#[must_use]
pub fn si(value: f64) -> String {
    const PREFIXES: [&str; 6] = ["", "k", "M", "G", "T", "P"];
    let mut v = value;
    let mut i = 0;
    while v.abs() >= 1000.0 && i + 1 < PREFIXES.len() {
        v /= 1000.0;
        i += 1;
    }
    let digits = if i == 0 || v.abs() >= 100.0 {
        0
    } else if v.abs() >= 10.0 {
        1
    } else {
        2
    };
    let mut text = format!("{v:.digits$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_owned();
    }
    format!("{text} {}", PREFIXES[i])
}

#[expect(clippy::cast_precision_loss, reason = "for display")]
fn bytes(n: u64) -> String {
    format!("{}B", si(n as f64))
}

/// The first line of `status`: the loader, how it sprays, where.
fn headline(r: &Report) -> String {
    let loader = match (&r.running, &r.exit_error) {
        (true, _) => format!("running (pid {})", r.pid),
        (false, Some(e)) => {
            format!("EXITED ON AN ERROR ({e}); datapath still attached, health not followed")
        }
        (false, None) => "stopped (datapath still attached, health not followed)".to_owned(),
    };
    let rings = match (&r.ring_accounting, r.spray.as_str()) {
        (Some(hooks), _) => format!(" (rings accounted by {hooks})"),
        (None, "packet") => " (rings not accounted: round robin)".to_owned(),
        (None, _) => String::new(),
    };
    let wan = if r.wan_guard.is_empty() {
        "none guarded".to_owned()
    } else {
        format!("{} guarded", r.wan_guard.join(", "))
    };
    format!(
        "ovpn-lb: loader {loader}, spray {}{rings}, hook {}, LAN {}, WAN {wan}\n",
        r.spray, r.hook, r.lan_interface
    )
}

/// `status` as a table. `all`: list every reason, not only those that
/// counted something.
#[must_use]
pub fn render(r: &Report, all: bool) -> String {
    use std::fmt::Write as _;
    let mut out = headline(r);
    render_kernel(&mut out, r);
    render_announce(&mut out, r);
    let _ = writeln!(
        out,
        "{:>3} {:<10} {:<13} {:>6} {:>10} {:>10} {:>13} {:>10} {:>10} {:>13} {:>28} {:>6}  openvpn",
        "id",
        "device",
        "state",
        "weight",
        "tx pkts",
        "tx bytes",
        "tx rate",
        "rx pkts",
        "rx bytes",
        "rx rate",
        "rtt ms last / smoothed (min)",
        "loss"
    );
    #[expect(clippy::cast_precision_loss, reason = "for display")]
    for t in &r.tunnels {
        let state = match &t.cause {
            Some(c) if t.state != "up" => format!("{} ({c})", t.state),
            _ => t.state.clone(),
        };
        let (rtt, loss) = t
            .probe
            .as_ref()
            .map_or(("-".to_owned(), "-".to_owned()), |p| {
                (
                    format!(
                        "{:.1} / {:.1} ({:.1})",
                        p.rtt_last_ms, p.rtt_smoothed_ms, p.rtt_min_ms
                    ),
                    format!("{:.0}%", p.loss * 100.0),
                )
            });
        let _ = writeln!(
            out,
            "{:>3} {:<10} {:<13} {:>6} {:>10} {:>10} {:>13} {:>10} {:>10} {:>13} {:>28} {:>6}  {}",
            t.id,
            t.device,
            state,
            t.weight,
            si(t.tx_packets as f64).trim_end(),
            bytes(t.tx_bytes),
            format!("{}bit/s", si(t.tx_bits_per_second)),
            si(t.rx_packets as f64).trim_end(),
            bytes(t.rx_bytes),
            format!("{}bit/s", si(t.rx_bits_per_second)),
            rtt,
            loss,
            t.openvpn.as_deref().unwrap_or("-")
        );
    }
    render_notes(&mut out, r);
    render_rings(&mut out, r);
    let shown: Vec<&ReasonReport> = r.reasons.iter().filter(|s| all || s.packets > 0).collect();
    let _ = writeln!(
        out,
        "\n{:<22} {:<10} {:>10} {:>10}",
        "reason", "outcome", "packets", "bytes"
    );
    #[expect(clippy::cast_precision_loss, reason = "for display")]
    for s in &shown {
        let _ = writeln!(
            out,
            "{:<22} {:<10} {:>10} {:>10}",
            s.reason,
            s.outcome,
            si(s.packets as f64).trim_end(),
            bytes(s.bytes)
        );
    }
    if !all && shown.len() < r.reasons.len() {
        let _ = writeln!(
            out,
            "({} reasons at zero not shown; --all lists them)",
            r.reasons.len() - shown.len()
        );
    }
    out
}

/// The kernel and the fallbacks in force, if the loader said.
fn render_kernel(out: &mut String, r: &Report) {
    use std::fmt::Write as _;
    if let Some(k) = &r.kernel {
        let _ = writeln!(
            out,
            "kernel {}: tc programs attach through {}",
            k.release, k.tc_hook
        );
        for f in &k.fallbacks {
            let _ = writeln!(out, "  fallback: {}", f.what);
        }
    }
}

/// The announcement's line, with `[announce]`.
fn render_announce(out: &mut String, r: &Report) {
    use std::fmt::Write as _;
    if let Some(a) = &r.announce {
        let verdict = if a.announced {
            "ANNOUNCED"
        } else {
            "WITHDRAWN"
        };
        let why = a
            .explanation
            .split_once(": ")
            .map_or(a.explanation.as_str(), |(_, why)| why);
        let _ = writeln!(
            out,
            "announce: {verdict} {} ({why}); {} change(s) since start",
            a.prefixes.join(" "),
            a.transitions
        );
    }
}

/// What the table has no column for: a tunnel kept in by its traffic while
/// its probes are lost, what the far gateway says of itself.
fn render_notes(out: &mut String, r: &Report) {
    use std::fmt::Write as _;
    for t in &r.tunnels {
        if t.probe.as_ref().is_some_and(|p| p.kept_by_traffic) {
            let _ = writeln!(
                out,
                "    {}: probes lost (its ring full?); kept in: the far end's packets arrive and OpenVPN reads the ring",
                t.device
            );
        }
        if !t.peer_flags.is_empty() {
            let _ = writeln!(
                out,
                "    {}: the far gateway says: {}",
                t.device,
                t.peer_flags.join(", ")
            );
        }
    }
}

/// The rings' table, while packet spray's accounting has measured any.
fn render_rings(out: &mut String, r: &Report) {
    use std::fmt::Write as _;
    if !r.tunnels.iter().any(|t| t.ring.drain_bytes_per_second != 0) {
        return;
    }
    let _ = writeln!(
        out,
        "\n{:>3} {:<10} {:>12} {:>14} {:>11}  reader",
        "id", "device", "ring backlog", "drain rate", "ring full"
    );
    #[expect(clippy::cast_precision_loss, reason = "for display")]
    for t in &r.tunnels {
        let _ = writeln!(
            out,
            "{:>3} {:<10} {:>12} {:>14} {:>11}  {}",
            t.id,
            t.device,
            bytes(t.ring.backlog_bytes),
            format!("{}B/s", si(t.ring.drain_bytes_per_second as f64)),
            si(t.ring.full_drops as f64).trim_end(),
            if t.ring.reader_stopped {
                "STOPPED: passed over"
            } else {
                "reading"
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn si_prefixes() {
        assert_eq!(si(0.0), "0 ");
        assert_eq!(si(999.0), "999 ");
        assert_eq!(si(1234.0), "1.23 k");
        assert_eq!(si(12_300_000.0), "12.3 M");
        assert_eq!(si(950_000_000.0), "950 M");
        assert_eq!(bytes(2_000_000_000), "2 GB");
    }

    fn report() -> Report {
        let tunnel = |id: u32, state: &str, cause: Option<&str>| TunnelReport {
            id,
            device: format!("tun{id}"),
            state: state.to_owned(),
            cause: cause.map(str::to_owned),
            weight: 1,
            openvpn: Some("CONNECTED".to_owned()),
            probe: Some(ProbeState {
                rtt_last_ms: 2.5,
                rtt_smoothed_ms: 3.3,
                rtt_min_ms: 1.0,
                sent: 100,
                answered: 99,
                loss: 0.01,
                kept_by_traffic: id == 1,
            }),
            departures: std::collections::BTreeMap::new(),
            peer_flags: if id == 0 {
                vec!["lan_down".to_owned()]
            } else {
                Vec::new()
            },
            tx_packets: 1_500_000,
            tx_bytes: 2_000_000_000,
            rx_packets: 0,
            rx_bytes: 0,
            tx_packets_per_second: 0.0,
            tx_bits_per_second: 950_000_000.0,
            rx_packets_per_second: 0.0,
            rx_bits_per_second: 0.0,
            ring: RingReport {
                backlog_bytes: 0,
                drain_bytes_per_second: 0,
                full_drops: 0,
                reader_stopped: false,
            },
        };
        Report {
            running: true,
            pid: 42,
            exit_error: None,
            spray: "packet".to_owned(),
            hook: "tc".to_owned(),
            ring_accounting: Some("fexit".to_owned()),
            lan_interface: "lan".to_owned(),
            wan_guard: vec!["eth0".to_owned()],
            interval_seconds: 1.0,
            kernel: Some(crate::datapath::kernel::Report {
                release: "6.1.0-57-amd64".to_owned(),
                tc_hook: "legacy-tc".to_owned(),
                ring_accounting: false,
                fallbacks: vec![crate::datapath::kernel::Fallback {
                    name: "legacy_tc".to_owned(),
                    what: "tc programs attach as cls_bpf filters on a clsact qdisc".to_owned(),
                }],
            }),
            announce: None,
            tunnels: vec![tunnel(0, "up", None), tunnel(1, "down", Some("probe"))],
            reasons: Reason::ALL
                .iter()
                .map(|r| ReasonReport {
                    reason: r.name(),
                    outcome: r.outcome().name(),
                    packets: u64::from(*r == Reason::Sprayed) * 1234,
                    bytes: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn the_table_reads_in_human_units_and_hides_reasons_at_zero() {
        let r = report();
        let text = render(&r, false);
        assert!(
            text.contains("kernel 6.1.0-57-amd64: tc programs attach through legacy-tc\n  fallback: tc programs attach as cls_bpf filters on a clsact qdisc\n"),
            "{text}"
        );
        let row = text.lines().find(|l| l.contains("tun0")).unwrap();
        for want in [
            "1.5 M",
            "2 GB",
            "950 Mbit/s",
            "2.5 / 3.3 (1.0)",
            "1%",
            "CONNECTED",
        ] {
            assert!(row.contains(want), "{want:?} in {row:?}");
        }
        assert!(text.contains("down (probe)"), "{text}");
        assert!(
            text.contains("sprayed") && !text.contains("not_ip"),
            "{text}"
        );
        let hidden = Reason::ALL.len() - 1;
        assert!(
            text.contains(&format!(
                "({hidden} reasons at zero not shown; --all lists them)"
            )),
            "{text}"
        );
        let all = render(&r, true);
        assert!(
            all.contains("not_ip") && !all.contains("not shown"),
            "{all}"
        );
        assert!(text.contains("WAN eth0 guarded"), "{text}");
        assert!(
            text.contains("tun1: probes lost (its ring full?); kept in:")
                && text.contains("tun0: the far gateway says: lan_down"),
            "{text}"
        );
        // No ring table until the accounting has measured a drain rate.
        assert!(!text.contains("ring backlog"), "{text}");
        assert!(
            text.contains("spray packet (rings accounted by fexit)"),
            "{text}"
        );
        let mut measured = r;
        measured.tunnels[0].ring.drain_bytes_per_second = 1_250_000;
        measured.tunnels[1].ring.reader_stopped = true;
        let text = render(&measured, false);
        assert!(text.contains("1.25 MB/s"), "{text}");
        let stopped = text.lines().filter(|l| l.contains("STOPPED")).count();
        assert_eq!(stopped, 1, "{text}");
        measured.ring_accounting = None;
        let text = render(&measured, false);
        assert!(text.contains("rings not accounted: round robin"), "{text}");
    }

    #[test]
    fn check_exit_codes_follow_the_announcement_and_the_loader() {
        use crate::announce::{Announcer, Inputs};
        let mut announcer = Announcer::new(1);
        let inputs = Inputs {
            in_rotation: 2,
            lan_up: true,
            maintenance: false,
            stopping: false,
            far: Flags::default(),
        };
        announcer.decide(inputs);
        let state = |announcer: &Announcer| State {
            // This test's own process: alive, but not named ovpn-lb.
            pid: std::process::id(),
            running: true,
            announce: Some(AnnounceState {
                announced: announcer.announced,
                reasons: announcer.blocks.clone(),
                explanation: announcer.explain(),
                ..AnnounceState::default()
            }),
            ..State::default()
        };
        assert_eq!(check(None).0, 2);
        // A PID that is not an ovpn-lb is a loader gone (killed, crashed).
        assert_eq!(check(Some(&state(&announcer))).0, 2);
        // The test cannot be named ovpn-lb: the verdict of a live loader.
        let alive = |s: State| verdict(&s);
        let (code, line) = alive(state(&announcer));
        assert_eq!(code, 0, "{line}");
        assert!(line.starts_with("announced"), "{line}");
        announcer.decide(Inputs {
            maintenance: true,
            ..inputs
        });
        let (code, line) = alive(state(&announcer));
        assert_eq!(code, 1);
        assert!(line.contains("maintenance file"), "{line}");
        let no_section = State {
            announce: None,
            ..state(&announcer)
        };
        assert_eq!(alive(no_section).0, 1);
        let mut r = report();
        r.announce = state(&announcer).announce;
        r.announce.as_mut().unwrap().prefixes = vec!["10.2.0.0/24".to_owned()];
        let text = render(&r, false);
        assert!(
            text.contains("announce: WITHDRAWN 10.2.0.0/24 (the maintenance file exists)"),
            "{text}"
        );
    }
}
