//! LAN ingress pipeline: classify -> validate -> schedule -> MTU -> address ->
//! (XDP: complete offloaded checksums) -> translate -> redirect.
//!
//! Classification reads only the addresses, at fixed offsets, before any
//! validation: a packet that is not remote-bound (source in the LAN prefix,
//! destination sprayed) passes to the kernel whatever else is wrong with it.
//! Only remote-bound packets are ever dropped here.

use ovpn_lb_common::{
    Reason, SiteConfig, checksum,
    flow::FlowHasher,
    maps::{family, route},
};

use crate::{
    hook::Hook,
    layout::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, EthHdr, Ipv4Hdr, Ipv6Hdr},
    log,
    maps::{REMOTE_V4, REMOTE_V6, SITE, v4_key, v6_key},
    offload,
    packet::{Mac, Packet},
    parse, probe, redirect, schedule, stats, translate, verdict,
};

/// The same pipeline under tc and XDP: `C` is the hook's context.
#[inline(always)]
pub fn handle<C: Hook>(ctx: &C) -> i32 {
    let pkt = Packet::new(ctx);
    let len = pkt.len();
    let (reason, action) = match try_spray(&pkt) {
        Ok(ifindex) => (Reason::Sprayed, ctx.redirect(ifindex)),
        Err(reason) => (reason, verdict::of(ctx, reason)),
    };
    stats::reason(reason, len);
    action
}

/// Returns the ifindex to redirect to once the packet has been rewritten.
#[inline(always)]
fn try_spray<C: Hook>(pkt: &Packet<C>) -> Result<u32, Reason> {
    let eth = pkt.header::<EthHdr>(0).ok_or(Reason::ShortFrame)?;
    let site = SITE.get(0).ok_or(Reason::NotLan)?;
    // Only frames sent to this host: not broadcasts, multicasts or frames
    // for other hosts that a promiscuous device hands us.
    let for_us = match pkt.ctx().to_this_host() {
        Some(host) => host,
        None => eth.dst() == Mac::new(&site.lan_mac),
    };
    if !for_us {
        if site.lan_mac == [0; 6] && pkt.ctx().to_this_host().is_none() {
            log::lan_mac_unset();
        }
        return Err(Reason::NotForUs);
    }
    // VLAN-tagged frames (802.1Q, 802.1ad) are not unwrapped: not IP here.
    let proto = eth.ether_type();
    if proto != ETH_P_IP && proto != ETH_P_IPV6 {
        return Err(Reason::NotIp);
    }
    if proto == ETH_P_IP {
        spray_v4(pkt, site)
    } else {
        spray_v6(pkt, site)
    }
}

#[inline(always)]
fn spray_v4<C: Hook>(pkt: &Packet<C>, site: &SiteConfig) -> Result<u32, Reason> {
    let hdr = pkt.header::<Ipv4Hdr>(ETH_HLEN).ok_or(Reason::ShortFrame)?;
    let (src, dst) = (hdr.src(), hdr.dst());
    if probe::is_probe_address(dst) {
        return Err(Reason::ProbeFromLan);
    }
    if site.families & family::V4 == 0 || !site.lan_v4.contains(src) {
        return Err(Reason::NotLan);
    }
    if REMOTE_V4.get(&v4_key(dst)) != Some(&route::SPRAY) {
        return Err(Reason::NotRemote);
    }
    // Remote-bound: from here on a malformed packet is dropped.
    let ip = parse::ipv4(pkt, &hdr, ETH_HLEN)?;
    if ip.big {
        return Err(Reason::BigTcp);
    }
    if !parse::ipv4_checksum_ok(pkt, &hdr, &ip) {
        return Err(Reason::BadIpChecksum);
    }
    if hdr.ttl() <= 1 {
        return Err(Reason::TtlExpired);
    }
    let l4 = parse::l4_checksum(pkt, &ip)?;
    let (id, tunnel) = schedule::pick::<C>(site.spray, ring_bytes(pkt, &ip), family::V4, || {
        FlowHasher::new()
            .word(src)
            .word(dst)
            .word(parse::ports(pkt, &ip))
            .word(u32::from(ip.proto))
            .finish()
    })?;
    redirect::fits(pkt, tunnel, &ip)?;
    redirect::address(pkt, tunnel)?;
    offload::complete(pkt, &ip, l4.as_ref(), |len| {
        checksum::pseudo_v4(src, dst, ip.proto, len)
    })?;
    translate::ipv4(pkt, &hdr, tunnel.xlat_v4.translate(src), dst, true, l4)?;
    redirect::trim_padding(pkt, ETH_HLEN + ip.len)?;
    stats::tunnel_tx(id, ip.len as u32);
    Ok(tunnel.ifindex)
}

#[inline(always)]
fn spray_v6<C: Hook>(pkt: &Packet<C>, site: &SiteConfig) -> Result<u32, Reason> {
    let hdr = pkt.header::<Ipv6Hdr>(ETH_HLEN).ok_or(Reason::ShortFrame)?;
    let (src, dst) = (hdr.src(), hdr.dst());
    if site.families & family::V6 == 0 || !site.lan_v6.contains(&src) {
        return Err(Reason::NotLan);
    }
    if REMOTE_V6.get(&v6_key(&dst)) != Some(&route::SPRAY) {
        return Err(Reason::NotRemote);
    }
    // Remote-bound: from here on a malformed packet is dropped.
    let ip = parse::ipv6(pkt, &hdr, ETH_HLEN)?;
    if ip.big {
        return Err(Reason::BigTcp);
    }
    if hdr.hop_limit() <= 1 {
        return Err(Reason::TtlExpired);
    }
    let l4 = parse::l4_checksum(pkt, &ip)?;
    let (id, tunnel) = schedule::pick::<C>(site.spray, ring_bytes(pkt, &ip), family::V6, || {
        FlowHasher::new()
            .word(src[0] ^ src[1] ^ src[2] ^ src[3])
            .word(dst[0] ^ dst[1] ^ dst[2] ^ dst[3])
            .word(parse::ports(pkt, &ip))
            .word(u32::from(ip.proto))
            .finish()
    })?;
    redirect::fits(pkt, tunnel, &ip)?;
    redirect::address(pkt, tunnel)?;
    offload::complete(pkt, &ip, l4.as_ref(), |len| {
        checksum::pseudo_v6(&src, &dst, ip.proto, len)
    })?;
    translate::ipv6(pkt, &hdr, &tunnel.xlat_v6.translate(&src), &dst, true, l4)?;
    redirect::trim_padding(pkt, ETH_HLEN + ip.len)?;
    stats::tunnel_tx(id, ip.len as u32);
    Ok(tunnel.ifindex)
}

/// What a packet becomes in a tunnel's ring, in bytes: a GSO packet is cut
/// into its segments on the way in, each with its own headers.
#[inline(always)]
fn ring_bytes<C: Hook>(pkt: &Packet<C>, ip: &parse::Ip) -> u32 {
    let len = ip.len as u32;
    let gso_size = pkt.ctx().gso_size();
    if gso_size == 0 {
        return len;
    }
    let headers = parse::segment_len(pkt, ip, gso_size).saturating_sub(gso_size);
    let payload = len.saturating_sub(headers);
    let segs = match pkt.ctx().gso_segs() {
        // Not counted by the kernel (a packet from an untrusted source).
        0 => payload.div_ceil(gso_size),
        segs => segs,
    };
    len + segs.saturating_sub(1) * headers
}
