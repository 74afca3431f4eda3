//! FRR for gateway pairs behind a site router (`--ha bgp`): per gateway an
//! `frr.conf` (eBGP to the site router with BFD at 100 ms x 3, the marker
//! routes of the remote prefixes redistributed and nothing else, nothing
//! taken in, no graceful restart, the site's LAN routed through the router)
//! and FRR's `daemons`; per site the router's side of it, to merge into its
//! configuration, and its multipath sysctls.

use std::{fmt::Write as _, net::IpAddr};

use super::{
    ha::SiteHa,
    plan::{Plan, Side, gateway_name},
};
use crate::config::{Net, file::DEFAULT_ANNOUNCE_METRIC};

/// BFD: 100 ms between packets, 3 missed: a dead peer is gone in 0.3 s.
pub const BFD_INTERVAL_MS: u32 = 100;
pub const BFD_MULTIPLIER: u32 = 3;
/// The router's ECMP width: room for every pair a site may have.
pub const MAXIMUM_PATHS: usize = super::plan::MAX_PAIRS;
const PROFILE: &str = "ovpnlb";

fn family(a: IpAddr) -> &'static str {
    if a.is_ipv4() { "ipv4" } else { "ipv6" }
}

/// A BGP router ID: the IPv4 address if there is one, else the low 32 bits
/// of the IPv6 one.
fn router_id(addrs: &[IpAddr]) -> String {
    match addrs.first() {
        Some(IpAddr::V4(a)) => a.to_string(),
        Some(IpAddr::V6(a)) => std::net::Ipv4Addr::from(
            u32::try_from(u128::from(*a) & u128::from(u32::MAX)).unwrap_or(1),
        )
        .to_string(),
        None => "0.0.0.1".to_owned(),
    }
}

/// The metric zebra reads from the kernel's marker routes: the low 24 bits
/// (it takes the top 8 for an administrative distance).
#[must_use]
pub fn zebra_metric(kernel_metric: u32) -> u32 {
    kernel_metric & 0x00ff_ffff
}

/// The prefix lists of `nets` (the remote prefixes), IPv4 and IPv6.
fn prefix_lists(t: &mut String, nets: &[Net]) {
    for (seq, net) in nets.iter().enumerate() {
        let (list, kw) = match net {
            Net::V4(_) => ("OVPNLB-REMOTE", "ip"),
            Net::V6(_) => ("OVPNLB-REMOTE6", "ipv6"),
        };
        let _ = writeln!(
            t,
            "{kw} prefix-list {list} seq {} permit {net}",
            5 * (seq + 1)
        );
    }
}

/// Route-map `name` permitting exactly the prefix lists of `nets`; with
/// `marker`, only routes of that (zebra) metric, given MED 0 so that every
/// pair's announcement ties.
fn route_map(t: &mut String, nets: &[Net], name: &str, marker: Option<u32>) {
    let mut seq = 10;
    for (has, kw, list) in [
        (
            nets.iter().any(|n| matches!(n, Net::V4(_))),
            "ip",
            "OVPNLB-REMOTE",
        ),
        (
            nets.iter().any(|n| matches!(n, Net::V6(_))),
            "ipv6",
            "OVPNLB-REMOTE6",
        ),
    ] {
        if has {
            let _ = writeln!(
                t,
                "route-map {name} permit {seq}\n match {kw} address prefix-list {list}"
            );
            if let Some(metric) = marker {
                let _ = writeln!(t, " match metric {metric}\n set metric 0");
            }
            let _ = writeln!(t, "exit");
            seq += 10;
        }
    }
}

/// A `router bgp` block's opening: no graceful restart, since a withdrawn
/// gateway must stop drawing traffic at once, not after a restart timer.
fn router_bgp(t: &mut String, asn: u32, router_id: &str) {
    let _ = write!(
        t,
        "!\n\
         router bgp {asn}\n\
         \x20bgp router-id {router_id}\n\
         \x20bgp log-neighbor-changes\n\
         \x20no bgp default ipv4-unicast\n\
         \x20bgp graceful-restart-disable\n"
    );
}

/// A BFD profile of 100 ms x 3.
fn bfd_profile(t: &mut String) {
    let _ = write!(
        t,
        "bfd\n profile {PROFILE}\n  detect-multiplier {BFD_MULTIPLIER}\n  receive-interval {BFD_INTERVAL_MS}\n  transmit-interval {BFD_INTERVAL_MS}\n exit\nexit\n"
    );
}

/// One eBGP neighbor: BFD, quick timers (no graceful restart: a dead peer's
/// routes go at once), updates sent without delay.
fn neighbor(t: &mut String, addr: IpAddr, remote_as: u32, description: &str) {
    let _ = write!(
        t,
        " neighbor {addr} remote-as {remote_as}\n neighbor {addr} description {description}\n neighbor {addr} bfd profile {PROFILE}\n neighbor {addr} timers 3 9\n neighbor {addr} timers connect 1\n neighbor {addr} advertisement-interval 0\n"
    );
}

/// The address families' blocks: per family, `extra` lines, then per
/// neighbor of that family activation and the route-maps in and out.
fn families(
    t: &mut String,
    neighbors: &[IpAddr],
    extra: &dyn Fn(&str) -> Vec<String>,
    in_map: &str,
    out_map: &str,
) {
    for af in ["ipv4", "ipv6"] {
        let ours: Vec<&IpAddr> = neighbors.iter().filter(|a| family(**a) == af).collect();
        if ours.is_empty() {
            continue;
        }
        let _ = writeln!(t, " !\n address-family {af} unicast");
        for line in extra(af) {
            let _ = writeln!(t, "  {line}");
        }
        for a in ours {
            let _ = write!(
                t,
                "  neighbor {a} activate\n  neighbor {a} route-map {in_map} in\n  neighbor {a} route-map {out_map} out\n"
            );
        }
        let _ = writeln!(t, " exit-address-family");
    }
}

/// Gateway `side`'s `frr.conf` in `plan`'s pair.
#[must_use]
pub fn gateway_conf(plan: &Plan, side: Side, routing: &SiteHa) -> String {
    let me = plan.site(side);
    let remote = &plan.site(side.other()).lan;
    let own = &routing.gateways[plan.pair];
    let name = plan.gateway_name(side);
    let mut t = format!(
        "! FRR on {name} (pair {} of {}): announces site {}'s prefixes to site {side}'s\n\
         ! router over eBGP with BFD while ovpn-lb says this gateway is healthy: ovpn-lb\n\
         ! keeps a marker route per remote prefix in the kernel's main table then\n\
         ! ([announce] in ovpn-lb.toml), and bgpd redistributes exactly those.\n\
         ! Written by `ovpn-lb generate`.\n\
         frr defaults traditional\n\
         hostname {name}\n\
         log syslog informational\n\
         service integrated-vtysh-config\n\
         !\n",
        plan.pair + 1,
        plan.pairs,
        side.other(),
    );
    // Restored replies go to the LAN: through the router, unless the LAN
    // is this very segment.
    let statics: Vec<String> = me
        .lan
        .iter()
        .filter_map(|net| {
            let via = routing
                .router
                .iter()
                .find(|r| r.is_ipv4() == matches!(net, Net::V4(_)))?;
            let inside = net.contains(*via);
            let kw = if via.is_ipv4() { "ip" } else { "ipv6" };
            (!inside).then(|| format!("{kw} route {net} {via}"))
        })
        .collect();
    if !statics.is_empty() {
        let _ = writeln!(
            t,
            "! The LAN is behind the router: restored replies go there."
        );
        for s in &statics {
            let _ = writeln!(t, "{s}");
        }
        let _ = writeln!(t, "!");
    }
    prefix_lists(&mut t, remote);
    let _ = writeln!(
        t,
        "! Redistributed: the marker routes of the remote prefixes (their metric in\n\
         ! zebra: announce.metric's low 24 bits), nothing else.\n\
         ! Out: the remote prefixes only."
    );
    route_map(
        &mut t,
        remote,
        "OVPNLB-MARKERS",
        Some(zebra_metric(DEFAULT_ANNOUNCE_METRIC)),
    );
    route_map(&mut t, remote, "OVPNLB-OUT", None);
    let _ = writeln!(
        t,
        "! In: nothing. The gateway forwards by ovpn-lb, not by the router's routes.\nroute-map OVPNLB-IN deny 10\nexit\n!"
    );
    // The BFD profile before the sessions that name it.
    bfd_profile(&mut t);
    router_bgp(&mut t, routing.asn, &router_id(own));
    for r in &routing.router {
        neighbor(
            &mut t,
            *r,
            routing.router_asn,
            &format!("site-{}-router", side.letter()),
        );
    }
    families(
        &mut t,
        &routing.router,
        &|_| vec!["redistribute kernel route-map OVPNLB-MARKERS".to_owned()],
        "OVPNLB-IN",
        "OVPNLB-OUT",
    );
    t.push_str("exit\n");
    t
}

/// FRR's `daemons` for a gateway: bgpd and bfdd besides zebra and staticd
/// (which always run).
#[must_use]
pub fn daemons(plan: &Plan, side: Side) -> String {
    format!(
        "# FRR's daemons on {}: written by `ovpn-lb generate`. zebra and staticd always run.\n\
         bgpd=yes\n\
         bfdd=yes\n\
         ospfd=no\n\
         ospf6d=no\n\
         ripd=no\n\
         ripngd=no\n\
         isisd=no\n\
         pimd=no\n\
         ldpd=no\n\
         nhrpd=no\n\
         eigrpd=no\n\
         babeld=no\n\
         sharpd=no\n\
         pbrd=no\n\
         fabricd=no\n\
         vrrpd=no\n\
         pathd=no\n\
         vtysh_enable=yes\n\
         zebra_options=\"  -A 127.0.0.1 -s 90000000\"\n\
         bgpd_options=\"   -A 127.0.0.1\"\n\
         staticd_options=\"-A 127.0.0.1\"\n\
         bfdd_options=\"   -A 127.0.0.1\"\n",
        plan.gateway_name(side)
    )
}

/// Site `side`'s router: its part of the sessions with every pair's
/// gateway, ECMP over them, only the remote prefixes taken in, nothing sent.
#[must_use]
pub fn router_conf(plans: &[Plan], side: Side, routing: &SiteHa) -> String {
    let Some(first) = plans.first() else {
        return String::new();
    };
    let remote = &first.site(side.other()).lan;
    let mut t = format!(
        "! Site {side}'s router: eBGP with BFD to the site's {} ovpn-lb gateway(s), which\n\
         ! announce site {}'s prefixes while healthy; ECMP spreads flows over them.\n\
         ! Merge into the router's FRR configuration (bgpd and bfdd on), and apply\n\
         ! router-sysctl.conf: ECMP by each flow's ports needs its hash policy.\n\
         ! Written by `ovpn-lb generate`.\n\
         !\n\
         ! In: the remote prefixes only.\n",
        plans.len(),
        side.other()
    );
    prefix_lists(&mut t, remote);
    route_map(&mut t, remote, "OVPNLB-FROM-GATEWAYS", None);
    let _ = writeln!(
        t,
        "! Out: nothing; the gateways need no routes from the router.\nroute-map OVPNLB-TO-GATEWAYS deny 10\nexit\n!"
    );
    bfd_profile(&mut t);
    router_bgp(&mut t, routing.router_asn, &router_id(&routing.router));
    let _ = writeln!(t, " bgp bestpath as-path multipath-relax");
    let mut neighbors = Vec::new();
    for plan in plans {
        for a in &routing.gateways[plan.pair] {
            neighbor(&mut t, *a, routing.asn, &gateway_name(plan.pair, side));
            neighbors.push(*a);
        }
    }
    families(
        &mut t,
        &neighbors,
        &|_| vec![format!("maximum-paths {MAXIMUM_PATHS}")],
        "OVPNLB-FROM-GATEWAYS",
        "OVPNLB-TO-GATEWAYS",
    );
    t.push_str("exit\n");
    t
}

/// The router's sysctls: ECMP by each flow's ports (not its addresses
/// alone, which few hosts would pin to few pairs), and next hops whose
/// neighbour entry failed left out.
#[must_use]
pub fn router_sysctl(side: Side) -> String {
    format!(
        "# Site {side}'s router: written by `ovpn-lb generate`. Apply with `sysctl --system`\n\
         # after copying to /etc/sysctl.d/.\n\
         net.ipv4.fib_multipath_hash_policy = 1\n\
         net.ipv6.fib_multipath_hash_policy = 1\n\
         net.ipv4.fib_multipath_use_neigh = 1\n"
    )
}
