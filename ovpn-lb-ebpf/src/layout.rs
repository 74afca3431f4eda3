//! Header layouts: the bottom layer, no code.
//!
//! Ethernet, IPv4, IPv6, TCP, UDP and ICMP come from `network-types`; the
//! IPv6 extension and fragment headers it lacks are defined here. Every
//! layout has byte-array fields (alignment 1), so a header may sit at any
//! offset; multi-byte fields stay in wire order and are read as such.

pub use network_types::{
    eth::EthHdr,
    icmp::{Icmpv4Hdr, Icmpv6Hdr},
    ip::{IpProto, Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

/// Ethernet header length.
pub const ETH_HLEN: usize = EthHdr::LEN;
/// Ethertypes, host order.
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;

pub const IPPROTO_ICMP: u8 = IpProto::Icmp as u8;
pub const IPPROTO_TCP: u8 = IpProto::Tcp as u8;
pub const IPPROTO_UDP: u8 = IpProto::Udp as u8;
pub const IPPROTO_ICMPV6: u8 = IpProto::Ipv6Icmp as u8;

/// IPv6 extension headers we walk.
pub const NEXTHDR_HOP: u8 = IpProto::HopOpt as u8;
pub const NEXTHDR_ROUTING: u8 = IpProto::Ipv6Route as u8;
pub const NEXTHDR_FRAGMENT: u8 = IpProto::Ipv6Frag as u8;
pub const NEXTHDR_AUTH: u8 = IpProto::Ah as u8;
pub const NEXTHDR_DEST: u8 = IpProto::Ipv6Opts as u8;

/// More-fragments flag and fragment offset of IPv4 `frags` (host order).
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFSET: u16 = 0x1fff;
/// Fragment offset of the IPv6 fragment header's `frag_off` (host order).
pub const IP6_OFFSET: u16 = 0xfff8;

/// Start of every IPv6 extension header but the fragment header (hop-by-hop,
/// routing, destination options, AH).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6ExtHdr {
    pub next_hdr: u8,
    /// In 8-byte units beyond the first 8 (4-byte units beyond 8 for AH).
    pub len: u8,
}

/// IPv6 fragment header (RFC 8200 section 4.5).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6FragHdr {
    pub next_hdr: u8,
    pub reserved: u8,
    /// Offset in the top 13 bits, M flag in bit 0; wire order.
    pub frag_off: [u8; 2],
    pub id: [u8; 4],
}

const _: () = assert!(ETH_HLEN == 14);
const _: () = assert!(Ipv4Hdr::LEN == 20 && Ipv6Hdr::LEN == 40);
const _: () = assert!(TcpHdr::LEN == 20 && UdpHdr::LEN == 8);
const _: () = assert!(size_of::<Icmpv4Hdr>() == 8 && size_of::<Icmpv6Hdr>() == 8);
const _: () = assert!(size_of::<Ipv6ExtHdr>() == 2 && size_of::<Ipv6FragHdr>() == 8);
const _: () = assert!(align_of::<Ipv4Hdr>() == 1 && align_of::<Ipv6Hdr>() == 1);
