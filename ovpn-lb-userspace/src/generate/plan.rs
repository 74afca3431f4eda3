//! The operator's answers (`Request`) and what they mean once checked
//! (`Plan`, one per gateway pair): per tunnel its device, UDP port, link
//! addresses and both gateways' translation prefixes. With `pairs` K, the
//! K pairs' tunnels are numbered one after the other (pair p's tunnel k is
//! slot p x N + k): each pair has ports, links and translation prefixes of
//! its own, and pair 1's are those of a site generated with one pair. Every
//! problem is one line naming the option; all are reported at once.

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use ovpn_lb_common::MAX_TUNNELS;
use serde::{Deserialize, Serialize};

use super::{
    addressing::{capacity, half, host, subnet},
    ha::{self, HaPlan, Routing},
};
use crate::config::{ConfigErrors, Net, TunnelKind};

/// Where translation prefixes are taken from unless the operator says: the
/// first half for gateway A (100.64.0.0/16, `fd64::/16`), the second for
/// gateway B (100.65.0.0/16, `fd65::/16`).
pub const DEFAULT_TRANSLATE_POOL_V4: &str = "100.64.0.0/15";
pub const DEFAULT_TRANSLATE_POOL_V6: &str = "fd64::/15";
/// Tunnel link addresses: tunnel k gets 10.99.k.0/30 (and, on TAP links
/// with IPv6 LANs, `fd99:0:0:k::/64`).
pub const DEFAULT_LINK_V4: &str = "10.99.0.0/16";
pub const DEFAULT_LINK_V6: &str = "fd99::/48";
pub const DEFAULT_FIRST_PORT: u16 = 1194;
/// Where the Debian package (`cargo xtask deb`) installs `ovpn-lb`.
pub const DEFAULT_BINARY: &str = "/usr/sbin/ovpn-lb";
/// Tunnel MTUs OpenVPN and the kernel accept; IPv6 needs at least 1280.
const MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=65_535;
const IPV6_MIN_MTU: u32 = 1280;
/// Gateway pairs a site may have.
pub const MAX_PAIRS: usize = 16;
/// Linux interface names are at most 15 bytes.
const MAX_IFNAME: usize = 15;
/// The link network is cut into at most this many blocks, one per tunnel,
/// so that with a /16 tunnel k's link is 10.99.k.0/30.
const LINK_BLOCKS_BITS: u8 = 8;

/// The two gateways. A is OpenVPN's TLS client, B the TLS server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::A, Side::B];

    /// Index into the per-gateway arrays.
    #[must_use]
    pub fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }

    #[must_use]
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    /// `a` or `b`, for file and option names.
    #[must_use]
    pub fn letter(self) -> &'static str {
        match self {
            Side::A => "a",
            Side::B => "b",
        }
    }

    /// The first pair's gateway's directory in the output, and its
    /// certificate's name (see [`Plan::gateway_name`]).
    #[must_use]
    pub fn name(self) -> String {
        format!("gateway-{}", self.letter())
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::A => "A",
            Side::B => "B",
        })
    }
}

/// The operator's answers, as given (text is checked by [`Request::plans`]).
#[derive(Clone, Debug)]
pub struct Request {
    /// Gateway pairs between the two sites.
    pub pairs: usize,
    /// Per site, each pair's gateway's WAN address or host name, as the
    /// other gateway of the pair reaches it.
    pub wan: [Vec<String>; 2],
    /// Each gateway's LAN interface.
    pub lan_interface: [String; 2],
    /// Each gateway's WAN interface (the tunnels' UDP leaves by it), if
    /// given: its `ovpn-lb.toml` guards it, and its sysctl drop-in lets it
    /// keep taking router advertisements with IPv6 forwarding on.
    pub wan_interface: [Option<String>; 2],
    /// Each gateway's LAN prefixes: one IPv4 and/or one IPv6.
    pub lan: [Vec<String>; 2],
    pub tunnels: usize,
    /// Tunnel k uses UDP port `first_port + k` on both gateways.
    pub first_port: u16,
    pub kind: TunnelKind,
    /// OpenVPN's `tun-mtu`; above 1500 for jumbo tunnels.
    pub tun_mtu: Option<u32>,
    pub link_v4: String,
    pub link_v6: String,
    pub translate_pool_v4: String,
    pub translate_pool_v6: String,
    /// Per site, the directory each pair's gateway's files are installed
    /// under (one for all pairs, or one per pair): `/` on a real gateway, a
    /// directory of its own in a test bed.
    pub root: [Vec<PathBuf>; 2],
    /// Protect the management sockets with a password file as well.
    pub management_password: bool,
    /// Where the `ovpn-lb` binary is installed (for the systemd unit).
    pub binary: PathBuf,
    /// How the pairs share a site: BGP to the site router, or VRRP.
    pub routing: Routing,
}

impl Request {
    /// A request with every default, for the two sites given.
    #[must_use]
    pub fn new(wan: [&str; 2], lan_interface: [&str; 2], lan: [&[&str]; 2]) -> Self {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        Self {
            pairs: 1,
            wan: wan.map(|w| vec![w.to_owned()]),
            lan_interface: lan_interface.map(str::to_owned),
            wan_interface: [None, None],
            lan: lan.map(owned),
            tunnels: 4,
            first_port: DEFAULT_FIRST_PORT,
            kind: TunnelKind::Tun,
            tun_mtu: None,
            link_v4: DEFAULT_LINK_V4.to_owned(),
            link_v6: DEFAULT_LINK_V6.to_owned(),
            translate_pool_v4: DEFAULT_TRANSLATE_POOL_V4.to_owned(),
            translate_pool_v6: DEFAULT_TRANSLATE_POOL_V6.to_owned(),
            root: [vec![PathBuf::from("/")], vec![PathBuf::from("/")]],
            management_password: false,
            binary: PathBuf::from(DEFAULT_BINARY),
            routing: Routing::default(),
        }
    }
}

/// One gateway (of one pair) as planned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    pub wan: String,
    pub lan_interface: String,
    pub wan_interface: Option<String>,
    /// IPv4 first when both families are there.
    pub lan: Vec<Net>,
    pub root: PathBuf,
}

impl Site {
    /// Where `path` (relative to `/`, e.g. `etc/openvpn`) is on this gateway.
    #[must_use]
    pub fn installed(&self, path: impl AsRef<Path>) -> PathBuf {
        self.root.join(path)
    }
}

/// One tunnel as planned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelPlan {
    pub index: usize,
    /// `tunK` or `tapK`, the same on both gateways.
    pub device: String,
    pub port: u16,
    /// The /30 of the tunnel's link: gateway A .1, gateway B .2.
    pub link_v4: Net,
    /// TAP links with IPv6 LANs: a /64, gateway A `::1`, gateway B `::2`.
    pub link_v6: Option<Net>,
    /// Per gateway: its translation prefixes on this tunnel (the length of
    /// its own LAN's, IPv4 first).
    pub translate: [Vec<Net>; 2],
}

impl TunnelPlan {
    /// `side`'s address on the tunnel link.
    #[must_use]
    pub fn link_address(&self, side: Side) -> IpAddr {
        host(&self.link_v4, side.index() as u128 + 1)
    }

    /// `side`'s IPv6 address on a TAP link, if the link has IPv6.
    #[must_use]
    pub fn link_address_v6(&self, side: Side) -> Option<IpAddr> {
        self.link_v6
            .as_ref()
            .map(|n| host(n, side.index() as u128 + 1))
    }
}

/// A checked request: one pair's plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Which pair, from 0.
    pub pair: usize,
    /// How many pairs the sites have.
    pub pairs: usize,
    pub sites: [Site; 2],
    /// This pair's tunnels: devices from `tun0` on, ports, links and
    /// translation prefixes of its own.
    pub tunnels: Vec<TunnelPlan>,
    pub kind: TunnelKind,
    pub tun_mtu: Option<u32>,
    pub management_password: bool,
    pub binary: PathBuf,
    /// BGP or VRRP between the pairs; `None`: a lone pair.
    pub ha: Option<HaPlan>,
}

impl Plan {
    #[must_use]
    pub fn site(&self, side: Side) -> &Site {
        &self.sites[side.index()]
    }

    /// This pair's gateway on `side`: `gateway-a` for the first pair (as a
    /// site of one pair calls it), `gateway-a2` for the second, ...: its
    /// directory in the output and its certificate's name.
    #[must_use]
    pub fn gateway_name(&self, side: Side) -> String {
        gateway_name(self.pair, side)
    }
}

/// The name of pair `pair`'s gateway on `side` (see [`Plan::gateway_name`]).
#[must_use]
pub fn gateway_name(pair: usize, side: Side) -> String {
    match pair {
        0 => side.name(),
        p => format!("{}{}", side.name(), p + 1),
    }
}

/// Collects the problems of one request.
#[derive(Default)]
struct Checker {
    errors: Vec<String>,
    /// Every prefix the plan uses, with the option that gave it.
    prefixes: Vec<(String, Net)>,
}

impl Request {
    /// Checks the answers and works out every tunnel's addressing, pair by
    /// pair.
    ///
    /// # Errors
    /// Every problem found, one line each, naming the option.
    pub fn plans(&self) -> Result<Vec<Plan>, ConfigErrors> {
        let mut c = Checker::default();
        c.counts(self);
        let pairs = self.pairs.clamp(1, MAX_PAIRS);
        let sites: Vec<[Site; 2]> = (0..pairs)
            .map(|p| Side::BOTH.map(|side| c.site(self, side, p)))
            .collect();
        let families = c.families(&sites);
        let link_v4 = c.prefix("--link-v4", &self.link_v4);
        let wants_v6_link = self.kind == TunnelKind::Tap && families.1;
        let link_v6 = if wants_v6_link {
            c.prefix("--link-v6", &self.link_v6)
        } else {
            None
        };
        let pool_v4 = if families.0 {
            c.prefix("--translate-pool-v4", &self.translate_pool_v4)
        } else {
            None
        };
        let pool_v6 = if families.1 {
            c.prefix("--translate-pool-v6", &self.translate_pool_v6)
        } else {
            None
        };
        if let Some(mtu) = self.tun_mtu {
            c.mtu(mtu, families.1);
        }
        let lans = [sites[0][0].lan.clone(), sites[0][1].lan.clone()];
        let ha = ha::plan(&self.routing, pairs, &lans, &mut c.errors);
        c.disjoint();
        let per_pair = self.tunnels.clamp(1, MAX_TUNNELS);
        let n = per_pair * pairs;
        let links = link_v4.map(|l| c.links_v4(&l, n)).unwrap_or_default();
        let links6 = link_v6.map(|l| c.links_v6(&l, n)).unwrap_or_default();
        let pools = [pool_v4, pool_v6];
        let translations =
            Side::BOTH.map(|side| c.translations(&pools, &lans[side.index()], side, n));
        if !c.errors.is_empty() {
            return Err(ConfigErrors(c.errors));
        }
        // With no errors every list has one entry per tunnel slot.
        let plans = sites
            .into_iter()
            .enumerate()
            .map(|(pair, sites)| Plan {
                pair,
                pairs,
                sites,
                tunnels: (0..per_pair)
                    .map(|k| {
                        let slot = pair * per_pair + k;
                        TunnelPlan {
                            index: k,
                            device: format!("{}{k}", self.kind.name()),
                            port: self
                                .first_port
                                .saturating_add(u16::try_from(slot).unwrap_or(u16::MAX)),
                            link_v4: links[slot],
                            link_v6: links6.get(slot).copied(),
                            translate: translations.each_ref().map(|families| {
                                families
                                    .iter()
                                    .filter_map(|f| f.get(slot).copied())
                                    .collect()
                            }),
                        }
                    })
                    .collect(),
                kind: self.kind,
                tun_mtu: self.tun_mtu,
                management_password: self.management_password,
                binary: self.binary.clone(),
                ha: ha.clone(),
            })
            .collect();
        Ok(plans)
    }

    /// The first pair's plan (the only one of a site with one pair).
    ///
    /// # Errors
    /// As [`Request::plans`].
    pub fn plan(&self) -> Result<Plan, ConfigErrors> {
        Ok(self.plans()?.remove(0))
    }
}

impl Checker {
    fn error(&mut self, message: String) {
        self.errors.push(message);
    }

    /// Parses one prefix option, remembering it for the overlap check.
    fn prefix(&mut self, option: &str, text: &str) -> Option<Net> {
        match Net::parse(option, text) {
            Ok(net) => {
                self.prefixes.push((format!("{option} {net}"), net));
                Some(net)
            }
            Err(e) => {
                self.error(e);
                None
            }
        }
    }

    fn counts(&mut self, r: &Request) {
        if !(1..=MAX_TUNNELS).contains(&r.tunnels) {
            self.error(format!(
                "--tunnels {}: give 1 to {MAX_TUNNELS} tunnels (the datapath's limit)",
                r.tunnels
            ));
        }
        if !(1..=MAX_PAIRS).contains(&r.pairs) {
            self.error(format!("--pairs {}: give 1 to {MAX_PAIRS} pairs", r.pairs));
        }
        let slots = r.tunnels.max(1) * r.pairs.clamp(1, MAX_PAIRS);
        let last = usize::from(r.first_port) + slots - 1;
        if r.first_port == 0 {
            self.error("--port 0: UDP ports start at 1".to_owned());
        } else if last > usize::from(u16::MAX) {
            self.error(format!(
                "--port {}: {slots} tunnels use ports {}..={last}, past 65535; pick a lower first port",
                r.first_port, r.first_port
            ));
        }
        if !r.binary.is_absolute() {
            self.error(format!(
                "--binary {}: give the absolute path the binary is installed at",
                r.binary.display()
            ));
        }
    }

    /// Pair `pair`'s gateway on `side`. The LAN is the site's; errors
    /// about it are reported for the first pair only.
    fn site(&mut self, r: &Request, side: Side, pair: usize) -> Site {
        let wan = self.wan(r, side, pair);
        let i = side.index();
        let root = r.root[i]
            .get(pair)
            .or(r.root[i].last())
            .cloned()
            .unwrap_or_else(|| PathBuf::from("/"));
        if pair == 0 {
            return self.lan_side(r, side, wan, root);
        }
        let first = self.errors.len();
        let planned = self.lan_side(r, side, wan, root);
        // The LAN's problems were said for the first pair.
        self.errors.truncate(first);
        self.prefixes
            .retain(|(option, _)| !option.starts_with("--lan-"));
        planned
    }

    /// Pair `pair`'s WAN address on `side`.
    fn wan(&mut self, r: &Request, side: Side, pair: usize) -> String {
        let given = &r.wan[side.index()];
        let Some(w) = given.get(pair) else {
            if pair == given.len() {
                self.error(format!(
                    "--wan-{}: {} given for {} pairs: give one per pair, comma-separated",
                    side.letter(),
                    given.len(),
                    r.pairs
                ));
            }
            return String::new();
        };
        let wan = w.trim().to_owned();
        if !is_address_or_host_name(&wan) {
            self.error(format!(
                "--wan-{} \"{wan}\" is neither an IP address nor a host name",
                side.letter()
            ));
        }
        wan
    }

    /// The site's LAN side of a gateway, with `wan` and `root`.
    fn lan_side(&mut self, r: &Request, side: Side, wan: String, root: PathBuf) -> Site {
        let i = side.index();
        let interface = r.lan_interface[i].clone();
        self.interface_name("lan", side, &interface);
        let wan_interface = r.wan_interface[i].clone();
        if let Some(wan) = &wan_interface {
            self.interface_name("wan", side, wan);
            if *wan == interface {
                self.error(format!(
                    "--wan-interface-{} \"{wan}\" is also the LAN interface: the WAN is the interface the tunnels' UDP leaves by",
                    side.letter()
                ));
            }
        }
        let option = format!("--lan-{}", side.letter());
        if r.lan[i].is_empty() {
            self.error(format!(
                "{option} is missing: give gateway {side}'s LAN prefix (IPv4 and/or IPv6)"
            ));
        }
        let mut lan: Vec<Net> = Vec::new();
        for text in &r.lan[i] {
            let Some(net) = self.prefix(&option, text) else {
                continue;
            };
            if lan.iter().any(|l| same_family(l, &net)) {
                self.error(format!(
                    "{option} {net}: only one LAN prefix per address family is supported"
                ));
            } else {
                lan.push(net);
            }
        }
        lan.sort_by_key(|n| matches!(n, Net::V6(_)));
        if !root.is_absolute() {
            self.error(format!(
                "--root-{} {}: give an absolute directory",
                side.letter(),
                root.display()
            ));
        }
        Site {
            wan,
            lan_interface: interface,
            wan_interface,
            lan,
            root,
        }
    }

    /// `--{role}-interface-{side}` must name an interface the kernel could have.
    fn interface_name(&mut self, role: &str, side: Side, name: &str) {
        if name.is_empty()
            || name.len() > MAX_IFNAME
            || name.contains(['/', ' ', '\t'])
            || name == "."
            || name == ".."
        {
            self.error(format!(
                "--{role}-interface-{} \"{name}\" is not an interface name (1 to {MAX_IFNAME} bytes, no '/' or spaces)",
                side.letter()
            ));
        }
    }

    /// (IPv4, IPv6) as both LANs have them; they must agree. Every gateway
    /// needs a WAN address of its own.
    fn families(&mut self, pairs: &[[Site; 2]]) -> (bool, bool) {
        let mut wans: Vec<&str> = Vec::new();
        for pair in pairs {
            if pair[0].wan == pair[1].wan && !pair[0].wan.is_empty() {
                self.error(format!(
                    "--wan-a and --wan-b are both \"{}\": the gateways need addresses of their own",
                    pair[0].wan
                ));
            }
            for site in pair {
                if !site.wan.is_empty()
                    && wans.contains(&site.wan.as_str())
                    && pair[0].wan != pair[1].wan
                {
                    self.error(format!(
                        "--wan \"{}\" is given to two pairs: every gateway needs an address of its own",
                        site.wan
                    ));
                }
                wans.push(&site.wan);
            }
        }
        let sites = &pairs[0];
        let has = |s: &Site, v6: bool| s.lan.iter().any(|n| matches!(n, Net::V6(_)) == v6);
        let v4 = [has(&sites[0], false), has(&sites[1], false)];
        let v6 = [has(&sites[0], true), has(&sites[1], true)];
        for (family, present) in [("IPv4", v4), ("IPv6", v6)] {
            if present[0] != present[1] {
                let (with, without) = if present[0] { ("A", "B") } else { ("B", "A") };
                self.error(format!(
                    "gateway {with}'s LAN has an {family} prefix and gateway {without}'s has none: both LANs need the same address families"
                ));
            }
        }
        (v4[0] && v4[1], v6[0] && v6[1])
    }

    fn mtu(&mut self, mtu: u32, v6: bool) {
        let low = if v6 { IPV6_MIN_MTU } else { *MTU_RANGE.start() };
        if mtu < low || mtu > *MTU_RANGE.end() {
            self.error(format!(
                "--tun-mtu {mtu}: give {low} to {}{}",
                MTU_RANGE.end(),
                if v6 { " (IPv6 needs 1280)" } else { "" }
            ));
        }
    }

    fn disjoint(&mut self) {
        let mut overlaps = Vec::new();
        for (i, (a_name, a)) in self.prefixes.iter().enumerate() {
            for (b_name, b) in &self.prefixes[i + 1..] {
                if a.overlaps(b) {
                    overlaps.push(format!(
                        "{b_name} overlaps {a_name}: the LANs, the link networks and the translation pools must be disjoint"
                    ));
                }
            }
        }
        self.errors.extend(overlaps);
    }

    /// Tunnel k's IPv4 link: the first /30 of the k-th of (up to) 256 blocks
    /// of the link network, so a /16 gives 10.99.k.0/30.
    fn links_v4(&mut self, link: &Net, n: usize) -> Vec<Net> {
        let block = (link.prefix_len() + LINK_BLOCKS_BITS).min(30);
        if capacity(link, block) < n as u128 {
            self.error(format!(
                "--link-v4 {link}: {n} tunnels need a /30 each; use a /{} or shorter",
                30 - bits_for(n)
            ));
            return Vec::new();
        }
        (0..n)
            .filter_map(|k| subnet(link, block, k as u128))
            .filter_map(|b| subnet(&b, 30, 0))
            .collect()
    }

    /// Tunnel k's IPv6 link on TAP: the k-th /64 of the link network.
    fn links_v6(&mut self, link: &Net, n: usize) -> Vec<Net> {
        if capacity(link, 64) < n as u128 {
            self.error(format!(
                "--link-v6 {link}: {n} tunnels need a /64 each; use a /{} or shorter",
                64 - bits_for(n)
            ));
            return Vec::new();
        }
        (0..n).filter_map(|k| subnet(link, 64, k as u128)).collect()
    }

    /// `side`'s translation prefixes, per family (IPv4 first), one per
    /// tunnel: the k-th prefix of its LAN's length in its half of the pool.
    fn translations(
        &mut self,
        pools: &[Option<Net>; 2],
        lan_prefixes: &[Net],
        side: Side,
        n: usize,
    ) -> Vec<Vec<Net>> {
        let mut out = Vec::new();
        for lan in lan_prefixes {
            let (option, pool) = match lan {
                Net::V4(_) => ("--translate-pool-v4", pools[0]),
                Net::V6(_) => ("--translate-pool-v6", pools[1]),
            };
            let Some(pool) = pool else { continue };
            let Some(half) = half(&pool, side == Side::B) else {
                self.error(format!(
                    "{option} {pool}: too small to share between two gateways"
                ));
                continue;
            };
            let len = lan.prefix_len();
            if capacity(&half, len) < n as u128 {
                let wanted = len.saturating_sub(bits_for(n) + 1);
                self.error(format!(
                    "{option} {pool}: gateway {side} gets half of it ({half}), room for {} prefix(es) of /{len} (its LAN's length) but {n} tunnels need {n}; give a /{wanted} or shorter",
                    capacity(&half, len)
                ));
                continue;
            }
            out.push(
                (0..n)
                    .filter_map(|k| subnet(&half, len, k as u128))
                    .collect(),
            );
        }
        out
    }
}

/// Bits needed to number `n` things.
fn bits_for(n: usize) -> u8 {
    u8::try_from(usize::BITS - n.saturating_sub(1).leading_zeros()).unwrap_or(u8::MAX)
}

fn same_family(a: &Net, b: &Net) -> bool {
    matches!((a, b), (Net::V4(_), Net::V4(_)) | (Net::V6(_), Net::V6(_)))
}

/// An IP address, or a DNS name of letters, digits and hyphens.
fn is_address_or_host_name(text: &str) -> bool {
    if text.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = text.strip_suffix('.').unwrap_or(text);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}
