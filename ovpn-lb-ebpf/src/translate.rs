//! Stage 3: rewrite addresses (and TTL) and patch every checksum that covers them.
//!
//! The IP header checksum is updated incrementally here; the L4 checksum goes
//! through `bpf_l4_csum_replace`, which also keeps `CHECKSUM_PARTIAL` and
//! `CHECKSUM_COMPLETE` skbs consistent.

use aya_ebpf::{bindings::BPF_F_PSEUDO_HDR, helpers::bpf_l4_csum_replace};
use ovpn_lb_common::{Reason, checksum};

use crate::{
    packet::{Ipv4Hdr, Ipv6Hdr, Packet},
    parse::L4Checksum,
};

/// `BPF_F_MARK_MANGLED_0`: a UDP checksum of 0 stays 0, a result of 0 becomes 0xffff.
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;

/// Rewrites the IPv4 addresses to `src`/`dst`, optionally decrementing the TTL.
#[inline(always)]
pub fn ipv4(
    pkt: &Packet,
    hdr: *mut Ipv4Hdr,
    src: u32,
    dst: u32,
    decrement_ttl: bool,
    l4: Option<L4Checksum>,
) -> Result<(), Reason> {
    let diff = unsafe {
        let old_src = (*hdr).saddr;
        let old_dst = (*hdr).daddr;
        let mut check = (*hdr).check;
        if decrement_ttl {
            let ttl_proto = ttl_proto_word(hdr);
            (*hdr).ttl -= 1;
            check = checksum::replace2(check, ttl_proto, ttl_proto_word(hdr));
        }
        check = checksum::replace4(check, old_src, src);
        check = checksum::replace4(check, old_dst, dst);
        (*hdr).saddr = src;
        (*hdr).daddr = dst;
        (*hdr).check = check;
        checksum::add(checksum::diff4(old_src, src), checksum::diff4(old_dst, dst))
    };
    l4_replace(pkt, l4, diff)
}

/// Rewrites the IPv6 addresses to `src`/`dst`, optionally decrementing the hop limit.
#[inline(always)]
pub fn ipv6(
    pkt: &Packet,
    hdr: *mut Ipv6Hdr,
    src: &[u32; 4],
    dst: &[u32; 4],
    decrement_hop_limit: bool,
    l4: Option<L4Checksum>,
) -> Result<(), Reason> {
    let diff = unsafe {
        let diff = checksum::add(
            checksum::diff16(&(*hdr).saddr, src),
            checksum::diff16(&(*hdr).daddr, dst),
        );
        (*hdr).saddr = *src;
        (*hdr).daddr = *dst;
        if decrement_hop_limit {
            (*hdr).hop_limit -= 1;
        }
        diff
    };
    l4_replace(pkt, l4, diff)
}

/// The 16-bit header word holding TTL and protocol, as loaded from the wire.
#[inline(always)]
unsafe fn ttl_proto_word(hdr: *const Ipv4Hdr) -> u16 {
    unsafe { u16::from_ne_bytes([(*hdr).ttl, (*hdr).protocol]) }
}

#[inline(always)]
fn l4_replace(pkt: &Packet, l4: Option<L4Checksum>, diff: u32) -> Result<(), Reason> {
    let Some(l4) = l4 else { return Ok(()) };
    let mut flags = u64::from(BPF_F_PSEUDO_HDR);
    if l4.zero_means_none {
        flags |= BPF_F_MARK_MANGLED_0;
    }
    // Size 0: `to` carries a precomputed 32-bit checksum difference.
    let ret = unsafe {
        bpf_l4_csum_replace(pkt.ctx.skb.skb, l4.offset as u32, 0, u64::from(diff), flags)
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(Reason::RewriteFailed)
    }
}
