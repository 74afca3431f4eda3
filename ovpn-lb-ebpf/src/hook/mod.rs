//! The context abstraction: what the pipelines need from the hook they run
//! under. tc hands us a socket buffer, XDP a bare frame; everything above
//! is written once against [`Hook`]. This layer knows no packet layout.

mod tc;
mod xdp;

use aya_ebpf::helpers::bpf_check_mtu;
use ovpn_lb_common::Reason;

/// `bpf_l4_csum_replace` flags (`include/uapi/linux/bpf.h`, Linux 6.18).
pub mod csum {
    /// The changed field is part of the pseudo-header (an address).
    pub const PSEUDO_HDR: u64 = 1 << 4;
    /// UDP: a checksum of 0 ("none") stays 0, a result of 0 becomes 0xffff.
    pub const MARK_MANGLED_0: u64 = 1 << 5;
    /// IPv6 (`BPF_F_IPV6`, Linux 6.16+): no header checksum absorbs the
    /// address change, so a `CHECKSUM_COMPLETE` skb's `csum` must not be
    /// adjusted for the pseudo-header (the L4 field's change cancels it).
    /// Older kernels refuse the flag (`EINVAL`); the tc hook then calls
    /// again without it, as everyone did before 6.16.
    pub const IPV6: u64 = 1 << 7;
}

/// MTU of `ifindex` from the kernel, for either context (`ctx` is the raw
/// skb or `xdp_md`).
#[inline(always)]
fn kernel_mtu(ctx: *mut core::ffi::c_void, ifindex: u32) -> Result<u32, Reason> {
    // With a non-zero length the helper only compares it and reports the MTU;
    // the comparison is ours because for GSO skbs it would pass anything unless
    // asked to look at the segments, which needs a transport header offset the
    // skb may not have.
    let mut mtu = 1u32;
    // SAFETY: `ctx` is the context the kernel handed this program; `mtu` is
    // a live stack variable the helper writes.
    if unsafe { bpf_check_mtu(ctx, ifindex, &raw mut mtu, 0, 0) } < 0 {
        // -ENODEV: the device went away since userspace last looked.
        return Err(Reason::TunnelGone);
    }
    Ok(mtu)
}

/// One packet's context under some hook.
pub trait Hook {
    /// True where the kernel keeps checksum-offload state with the packet (an
    /// skb): checksums are then changed through [`Hook::l4_csum_replace`].
    /// XDP frames have none and lose it on redirect, so their checksums are
    /// patched in place and partial ones completed before they leave.
    const KEEPS_CHECKSUM_STATE: bool;
    /// True where packet spray picks by earliest departure. Under XDP it
    /// walks the round-robin slots: the XDP LAN program's own stack leaves
    /// no room for the comparison's subprograms under the verifier's 512
    /// bytes.
    const EARLIEST_DEPARTURE: bool;

    /// Start of the (linear) packet data.
    fn data(&self) -> usize;
    /// End of the linear data.
    fn data_end(&self) -> usize;
    /// Whole packet length, including any non-linear part.
    fn len(&self) -> u32;
    /// Makes sure the first `bytes` bytes are linear, where the hook allows it.
    fn pull(&self, bytes: u32);
    /// Network-layer protocol (host order) of a packet without an Ethernet
    /// header; only tc sees those (tun devices take no XDP).
    fn l3_protocol(&self) -> u16;
    /// The device the program runs on: where the packet arrived (ingress) or
    /// is leaving (egress).
    fn ifindex(&self) -> u32;
    /// Whether the kernel found the frame addressed to this host
    /// (`skb->pkt_type == PACKET_HOST`): `None` where the hook has no such
    /// verdict (XDP), and the Ethernet destination must be compared instead.
    fn to_this_host(&self) -> Option<bool>;
    /// Payload bytes per segment of a GSO packet, 0 for a plain one.
    fn gso_size(&self) -> u32;
    /// Segments a GSO packet will be cut into, as the kernel counted them
    /// (0 where it has not).
    fn gso_segs(&self) -> u32;
    /// Adds the 32-bit difference `diff` to the L4 checksum at `offset` with
    /// the kernel helper (`csum::*` flags). Only where
    /// [`Hook::KEEPS_CHECKSUM_STATE`].
    fn l4_csum_replace(&self, offset: usize, diff: u32, flags: u64) -> Result<(), Reason>;
    /// Adds `diff` to the packet's whole-data checksum, where the kernel
    /// keeps one (`CHECKSUM_COMPLETE` skbs): for data written directly that
    /// no checksum field compensates. Nothing elsewhere.
    fn csum_update(&self, diff: u32);
    /// Copies `len` bytes at `offset` into `to`; false if they are not there
    /// or `to` is shorter.
    fn load_bytes(&self, offset: usize, to: &mut [u8], len: u32) -> bool;
    /// Cuts the packet to `frame_len` bytes (drops Ethernet padding).
    fn truncate(&self, frame_len: u32) -> Result<(), Reason>;
    /// MTU of `ifindex` from the kernel, for a tunnel whose MTU we do not know.
    fn device_mtu(&self, ifindex: u32) -> Result<u32, Reason>;
    /// Return code that sends the packet out of `ifindex`.
    fn redirect(&self, ifindex: u32) -> i32;
    /// Return code that sends the packet back out of the device it arrived
    /// on (a reflected probe).
    fn bounce(&self) -> i32;
    /// Return code for a packet we drop.
    fn drop_code(&self) -> i32;
    /// Return code for a packet we hand on to the kernel (or the next program).
    fn pass_code(&self) -> i32;
}
