//! Validate the IP header and find the L4 header.
//!
//! Anything that does not parse is reported as the [`Reason`] it will be dropped
//! for; nothing malformed is ever rewritten or redirected.

use core::mem::offset_of;

use ovpn_lb_common::{Reason, checksum};

use crate::{
    hook::Hook,
    layout::{
        IP_MF, IP_OFFSET, IP6_OFFSET, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
        Icmpv4Hdr, Icmpv6Hdr, Ipv4Hdr, Ipv6ExtHdr, Ipv6FragHdr, Ipv6Hdr, NEXTHDR_AUTH,
        NEXTHDR_DEST, NEXTHDR_FRAGMENT, NEXTHDR_HOP, NEXTHDR_ROUTING, TcpHdr, UdpHdr,
    },
    packet::{Header, Packet, Quad},
};

/// IPv6 extension headers we walk before giving up on the chain.
const MAX_IPV6_EXT_HEADERS: usize = 6;
/// Largest length an IP length field can state.
const MAX_IP_LEN: usize = u16::MAX as usize;

/// An IP packet's family.
#[derive(Clone, Copy)]
pub enum Family {
    V4,
    V6,
}

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
    /// A GSO packet over 64 KiB whose length field is 0 (BIG TCP): `len`
    /// is the packet's.
    pub big: bool,
}

impl Ip {
    /// Offset just past the IP datagram; L4 headers must end before it.
    #[inline(always)]
    fn end(&self) -> usize {
        self.l3 + self.len
    }
}

/// Validates the IPv4 header `hdr` at `l3` (already known to fit the
/// linear area) and finds the L4 header.
#[inline(always)]
pub fn ipv4<C: Hook>(pkt: &Packet<C>, hdr: &Header<Ipv4Hdr>, l3: usize) -> Result<Ip, Reason> {
    let vihl = hdr.vihl();
    let frags = hdr.frags();
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Err(Reason::BadIpHeader);
    }
    let frame = pkt.len() as usize - l3;
    let mut len = hdr.tot_len() as usize;
    let big = len == 0 && frame > MAX_IP_LEN;
    if big {
        // BIG TCP: a GSO packet over 64 KiB has no room for its length
        // (the kernel's iph_totlen() then takes the skb's).
        len = frame;
    }
    if len < ihl || len > frame {
        return Err(Reason::BadIpLength);
    }
    // Options must be in the linear area too.
    pkt.header::<[u8; 1]>(l3 + ihl - 1)
        .ok_or(Reason::TruncatedIp)?;
    Ok(Ip {
        l3,
        len,
        l4: l3 + ihl,
        proto: hdr.proto(),
        has_l4: frags & IP_OFFSET == 0,
        fragment: frags & (IP_MF | IP_OFFSET) != 0,
        big,
    })
}

/// Validates the IPv6 header `hdr` at `l3` (already known to fit the
/// linear area) and walks its extension headers to the L4 header.
#[inline(always)]
pub fn ipv6<C: Hook>(pkt: &Packet<C>, hdr: &Header<Ipv6Hdr>, l3: usize) -> Result<Ip, Reason> {
    let mut next = hdr.next_hdr();
    if hdr.version() != 6 {
        return Err(Reason::BadIpHeader);
    }
    let frame = pkt.len() as usize - l3;
    let mut len = Ipv6Hdr::LEN + hdr.payload_len() as usize;
    // Payload length 0: BIG TCP (a GSO packet over 64 KiB, with or without a
    // jumbo option) takes the packet's length; anything smaller is an
    // RFC 2675 jumbogram that cannot be, and is refused.
    let big = len == Ipv6Hdr::LEN && frame > Ipv6Hdr::LEN + MAX_IP_LEN;
    if big {
        len = frame;
    }
    if len == Ipv6Hdr::LEN || len > frame {
        return Err(Reason::BadIpLength);
    }
    let end = l3 + len;
    let mut off = l3 + Ipv6Hdr::LEN;
    let mut has_l4 = true;
    let mut fragment = false;
    let mut complete = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH => {
                let ext = pkt.header::<Ipv6ExtHdr>(off).ok_or(Reason::Ipv6ExtChain)?;
                let units = ext.len() as usize;
                let size = if next == NEXTHDR_AUTH {
                    (units + 2) * 4
                } else {
                    (units + 1) * 8
                };
                next = ext.next_hdr();
                off += size;
            }
            NEXTHDR_FRAGMENT => {
                let frag = pkt.header::<Ipv6FragHdr>(off).ok_or(Reason::Ipv6ExtChain)?;
                next = frag.next_hdr();
                off += size_of::<Ipv6FragHdr>();
                fragment = true;
                if frag.frag_off() & IP6_OFFSET != 0 {
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
    Ok(Ip {
        l3,
        len,
        l4: off,
        proto: next,
        has_l4,
        fragment,
        big,
    })
}

/// Most 32-bit words of IPv4 options (IHL 15).
const MAX_OPTION_WORDS: usize = 10;

/// Whether the IPv4 header checksum verifies, options included.
#[inline(always)]
pub fn ipv4_checksum_ok<C: Hook>(pkt: &Packet<C>, hdr: &Header<Ipv4Hdr>, ip: &Ip) -> bool {
    let mut sum: u64 = 0;
    for word in hdr.words() {
        sum += u64::from(word);
    }
    let ihl = ip.l4 - ip.l3;
    if ihl > Ipv4Hdr::LEN {
        // Options are rare: a bounded walk, off the common path.
        for i in 0..MAX_OPTION_WORDS {
            let at = Ipv4Hdr::LEN + 4 * i;
            if at >= ihl {
                break;
            }
            match pkt.header::<Quad>(ip.l3 + at) {
                Some(word) => sum += u64::from(word.get()),
                None => return false,
            }
        }
    }
    checksum::verifies(sum)
}

/// An L4 checksum that covers the IP pseudo-header.
pub struct L4Checksum {
    pub offset: usize,
    /// UDP: 0 means "no checksum" (IPv4) and a computed 0 is sent as 0xffff.
    pub zero_means_none: bool,
    /// TCP or UDP: a sender may have left this checksum to the NIC.
    pub offloadable: bool,
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
        IPPROTO_TCP => (TcpHdr::LEN, offset_of!(TcpHdr, check), false),
        IPPROTO_UDP => (UdpHdr::LEN, offset_of!(UdpHdr, check), true),
        IPPROTO_ICMPV6 => (size_of::<Icmpv6Hdr>(), offset_of!(Icmpv6Hdr, check), false),
        IPPROTO_ICMP => (size_of::<Icmpv4Hdr>(), offset_of!(Icmpv4Hdr, check), false),
        _ => return Ok(None),
    };
    // Every header here is at least 8 bytes; TCP's is 20.
    if ip.l4 + header > ip.end() || pkt.header::<[u8; 8]>(ip.l4).is_none() {
        return Err(Reason::TruncatedL4);
    }
    if header == TcpHdr::LEN && pkt.header::<TcpHdr>(ip.l4).is_none() {
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

/// Source and destination ports for the flow hash; 0 where there are none, and
/// for every fragment, so all fragments of a datagram take the same tunnel.
#[inline(always)]
pub fn ports<C: Hook>(pkt: &Packet<C>, ip: &Ip) -> u32 {
    if ip.fragment || (ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP) {
        return 0;
    }
    // Both ports (TCP and UDP start alike) in one stored word.
    pkt.header::<Quad>(ip.l4).map_or(0, |p| p.get())
}

/// IP length of each segment a GSO packet will be cut into: headers plus
/// `gso_size` bytes of payload.
#[inline(always)]
pub fn segment_len<C: Hook>(pkt: &Packet<C>, ip: &Ip, gso_size: u32) -> u32 {
    let l4_header = match ip.proto {
        IPPROTO_TCP => pkt
            .header::<TcpHdr>(ip.l4)
            .map_or(TcpHdr::LEN as u32, |tcp| tcp.header_len()),
        IPPROTO_UDP => UdpHdr::LEN as u32,
        _ => 0,
    };
    (ip.l4 - ip.l3) as u32 + l4_header + gso_size
}
