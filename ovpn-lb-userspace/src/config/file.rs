//! The configuration file as written: TOML, read and written with serde.
//! Only shape is checked here; meaning is checked by `validate`. The same
//! types write files (the generator, the test bed, the benchmark), so every
//! setting has one definition.

use serde::{Deserialize, Serialize};

/// Where metrics are served unless the file says otherwise: loopback only.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9477";
pub const DEFAULT_UP_DELAY_MS: u64 = 2000;
/// ovpn-lb's routing table for the kernel path, and the priority of its rules.
pub const DEFAULT_KERNEL_TABLE: u32 = 7600;
pub const DEFAULT_KERNEL_PRIORITY: u32 = 7600;
pub const DEFAULT_PROBE_INTERVAL_MS: u64 = 100;
pub const DEFAULT_PROBE_MISSES: u32 = 3;
/// `[announce]`: the marker routes' table (`main`), routing protocol number
/// (one of ovpn-lb's own: no routing daemon claims 76) and metric (the
/// largest but one: a marker never shadows a real route, and an
/// `unreachable` guard route at the largest metric for the same prefix can
/// sit beside it).
pub const DEFAULT_ANNOUNCE_TABLE: u32 = 254;
pub const DEFAULT_ANNOUNCE_PROTOCOL: u8 = 76;
pub const DEFAULT_ANNOUNCE_METRIC: u32 = u32::MAX - 1;
pub const DEFAULT_MIN_TUNNELS: u32 = 1;
pub const DEFAULT_DRAIN_MS: u64 = 2000;
/// 0: one TCP flow goes faster over every tunnel, reordered, than in order
/// over the shortest paths alone (docs/benchmarks.md, `delay`).
pub const DEFAULT_PATH_DELAY_MAX_MS: u64 = 0;
/// The largest `path_delay_max_ms` (the schedule holds nanoseconds in 32 bits).
pub const PATH_DELAY_MAX_LIMIT_MS: u64 = 1000;
pub const DEFAULT_MAINTENANCE_FILE: &str = "/etc/ovpn-lb/maintenance";

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub remote_prefixes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub spray: Spray,
    /// The hook: "auto", "tc" or "xdp".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    /// Old name of `hook`, read as text so that an old file gets a helpful
    /// message (and a pre-`spray` one an error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default = "default_up_delay")]
    pub up_delay_ms: u64,
    /// Probes through every tunnel, this often; 0 turns them off.
    #[serde(default = "default_probe_interval")]
    pub probe_interval_ms: u64,
    /// Intervals without an answer before a tunnel leaves the rotation.
    #[serde(default = "default_probe_misses")]
    pub probe_misses: u32,
    /// Packet spray counts a tunnel's longer path (from the probes) up to
    /// this much: lower uses slower paths sooner, at the cost of order.
    #[serde(default = "default_path_delay_max")]
    pub path_delay_max_ms: u64,
    // Tables after the plain values, as TOML writes them.
    pub lan: Lan,
    /// The interfaces the tunnels' UDP leaves by; absent: the default
    /// route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wan: Option<Wan>,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default)]
    pub kernel_route: KernelRoute,
    /// Announce the remote prefixes (marker routes for a BGP daemon, a
    /// health file for keepalived) while this gateway is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<Announce>,
    #[serde(default, rename = "tunnel")]
    pub tunnels: Vec<Tunnel>,
}

impl Default for File {
    /// The loader's defaults, with no LAN, remote prefix or tunnel yet.
    fn default() -> Self {
        Self {
            remote_prefixes: Vec::new(),
            exclude: Vec::new(),
            spray: Spray::default(),
            hook: Some("auto".to_owned()),
            mode: None,
            up_delay_ms: DEFAULT_UP_DELAY_MS,
            probe_interval_ms: DEFAULT_PROBE_INTERVAL_MS,
            probe_misses: DEFAULT_PROBE_MISSES,
            path_delay_max_ms: DEFAULT_PATH_DELAY_MAX_MS,
            lan: Lan::default(),
            wan: None,
            metrics: Metrics::default(),
            kernel_route: KernelRoute::default(),
            announce: None,
            tunnels: Vec::new(),
        }
    }
}

impl File {
    /// The TOML text.
    ///
    /// # Errors
    /// If a value cannot be written as TOML (none of these can fail).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}

fn default_up_delay() -> u64 {
    DEFAULT_UP_DELAY_MS
}

fn default_probe_interval() -> u64 {
    DEFAULT_PROBE_INTERVAL_MS
}

fn default_probe_misses() -> u32 {
    DEFAULT_PROBE_MISSES
}

fn default_path_delay_max() -> u64 {
    DEFAULT_PATH_DELAY_MAX_MS
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Lan {
    pub interface: String,
    pub prefixes: Vec<String>,
}

/// The WAN side: where nothing of the LAN may leave outside the tunnels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Wan {
    pub interfaces: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Spray {
    /// Per packet, to the tunnel where it leaves first.
    #[default]
    Packet,
    /// Per packet, in weighted round-robin order: the baseline.
    RoundRobin,
    /// Per flow.
    Flow,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    #[default]
    Tun,
    Tap,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    #[serde(default = "default_listen")]
    pub listen: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            listen: default_listen(),
        }
    }
}

fn default_listen() -> String {
    DEFAULT_METRICS_LISTEN.to_owned()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KernelRoute {
    #[serde(default = "default_table")]
    pub table: u32,
    #[serde(default = "default_priority")]
    pub priority: u32,
}

impl Default for KernelRoute {
    fn default() -> Self {
        Self {
            table: DEFAULT_KERNEL_TABLE,
            priority: DEFAULT_KERNEL_PRIORITY,
        }
    }
}

fn default_table() -> u32 {
    DEFAULT_KERNEL_TABLE
}

fn default_priority() -> u32 {
    DEFAULT_KERNEL_PRIORITY
}

/// `[announce]`: when this gateway may be sent traffic, said through the
/// kernel (marker routes a BGP daemon redistributes) and a file (keepalived).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Announce {
    /// Tunnels in the rotation below which the gateway withdraws.
    #[serde(default = "default_min_tunnels")]
    pub min_tunnels: u32,
    /// Milliseconds between withdrawing on a stop and exiting.
    #[serde(default = "default_drain_ms")]
    pub drain_ms: u64,
    /// While this file exists the gateway withdraws (and says it drains).
    #[serde(default = "default_maintenance_file")]
    pub maintenance_file: String,
    /// `0` while announced, `1` while not (keepalived's `track_file`);
    /// `health` in the run directory unless given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_file: Option<String>,
    /// The marker routes' routing table, protocol number and metric.
    #[serde(default = "default_announce_table")]
    pub table: u32,
    #[serde(default = "default_announce_protocol")]
    pub protocol: u8,
    #[serde(default = "default_announce_metric")]
    pub metric: u32,
}

impl Default for Announce {
    fn default() -> Self {
        Self {
            min_tunnels: DEFAULT_MIN_TUNNELS,
            drain_ms: DEFAULT_DRAIN_MS,
            maintenance_file: DEFAULT_MAINTENANCE_FILE.to_owned(),
            health_file: None,
            table: DEFAULT_ANNOUNCE_TABLE,
            protocol: DEFAULT_ANNOUNCE_PROTOCOL,
            metric: DEFAULT_ANNOUNCE_METRIC,
        }
    }
}

fn default_min_tunnels() -> u32 {
    DEFAULT_MIN_TUNNELS
}

fn default_drain_ms() -> u64 {
    DEFAULT_DRAIN_MS
}

fn default_maintenance_file() -> String {
    DEFAULT_MAINTENANCE_FILE.to_owned()
}

fn default_announce_table() -> u32 {
    DEFAULT_ANNOUNCE_TABLE
}

fn default_announce_protocol() -> u8 {
    DEFAULT_ANNOUNCE_PROTOCOL
}

fn default_announce_metric() -> u32 {
    DEFAULT_ANNOUNCE_METRIC
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tunnel {
    pub device: String,
    #[serde(default)]
    pub kind: Kind,
    /// TAP tunnels: the far end's address on the TAP link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_hop: Option<String>,
    pub translate: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_translate: Vec<String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// OpenVPN's management interface: "address:port" or a unix socket path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub management: Option<String>,
    /// File holding the management password (OpenVPN's `management ... pw-file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub management_password_file: Option<String>,
    /// Against a plain OpenVPN peer: an address behind the tunnel that
    /// answers ICMP echo (its far end), probed instead of in-band probes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_target: Option<String>,
}

impl Tunnel {
    /// A tun tunnel on `device` with weight 1 and no management interface.
    #[must_use]
    pub fn new(device: &str, translate: Vec<String>) -> Self {
        Self {
            device: device.to_owned(),
            kind: Kind::Tun,
            next_hop: None,
            translate,
            peer_translate: Vec::new(),
            weight: 1,
            management: None,
            management_password_file: None,
            probe_target: None,
        }
    }
}

fn default_weight() -> u32 {
    1
}

/// Parses the text; a syntax error becomes one line with its position.
///
/// # Errors
/// The message for the operator.
pub fn parse(text: &str) -> Result<File, String> {
    toml::from_str(text).map_err(|e| {
        let message = e.message().trim().to_owned();
        match e.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("TOML syntax error at line {line}, column {column}: {message}")
            }
            None => format!("TOML syntax error: {message}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example in the repository is a file the loader reads, with every
    /// setting written out at its default or an example value.
    #[test]
    fn the_example_configuration_reads() {
        let text = include_str!("../../../ovpn-lb.example.toml");
        let file: File = toml::from_str(text).unwrap();
        assert_eq!(file.spray, Spray::Packet);
        assert_eq!(file.hook.as_deref(), Some("auto"));
        assert_eq!(file.probe_interval_ms, DEFAULT_PROBE_INTERVAL_MS);
        assert_eq!(file.probe_misses, DEFAULT_PROBE_MISSES);
        assert_eq!(file.up_delay_ms, DEFAULT_UP_DELAY_MS);
        assert_eq!(file.kernel_route, KernelRoute::default());
        assert_eq!(
            file.announce, None,
            "announcing is for pairs: commented out"
        );
        assert_eq!(file.tunnels.len(), 2);
        assert_eq!(
            file.wan,
            Some(Wan {
                interfaces: vec!["eth0".into()]
            })
        );
        // Uncommented, the example's [announce] is the defaults, but for the
        // health file, which defaults into the run directory.
        let section = text
            .lines()
            .skip_while(|l| *l != "#[announce]")
            .take_while(|l| l.starts_with('#'))
            .filter(|l| !l.starts_with("##"))
            .map(|l| &l[1..])
            .collect::<Vec<_>>()
            .join("\n");
        let announce: File = toml::from_str(&format!(
            "remote_prefixes = []\n[lan]\ninterface = \"x\"\nprefixes = []\n{section}"
        ))
        .unwrap();
        assert_eq!(
            announce.announce,
            Some(Announce {
                health_file: Some("/run/ovpn-lb/health".to_owned()),
                ..Announce::default()
            })
        );
    }
}
