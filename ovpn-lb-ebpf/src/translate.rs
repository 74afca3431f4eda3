//! Rewrite addresses (and TTL) and patch every checksum that covers them.
//!
//! The IP header checksum is updated incrementally here; the L4 checksum by
//! the kernel helper under tc (which keeps the skb's offload state right) or
//! in place under XDP.

use ovpn_lb_common::{Reason, checksum};

use crate::{
    hook::{Hook, csum},
    layout::{Ipv4Hdr, Ipv6Hdr},
    packet::{Header, Packet, Word},
    parse::L4Checksum,
};

/// Rewrites the IPv4 addresses to `src`/`dst`, optionally decrementing the TTL.
#[inline(always)]
pub fn ipv4<C: Hook>(
    pkt: &Packet<C>,
    hdr: &Header<Ipv4Hdr>,
    src: u32,
    dst: u32,
    decrement_ttl: bool,
    l4: Option<L4Checksum>,
) -> Result<(), Reason> {
    let old_src = hdr.src();
    let old_dst = hdr.dst();
    let mut check = hdr.check();
    if decrement_ttl {
        let before = hdr.ttl_proto();
        hdr.set_ttl(hdr.ttl() - 1);
        check = checksum::replace2(check, before, hdr.ttl_proto());
    }
    check = checksum::replace4(check, old_src, src);
    check = checksum::replace4(check, old_dst, dst);
    hdr.set_src(src);
    hdr.set_dst(dst);
    hdr.set_check(check);
    let diff = checksum::add(checksum::diff4(old_src, src), checksum::diff4(old_dst, dst));
    l4_replace(pkt, l4, diff, false)
}

/// Rewrites the IPv6 addresses to `src`/`dst`, optionally decrementing the hop limit.
#[inline(always)]
pub fn ipv6<C: Hook>(
    pkt: &Packet<C>,
    hdr: &Header<Ipv6Hdr>,
    src: &[u32; 4],
    dst: &[u32; 4],
    decrement_hop_limit: bool,
    l4: Option<L4Checksum>,
) -> Result<(), Reason> {
    let diff = checksum::add(
        checksum::diff16(&hdr.src(), src),
        checksum::diff16(&hdr.dst(), dst),
    );
    hdr.set_src(src);
    hdr.set_dst(dst);
    if decrement_hop_limit {
        // Sprayed packets only, which leave through a tunnel device's
        // transmit path, where a CHECKSUM_COMPLETE `csum` means nothing:
        // left unadjusted, as not worth a helper call per packet.
        hdr.set_hop_limit(hdr.hop_limit() - 1);
    }
    if l4.is_none() {
        // Nothing compensates the address change (a non-first fragment, a
        // protocol without pseudo-header): keep a CHECKSUM_COMPLETE skb's
        // `csum` right for the kernel, which may still use it (reassembly,
        // local delivery).
        pkt.ctx().csum_update(diff);
    }
    l4_replace(pkt, l4, diff, true)
}

#[inline(always)]
fn l4_replace<C: Hook>(
    pkt: &Packet<C>,
    l4: Option<L4Checksum>,
    diff: u32,
    ipv6: bool,
) -> Result<(), Reason> {
    let Some(l4) = l4 else { return Ok(()) };
    if C::KEEPS_CHECKSUM_STATE {
        let mut flags = csum::PSEUDO_HDR;
        if l4.zero_means_none {
            flags |= csum::MARK_MANGLED_0;
        }
        if ipv6 {
            flags |= csum::IPV6;
        }
        return pkt.ctx().l4_csum_replace(l4.offset, diff, flags);
    }
    let field = pkt.header::<Word>(l4.offset).ok_or(Reason::TruncatedL4)?;
    let check = field.get();
    // UDP over IPv4: 0 means "no checksum" and stays 0.
    if l4.zero_means_none && check == 0 {
        return Ok(());
    }
    field.set(checksum::apply(check, diff, l4.zero_means_none));
    Ok(())
}
