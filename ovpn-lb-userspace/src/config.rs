//! The configuration file: parsing, and validation against the machine's
//! interfaces. Nothing is attached until a configuration has passed here.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use ovpn_lb_common::{
    MAX_TUNNELS, Prefix4, Prefix6, SiteConfig, TunnelConfig,
    maps::{Spray, family, framing},
};
use serde::Deserialize;

use crate::{
    hook::{self, Hook, TunnelKind},
    interfaces::{IfaceKind, Interfaces},
};

/// Where metrics are served unless the file says otherwise: loopback only.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9477";
const DEFAULT_UP_DELAY_MS: u64 = 2000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    lan: RawLan,
    remote_prefixes: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    spray: RawSpray,
    /// The hook; read as text so a pre-`spray` file gets a helpful error.
    mode: Option<String>,
    #[serde(default = "default_up_delay")]
    up_delay_ms: u64,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default, rename = "tunnel")]
    tunnels: Vec<RawTunnel>,
}

fn default_up_delay() -> u64 {
    DEFAULT_UP_DELAY_MS
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLan {
    interface: String,
    prefixes: Vec<String>,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawSpray {
    #[default]
    Packet,
    Flow,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawKind {
    #[default]
    Tun,
    Tap,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    #[serde(default = "default_listen")]
    listen: String,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self {
            listen: default_listen(),
        }
    }
}

fn default_listen() -> String {
    DEFAULT_METRICS_LISTEN.to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTunnel {
    device: String,
    translate: Vec<String>,
    #[serde(default)]
    peer_translate: Vec<String>,
    #[serde(default = "default_weight")]
    weight: u32,
    management: Option<String>,
    #[serde(default)]
    kind: RawKind,
    next_hop: Option<String>,
}

fn default_weight() -> u32 {
    1
}

/// A prefix of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Net {
    V4(Prefix4),
    V6(Prefix6),
}

impl Net {
    #[must_use]
    pub fn prefix_len(&self) -> u8 {
        match self {
            Net::V4(p) => p.prefix_len(),
            Net::V6(p) => p.prefix_len(),
        }
    }

    /// True when the two prefixes share any address.
    #[must_use]
    pub fn overlaps(&self, other: &Net) -> bool {
        match (self, other) {
            (Net::V4(a), Net::V4(b)) => a.contains(b.addr) || b.contains(a.addr),
            (Net::V6(a), Net::V6(b)) => a.contains(&b.addr) || b.contains(&a.addr),
            _ => false,
        }
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Net::V4(p) => write!(
                f,
                "{}/{}",
                std::net::Ipv4Addr::from(p.octets()),
                p.prefix_len()
            ),
            Net::V6(p) => write!(
                f,
                "{}/{}",
                std::net::Ipv6Addr::from(p.octets()),
                p.prefix_len()
            ),
        }
    }
}

/// One tunnel, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tunnel {
    pub device: String,
    pub kind: TunnelKind,
    /// TAP only: the far end's address on the TAP link, whose MAC frames go to.
    pub next_hop: Option<IpAddr>,
    pub weight: u32,
    pub management: Option<SocketAddr>,
    pub xlat_v4: Option<Prefix4>,
    pub xlat_v6: Option<Prefix6>,
    /// The peer's translation prefix on this tunnel and the real prefix it is restored into.
    pub peer_v4: Option<(Prefix4, Prefix4)>,
    pub peer_v6: Option<(Prefix6, Prefix6)>,
}

impl Tunnel {
    /// The datapath's view of this tunnel on `device`.
    #[must_use]
    pub fn datapath_config(&self, device: &Device) -> TunnelConfig {
        let mut t = TunnelConfig {
            ifindex: device.ifindex,
            mtu: device.mtu,
            ..TunnelConfig::default()
        };
        if self.kind == TunnelKind::Tap {
            t.framing = framing::TAP;
            t.mac = device.mac;
            t.peer_mac = device.peer_mac;
        }
        if let Some(p) = self.xlat_v4 {
            t.families |= family::V4;
            t.xlat_v4 = p;
        }
        if let Some(p) = self.xlat_v6 {
            t.families |= family::V6;
            t.xlat_v6 = p;
        }
        if let Some((xlat, real)) = self.peer_v4 {
            t.families |= family::PEER_V4;
            t.peer_xlat_v4 = xlat;
            t.peer_real_v4 = real;
        }
        if let Some((xlat, real)) = self.peer_v6 {
            t.families |= family::PEER_V6;
            t.peer_xlat_v6 = xlat;
            t.peer_real_v6 = real;
        }
        t
    }
}

/// What the loader knows of a tunnel's device now; all zero while it is missing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Device {
    pub ifindex: u32,
    /// 0: unknown, the program asks the kernel.
    pub mtu: u32,
    /// TAP: the device's MAC.
    pub mac: [u8; 6],
    /// TAP: the next hop's MAC from the neighbour table, zero until resolved.
    pub peer_mac: [u8; 6],
}

/// A configuration that has passed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub lan_interface: String,
    pub lan_v4: Option<Prefix4>,
    pub lan_v6: Option<Prefix6>,
    pub remote: Vec<Net>,
    pub exclude: Vec<Net>,
    pub spray: Spray,
    /// The hook programs attach with, and why (one line for the log).
    pub hook: Hook,
    pub hook_reason: String,
    pub up_delay: Duration,
    pub metrics_listen: SocketAddr,
    pub tunnels: Vec<Tunnel>,
}

impl Config {
    /// The datapath's `SITE` entry.
    #[must_use]
    pub fn site(&self) -> SiteConfig {
        let mut site = SiteConfig {
            spray: self.spray as u32,
            ..SiteConfig::default()
        };
        if let Some(p) = self.lan_v4 {
            site.families |= family::V4;
            site.lan_v4 = p;
        }
        if let Some(p) = self.lan_v6 {
            site.families |= family::V6;
            site.lan_v6 = p;
        }
        site
    }
}

/// Something the operator should know that does not stop the start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning(pub String);

/// Everything wrong with a file, one line each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads and validates `path`.
///
/// # Errors
/// Every problem found, one line each, naming the field and the fix.
pub fn load(
    path: &Path,
    interfaces: &dyn Interfaces,
) -> Result<(Config, Vec<Warning>), ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![format!(
            "{}: cannot read the configuration: {e}",
            path.display()
        )])
    })?;
    parse(&text, interfaces).map_err(|mut e| {
        for line in &mut e.0 {
            *line = format!("{}: {line}", path.display());
        }
        e
    })
}

/// Parses and validates configuration text.
///
/// # Errors
/// Every problem found, one line each.
pub fn parse(
    text: &str,
    interfaces: &dyn Interfaces,
) -> Result<(Config, Vec<Warning>), ConfigErrors> {
    let raw: RawConfig =
        toml::from_str(text).map_err(|e| ConfigErrors(vec![toml_error(text, &e)]))?;
    Validator::new(interfaces).run(raw)
}

/// One line: "line L, column C: message".
fn toml_error(text: &str, e: &toml::de::Error) -> String {
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
}

/// Parses "address/length" with host bits clear.
///
/// # Errors
/// A message naming `field`.
pub fn parse_net(field: &str, text: &str) -> Result<Net, String> {
    let Some((addr, len)) = text.split_once('/') else {
        return Err(format!(
            "{field} = \"{text}\" is not a prefix: write it as address/length, e.g. 192.168.10.0/24"
        ));
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{field} = \"{text}\": \"{addr}\" is not an IPv4 or IPv6 address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u8 = len.parse().ok().filter(|&l| l <= max).ok_or_else(|| {
        format!("{field} = \"{text}\": the length must be a number from 0 to {max}")
    })?;
    let net = match addr {
        IpAddr::V4(a) => Net::V4(Prefix4::new(a.octets(), len)),
        IpAddr::V6(a) => Net::V6(Prefix6::new(a.octets(), len)),
    };
    let canonical = net.to_string();
    if canonical != format!("{addr}/{len}") {
        return Err(format!(
            "{field} = \"{text}\" has host bits set: did you mean \"{canonical}\"?"
        ));
    }
    Ok(net)
}

struct Validator<'a> {
    interfaces: &'a dyn Interfaces,
    /// Each tunnel device's XDP features, as looked up once by `tunnels`.
    tunnel_xdp_features: Vec<Option<u64>>,
    errors: Vec<String>,
    warnings: Vec<Warning>,
    /// Every prefix seen, with the field that named it, for the overlap check.
    prefixes: Vec<(String, Net)>,
}

impl<'a> Validator<'a> {
    fn new(interfaces: &'a dyn Interfaces) -> Self {
        Self {
            interfaces,
            tunnel_xdp_features: Vec::new(),
            errors: Vec::new(),
            warnings: Vec::new(),
            prefixes: Vec::new(),
        }
    }

    fn nets(&mut self, field: &str, texts: &[String]) -> Vec<Net> {
        let mut out = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            let name = format!("{field}[{i}]");
            match parse_net(&name, t) {
                Ok(net) => {
                    self.prefixes.push((name, net));
                    out.push(net);
                }
                Err(e) => self.errors.push(e),
            }
        }
        out
    }

    fn run(mut self, raw: RawConfig) -> Result<(Config, Vec<Warning>), ConfigErrors> {
        let lan_iface = self.interfaces.lookup(&raw.lan.interface);
        if lan_iface.is_none() {
            self.errors.push(format!(
                "lan.interface = \"{}\": no such network interface; check `ip link`",
                raw.lan.interface
            ));
        }
        let (lan_v4, lan_v6) = self.lan_prefixes(&raw.lan.prefixes);
        let remote = self.nets("remote_prefixes", &raw.remote_prefixes);
        if raw.remote_prefixes.is_empty() {
            self.errors.push(
                "remote_prefixes is empty: list the networks reached through the tunnels"
                    .to_owned(),
            );
        }
        let exclude = self.exclusions(&raw.exclude, &remote);
        let tunnels = self.tunnels(&raw, lan_v4, lan_v6, &remote);
        self.overlaps();
        let hook = self.hook(raw.mode.as_deref(), &raw.lan.interface, lan_iface, &tunnels);
        let metrics_listen = if let Ok(a) = raw.metrics.listen.parse::<SocketAddr>() {
            Some(a)
        } else {
            self.errors.push(format!(
                "metrics.listen = \"{}\" is not an address:port, e.g. \"{DEFAULT_METRICS_LISTEN}\"",
                raw.metrics.listen
            ));
            None
        };
        if !self.errors.is_empty() {
            return Err(ConfigErrors(self.errors));
        }
        let config = Config {
            lan_interface: raw.lan.interface,
            lan_v4,
            lan_v6,
            remote,
            exclude,
            spray: match raw.spray {
                RawSpray::Packet => Spray::Packet,
                RawSpray::Flow => Spray::Flow,
            },
            hook: hook.as_ref().map_or(Hook::Tc, |h| h.hook),
            hook_reason: hook.map(|h| h.reason).unwrap_or_default(),
            up_delay: Duration::from_millis(raw.up_delay_ms),
            metrics_listen: metrics_listen.expect("no errors"),
            tunnels,
        };
        Ok((config, self.warnings))
    }

    fn lan_prefixes(&mut self, texts: &[String]) -> (Option<Prefix4>, Option<Prefix6>) {
        let (mut v4, mut v6) = (None, None);
        if texts.is_empty() {
            self.errors
                .push("lan.prefixes is empty: give the LAN's IPv4 and/or IPv6 prefix".to_owned());
        }
        for (i, net) in self.nets("lan.prefixes", texts).into_iter().enumerate() {
            match net {
                Net::V4(p) if v4.is_none() => v4 = Some(p),
                Net::V6(p) if v6.is_none() => v6 = Some(p),
                _ => self.errors.push(format!(
                    "lan.prefixes[{i}] = \"{net}\": only one LAN prefix per address family is supported"
                )),
            }
        }
        (v4, v6)
    }

    fn exclusions(&mut self, texts: &[String], remote: &[Net]) -> Vec<Net> {
        let nets = self.nets("exclude", texts);
        // Exclusions sit inside remote prefixes by design: keep them out of the
        // overlap check.
        self.prefixes
            .retain(|(field, _)| !field.starts_with("exclude"));
        for (i, net) in nets.iter().enumerate() {
            if !remote
                .iter()
                .any(|r| r.overlaps(net) && r.prefix_len() <= net.prefix_len())
            {
                self.errors.push(format!(
                    "exclude[{i}] = \"{net}\" is not inside any remote prefix: exclusions carve holes in remote_prefixes"
                ));
            }
        }
        nets
    }

    fn tunnels(
        &mut self,
        raw: &RawConfig,
        lan_v4: Option<Prefix4>,
        lan_v6: Option<Prefix6>,
        remote: &[Net],
    ) -> Vec<Tunnel> {
        if raw.tunnels.is_empty() {
            self.errors
                .push("no [[tunnel]] sections: configure at least one tunnel".to_owned());
        }
        if raw.tunnels.len() > MAX_TUNNELS {
            self.errors.push(format!(
                "{} tunnels configured: the datapath supports at most {MAX_TUNNELS}",
                raw.tunnels.len()
            ));
        }
        let mut devices = HashSet::new();
        let mut mtus = Vec::new();
        let mut out = Vec::new();
        for (k, t) in raw.tunnels.iter().enumerate() {
            let field = format!("tunnel[{k}]");
            if !devices.insert(t.device.as_str()) {
                self.errors.push(format!(
                    "{field}.device = \"{}\" is configured twice: each tunnel needs its own device",
                    t.device
                ));
            }
            if t.device == raw.lan.interface {
                self.errors.push(format!(
                    "{field}.device = \"{}\" is the LAN interface: a tunnel must be the OpenVPN tun device",
                    t.device
                ));
                self.tunnel_xdp_features.push(None);
            } else {
                let info = self.interfaces.lookup(&t.device);
                self.tunnel_xdp_features
                    .push(info.and_then(|i| i.xdp_features));
                match info {
                    None => self.errors.push(format!(
                        "{field}.device = \"{}\": no such network interface; start its OpenVPN first or fix the name",
                        t.device
                    )),
                    Some(info) if matches!(t.kind, RawKind::Tun) && info.kind != IfaceKind::L3PointToPoint => self.errors.push(format!(
                        "{field}.device = \"{}\" is not a layer-3 point-to-point device ({}): use the tun device OpenVPN creates with `dev tun`, or set kind = \"tap\" for a TAP device",
                        t.device, info.kind
                    )),
                    Some(info) if matches!(t.kind, RawKind::Tap) && info.kind != IfaceKind::Ethernet => self.errors.push(format!(
                        "{field}.device = \"{}\" is not an Ethernet (TAP) device ({}): kind = \"tap\" needs the device OpenVPN creates with `dev tap`",
                        t.device, info.kind
                    )),
                    Some(info) => mtus.push((t.device.clone(), info.mtu)),
                }
            }
            if t.weight == 0 {
                self.errors.push(format!(
                    "{field}.weight = 0: weights start at 1 (remove the tunnel to disable it)"
                ));
            }
            let management = t.management.as_ref().and_then(|m| if let Ok(a) = m.parse::<SocketAddr>() { Some(a) } else {
                self.errors.push(format!(
                    "{field}.management = \"{m}\" is not an address:port (OpenVPN's --management), e.g. \"127.0.0.1:7505\""
                ));
                None
            });
            let kind = match t.kind {
                RawKind::Tun => TunnelKind::Tun,
                RawKind::Tap => TunnelKind::Tap,
            };
            let next_hop = self.next_hop(&field, kind, t.next_hop.as_deref());
            let mut tunnel = Tunnel {
                device: t.device.clone(),
                kind,
                next_hop,
                weight: t.weight,
                management,
                xlat_v4: None,
                xlat_v6: None,
                peer_v4: None,
                peer_v6: None,
            };
            self.translations(&field, t, lan_v4, lan_v6, remote, &mut tunnel);
            out.push(tunnel);
        }
        if let Some((_, first)) = mtus.first()
            && mtus.iter().any(|(_, m)| m != first)
        {
            let smallest = mtus.iter().min_by_key(|(_, m)| *m).expect("not empty");
            let list: Vec<String> = mtus.iter().map(|(d, m)| format!("{d} {m}")).collect();
            self.warnings.push(Warning(format!(
                "tunnel MTUs differ ({}): packets are sprayed over all of them, so the path MTU is the smallest, {} on {}",
                list.join(", "),
                smallest.1,
                smallest.0
            )));
        }
        out
    }

    fn next_hop(&mut self, field: &str, kind: TunnelKind, text: Option<&str>) -> Option<IpAddr> {
        match (kind, text) {
            (TunnelKind::Tun, None) => None,
            (TunnelKind::Tun, Some(t)) => {
                self.errors.push(format!(
                    "{field}.next_hop = \"{t}\": a tun tunnel has no next hop (it carries bare IP); remove it, or set kind = \"tap\""
                ));
                None
            }
            (TunnelKind::Tap, None) => {
                self.errors.push(format!(
                    "{field}.next_hop is missing: a TAP tunnel needs the far end's address on the TAP link (its OpenVPN --ifconfig address), e.g. next_hop = \"10.99.0.2\""
                ));
                None
            }
            (TunnelKind::Tap, Some(t)) => {
                let parsed = t.parse::<IpAddr>().ok();
                if parsed.is_none() {
                    self.errors.push(format!(
                        "{field}.next_hop = \"{t}\" is not an IPv4 or IPv6 address"
                    ));
                }
                parsed
            }
        }
    }

    /// The hook, from `mode` and what the drivers can do.
    fn hook(
        &mut self,
        mode: Option<&str>,
        lan: &str,
        lan_info: Option<crate::interfaces::IfaceInfo>,
        tunnels: &[Tunnel],
    ) -> Option<hook::Choice> {
        let requested = match mode.unwrap_or("auto") {
            "auto" => hook::Requested::Auto,
            "tc" => hook::Requested::Tc,
            "xdp" => hook::Requested::Xdp,
            m @ ("packet" | "flow") => {
                self.errors.push(format!(
                    "mode = \"{m}\": `mode` now picks the hook (\"auto\", \"tc\" or \"xdp\"); the spray mode is spray = \"{m}\""
                ));
                return None;
            }
            m => {
                self.errors.push(format!(
                    "mode = \"{m}\": use \"auto\" (native XDP where it works, tc elsewhere), \"tc\" or \"xdp\""
                ));
                return None;
            }
        };
        let devices: Vec<hook::TunnelDevice> = tunnels
            .iter()
            .zip(&self.tunnel_xdp_features)
            .map(|(t, &xdp_features)| hook::TunnelDevice {
                name: t.device.clone(),
                kind: t.kind,
                xdp_features,
            })
            .collect();
        let lan_features = lan_info.and_then(|i| i.xdp_features);
        match hook::choose(requested, lan, lan_features, &devices) {
            Ok(choice) => Some(choice),
            Err(e) => {
                self.errors.push(e);
                None
            }
        }
    }

    /// Our and the peer's translation prefixes of one tunnel.
    fn translations(
        &mut self,
        field: &str,
        t: &RawTunnel,
        lan_v4: Option<Prefix4>,
        lan_v6: Option<Prefix6>,
        remote: &[Net],
        tunnel: &mut Tunnel,
    ) {
        for (i, net) in self
            .nets(&format!("{field}.translate"), &t.translate)
            .into_iter()
            .enumerate()
        {
            let f = format!("{field}.translate[{i}]");
            match net {
                Net::V4(p) => match lan_v4 {
                    Some(lan) if lan.prefix_len() == p.prefix_len() && tunnel.xlat_v4.is_none() => tunnel.xlat_v4 = Some(p),
                    Some(lan) if lan.prefix_len() != p.prefix_len() => self.errors.push(format!(
                        "{f} = \"{net}\" is /{} but the LAN prefix is /{}: a translation prefix must have the LAN prefix's length",
                        p.prefix_len(),
                        lan.prefix_len()
                    )),
                    Some(_) => self.errors.push(format!("{f} = \"{net}\": this tunnel already has an IPv4 translation prefix")),
                    None => self.errors.push(format!("{f} = \"{net}\": the LAN has no IPv4 prefix to translate")),
                },
                Net::V6(p) => match lan_v6 {
                    Some(lan) if lan.prefix_len() == p.prefix_len() && tunnel.xlat_v6.is_none() => tunnel.xlat_v6 = Some(p),
                    Some(lan) if lan.prefix_len() != p.prefix_len() => self.errors.push(format!(
                        "{f} = \"{net}\" is /{} but the LAN prefix is /{}: a translation prefix must have the LAN prefix's length",
                        p.prefix_len(),
                        lan.prefix_len()
                    )),
                    Some(_) => self.errors.push(format!("{f} = \"{net}\": this tunnel already has an IPv6 translation prefix")),
                    None => self.errors.push(format!("{f} = \"{net}\": the LAN has no IPv6 prefix to translate")),
                },
            }
        }
        if lan_v4.is_some()
            && tunnel.xlat_v4.is_none()
            && !t.translate.iter().any(|s| s.contains('.'))
        {
            self.errors.push(format!(
                "{field}.translate has no IPv4 prefix: the LAN's IPv4 prefix needs one per tunnel"
            ));
        }
        if lan_v6.is_some()
            && tunnel.xlat_v6.is_none()
            && !t.translate.iter().any(|s| s.contains(':'))
        {
            self.errors.push(format!(
                "{field}.translate has no IPv6 prefix: the LAN's IPv6 prefix needs one per tunnel"
            ));
        }
        for (i, net) in self
            .nets(&format!("{field}.peer_translate"), &t.peer_translate)
            .into_iter()
            .enumerate()
        {
            let f = format!("{field}.peer_translate[{i}]");
            // The peer's translated sources are restored into the remote
            // prefix of the same family and length: the peer's LAN.
            let targets: Vec<&Net> = remote
                .iter()
                .filter(|r| {
                    std::mem::discriminant(*r) == std::mem::discriminant(&net)
                        && r.prefix_len() == net.prefix_len()
                })
                .collect();
            match (targets.as_slice(), net) {
                ([Net::V4(real)], Net::V4(p)) => tunnel.peer_v4 = Some((p, *real)),
                ([Net::V6(real)], Net::V6(p)) => tunnel.peer_v6 = Some((p, *real)),
                ([], _) => self.errors.push(format!(
                    "{f} = \"{net}\": no remote prefix of length /{} to restore the peer's addresses into; list the peer's LAN in remote_prefixes",
                    net.prefix_len()
                )),
                _ => self.errors.push(format!(
                    "{f} = \"{net}\": several remote prefixes have length /{}, so the peer's LAN is ambiguous",
                    net.prefix_len()
                )),
            }
        }
    }

    fn overlaps(&mut self) {
        for (i, (fa, a)) in self.prefixes.iter().enumerate() {
            for (fb, b) in &self.prefixes[i + 1..] {
                if a.overlaps(b) {
                    let what = if a == b { "duplicates" } else { "overlaps" };
                    self.errors.push(format!(
                        "{fb} = \"{b}\" {what} {fa} = \"{a}\": LAN, remote and translation prefixes must be disjoint"
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;
    use crate::{
        hook::{Hook, TunnelKind},
        interfaces::{IfaceInfo, tests::FakeInterfaces},
    };

    fn fake() -> FakeInterfaces {
        FakeInterfaces::new(&[
            (
                "eth1",
                IfaceInfo {
                    ifindex: 2,
                    kind: IfaceKind::Ethernet,
                    mtu: 1500,
                    xdp_features: Some(
                        crate::xdp_features::BASIC
                            | crate::xdp_features::REDIRECT
                            | crate::xdp_features::NDO_XMIT,
                    ),
                },
            ),
            (
                "tun0",
                IfaceInfo {
                    ifindex: 3,
                    kind: IfaceKind::L3PointToPoint,
                    mtu: 1500,
                    xdp_features: Some(
                        crate::xdp_features::BASIC
                            | crate::xdp_features::REDIRECT
                            | crate::xdp_features::NDO_XMIT,
                    ),
                },
            ),
            (
                "tun1",
                IfaceInfo {
                    ifindex: 4,
                    kind: IfaceKind::L3PointToPoint,
                    mtu: 1500,
                    xdp_features: Some(
                        crate::xdp_features::BASIC
                            | crate::xdp_features::REDIRECT
                            | crate::xdp_features::NDO_XMIT,
                    ),
                },
            ),
            (
                "tun2",
                IfaceInfo {
                    ifindex: 5,
                    kind: IfaceKind::L3PointToPoint,
                    mtu: 1400,
                    xdp_features: Some(
                        crate::xdp_features::BASIC
                            | crate::xdp_features::REDIRECT
                            | crate::xdp_features::NDO_XMIT,
                    ),
                },
            ),
            (
                "tap0",
                IfaceInfo {
                    ifindex: 6,
                    kind: IfaceKind::Ethernet,
                    mtu: 1500,
                    xdp_features: Some(
                        crate::xdp_features::BASIC
                            | crate::xdp_features::REDIRECT
                            | crate::xdp_features::NDO_XMIT,
                    ),
                },
            ),
        ])
    }

    const GOOD: &str = r#"
remote_prefixes = ["10.20.30.0/24", "fd00:20::/64"]
exclude = ["10.20.30.1/32"]
spray = "flow"
up_delay_ms = 500

[lan]
interface = "eth1"
prefixes = ["192.168.10.0/24", "fd00:10::/64"]

[[tunnel]]
device = "tun0"
translate = ["100.64.0.0/24", "fd00:64::/64"]
peer_translate = ["100.65.0.0/24", "fd00:65::/64"]
management = "127.0.0.1:7505"

[[tunnel]]
device = "tun1"
translate = ["100.64.1.0/24", "fd00:64:1::/64"]
weight = 3
"#;

    fn errors(text: &str) -> Vec<String> {
        match parse(text, &fake()) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.0,
        }
    }

    fn expect_error(text: &str, needle: &str) {
        let errs = errors(text);
        assert!(
            errs.iter().any(|e| e.contains(needle)),
            "no error containing {needle:?} in {errs:#?}"
        );
    }

    #[test]
    fn good_config_parses() {
        let (c, warnings) = parse(GOOD, &fake()).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(c.spray, Spray::Flow);
        assert_eq!(c.up_delay, Duration::from_millis(500));
        assert_eq!(c.metrics_listen.to_string(), DEFAULT_METRICS_LISTEN);
        assert_eq!(c.tunnels.len(), 2);
        assert_eq!(c.tunnels[1].weight, 3);
        let t0 = c.tunnels[0].datapath_config(&Device {
            ifindex: 3,
            mtu: 1500,
            ..Device::default()
        });
        assert_eq!(t0.mtu, 1500);
        assert_eq!(
            t0.families,
            family::V4 | family::V6 | family::PEER_V4 | family::PEER_V6
        );
        assert_eq!(t0.peer_real_v4, Prefix4::new([10, 20, 30, 0], 24));
        assert_eq!(c.site().families, family::V4 | family::V6);
        assert_eq!(c.exclude, vec![Net::V4(Prefix4::new([10, 20, 30, 1], 32))]);
    }

    #[test]
    fn toml_syntax_error_names_the_line() {
        let errs = errors("remote_prefixes = [\"10.0.0.0/8\"\n[lan]\ninterface = \"eth1\"\n");
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("TOML syntax error at line 2"),
            "{errs:?}"
        );
    }

    #[test]
    fn unknown_field_is_refused() {
        expect_error(
            &GOOD.replace("spray = ", "sprays = "),
            "unknown field `sprays`",
        );
    }

    #[test]
    fn unknown_interface() {
        expect_error(
            &GOOD.replace("\"eth1\"", "\"eth9\""),
            "lan.interface = \"eth9\": no such network interface",
        );
        expect_error(
            &GOOD.replace("\"tun1\"", "\"tun9\""),
            "tunnel[1].device = \"tun9\": no such network interface",
        );
    }

    #[test]
    fn tunnel_must_be_layer3_point_to_point() {
        expect_error(
            &GOOD.replace("\"tun1\"", "\"tap0\""),
            "tunnel[1].device = \"tap0\" is not a layer-3 point-to-point device",
        );
    }

    const TAP_TUNNELS: &str = r#"
remote_prefixes = ["10.20.30.0/24"]
mode = "xdp"

[lan]
interface = "eth1"
prefixes = ["192.168.10.0/24"]

[[tunnel]]
device = "tap0"
kind = "tap"
next_hop = "10.99.0.2"
translate = ["100.64.0.0/24"]
"#;

    #[test]
    fn tap_tunnels_take_xdp_and_carry_their_framing() {
        let (c, _) = parse(TAP_TUNNELS, &fake()).unwrap();
        assert_eq!(c.hook, Hook::Xdp);
        assert_eq!(c.tunnels[0].kind, TunnelKind::Tap);
        let t = c.tunnels[0].datapath_config(&Device {
            ifindex: 6,
            mtu: 1500,
            mac: [2, 0, 0, 0, 0, 1],
            peer_mac: [2, 0, 0, 0, 0, 2],
        });
        assert_eq!(t.framing, framing::TAP);
        assert_eq!(
            (t.mac, t.peer_mac),
            ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        );
        let (auto, _) = parse(&TAP_TUNNELS.replace("\"xdp\"", "\"auto\""), &fake()).unwrap();
        assert_eq!(auto.hook, Hook::Xdp, "{}", auto.hook_reason);
        let (tc, _) = parse(
            &GOOD.replace("spray = \"flow\"", "mode = \"auto\""),
            &fake(),
        )
        .unwrap();
        assert_eq!(tc.hook, Hook::Tc);
        assert!(
            tc.hook_reason.contains("tun0 is a tun device"),
            "{}",
            tc.hook_reason
        );
    }

    #[test]
    fn tap_and_tun_are_checked_against_the_device() {
        expect_error(
            &TAP_TUNNELS.replace("\"tap0\"", "\"tun0\""),
            "tunnel[0].device = \"tun0\" is not an Ethernet (TAP) device",
        );
        expect_error(
            &TAP_TUNNELS.replace("next_hop = \"10.99.0.2\"\n", ""),
            "tunnel[0].next_hop is missing",
        );
        expect_error(
            &TAP_TUNNELS.replace("10.99.0.2", "10.99.0"),
            "tunnel[0].next_hop = \"10.99.0\" is not an IPv4 or IPv6 address",
        );
        expect_error(
            &GOOD.replace("weight = 3", "weight = 3\nnext_hop = \"10.99.0.2\""),
            "tunnel[1].next_hop = \"10.99.0.2\": a tun tunnel has no next hop",
        );
    }

    #[test]
    fn xdp_with_tun_tunnels_is_refused_with_the_reason() {
        expect_error(
            &GOOD.replace("spray = \"flow\"", "mode = \"xdp\""),
            "mode = \"xdp\": tun0 is a tun device: Linux refuses native XDP",
        );
        expect_error(
            &GOOD.replace("spray = \"flow\"", "mode = \"flow\""),
            "mode = \"flow\": `mode` now picks the hook",
        );
    }

    #[test]
    fn lan_interface_as_tunnel() {
        expect_error(
            &GOOD.replace("\"tun1\"", "\"eth1\""),
            "tunnel[1].device = \"eth1\" is the LAN interface",
        );
    }

    #[test]
    fn translation_prefix_length_must_match() {
        expect_error(
            &GOOD.replace("100.64.1.0/24", "100.64.1.0/25"),
            "tunnel[1].translate[0] = \"100.64.1.0/25\" is /25 but the LAN prefix is /24",
        );
    }

    #[test]
    fn duplicate_and_overlapping() {
        expect_error(
            &GOOD.replace("\"tun1\"", "\"tun0\""),
            "tunnel[1].device = \"tun0\" is configured twice",
        );
        expect_error(
            &GOOD.replace("100.64.1.0/24", "100.64.0.0/24"),
            "duplicates tunnel[0].translate[0]",
        );
        expect_error(&GOOD.replace("10.20.30.0/24", "192.168.0.0/16"), "overlaps");
    }

    #[test]
    fn tunnel_count_limits() {
        let none = GOOD.split("[[tunnel]]").next().unwrap();
        expect_error(none, "no [[tunnel]] sections");
        let mut many = none.to_owned();
        for k in 0..65 {
            let _ = write!(
                many,
                "[[tunnel]]\ndevice = \"t{k}\"\ntranslate = [\"100.{}.{}.0/24\", \"fd00:64:{k:x}::/64\"]\n",
                64 + k / 200,
                k % 200
            );
        }
        expect_error(
            &many,
            "65 tunnels configured: the datapath supports at most 64",
        );
    }

    #[test]
    fn malformed_addresses() {
        expect_error(
            &GOOD.replace("10.20.30.0/24", "10.20.300.0/24"),
            "remote_prefixes[0] = \"10.20.300.0/24\": \"10.20.300.0\" is not an IPv4 or IPv6 address",
        );
        expect_error(
            &GOOD.replace("10.20.30.0/24", "10.20.30.0"),
            "is not a prefix",
        );
        expect_error(
            &GOOD.replace("10.20.30.0/24", "10.20.30.0/33"),
            "the length must be a number from 0 to 32",
        );
        expect_error(
            &GOOD.replace("192.168.10.0/24", "192.168.10.1/24"),
            "has host bits set: did you mean \"192.168.10.0/24\"?",
        );
        expect_error(
            &GOOD.replace("127.0.0.1:7505", "localhost"),
            "tunnel[0].management = \"localhost\" is not an address:port",
        );
    }

    #[test]
    fn differing_mtus_warn() {
        let (_, warnings) = parse(&GOOD.replace("\"tun1\"", "\"tun2\""), &fake()).unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0]
                .0
                .contains("the path MTU is the smallest, 1400 on tun2"),
            "{warnings:?}"
        );
    }

    #[test]
    fn exclusions_must_be_inside_remote_prefixes() {
        expect_error(
            &GOOD.replace("10.20.30.1/32", "10.99.0.1/32"),
            "exclude[0] = \"10.99.0.1/32\" is not inside any remote prefix",
        );
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let bad = GOOD
            .replace("\"eth1\"", "\"eth9\"")
            .replace("weight = 3", "weight = 0");
        assert_eq!(errors(&bad).len(), 2);
    }
}
