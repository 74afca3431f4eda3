//! How several gateway pairs share a site: each gateway announces the
//! remote prefixes to the site router over eBGP (with BFD) while it is
//! healthy, and the router spreads flows over them by ECMP (`Bgp`); or,
//! without a router, the gateways hold a virtual address by VRRP
//! (keepalived), the one whose health is best taking it (`Vrrp`).
//!
//! The answers (`Routing`), checked into `HaPlan`: per site the router's
//! addresses and AS numbers, or the virtual addresses, and each pair's
//! gateway's own addresses on its LAN interface.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::config::Net;

/// The site router's AS and the gateways' AS, unless the operator says:
/// private AS numbers (RFC 6996), the same on both sites (the sites do not
/// speak BGP to each other).
pub const DEFAULT_ROUTER_ASN: u32 = 64_512;
pub const DEFAULT_GATEWAY_ASN: u32 = 64_513;

/// How the pairs share a site.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HaKind {
    /// eBGP with BFD to the site router, which spreads flows by ECMP.
    Bgp,
    /// VRRP (keepalived): one gateway holds the site's next hop.
    Vrrp,
}

impl HaKind {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            HaKind::Bgp => "bgp",
            HaKind::Vrrp => "vrrp",
        }
    }
}

/// The answers about routing between the pairs, as given; per site.
#[derive(Clone, Debug)]
pub struct Routing {
    /// `None`: a lone pair, unless there are several (then BGP).
    pub ha: Option<HaKind>,
    /// Per site, per pair: the gateway's addresses on its LAN interface,
    /// one per LAN address family, comma-separated.
    pub gateways: [Vec<String>; 2],
    /// BGP: the site router's addresses on the gateways' segment, one per
    /// family.
    pub router: [Vec<String>; 2],
    pub asn: [u32; 2],
    pub router_asn: [u32; 2],
    /// VRRP: the virtual addresses the LAN routes through, one per family.
    pub vip: [Vec<String>; 2],
}

impl Default for Routing {
    fn default() -> Self {
        Self {
            ha: None,
            gateways: [Vec::new(), Vec::new()],
            router: [Vec::new(), Vec::new()],
            asn: [DEFAULT_GATEWAY_ASN; 2],
            router_asn: [DEFAULT_ROUTER_ASN; 2],
            vip: [Vec::new(), Vec::new()],
        }
    }
}

/// One site's routing, checked. Address lists are IPv4 first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteHa {
    /// Per pair: that pair's gateway's own addresses on its LAN interface.
    pub gateways: Vec<Vec<IpAddr>>,
    /// BGP: the site router's addresses; empty under VRRP.
    pub router: Vec<IpAddr>,
    pub asn: u32,
    pub router_asn: u32,
    /// VRRP: the virtual addresses; empty under BGP.
    pub vip: Vec<IpAddr>,
}

/// The routing between the pairs, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaPlan {
    pub kind: HaKind,
    /// Per site (A, B).
    pub sites: [SiteHa; 2],
}

fn letter(i: usize) -> &'static str {
    if i == 0 { "a" } else { "b" }
}

/// The addresses of one answer (`10.1.0.2,fd00:1::2`), one per family of
/// `lan` and IPv4 first; a problem is one line naming `option`.
fn addresses(option: &str, text: &str, lan: &[Net], errors: &mut Vec<String>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<IpAddr>() {
            Ok(a) if out.iter().any(|o| o.is_ipv4() == a.is_ipv4()) => {
                errors.push(format!("{option} {part}: one address per address family"));
            }
            Ok(a) => out.push(a),
            Err(_) => errors.push(format!(
                "{option} \"{part}\" is not an IPv4 or IPv6 address"
            )),
        }
    }
    out.sort_by_key(IpAddr::is_ipv6);
    for net in lan {
        let v6 = matches!(net, Net::V6(_));
        if !out.iter().any(|a| a.is_ipv6() == v6) {
            errors.push(format!(
                "{option} \"{text}\": give an {} address too (the LAN has {net})",
                if v6 { "IPv6" } else { "IPv4" }
            ));
        }
    }
    out
}

/// Whether `addr` lies in one of `lan`.
fn in_lan(addr: IpAddr, lan: &[Net]) -> bool {
    lan.iter().any(|n| n.contains(addr))
}

/// Checks `r` for `pairs` pairs between sites whose LANs are `lans`;
/// `None` (and no error) for a lone pair without `--ha`.
pub(super) fn plan(
    r: &Routing,
    pairs: usize,
    lans: &[Vec<Net>; 2],
    errors: &mut Vec<String>,
) -> Option<HaPlan> {
    let kind = match (r.ha, pairs) {
        (Some(k), _) => k,
        (None, 1) => return None,
        (None, _) => HaKind::Bgp,
    };
    let sites = [0, 1].map(|i| site(r, kind, pairs, i, &lans[i], errors));
    Some(HaPlan { kind, sites })
}

fn site(
    r: &Routing,
    kind: HaKind,
    pairs: usize,
    i: usize,
    lan: &[Net],
    errors: &mut Vec<String>,
) -> SiteHa {
    let l = letter(i);
    let gateway_option = format!("--gateway-{l}");
    if r.gateways[i].len() != pairs {
        errors.push(format!(
            "{gateway_option}: {} given for {pairs} pair(s): give each pair's gateway's LAN address(es), one --gateway-{l} per pair, e.g. --gateway-{l} 10.1.0.2,fd00:1::2",
            r.gateways[i].len()
        ));
    }
    let gateways: Vec<Vec<IpAddr>> = r.gateways[i]
        .iter()
        .map(|g| addresses(&gateway_option, g, lan, errors))
        .collect();
    let mut seen: Vec<IpAddr> = Vec::new();
    for a in gateways.iter().flatten() {
        if seen.contains(a) {
            errors.push(format!(
                "{gateway_option} {a} is given twice: every gateway needs an address of its own"
            ));
        }
        seen.push(*a);
    }
    let (mut router, mut vip) = (Vec::new(), Vec::new());
    match kind {
        HaKind::Bgp => {
            let option = format!("--router-{l}");
            if r.router[i].is_empty() {
                errors.push(format!(
                    "{option} is missing: --ha bgp needs site {}'s router address(es) on the gateways' segment, e.g. {option} 10.1.255.1,fd00:1:ff::1",
                    l.to_uppercase()
                ));
            } else {
                router = addresses(&option, &r.router[i].join(","), lan, errors);
            }
            if let Some(a) = router.iter().find(|a| seen.contains(a)) {
                errors.push(format!("{option} {a} is also a gateway's address"));
            }
            asn_checks(r, i, errors);
        }
        HaKind::Vrrp => {
            let option = format!("--vip-{l}");
            if r.vip[i].is_empty() {
                errors.push(format!(
                    "{option} is missing: --ha vrrp needs the virtual address(es) site {}'s LAN routes through, e.g. {option} 10.1.0.1,fd00:1::1",
                    l.to_uppercase()
                ));
            } else {
                vip = addresses(&option, &r.vip[i].join(","), lan, errors);
            }
            for a in vip.iter().chain(&seen) {
                if !in_lan(*a, lan) {
                    errors.push(format!(
                        "{a} (--vip-{l} or --gateway-{l}) is outside site {}'s LAN: under VRRP the gateways and their virtual address sit on the LAN",
                        l.to_uppercase()
                    ));
                }
            }
            if let Some(a) = vip.iter().find(|a| seen.contains(a)) {
                errors.push(format!("{option} {a} is also a gateway's address"));
            }
        }
    }
    SiteHa {
        gateways,
        router,
        asn: r.asn[i],
        router_asn: r.router_asn[i],
        vip,
    }
}

/// eBGP: two AS numbers, neither reserved.
fn asn_checks(r: &Routing, i: usize, errors: &mut Vec<String>) {
    let l = letter(i);
    for (option, asn) in [
        (format!("--asn-{l}"), r.asn[i]),
        (format!("--router-asn-{l}"), r.router_asn[i]),
    ] {
        // 0 and 4294967295 are reserved; 23456 is AS_TRANS.
        if asn == 0 || asn == u32::MAX || asn == 23_456 {
            errors.push(format!(
                "{option} {asn}: a reserved AS number; pick a private one (64512-65534)"
            ));
        }
    }
    if r.asn[i] == r.router_asn[i] {
        errors.push(format!(
            "--asn-{l} and --router-asn-{l} are both {}: the gateways speak eBGP to the router, so their AS must differ",
            r.asn[i]
        ));
    }
}
