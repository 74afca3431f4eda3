//! [`Hook`] for XDP programs: a bare frame, no socket buffer. Checksums are
//! patched in place, and nothing carries checksum-offload state past a
//! redirect.

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_REDIRECT},
    helpers::{bpf_redirect, bpf_xdp_adjust_tail, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use ovpn_lb_common::{Reason, checksum};

use super::Hook;
use crate::{packet::Packet, parse::Ip};

impl Hook for XdpContext {
    const KEEPS_CHECKSUM_STATE: bool = false;

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
    fn ingress_ifindex(&self) -> u32 {
        unsafe { (*self.ctx).ingress_ifindex }
    }

    /// No GSO before a socket buffer exists: the frame is the packet.
    #[inline(always)]
    fn wire_ip_len(&self, _pkt: &Packet<Self>, ip: &Ip) -> u32 {
        ip.len as u32
    }

    #[inline(always)]
    fn l4_checksum_add(&self, offset: usize, diff: u32, udp: bool) -> Result<(), Reason> {
        let at = self.data() + offset;
        if at + 2 > self.data_end() {
            return Err(Reason::TruncatedL4);
        }
        let field = at as *mut u16;
        unsafe {
            let check = *field;
            // UDP over IPv4: 0 means "no checksum" and stays 0.
            if udp && check == 0 {
                return Ok(());
            }
            *field = checksum::apply(check, diff, udp);
        }
        Ok(())
    }

    #[inline(always)]
    fn load_bytes(&self, offset: usize, to: *mut u8, len: u32) -> bool {
        unsafe { bpf_xdp_load_bytes(self.ctx, offset as u32, to.cast(), len) == 0 }
    }

    #[inline(always)]
    fn truncate(&self, frame_len: u32) -> Result<(), Reason> {
        // Opaque to the compiler, which would otherwise fold the subtraction
        // into arithmetic on the packet-end pointer, which the verifier refuses.
        let len = core::hint::black_box(self.len());
        let delta = frame_len.cast_signed() - len.cast_signed();
        if unsafe { bpf_xdp_adjust_tail(self.ctx, delta) } == 0 {
            Ok(())
        } else {
            Err(Reason::RewriteFailed)
        }
    }

    #[inline(always)]
    fn device_mtu(&self, ifindex: u32) -> Result<u32, Reason> {
        super::kernel_mtu(self.ctx.cast(), ifindex)
    }

    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> i32 {
        if unsafe { bpf_redirect(ifindex, 0) } == i64::from(XDP_REDIRECT) {
            XDP_REDIRECT.cast_signed()
        } else {
            XDP_ABORTED.cast_signed()
        }
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
