//! Tunnel ingress pipeline: classify by address -> validate -> restore the
//! peer's sources and our own translated destinations -> hand to the
//! kernel, which routes to the LAN.
//!
//! Only what a peer may send is restored: a source of ours (LAN or
//! translation prefix) is dropped as spoofed, and our translated address is
//! restored only for a source in the tunnel's peer translation prefix or in
//! a sprayed remote prefix. A packet with nothing to restore passes
//! untouched before any validation.

use ovpn_lb_common::{
    Reason, SiteConfig, TunnelConfig,
    maps::{family, route},
};

use crate::{
    hook::Hook,
    layout::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, EthHdr, Ipv4Hdr, Ipv6Hdr},
    log,
    maps::{
        OUR_XLAT_V4, OUR_XLAT_V6, REMOTE_V4, REMOTE_V6, SITE, TUNNELS, tunnel_by_if, v4_key, v6_key,
    },
    packet::{Header, Packet},
    parse::{self, Family},
    probe, stats, translate,
};

/// What tunnel ingress did with a packet it did not refuse.
pub enum Ingress {
    /// Addresses restored: the caller hands it on (or forwards it).
    Restored(Family),
    /// A probe of the far gateway, answered: the caller sends it back.
    ProbeReflected,
    /// An answer to one of our probes, reported: the caller consumes it.
    ProbeReported,
}

/// Restores one packet; the caller counts the reason and picks the verdict.
/// `L3` is where the IP header starts: 0 on a tun device, which carries bare
/// IP packets (tc only); `ETH_HLEN` on a device with Ethernet framing (TAP).
#[inline(always)]
pub fn restore<C: Hook, const L3: usize>(pkt: &Packet<C>) -> Result<Ingress, Reason> {
    let id = tunnel_by_if(pkt.ctx().ifindex()).ok_or(Reason::UnknownTunnel)?;
    let tunnel = TUNNELS.get(id).ok_or(Reason::UnknownTunnel)?;
    let site = SITE.get(0).ok_or(Reason::UnknownTunnel)?;
    let proto = if L3 == ETH_HLEN {
        pkt.header::<EthHdr>(0)
            .ok_or(Reason::TruncatedEthernet)?
            .ether_type()
    } else {
        pkt.ctx().l3_protocol()
    };
    match proto {
        ETH_P_IP => {
            let dst = pkt.header::<Ipv4Hdr>(L3).ok_or(Reason::TruncatedIp)?.dst();
            // Probes have counters of their own; the tunnel's count traffic.
            if probe::is_probe_address(dst) {
                return probe::handle(pkt, L3, id).map(|h| match h {
                    probe::Handled::Reflected => Ingress::ProbeReflected,
                    probe::Handled::Reported => Ingress::ProbeReported,
                });
            }
            stats::tunnel_rx(id, pkt.len().saturating_sub(L3 as u32));
            restore_v4(pkt, L3, site, tunnel).map(|()| Ingress::Restored(Family::V4))
        }
        ETH_P_IPV6 => {
            stats::tunnel_rx(id, pkt.len().saturating_sub(L3 as u32));
            restore_v6(pkt, L3, site, tunnel).map(|()| Ingress::Restored(Family::V6))
        }
        _ => {
            stats::tunnel_rx(id, pkt.len().saturating_sub(L3 as u32));
            Err(Reason::NotIp)
        }
    }
}

#[inline(always)]
fn restore_v4<C: Hook>(
    pkt: &Packet<C>,
    l3: usize,
    site: &SiteConfig,
    tunnel: &TunnelConfig,
) -> Result<(), Reason> {
    let hdr = pkt.header::<Ipv4Hdr>(l3).ok_or(Reason::TruncatedIp)?;
    let (mut src, mut dst) = (hdr.src(), hdr.dst());
    let peer = tunnel.families & family::PEER_V4 != 0 && tunnel.peer_xlat_v4.contains(src);
    // A peer source cannot be one of ours: the loader keeps LAN, remote and
    // translation prefixes disjoint. Only other sources need the lookups.
    if !peer
        && ((site.families & family::V4 != 0 && site.lan_v4.contains(src))
            || OUR_XLAT_V4.get(&v4_key(src)).is_some())
    {
        return Err(Reason::SpoofedSource);
    }
    let ours = site.families & family::V4 != 0 && OUR_XLAT_V4.get(&v4_key(dst)).is_some();
    if !peer && !ours {
        return Err(Reason::NothingToRestore);
    }
    // A reply to our translated address from a far end without ovpn-lb must
    // come from a sprayed remote prefix.
    if !peer && REMOTE_V4.get(&v4_key(src)) != Some(&route::SPRAY) {
        return Err(Reason::SpoofedSource);
    }
    let ip = parse::ipv4(pkt, &hdr, l3)?;
    if !parse::ipv4_checksum_ok(pkt, &hdr, &ip) {
        return Err(Reason::BadIpChecksum);
    }
    let l4 = parse::l4_checksum(pkt, &ip)?;
    if peer {
        src = tunnel.peer_real_v4.translate(src);
    }
    if ours {
        dst = site.lan_v4.translate(dst);
    }
    translate::ipv4(pkt, &hdr, src, dst, false, l4)
}

#[inline(always)]
fn restore_v6<C: Hook>(
    pkt: &Packet<C>,
    l3: usize,
    site: &SiteConfig,
    tunnel: &TunnelConfig,
) -> Result<(), Reason> {
    let hdr = pkt.header::<Ipv6Hdr>(l3).ok_or(Reason::TruncatedIp)?;
    let (mut src, mut dst) = (hdr.src(), hdr.dst());
    let peer = tunnel.families & family::PEER_V6 != 0 && tunnel.peer_xlat_v6.contains(&src);
    if !peer
        && ((site.families & family::V6 != 0 && site.lan_v6.contains(&src))
            || OUR_XLAT_V6.get(&v6_key(&src)).is_some())
    {
        return Err(Reason::SpoofedSource);
    }
    let ours = site.families & family::V6 != 0 && OUR_XLAT_V6.get(&v6_key(&dst)).is_some();
    if !peer && !ours {
        return Err(Reason::NothingToRestore);
    }
    if !peer && REMOTE_V6.get(&v6_key(&src)) != Some(&route::SPRAY) {
        return Err(Reason::SpoofedSource);
    }
    let ip = parse::ipv6(pkt, &hdr, l3)?;
    let l4 = parse::l4_checksum(pkt, &ip)?;
    if peer {
        src = tunnel.peer_real_v6.translate(&src);
    }
    if ours {
        dst = site.lan_v6.translate(&dst);
    }
    translate::ipv6(pkt, &hdr, &src, &dst, false, l4)
}

/// What tunnel egress did with a packet it did not refuse.
pub enum Egress {
    /// Not ours to translate (already sprayed, not from the LAN, not IP).
    Untouched,
    /// Translated into tunnel `id`'s prefix; `ip_len` bytes of IP.
    Translated { id: u32, ip_len: u32 },
}

/// Tunnel egress: a packet leaving tunnel device `ctx.ifindex()` whose
/// source lies in our LAN prefix is one the kernel routed there itself (the
/// LAN program handed it over: over the MTU, BIG TCP; or the gateway's own).
/// Its source is translated into the tunnel's prefix, host bits kept, with
/// no TTL change, so nothing leaves untranslated. Everything else,
/// sprayed packets included, is untouched and uncounted; the check for them
/// reads one fixed header and pulls nothing.
#[inline(always)]
pub fn egress<C: Hook, const L3: usize>(pkt: &Packet<C>) -> Result<Egress, Reason> {
    let Some(site) = SITE.get(0) else {
        return Ok(Egress::Untouched);
    };
    let proto = if L3 == ETH_HLEN {
        match pkt.header::<EthHdr>(0) {
            Some(eth) => eth.ether_type(),
            None => return Ok(Egress::Untouched),
        }
    } else {
        pkt.ctx().l3_protocol()
    };
    match proto {
        ETH_P_IP => egress_v4(pkt, L3, site),
        ETH_P_IPV6 => egress_v6(pkt, L3, site),
        _ => Ok(Egress::Untouched),
    }
}

#[inline(always)]
fn egress_v4<C: Hook>(pkt: &Packet<C>, l3: usize, site: &SiteConfig) -> Result<Egress, Reason> {
    let Some(src) = pkt.read_fixed(l3, |h: &Header<Ipv4Hdr>| h.src()) else {
        return Ok(Egress::Untouched);
    };
    if site.families & family::V4 == 0 || !site.lan_v4.contains(src) {
        return Ok(Egress::Untouched);
    }
    let (id, tunnel) = egress_tunnel(pkt, family::V4)?;
    pkt.pull_headers();
    let hdr = pkt.header::<Ipv4Hdr>(l3).ok_or(Reason::TruncatedIp)?;
    let ip = parse::ipv4(pkt, &hdr, l3)?;
    let l4 = parse::l4_checksum(pkt, &ip)?;
    translate::ipv4(
        pkt,
        &hdr,
        tunnel.xlat_v4.translate(src),
        hdr.dst(),
        false,
        l4,
    )?;
    Ok(Egress::Translated {
        id,
        ip_len: ip.len as u32,
    })
}

#[inline(always)]
fn egress_v6<C: Hook>(pkt: &Packet<C>, l3: usize, site: &SiteConfig) -> Result<Egress, Reason> {
    let Some(src) = pkt.read_fixed(l3, |h: &Header<Ipv6Hdr>| h.src()) else {
        return Ok(Egress::Untouched);
    };
    if site.families & family::V6 == 0 || !site.lan_v6.contains(&src) {
        return Ok(Egress::Untouched);
    }
    let (id, tunnel) = egress_tunnel(pkt, family::V6)?;
    pkt.pull_headers();
    let hdr = pkt.header::<Ipv6Hdr>(l3).ok_or(Reason::TruncatedIp)?;
    let ip = parse::ipv6(pkt, &hdr, l3)?;
    let l4 = parse::l4_checksum(pkt, &ip)?;
    let dst = hdr.dst();
    translate::ipv6(pkt, &hdr, &tunnel.xlat_v6.translate(&src), &dst, false, l4)?;
    Ok(Egress::Translated {
        id,
        ip_len: ip.len as u32,
    })
}

/// The tunnel whose device the packet is leaving, if it can translate
/// `family_bit`; a LAN-sourced packet anywhere else is refused.
#[inline(always)]
fn egress_tunnel<C: Hook>(
    pkt: &Packet<C>,
    family_bit: u32,
) -> Result<(u32, &'static TunnelConfig), Reason> {
    let ifindex = pkt.ctx().ifindex();
    let tunnel = tunnel_by_if(ifindex).and_then(|id| Some((id, TUNNELS.get(id)?)));
    match tunnel {
        Some((id, tunnel)) if tunnel.families & family_bit != 0 => Ok((id, tunnel)),
        _ => {
            log::untranslatable(ifindex, family_bit);
            Err(Reason::Untranslatable)
        }
    }
}
