//! The configuration: the file's shape (`file`), what it means once checked
//! against the machine (`validate`, producing the types below), and how it is
//! written into the datapath's maps (`encode`). Nothing is attached until a
//! configuration has passed validation.

mod encode;
pub mod file;
pub mod hook;
pub(crate) mod validate;

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

pub use ovpn_lb_common::maps::Spray;
use ovpn_lb_common::{Prefix4, Prefix6};

pub use encode::{LpmEntries, LpmEntry, guard_entries, guarded_prefixes, translation_entries};
pub use validate::validate;

use crate::facts::Facts;

/// The hook the programs attach with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Tc,
    /// Native (driver-mode) XDP on the LAN device and on every TAP tunnel.
    Xdp,
}

impl Hook {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Hook::Tc => "tc",
            Hook::Xdp => "xdp",
        }
    }
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

    /// The prefix's first address.
    #[must_use]
    pub fn addr(&self) -> IpAddr {
        match self {
            Net::V4(p) => IpAddr::from(p.octets()),
            Net::V6(p) => IpAddr::from(p.octets()),
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

    /// True when `addr` lies in the prefix.
    #[must_use]
    pub fn contains(&self, addr: IpAddr) -> bool {
        let host = match addr {
            IpAddr::V4(a) => Net::V4(Prefix4::new(a.octets(), 32)),
            IpAddr::V6(a) => Net::V6(Prefix6::new(a.octets(), 128)),
        };
        self.overlaps(&host)
    }

    /// Parses "address/length" with host bits clear.
    ///
    /// # Errors
    /// A message naming `field`.
    pub fn parse(field: &str, text: &str) -> Result<Net, String> {
        let Some((addr, len)) = text.split_once('/') else {
            return Err(format!(
                "{field} = \"{text}\" is not a prefix: write it as address/length, e.g. 192.168.10.0/24"
            ));
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            format!("{field} = \"{text}\": \"{addr}\" is not an IPv4 or IPv6 address")
        })?;
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
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.prefix_len())
    }
}

/// What a tunnel device carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelKind {
    /// Bare IP packets (`dev tun`).
    Tun,
    /// Ethernet frames (`dev tap`).
    Tap,
}

impl TunnelKind {
    /// As the configuration writes it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            TunnelKind::Tun => "tun",
            TunnelKind::Tap => "tap",
        }
    }
}

/// Where OpenVPN's management interface listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManagementTarget {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ManagementTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManagementTarget::Tcp(a) => write!(f, "{a}"),
            ManagementTarget::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A tunnel's management interface, and the password it asks for, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Management {
    pub target: ManagementTarget,
    pub password_file: Option<PathBuf>,
}

/// How a tunnel's liveness and delay are measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probing {
    /// Not probed: link state and OpenVPN's state decide.
    Off,
    /// The far gateway runs ovpn-lb and reflects in-band probes.
    Reflected,
    /// ICMP echo to an address behind the tunnel (a plain OpenVPN peer).
    Echo(IpAddr),
}

/// One tunnel as configured (validated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelSpec {
    pub device: String,
    pub kind: TunnelKind,
    /// TAP only: the far end's address on the TAP link, whose MAC frames go to.
    pub next_hop: Option<IpAddr>,
    pub weight: u32,
    pub management: Option<Management>,
    pub xlat_v4: Option<Prefix4>,
    pub xlat_v6: Option<Prefix6>,
    /// The peer's translation prefix on this tunnel and the real prefix it
    /// is restored into.
    pub peer_v4: Option<(Prefix4, Prefix4)>,
    pub peer_v6: Option<(Prefix6, Prefix6)>,
    pub probing: Probing,
}

/// The LAN side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lan {
    pub interface: String,
    pub v4: Option<Prefix4>,
    pub v6: Option<Prefix6>,
}

/// Which interfaces the WAN guard watches: nothing with a LAN, remote or
/// translated address leaves them (only the tunnels' own UDP does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wan {
    /// `wan.interfaces`, by name: guarded whenever they exist.
    Named(Vec<String>),
    /// No `[wan]`: the interfaces the main table's default routes leave by,
    /// as they are at each look.
    DefaultRoute,
}

/// ovpn-lb's routing table and rule priority for the kernel path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelRouteSpec {
    pub table: u32,
    pub priority: u32,
}

/// `[announce]`, validated: when and how this gateway says it may be sent
/// traffic (see `announce`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceSpec {
    pub min_tunnels: usize,
    pub drain: Duration,
    pub maintenance_file: PathBuf,
    /// `None`: `health` in the run directory.
    pub health_file: Option<PathBuf>,
    pub table: u32,
    pub protocol: u8,
    pub metric: u32,
}

/// A configuration that has passed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub lan: Lan,
    pub wan: Wan,
    /// The networks behind the tunnels: what is sprayed, and what the
    /// marker routes announce.
    pub remote: Vec<Net>,
    pub exclude: Vec<Net>,
    pub spray: Spray,
    /// The hook programs attach with, and why (one line for the log).
    pub hook: Hook,
    pub hook_reason: String,
    pub up_delay: Duration,
    /// `None`: probes are off.
    pub probe: Option<crate::probe::Settings>,
    /// Packet spray counts a longer path up to this much.
    pub path_delay_max: Duration,
    pub metrics_listen: SocketAddr,
    pub kernel_route: KernelRouteSpec,
    /// `None`: nothing is announced.
    pub announce: Option<AnnounceSpec>,
    pub tunnels: Vec<TunnelSpec>,
}

/// Something the operator should know that does not stop the start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning(pub String);

/// Everything wrong with a file, one line each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads `path` and validates it against the machine.
///
/// # Errors
/// Every problem found, one line each, naming the field and the fix.
pub fn load(path: &Path, facts: &Facts) -> Result<(Config, Vec<Warning>), ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![format!(
            "{}: cannot read the configuration: {e}",
            path.display()
        )])
    })?;
    parse(&text, facts).map_err(|mut e| {
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
pub fn parse(text: &str, facts: &Facts) -> Result<(Config, Vec<Warning>), ConfigErrors> {
    let file = file::parse(text).map_err(|e| ConfigErrors(vec![e]))?;
    validate(file, facts)
}
