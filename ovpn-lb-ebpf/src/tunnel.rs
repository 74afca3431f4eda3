//! Tunnel ingress pipeline: parse -> restore the peer's sources and our own
//! translated destinations -> hand to the kernel, which routes to the LAN.

use aya_ebpf::{btf_maps::lpm_trie::Key, programs::TcContext};
use ovpn_lb_common::{Reason, SiteConfig, TunnelConfig, maps::family};

use crate::{
    maps::{OUR_XLAT_V4, OUR_XLAT_V6, SITE, TUNNEL_BY_IF, TUNNELS},
    packet::{ETH_P_IP, ETH_P_IPV6, Packet},
    parse, stats, translate, verdict,
};

/// `L3` is where the IP header starts: 0 on a tun device, which carries bare IP
/// packets; `ETH_HLEN` on a device with Ethernet framing (TAP).
pub fn handle<const L3: usize>(ctx: &TcContext) -> i32 {
    let pkt = Packet::new(ctx);
    let len = pkt.len();
    let reason = match try_restore::<L3>(&pkt, len) {
        Ok(()) => Reason::Restored,
        Err(reason) => reason,
    };
    stats::reason(reason, len);
    verdict::of(reason)
}

#[inline(always)]
fn try_restore<const L3: usize>(pkt: &Packet, len: u32) -> Result<(), Reason> {
    let ifindex = unsafe { (*pkt.ctx.skb.skb).ifindex };
    let id = TUNNEL_BY_IF.get_ptr(ifindex).ok_or(Reason::UnknownTunnel)?;
    let id = unsafe { *id };
    stats::tunnel_rx(id, len.saturating_sub(L3 as u32));
    let tunnel = TUNNELS.get(id).ok_or(Reason::UnknownTunnel)?;
    let site = SITE.get(0).ok_or(Reason::UnknownTunnel)?;
    match u16::from_be(pkt.ctx.skb.protocol() as u16) {
        ETH_P_IP => restore_v4(pkt, L3, site, tunnel),
        ETH_P_IPV6 => restore_v6(pkt, L3, site, tunnel),
        _ => Err(Reason::NotIp),
    }
}

#[inline(always)]
fn restore_v4(
    pkt: &Packet,
    l3: usize,
    site: &SiteConfig,
    tunnel: &TunnelConfig,
) -> Result<(), Reason> {
    let (hdr, ip) = parse::ipv4(pkt, l3)?;
    let (mut src, mut dst) = unsafe { ((*hdr).saddr, (*hdr).daddr) };
    let peer = tunnel.families & family::PEER_V4 != 0 && tunnel.peer_xlat_v4.contains(src);
    let ours = site.families & family::V4 != 0
        && OUR_XLAT_V4.get(&Key::new(32, dst.to_ne_bytes())).is_some();
    if !peer && !ours {
        return Err(Reason::NothingToRestore);
    }
    let l4 = parse::l4_checksum(pkt, &ip)?;
    if peer {
        src = tunnel.peer_real_v4.translate(src);
    }
    if ours {
        dst = site.lan_v4.translate(dst);
    }
    translate::ipv4(pkt, hdr, src, dst, false, l4)
}

#[inline(always)]
fn restore_v6(
    pkt: &Packet,
    l3: usize,
    site: &SiteConfig,
    tunnel: &TunnelConfig,
) -> Result<(), Reason> {
    let (hdr, ip) = parse::ipv6(pkt, l3)?;
    let (mut src, mut dst) = unsafe { ((*hdr).saddr, (*hdr).daddr) };
    let peer = tunnel.families & family::PEER_V6 != 0 && tunnel.peer_xlat_v6.contains(&src);
    let key = Key::new(128, unsafe {
        core::mem::transmute::<[u32; 4], [u8; 16]>(dst)
    });
    let ours = site.families & family::V6 != 0 && OUR_XLAT_V6.get(&key).is_some();
    if !peer && !ours {
        return Err(Reason::NothingToRestore);
    }
    let l4 = parse::l4_checksum(pkt, &ip)?;
    if peer {
        src = tunnel.peer_real_v6.translate(&src);
    }
    if ours {
        dst = site.lan_v6.translate(&dst);
    }
    translate::ipv6(pkt, hdr, &src, &dst, false, l4)
}
