//! Stage 1: validate the IP header and find the L4 header.
//!
//! Anything that does not parse is reported as the [`Reason`] it will be dropped
//! for; nothing malformed is ever rewritten or redirected.

use ovpn_lb_common::Reason;

use crate::hook::Hook;
use crate::packet::{
    IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Ipv4Hdr, Ipv6ExtHdr, Ipv6FragHdr,
    Ipv6Hdr, Packet,
};

/// IPv6 extension headers we walk before giving up on the chain.
const MAX_IPV6_EXT_HEADERS: usize = 6;

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

/// More-fragments flag and fragment offset bits of IPv4 `frag_off` (host order).
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// A validated IP header.
pub struct Ip {
    /// Offset of the IP header.
    pub l3: usize,
    /// IP total length (header and payload), never more than the frame holds.
    pub len: usize,
    /// Offset of the L4 header (after options or extension headers).
    pub l4: usize,
    /// L4 protocol.
    pub proto: u8,
    /// The packet carries the L4 header: not a non-first fragment.
    pub has_l4: bool,
    /// Any fragment, first or not.
    pub fragment: bool,
}

impl Ip {
    /// Offset just past the IP datagram; L4 headers must end before it.
    #[inline(always)]
    fn end(&self) -> usize {
        self.l3 + self.len
    }
}

#[inline(always)]
pub fn ipv4<C: Hook>(pkt: &Packet<C>, l3: usize) -> Result<(*mut Ipv4Hdr, Ip), Reason> {
    let hdr: *mut Ipv4Hdr = pkt.ptr(l3).ok_or(Reason::TruncatedIp)?;
    let (version_ihl, tot_len, frag_off, proto) = unsafe {
        (
            (*hdr).version_ihl,
            u16::from_be((*hdr).tot_len) as usize,
            u16::from_be((*hdr).frag_off),
            (*hdr).protocol,
        )
    };
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4 || ihl < size_of::<Ipv4Hdr>() {
        return Err(Reason::BadIpHeader);
    }
    let frame = pkt.len() as usize - l3;
    if tot_len < ihl || tot_len > frame {
        return Err(Reason::BadIpLength);
    }
    // Options must be in the linear area too.
    pkt.ptr::<[u8; 1]>(l3 + ihl - 1)
        .ok_or(Reason::TruncatedIp)?;
    let ip = Ip {
        l3,
        len: tot_len,
        l4: l3 + ihl,
        proto,
        has_l4: frag_off & IP_OFFSET == 0,
        fragment: frag_off & (IP_MF | IP_OFFSET) != 0,
    };
    Ok((hdr, ip))
}

#[inline(always)]
pub fn ipv6<C: Hook>(pkt: &Packet<C>, l3: usize) -> Result<(*mut Ipv6Hdr, Ip), Reason> {
    let hdr: *mut Ipv6Hdr = pkt.ptr(l3).ok_or(Reason::TruncatedIp)?;
    let (version, payload_len, mut next) = unsafe {
        (
            (*hdr).version_class_flow[0] >> 4,
            u16::from_be((*hdr).payload_len) as usize,
            (*hdr).nexthdr,
        )
    };
    if version != 6 {
        return Err(Reason::BadIpHeader);
    }
    let len = size_of::<Ipv6Hdr>() + payload_len;
    // payload_len 0 is a jumbogram, which we do not forward.
    if payload_len == 0 || len > pkt.len() as usize - l3 {
        return Err(Reason::BadIpLength);
    }
    let end = l3 + len;
    let mut off = l3 + size_of::<Ipv6Hdr>();
    let mut has_l4 = true;
    let mut fragment = false;
    let mut complete = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH => {
                let ext: *const Ipv6ExtHdr = pkt.ptr(off).ok_or(Reason::Ipv6ExtChain)?;
                let (nh, units) = unsafe { ((*ext).nexthdr, (*ext).len as usize) };
                let size = if next == NEXTHDR_AUTH {
                    (units + 2) * 4
                } else {
                    (units + 1) * 8
                };
                next = nh;
                off += size;
            }
            NEXTHDR_FRAGMENT => {
                let frag: *const Ipv6FragHdr = pkt.ptr(off).ok_or(Reason::Ipv6ExtChain)?;
                let (nh, frag_off) = unsafe { ((*frag).nexthdr, u16::from_be((*frag).frag_off)) };
                next = nh;
                off += size_of::<Ipv6FragHdr>();
                fragment = true;
                if frag_off & 0xfff8 != 0 {
                    // Later headers travel only in the first fragment.
                    has_l4 = false;
                    complete = true;
                    break;
                }
            }
            _ => {
                complete = true;
                break;
            }
        }
        if off > end {
            return Err(Reason::Ipv6ExtChain);
        }
    }
    if !complete || off > end {
        return Err(Reason::Ipv6ExtChain);
    }
    let ip = Ip {
        l3,
        len,
        l4: off,
        proto: next,
        has_l4,
        fragment,
    };
    Ok((hdr, ip))
}

/// Where the L4 checksum that covers the addresses lives, if anywhere, after
/// checking the L4 header is whole. `None` for non-first fragments and protocols
/// without a pseudo-header checksum (`ICMPv4`, unknown).
#[inline(always)]
pub fn l4_checksum<C: Hook>(pkt: &Packet<C>, ip: &Ip) -> Result<Option<L4Checksum>, Reason> {
    if !ip.has_l4 {
        return Ok(None);
    }
    let (header, offset, zero_means_none) = match ip.proto {
        IPPROTO_TCP => (20, 16, false),
        IPPROTO_UDP => (8, 6, true),
        IPPROTO_ICMPV6 => (8, 2, false),
        IPPROTO_ICMP => (8, 0, false),
        _ => return Ok(None),
    };
    if ip.l4 + header > ip.end() || pkt.ptr::<[u8; 8]>(ip.l4).is_none() {
        return Err(Reason::TruncatedL4);
    }
    if header == 20 && pkt.ptr::<[u8; 20]>(ip.l4).is_none() {
        return Err(Reason::TruncatedL4);
    }
    if ip.proto == IPPROTO_ICMP {
        return Ok(None);
    }
    Ok(Some(L4Checksum {
        offset: ip.l4 + offset,
        zero_means_none,
        offloadable: ip.proto != IPPROTO_ICMPV6,
    }))
}

/// An L4 checksum that covers the IP pseudo-header.
pub struct L4Checksum {
    pub offset: usize,
    /// UDP: 0 means "no checksum" (IPv4) and a computed 0 is sent as 0xffff.
    pub zero_means_none: bool,
    /// TCP or UDP: a sender may have left this checksum to the NIC.
    pub offloadable: bool,
}

/// Source and destination ports for the flow hash; 0 where there are none, and
/// for every fragment, so all fragments of a datagram take the same tunnel.
#[inline(always)]
pub fn ports<C: Hook>(pkt: &Packet<C>, ip: &Ip) -> u32 {
    if ip.fragment || (ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP) {
        return 0;
    }
    match pkt.ptr::<crate::packet::Ports>(ip.l4) {
        Some(p) => unsafe { (u32::from((*p).src) << 16) | u32::from((*p).dst) },
        None => 0,
    }
}

/// IP length of each segment a GSO packet will be cut into: headers plus
/// `gso_size` bytes of payload.
#[inline(always)]
pub fn segment_len<C: Hook>(pkt: &Packet<C>, ip: &Ip, gso_size: u32) -> u32 {
    let l4_header = match ip.proto {
        IPPROTO_TCP => match pkt.ptr::<[u8; 20]>(ip.l4) {
            Some(tcp) => u32::from(unsafe { (*tcp)[12] } >> 4) * 4,
            None => 20,
        },
        IPPROTO_UDP => 8,
        _ => 0,
    };
    (ip.l4 - ip.l3) as u32 + l4_header + gso_size
}
