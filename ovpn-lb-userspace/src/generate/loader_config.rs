//! The ovpn-lb configuration file as data: one writer for every
//! `ovpn-lb.toml`, the generator's and the test bed's. The loader's own
//! parser (`config::file`) reads what this writes; the tests check that.

use serde::Serialize;

use crate::config::file::{DEFAULT_METRICS_LISTEN, DEFAULT_UP_DELAY_MS};

/// An `ovpn-lb.toml`, every setting written out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LoaderConfig {
    pub remote_prefixes: Vec<String>,
    pub up_delay_ms: u64,
    /// `packet` or `flow`.
    pub spray: String,
    /// `auto`, `tc` or `xdp`.
    pub hook: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    pub lan: LanSection,
    pub metrics: MetricsSection,
    #[serde(rename = "tunnel")]
    pub tunnels: Vec<TunnelSection>,
}

impl Default for LoaderConfig {
    /// The loader's own defaults, with no LAN and no tunnel yet.
    fn default() -> Self {
        Self {
            remote_prefixes: Vec::new(),
            up_delay_ms: DEFAULT_UP_DELAY_MS,
            spray: "packet".to_owned(),
            hook: "auto".to_owned(),
            exclude: Vec::new(),
            lan: LanSection::default(),
            metrics: MetricsSection {
                listen: DEFAULT_METRICS_LISTEN.to_owned(),
            },
            tunnels: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LanSection {
    pub interface: String,
    pub prefixes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MetricsSection {
    pub listen: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TunnelSection {
    pub device: String,
    /// `tun` or `tap`.
    pub kind: String,
    /// TAP tunnels: the far end's address on the TAP link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_hop: Option<String>,
    pub translate: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peer_translate: Vec<String>,
    pub weight: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub management: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub management_password_file: Option<String>,
}

impl TunnelSection {
    /// A tun tunnel on `device` with weight 1 and no management interface.
    #[must_use]
    pub fn new(device: &str, translate: Vec<String>) -> Self {
        Self {
            device: device.to_owned(),
            kind: "tun".to_owned(),
            next_hop: None,
            translate,
            peer_translate: Vec::new(),
            weight: 1,
            management: None,
            management_password_file: None,
        }
    }
}

impl LoaderConfig {
    /// The TOML text, keys in the order of the fields above.
    ///
    /// # Errors
    /// If a value cannot be written as TOML (none of these fields can fail).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}
