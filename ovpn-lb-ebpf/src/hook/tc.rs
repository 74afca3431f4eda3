//! [`Hook`] for tc programs: the packet is a socket buffer, and the kernel's
//! helpers keep its checksum-offload state right as we rewrite it.

use aya_ebpf::{
    bindings::{BPF_F_PSEUDO_HDR, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::{bpf_l4_csum_replace, bpf_redirect, bpf_skb_change_tail, bpf_skb_load_bytes},
    programs::TcContext,
};
use ovpn_lb_common::Reason;

use super::Hook;
use crate::{
    packet::Packet,
    parse::{self, Ip},
};

/// `BPF_F_MARK_MANGLED_0`: a UDP checksum of 0 stays 0, a result of 0 becomes 0xffff.
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;

impl Hook for TcContext {
    const KEEPS_CHECKSUM_STATE: bool = true;

    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }

    #[inline(always)]
    fn pull(&self, bytes: u32) {
        // Failure leaves the skb as it was; the bounds checks then report the
        // headers as truncated.
        let _ = self.pull_data(bytes);
    }

    #[inline(always)]
    fn l3_protocol(&self) -> u16 {
        u16::from_be(self.skb.protocol() as u16)
    }

    /// At tc ingress the skb's device is the one it arrived on.
    #[inline(always)]
    #[expect(
        clippy::misnamed_getters,
        reason = "skb->ifindex is the arrival device at ingress"
    )]
    fn ingress_ifindex(&self) -> u32 {
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn wire_ip_len(&self, pkt: &Packet<Self>, ip: &Ip) -> u32 {
        let gso_size = unsafe { (*self.skb.skb).gso_size };
        if gso_size == 0 {
            ip.len as u32
        } else {
            parse::segment_len(pkt, ip, gso_size)
        }
    }

    #[inline(always)]
    fn l4_checksum_add(&self, offset: usize, diff: u32, udp: bool) -> Result<(), Reason> {
        let mut flags = u64::from(BPF_F_PSEUDO_HDR);
        if udp {
            flags |= BPF_F_MARK_MANGLED_0;
        }
        // Size 0: `to` carries a precomputed 32-bit checksum difference. The
        // helper also keeps CHECKSUM_PARTIAL and CHECKSUM_COMPLETE skbs right.
        let ret =
            unsafe { bpf_l4_csum_replace(self.skb.skb, offset as u32, 0, u64::from(diff), flags) };
        if ret == 0 {
            Ok(())
        } else {
            Err(Reason::RewriteFailed)
        }
    }

    #[inline(always)]
    fn load_bytes(&self, offset: usize, to: *mut u8, len: u32) -> bool {
        unsafe { bpf_skb_load_bytes(self.skb.skb.cast(), offset as u32, to.cast(), len) == 0 }
    }

    #[inline(always)]
    fn truncate(&self, frame_len: u32) -> Result<(), Reason> {
        if unsafe { bpf_skb_change_tail(self.skb.skb, frame_len, 0) } == 0 {
            Ok(())
        } else {
            Err(Reason::RewriteFailed)
        }
    }

    #[inline(always)]
    fn device_mtu(&self, ifindex: u32) -> Result<u32, Reason> {
        super::kernel_mtu(self.skb.skb.cast(), ifindex)
    }

    /// For an L3 (tun) device the kernel strips the Ethernet header on the way.
    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> i32 {
        if unsafe { bpf_redirect(ifindex, 0) } == i64::from(TC_ACT_REDIRECT) {
            TC_ACT_REDIRECT
        } else {
            TC_ACT_SHOT
        }
    }

    #[inline(always)]
    fn drop_code(&self) -> i32 {
        TC_ACT_SHOT
    }

    /// Only drops and redirects end the tc chain: a packet we pass or restore
    /// goes on (`TC_ACT_UNSPEC`, tcx's "next"), so programs after ours still
    /// see it, and at the end of the chain the kernel takes it as usual.
    #[inline(always)]
    fn pass_code(&self) -> i32 {
        TC_ACT_UNSPEC
    }
}
