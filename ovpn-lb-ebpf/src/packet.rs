//! Bounds-checked access to packet bytes, and the header layouts we read.
//!
//! Headers are read in place (direct packet access): every pointer handed out has
//! been checked against `data_end`, the form the verifier tracks.

use crate::hook::Hook;

/// Headers we may need in the linear area: Ethernet, IPv6 with a few extension
/// headers, and a TCP header.
const MAX_HEADER_BYTES: u32 = 256;

pub struct Packet<'a, C: Hook> {
    pub ctx: &'a C,
}

impl<'a, C: Hook> Packet<'a, C> {
    /// Wraps the context, pulling headers into the linear area if the sender
    /// left them in fragments (rare; GRO'd and locally built skbs usually do not).
    #[inline(always)]
    pub fn new(ctx: &'a C) -> Self {
        let len = ctx.len();
        let want = if len < MAX_HEADER_BYTES {
            len
        } else {
            MAX_HEADER_BYTES
        };
        if ((ctx.data_end() - ctx.data()) as u32) < want {
            ctx.pull(want);
        }
        Self { ctx }
    }

    /// Total length of the packet, including any non-linear part.
    #[inline(always)]
    pub fn len(&self) -> u32 {
        self.ctx.len()
    }

    /// Pointer to a `T` at `offset`, or `None` if it does not fit in the linear area.
    #[inline(always)]
    pub fn ptr<T>(&self, offset: usize) -> Option<*mut T> {
        let start = self.ctx.data();
        let end = self.ctx.data_end();
        let at = start + offset;
        if at + size_of::<T>() > end {
            return None;
        }
        Some(at as *mut T)
    }
}

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Wire order.
    pub proto: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub version_class_flow: [u8; 4],
    pub payload_len: u16,
    pub nexthdr: u8,
    pub hop_limit: u8,
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
}

/// First bytes of TCP and UDP.
#[repr(C)]
pub struct Ports {
    pub src: u16,
    pub dst: u16,
}

/// Generic IPv6 extension header start (hop-by-hop, routing, destination, AH).
#[repr(C)]
pub struct Ipv6ExtHdr {
    pub nexthdr: u8,
    pub len: u8,
}

#[repr(C)]
pub struct Ipv6FragHdr {
    pub nexthdr: u8,
    pub reserved: u8,
    /// Wire order: offset in the top 13 bits, M flag in bit 0.
    pub frag_off: u16,
    pub id: u32,
}
