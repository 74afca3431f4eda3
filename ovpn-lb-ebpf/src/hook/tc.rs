//! [`Hook`] for tc programs: the packet is a socket buffer, and the kernel's
//! helpers keep its checksum-offload state right as we rewrite it.

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::{
        bpf_csum_update, bpf_l4_csum_replace, bpf_redirect, bpf_skb_change_tail, bpf_skb_load_bytes,
    },
    programs::TcContext,
};
use ovpn_lb_common::Reason;

use super::{Hook, csum};
use crate::log::{self, Helper};

/// `skb->pkt_type` of a frame addressed to this host (`linux/if_packet.h`).
const PACKET_HOST: u32 = 0;
/// What a helper returns for a flag it does not know.
const EINVAL: i64 = -22;

/// The `__sk_buff` the kernel handed the program.
#[inline(always)]
fn skb(ctx: &TcContext) -> &__sk_buff {
    // SAFETY: the context pointer is valid and unaliased by writes for the
    // whole run of the program; the verifier rewrites these field loads into
    // reads of the real socket buffer.
    unsafe { &*ctx.skb.skb }
}

impl Hook for TcContext {
    const KEEPS_CHECKSUM_STATE: bool = true;
    const EARLIEST_DEPARTURE: bool = true;

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

    /// `skb->ifindex`: the arrival device at ingress, the output device at
    /// egress.
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        skb(self).ifindex
    }

    /// `eth_type_trans` set `pkt_type` from the destination MAC before tc ran.
    #[inline(always)]
    fn to_this_host(&self) -> Option<bool> {
        Some(skb(self).pkt_type == PACKET_HOST)
    }

    #[inline(always)]
    fn gso_size(&self) -> u32 {
        skb(self).gso_size
    }

    #[inline(always)]
    fn gso_segs(&self) -> u32 {
        skb(self).gso_segs
    }

    #[inline(always)]
    fn l4_csum_replace(&self, offset: usize, diff: u32, flags: u64) -> Result<(), Reason> {
        // Size 0: `to` carries a precomputed 32-bit checksum difference. The
        // helper also keeps CHECKSUM_PARTIAL and CHECKSUM_COMPLETE skbs right.
        // SAFETY: the skb is the program's context; the helper bounds-checks
        // `offset` itself.
        let mut ret =
            unsafe { bpf_l4_csum_replace(self.skb.skb, offset as u32, 0, u64::from(diff), flags) };
        if ret == EINVAL && flags & csum::IPV6 != 0 {
            // A kernel before 6.16 refuses the flag before touching the skb:
            // do what it did for every family then (see `csum::IPV6`).
            // SAFETY: as above.
            ret = unsafe {
                bpf_l4_csum_replace(
                    self.skb.skb,
                    offset as u32,
                    0,
                    u64::from(diff),
                    flags & !csum::IPV6,
                )
            };
        }
        if ret == 0 {
            Ok(())
        } else {
            log::rewrite_failed(Helper::L4CsumReplace, ret);
            Err(Reason::RewriteFailed)
        }
    }

    #[inline(always)]
    fn csum_update(&self, diff: u32) {
        // SAFETY: the skb is the program's context. The helper fails
        // (harmlessly) unless the skb is CHECKSUM_COMPLETE.
        let _ = unsafe { bpf_csum_update(self.skb.skb, diff) };
    }

    #[inline(always)]
    fn load_bytes(&self, offset: usize, to: &mut [u8], len: u32) -> bool {
        if len as usize > to.len() {
            return false;
        }
        // SAFETY: `to` holds at least `len` writable bytes (checked above).
        unsafe {
            bpf_skb_load_bytes(
                self.skb.skb.cast(),
                offset as u32,
                to.as_mut_ptr().cast(),
                len,
            ) == 0
        }
    }

    #[inline(always)]
    fn truncate(&self, frame_len: u32) -> Result<(), Reason> {
        // SAFETY: the skb is the program's context.
        let ret = unsafe { bpf_skb_change_tail(self.skb.skb, frame_len, 0) };
        if ret == 0 {
            Ok(())
        } else {
            log::rewrite_failed(Helper::SkbChangeTail, ret);
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
        // SAFETY: a plain helper call without pointers.
        if unsafe { bpf_redirect(ifindex, 0) } == i64::from(TC_ACT_REDIRECT) {
            TC_ACT_REDIRECT
        } else {
            TC_ACT_SHOT
        }
    }

    /// Into the device's transmit path: for a tunnel, its ring to OpenVPN.
    #[inline(always)]
    fn bounce(&self) -> i32 {
        self.redirect(Hook::ifindex(self))
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
