//! Stage 4: make sure the packet fits the tunnel, then hand it to the tunnel device.

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, bpf_check_mtu_flags::BPF_MTU_CHK_SEGS},
    helpers::{bpf_check_mtu, bpf_redirect},
};
use ovpn_lb_common::Reason;

use crate::packet::Packet;

/// Checks the IP datagram (`ip_len` bytes) against the MTU of `ifindex`. A GSO
/// super-packet is judged by the segments it will be cut into.
#[inline(always)]
pub fn fits(pkt: &Packet, ifindex: u32, ip_len: u32) -> Result<(), Reason> {
    let skb = pkt.ctx.skb.skb;
    let gso_size = unsafe { (*skb).gso_size };
    let ret = unsafe {
        if gso_size != 0 {
            let mut mtu = 0u32;
            bpf_check_mtu(skb.cast(), ifindex, &raw mut mtu, 0, u64::from(BPF_MTU_CHK_SEGS))
        } else {
            // Non-zero input length: compare the L3 length, not skb->len, which
            // still counts the Ethernet header here.
            let mut mtu = ip_len;
            bpf_check_mtu(skb.cast(), ifindex, &raw mut mtu, 0, 0)
        }
    };
    match ret {
        0 => Ok(()),
        r if r > 0 => Err(Reason::OverMtu),
        // -ENODEV: the device went away since userspace last looked.
        _ => Err(Reason::TunnelGone),
    }
}

/// Redirects to the egress of `ifindex`; for an L3 tunnel the kernel strips the
/// Ethernet header on the way.
#[inline(always)]
pub fn into(ifindex: u32) -> i32 {
    let ret = unsafe { bpf_redirect(ifindex, 0) };
    if ret == i64::from(TC_ACT_REDIRECT) {
        TC_ACT_REDIRECT as i32
    } else {
        aya_ebpf::bindings::TC_ACT_SHOT as i32
    }
}
