//! [`Hook`] for XDP programs: a bare frame, no socket buffer and no
//! checksum-offload state; the pipelines patch checksums in place.

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
    helpers::{bpf_redirect, bpf_xdp_adjust_tail, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use ovpn_lb_common::Reason;

use super::Hook;
use crate::log::{self, Helper};

impl Hook for XdpContext {
    const KEEPS_CHECKSUM_STATE: bool = false;
    const EARLIEST_DEPARTURE: bool = false;

    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    /// Programs are loaded without multi-buffer support, so the frame is linear.
    #[inline(always)]
    fn len(&self) -> u32 {
        (self.data_end() - self.data()) as u32
    }

    #[inline(always)]
    fn pull(&self, _bytes: u32) {}

    /// Never asked: XDP programs run on Ethernet devices only.
    #[inline(always)]
    fn l3_protocol(&self) -> u16 {
        0
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context pointer is valid for the program's whole run;
        // the verifier rewrites the load into a read of the receive queue's
        // device.
        unsafe { (*self.ctx).ingress_ifindex }
    }

    /// The frame has not met the kernel yet: compare the MAC.
    #[inline(always)]
    fn to_this_host(&self) -> Option<bool> {
        None
    }

    /// No GSO before a socket buffer exists: the frame is the packet.
    #[inline(always)]
    fn gso_size(&self) -> u32 {
        0
    }

    #[inline(always)]
    fn gso_segs(&self) -> u32 {
        0
    }

    /// Never asked: without [`Hook::KEEPS_CHECKSUM_STATE`] the translate
    /// stage patches the field in place.
    #[inline(always)]
    fn l4_csum_replace(&self, _offset: usize, _diff: u32, _flags: u64) -> Result<(), Reason> {
        Err(Reason::RewriteFailed)
    }

    /// A frame has no whole-data checksum.
    #[inline(always)]
    fn csum_update(&self, _diff: u32) {}

    #[inline(always)]
    fn load_bytes(&self, offset: usize, to: &mut [u8], len: u32) -> bool {
        if len as usize > to.len() {
            return false;
        }
        // SAFETY: `to` holds at least `len` writable bytes (checked above).
        unsafe { bpf_xdp_load_bytes(self.ctx, offset as u32, to.as_mut_ptr().cast(), len) == 0 }
    }

    #[inline(always)]
    fn truncate(&self, frame_len: u32) -> Result<(), Reason> {
        // Opaque to the compiler, which would otherwise fold the subtraction
        // into arithmetic on the packet-end pointer, which the verifier refuses.
        let len = core::hint::black_box(self.len());
        let delta = frame_len.cast_signed() - len.cast_signed();
        // SAFETY: the context is the program's own.
        let ret = unsafe { bpf_xdp_adjust_tail(self.ctx, delta) };
        if ret == 0 {
            Ok(())
        } else {
            log::rewrite_failed(Helper::XdpAdjustTail, ret);
            Err(Reason::RewriteFailed)
        }
    }

    #[inline(always)]
    fn device_mtu(&self, ifindex: u32) -> Result<u32, Reason> {
        super::kernel_mtu(self.ctx.cast(), ifindex)
    }

    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> i32 {
        // SAFETY: a plain helper call without pointers.
        if unsafe { bpf_redirect(ifindex, 0) } == i64::from(XDP_REDIRECT) {
            XDP_REDIRECT.cast_signed()
        } else {
            XDP_ABORTED.cast_signed()
        }
    }

    #[inline(always)]
    fn bounce(&self) -> i32 {
        XDP_TX.cast_signed()
    }

    #[inline(always)]
    fn drop_code(&self) -> i32 {
        XDP_DROP.cast_signed()
    }

    #[inline(always)]
    fn pass_code(&self) -> i32 {
        XDP_PASS.cast_signed()
    }
}
