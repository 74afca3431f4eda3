//! The ovpn-lb configuration file as data: one writer for every
//! `ovpn-lb.toml`, the generator's and the test bed's. The loader's own
//! parser (`config::file`) reads what this writes; the tests check that.

use serde::Serialize;

/// An `ovpn-lb.toml`. Optional fields left out take the loader's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LoaderConfig {
    pub remote_prefixes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub up_delay_ms: Option<u64>,
    /// `packet` or `flow`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spray: Option<String>,
    /// `auto`, `tc` or `xdp`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    pub lan: LanSection,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsSection>,
    #[serde(rename = "tunnel")]
    pub tunnels: Vec<TunnelSection>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LanSection {
    pub interface: String,
    pub prefixes: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MetricsSection {
    pub listen: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TunnelSection {
    pub device: String,
    /// `tap` for TAP tunnels; left out for tun (the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_hop: Option<String>,
    pub translate: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peer_translate: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub management: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub management_password_file: Option<String>,
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
