//! Stage 4: make sure the packet fits the tunnel, then hand it to the tunnel device.

use aya_ebpf::{
    bindings::TC_ACT_REDIRECT,
    helpers::{bpf_check_mtu, bpf_redirect, bpf_skb_change_tail},
};
use ovpn_lb_common::{Reason, TunnelConfig};

use crate::{
    packet::Packet,
    parse::{self, Ip},
};

/// Checks the packet against the tunnel's MTU. A GSO super-packet is judged
/// by the segments it will be cut into.
#[inline(always)]
pub fn fits(pkt: &Packet, tunnel: &TunnelConfig, ip: &Ip) -> Result<(), Reason> {
    let skb = pkt.ctx.skb.skb;
    let gso_size = unsafe { (*skb).gso_size };
    let l3_len = if gso_size == 0 {
        ip.len as u32
    } else {
        parse::segment_len(pkt, ip, gso_size)
    };
    let mtu = if tunnel.mtu != 0 {
        tunnel.mtu
    } else {
        device_mtu(pkt, tunnel.ifindex)?
    };
    if l3_len > mtu {
        return Err(Reason::OverMtu);
    }
    Ok(())
}

/// The MTU of `ifindex`, from the kernel: the slow path, for a tunnel whose
/// MTU userspace has not filled in.
#[inline(always)]
fn device_mtu(pkt: &Packet, ifindex: u32) -> Result<u32, Reason> {
    // With a non-zero length the helper only compares it and reports the MTU;
    // the comparison is ours because for GSO skbs it would pass anything unless
    // asked to look at the segments, which needs a transport header offset the
    // skb may not have.
    let mut mtu = 1u32;
    let ret = unsafe { bpf_check_mtu(pkt.ctx.skb.skb.cast(), ifindex, &raw mut mtu, 0, 0) };
    if ret < 0 {
        // -ENODEV: the device went away since userspace last looked.
        return Err(Reason::TunnelGone);
    }
    Ok(mtu)
}

/// Drops Ethernet padding after the datagram (minimum-size frames), as the
/// kernel's IP input would, so the tunnel carries only the datagram.
#[inline(always)]
pub fn trim_padding(pkt: &Packet, frame_len: usize) -> Result<(), Reason> {
    if pkt.len() as usize <= frame_len {
        return Ok(());
    }
    let ret = unsafe { bpf_skb_change_tail(pkt.ctx.skb.skb, frame_len as u32, 0) };
    if ret == 0 {
        Ok(())
    } else {
        Err(Reason::RewriteFailed)
    }
}

/// Redirects to the egress of `ifindex`; for an L3 tunnel the kernel strips the
/// Ethernet header on the way.
#[inline(always)]
pub fn into(ifindex: u32) -> i32 {
    let ret = unsafe { bpf_redirect(ifindex, 0) };
    if ret == i64::from(TC_ACT_REDIRECT) {
        TC_ACT_REDIRECT
    } else {
        aya_ebpf::bindings::TC_ACT_SHOT
    }
}
