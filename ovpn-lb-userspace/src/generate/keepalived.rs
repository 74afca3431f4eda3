//! keepalived for gateway pairs on a LAN without a router (`--ha vrrp`):
//! the gateways of a site share the virtual address(es) the LAN routes the
//! remote prefixes through, by VRRP (version 3, unicast to each other); a
//! gateway whose health file says it is withdrawn (`[announce]` in
//! ovpn-lb.toml) goes to FAULT at once and the next one takes over.

use std::{fmt::Write as _, net::IpAddr, path::Path};

use super::{
    ha::SiteHa,
    plan::{Plan, Side},
};
use crate::config::Net;

/// The VRRP instance's id on the LAN (the same on every gateway of a site).
pub const VIRTUAL_ROUTER_ID: u8 = 76;
/// Advertisements every 100 ms: a gateway that vanishes is replaced in
/// about 0.35 s (3 intervals and the skew).
pub const ADVERT_INT: &str = "0.1";
/// The first pair's priority; each further pair's is 10 less.
const FIRST_PRIORITY: usize = 200;

/// The length of `lan`'s prefix of `addr`'s family (a virtual address gets
/// the LAN's).
fn lan_len(lan: &[Net], addr: IpAddr) -> u8 {
    lan.iter()
        .find(|n| matches!(n, Net::V6(_)) == addr.is_ipv6())
        .map_or(if addr.is_ipv6() { 128 } else { 32 }, Net::prefix_len)
}

/// Gateway `side`'s `keepalived.conf` in `plan`'s pair; `health` is the
/// health file ovpn-lb writes, `binary` ovpn-lb.
#[must_use]
pub fn conf(plan: &Plan, side: Side, routing: &SiteHa, health: &Path, binary: &Path) -> String {
    let me = plan.site(side);
    let name = plan.gateway_name(side);
    let own = &routing.gateways[plan.pair];
    // The instance speaks the family of the first virtual address.
    let v6 = routing.vip.first().is_some_and(IpAddr::is_ipv6);
    let src = own.iter().find(|a| a.is_ipv6() == v6);
    let peers: Vec<IpAddr> = routing
        .gateways
        .iter()
        .enumerate()
        .filter(|(p, _)| *p != plan.pair)
        .filter_map(|(_, g)| g.iter().find(|a| a.is_ipv6() == v6).copied())
        .collect();
    let priority = FIRST_PRIORITY.saturating_sub(10 * plan.pair).max(1);
    let mut t = format!(
        "# keepalived on {name} (pair {} of {}): the gateways of site {side} share the\n\
         # address(es) the LAN routes site {}'s prefixes through. Written by\n\
         # `ovpn-lb generate`.\n\
         global_defs {{\n\
         \x20   router_id {name}\n\
         \x20   vrrp_version 3\n\
         \x20   enable_script_security\n\
         \x20   script_user root\n\
         }}\n\
         \n\
         # ovpn-lb writes 0 here while this gateway is healthy and 1 while it is not\n\
         # (fewer tunnels than announce.min_tunnels, LAN down, maintenance file,\n\
         # stopping, or the far gateway of the pair draining): with weight 0, 1 is a\n\
         # fault, and the next gateway takes the address at once. A loader killed\n\
         # outright leaves the file as it was: its datapath keeps forwarding.\n\
         vrrp_track_file ovpnlb_health {{\n\
         \x20   file \"{}\"\n\
         \x20   weight 0\n\
         }}\n\
         \n\
         # The same from the loader itself: exit 0 announced, 1 withdrawn, 2 no\n\
         # loader running. Tracking it as well (track_script below) also hands the\n\
         # address on when the loader is stopped or gone, datapath or not.\n\
         vrrp_script ovpnlb_check {{\n\
         \x20   script \"{} status --check\"\n\
         \x20   interval 1\n\
         \x20   fall 1\n\
         \x20   rise 2\n\
         }}\n\
         \n\
         vrrp_instance ovpnlb_site_{} {{\n\
         \x20   state BACKUP\n\
         \x20   interface {}\n\
         \x20   virtual_router_id {VIRTUAL_ROUTER_ID}\n\
         \x20   priority {priority}\n\
         \x20   advert_int {ADVERT_INT}\n\
         \x20   # A gateway that comes back leaves the address where it is.\n\
         \x20   nopreempt\n",
        plan.pair + 1,
        plan.pairs,
        side.other(),
        health.display(),
        binary.display(),
        side.letter(),
        me.lan_interface,
    );
    if let Some(src) = src {
        let _ = writeln!(t, "    unicast_src_ip {src}");
    }
    let _ = writeln!(t, "    unicast_peer {{");
    for p in &peers {
        let _ = writeln!(t, "        {p}");
    }
    let _ = writeln!(t, "    }}");
    let (same, other): (Vec<IpAddr>, Vec<IpAddr>) =
        routing.vip.iter().partition(|a| a.is_ipv6() == v6);
    for (block, addrs) in [
        ("virtual_ipaddress", same),
        ("virtual_ipaddress_excluded", other),
    ] {
        if addrs.is_empty() {
            continue;
        }
        let _ = writeln!(t, "    {block} {{");
        for a in addrs {
            let _ = writeln!(
                t,
                "        {a}/{} dev {}",
                lan_len(&me.lan, a),
                me.lan_interface
            );
        }
        let _ = writeln!(t, "    }}");
    }
    t.push_str(
        "    track_file {\n        ovpnlb_health\n    }\n    # track_script {\n    #     ovpnlb_check\n    # }\n}\n",
    );
    t
}
