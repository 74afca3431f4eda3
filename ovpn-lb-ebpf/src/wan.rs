//! WAN egress guard: the last line behind the loader's routes. A packet
//! leaving a WAN device for our LAN, a remote prefix or either side's
//! translation prefixes, or from a remote prefix or a translation prefix,
//! is traffic between the LANs that something (a route, the gateway's own
//! stack, a device recreated while no loader ran) sent outside the
//! tunnels: it is dropped, never sent in the clear. A LAN host's own
//! traffic to the Internet (its source in our LAN, its destination none of
//! these) is the operator's routing and passes; so do the tunnels' own UDP,
//! which carries the gateways' WAN addresses, and everything else,
//! untouched and uncounted: the check reads one fixed header and makes at
//! most two lookups.

use ovpn_lb_common::{Reason, maps::guard::LAN as OUR_LAN};

use crate::{
    hook::Hook,
    layout::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, EthHdr, Ipv4Hdr, Ipv6Hdr},
    log,
    maps::{GUARD_V4, GUARD_V6, v4_key, v6_key},
    packet::{Header, Packet},
};

/// `Err(CleartextBlocked)` for a packet that must not leave; `L3` is where
/// the IP header starts (0 on a device without a link-layer header).
#[inline(always)]
pub fn guard<C: Hook, const L3: usize>(pkt: &Packet<C>) -> Result<(), Reason> {
    let proto = if L3 == ETH_HLEN {
        match pkt.read_fixed(0, |h: &Header<EthHdr>| h.ether_type()) {
            Some(p) => p,
            None => return Ok(()),
        }
    } else {
        pkt.ctx().l3_protocol()
    };
    // One address at a time: a pair of IPv6 addresses on the stack is
    // more than the verifier's alignment rules let through.
    let kind = match proto {
        ETH_P_IP => pkt
            .read_fixed(L3, |h: &Header<Ipv4Hdr>| h.src())
            .and_then(|src| GUARD_V4.get(&v4_key(src)).copied())
            .filter(|kind| *kind != OUR_LAN)
            .or_else(|| {
                pkt.read_fixed(L3, |h: &Header<Ipv4Hdr>| h.dst())
                    .and_then(|dst| GUARD_V4.get(&v4_key(dst)).copied())
            }),
        ETH_P_IPV6 => pkt
            .read_fixed(L3, |h: &Header<Ipv6Hdr>| h.src())
            .and_then(|src| GUARD_V6.get(&v6_key(&src)).copied())
            .filter(|kind| *kind != OUR_LAN)
            .or_else(|| {
                pkt.read_fixed(L3, |h: &Header<Ipv6Hdr>| h.dst())
                    .and_then(|dst| GUARD_V6.get(&v6_key(&dst)).copied())
            }),
        _ => None,
    };
    match kind {
        Some(kind) => {
            log::cleartext_blocked(pkt.ctx().ifindex(), kind);
            Err(Reason::CleartextBlocked)
        }
        None => Ok(()),
    }
}
