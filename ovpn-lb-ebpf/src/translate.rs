//! Stage 3: rewrite addresses (and TTL) and patch every checksum that covers them.
//!
//! The IP header checksum is updated incrementally here; the L4 checksum by
//! the hook (a kernel helper under tc, in place under XDP).

use ovpn_lb_common::{Reason, checksum};

use crate::{
    hook::Hook,
    packet::{Ipv4Hdr, Ipv6Hdr, Packet},
    parse::L4Checksum,
};

/// Rewrites the IPv4 addresses to `src`/`dst`, optionally decrementing the TTL.
#[inline(always)]
pub fn ipv4<C: Hook>(
    pkt: &Packet<C>,
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
pub fn ipv6<C: Hook>(
    pkt: &Packet<C>,
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
pub unsafe fn ttl_proto_word(hdr: *const Ipv4Hdr) -> u16 {
    unsafe { u16::from_ne_bytes([(*hdr).ttl, (*hdr).protocol]) }
}

#[inline(always)]
fn l4_replace<C: Hook>(pkt: &Packet<C>, l4: Option<L4Checksum>, diff: u32) -> Result<(), Reason> {
    match l4 {
        Some(l4) => pkt.ctx.l4_checksum_add(l4.offset, diff, l4.zero_means_none),
        None => Ok(()),
    }
}
