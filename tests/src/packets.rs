//! Packet builders for the fixtures, and a checksum validator.
//!
//! Both lean on etherparse for every checksum, so the expected bytes and the
//! verdict on the datapath's output come from code independent of ours.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use etherparse::{
    IcmpEchoHeader, Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, IpFragOffset, IpNumber,
    Ipv4Header, TcpHeader, UdpHeader,
};

pub const LAN_HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;

/// What rides on top of IP.
#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
    },
    /// `checksum: false` sends IPv4 UDP with checksum 0 ("none").
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
        checksum: bool,
    },
    /// ICMP or `ICMPv6` echo request, by IP version.
    Echo {
        id: u16,
        seq: u16,
        payload: Vec<u8>,
    },
    Raw {
        proto: u8,
        bytes: Vec<u8>,
    },
}

impl L4 {
    #[must_use]
    pub fn tcp(len: usize) -> Self {
        Self::Tcp {
            sport: 40000,
            dport: 443,
            payload: payload(len),
        }
    }

    #[must_use]
    pub fn udp(len: usize) -> Self {
        Self::Udp {
            sport: 5353,
            dport: 53,
            payload: payload(len),
            checksum: true,
        }
    }

    #[must_use]
    pub fn echo(len: usize) -> Self {
        Self::Echo {
            id: 7,
            seq: 1,
            payload: payload(len),
        }
    }

    fn proto(&self, v6: bool) -> u8 {
        match self {
            Self::Tcp { .. } => 6,
            Self::Udp { .. } => 17,
            Self::Echo { .. } if v6 => 58,
            Self::Echo { .. } => 1,
            Self::Raw { proto, .. } => *proto,
        }
    }

    /// The L4 header (checksum over `ip`'s pseudo-header) and payload.
    fn bytes(&self, ip: Pseudo) -> Vec<u8> {
        match self {
            Self::Tcp {
                sport,
                dport,
                payload,
            } => {
                let mut h = tcp_header(*sport, *dport);
                h.checksum = match ip {
                    Pseudo::V4(s, d) => h.calc_checksum_ipv4_raw(s, d, payload),
                    Pseudo::V6(s, d) => h.calc_checksum_ipv6_raw(s, d, payload),
                }
                .unwrap();
                [h.to_bytes().as_slice(), payload].concat()
            }
            Self::Udp {
                sport,
                dport,
                payload,
                checksum,
            } => {
                let mut h = udp_header(*sport, *dport, payload.len());
                // A zero ("no") UDP checksum exists in IPv4 only.
                h.checksum = match ip {
                    Pseudo::V4(s, d) if *checksum => {
                        h.calc_checksum_ipv4_raw(s, d, payload).unwrap()
                    }
                    Pseudo::V4(..) => 0,
                    Pseudo::V6(s, d) => h.calc_checksum_ipv6_raw(s, d, payload).unwrap(),
                };
                [h.to_bytes().as_slice(), payload].concat()
            }
            Self::Echo { id, seq, payload } => {
                let echo = IcmpEchoHeader { id: *id, seq: *seq };
                let h = match ip {
                    Pseudo::V4(..) => {
                        Icmpv4Header::with_checksum(Icmpv4Type::EchoRequest(echo), payload)
                            .to_bytes()
                            .to_vec()
                    }
                    Pseudo::V6(s, d) => {
                        Icmpv6Header::with_checksum(Icmpv6Type::EchoRequest(echo), s, d, payload)
                            .unwrap()
                            .to_bytes()
                            .to_vec()
                    }
                };
                [h.as_slice(), payload].concat()
            }
            Self::Raw { bytes, .. } => bytes.clone(),
        }
    }
}

/// The addresses an L4 checksum covers.
#[derive(Clone, Copy)]
enum Pseudo {
    V4([u8; 4], [u8; 4]),
    V6([u8; 16], [u8; 16]),
}

fn tcp_header(sport: u16, dport: u16) -> TcpHeader {
    let mut h = TcpHeader::new(sport, dport, 0x1000_0001, 64240);
    h.ack = true;
    h.psh = true;
    h.acknowledgment_number = 0x2000_0002;
    h
}

fn udp_header(sport: u16, dport: u16, payload_len: usize) -> UdpHeader {
    UdpHeader {
        source_port: sport,
        destination_port: dport,
        length: u16::try_from(8 + payload_len).unwrap(),
        checksum: 0,
    }
}

/// Deterministic, non-trivial payload bytes.
#[must_use]
pub fn payload(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from((i * 7 + 3) % 256).unwrap())
        .collect()
}

/// An IP datagram description: [`V4`] or [`V6`].
#[derive(Clone, Debug)]
pub struct Datagram<A> {
    pub src: A,
    pub dst: A,
    /// The TTL (IPv4) or hop limit (IPv6).
    pub hops: u8,
    /// IPv4: option bytes. IPv6: extension header types placed before the
    /// L4 header (each padded to 8 bytes).
    pub extra: Vec<u8>,
    pub l4: L4,
}

pub type V4 = Datagram<Ipv4Addr>;
pub type V6 = Datagram<Ipv6Addr>;

impl<A: FromStr + Clone> Datagram<A>
where
    A::Err: std::fmt::Debug,
{
    /// # Panics
    /// On a malformed address literal.
    #[must_use]
    pub fn new(src: &str, dst: &str, l4: L4) -> Self {
        Self {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            hops: 64,
            extra: vec![],
            l4,
        }
    }

    #[must_use]
    pub fn with_src(&self, src: &str) -> Self {
        Self {
            src: src.parse().unwrap(),
            ..self.clone()
        }
    }

    #[must_use]
    pub fn with_dst(&self, dst: &str) -> Self {
        Self {
            dst: dst.parse().unwrap(),
            ..self.clone()
        }
    }

    /// The same datagram with this TTL or hop limit.
    #[must_use]
    pub fn with_hops(&self, hops: u8) -> Self {
        Self {
            hops,
            ..self.clone()
        }
    }
}

impl V4 {
    fn l4_bytes(&self) -> Vec<u8> {
        self.l4
            .bytes(Pseudo::V4(self.src.octets(), self.dst.octets()))
    }

    fn header(&self, payload_len: usize, more: bool, offset_units: u16, df: bool) -> Vec<u8> {
        let mut h = Ipv4Header::new(
            u16::try_from(payload_len).unwrap(),
            self.hops,
            IpNumber(self.l4.proto(false)),
            self.src.octets(),
            self.dst.octets(),
        )
        .unwrap();
        h.identification = 0x4242;
        h.dont_fragment = df;
        h.more_fragments = more;
        h.fragment_offset = IpFragOffset::try_new(offset_units).unwrap();
        h.options = self.extra.as_slice().try_into().unwrap();
        h.set_payload_len(payload_len).unwrap();
        h.header_checksum = h.calc_header_checksum();
        h.to_bytes().to_vec()
    }

    /// The whole datagram, DF set.
    #[must_use]
    pub fn datagram(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        [self.header(l4.len(), false, 0, true), l4].concat()
    }

    /// The datagram cut into two fragments; the first carries `first` bytes of
    /// L4 (a multiple of 8).
    #[must_use]
    pub fn fragments(&self, first: usize) -> [Vec<u8>; 2] {
        let l4 = self.l4_bytes();
        let (a, b) = l4.split_at(first);
        [
            [self.header(a.len(), true, 0, false), a.to_vec()].concat(),
            [
                self.header(b.len(), false, u16::try_from(first / 8).unwrap(), false),
                b.to_vec(),
            ]
            .concat(),
        ]
    }
}

impl V6 {
    #[must_use]
    pub fn with_ext(&self, ext: &[u8]) -> Self {
        Self {
            extra: ext.to_vec(),
            ..self.clone()
        }
    }

    fn l4_bytes(&self) -> Vec<u8> {
        self.l4
            .bytes(Pseudo::V6(self.src.octets(), self.dst.octets()))
    }

    /// Fixed header plus the extension chain; `last_next` is what follows it.
    fn headers(&self, payload_len: usize, last_next: u8) -> Vec<u8> {
        let mut chain = Vec::new();
        for (i, _) in self.extra.iter().enumerate() {
            let next = self.extra.get(i + 1).copied().unwrap_or(last_next);
            // Next header, length 0 (8 bytes), PadN option filling the rest.
            chain.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
        }
        let first = self.extra.first().copied().unwrap_or(last_next);
        let len = u16::try_from(chain.len() + payload_len).unwrap();
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&len.to_be_bytes());
        h.push(first);
        h.push(self.hops);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        [h, chain].concat()
    }

    #[must_use]
    pub fn datagram(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        [self.headers(l4.len(), self.l4.proto(true)), l4].concat()
    }

    /// Two fragments with a fragment header after the other extension headers.
    #[must_use]
    pub fn fragments(&self, first: usize) -> [Vec<u8>; 2] {
        let l4 = self.l4_bytes();
        let (a, b) = l4.split_at(first);
        let frag = |offset: usize, more: bool| {
            let field = u16::try_from(offset).unwrap() | u16::from(more);
            let mut f = vec![self.l4.proto(true), 0];
            f.extend_from_slice(&field.to_be_bytes());
            f.extend_from_slice(&0x0102_0304_u32.to_be_bytes());
            f
        };
        [
            [self.headers(a.len() + 8, 44), frag(0, true), a.to_vec()].concat(),
            [
                self.headers(b.len() + 8, 44),
                frag(first, false),
                b.to_vec(),
            ]
            .concat(),
        ]
    }
}

/// An Ethernet frame from the LAN host to the gateway.
#[must_use]
pub fn eth(ethertype: u16, l3: &[u8]) -> Vec<u8> {
    [
        &GATEWAY_MAC[..],
        &LAN_HOST_MAC[..],
        &ethertype.to_be_bytes(),
        l3,
    ]
    .concat()
}

/// An Ethernet frame with the given addresses.
#[must_use]
pub fn eth_between(dst: [u8; 6], src: [u8; 6], ethertype: u16, l3: &[u8]) -> Vec<u8> {
    [&dst[..], &src[..], &ethertype.to_be_bytes(), l3].concat()
}

/// `l3` (an IPv4 or IPv6 TCP/UDP datagram without extension headers) as a
/// host with transmit checksum offload sends it: the L4 checksum field holds
/// only the folded pseudo-header sum, for the NIC to finish.
///
/// # Panics
/// If `l3` is not such a datagram.
#[must_use]
pub fn with_partial_checksum(l3: &[u8]) -> Vec<u8> {
    let (l4, proto, pseudo): (usize, u8, Vec<u8>) = match l3[0] >> 4 {
        4 => {
            let l4 = usize::from(l3[0] & 0x0f) * 4;
            let len = u16::try_from(l3.len() - l4).unwrap();
            let mut p = l3[12..20].to_vec();
            p.extend_from_slice(&[0, l3[9]]);
            p.extend_from_slice(&len.to_be_bytes());
            (l4, l3[9], p)
        }
        6 => {
            let len = u32::try_from(l3.len() - 40).unwrap();
            let mut p = l3[8..40].to_vec();
            p.extend_from_slice(&len.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, l3[6]]);
            (40, l3[6], p)
        }
        v => panic!("IP version {v}"),
    };
    let field = l4
        + match proto {
            6 => 16,
            17 => 6,
            p => panic!("protocol {p} has no offloadable checksum"),
        };
    let mut sum: u32 = pseudo
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut out = l3.to_vec();
    out[field..field + 2].copy_from_slice(&u16::try_from(sum).unwrap().to_be_bytes());
    out
}

#[must_use]
pub fn eth4(l3: &[u8]) -> Vec<u8> {
    eth(ETH_P_IP, l3)
}

#[must_use]
pub fn eth6(l3: &[u8]) -> Vec<u8> {
    eth(ETH_P_IPV6, l3)
}

/// Checks every checksum in an Ethernet frame with etherparse: IPv4 header,
/// and TCP, UDP (unless 0 over IPv4), ICMP and `ICMPv6` unless the packet is a
/// fragment (whose L4 checksum spans other fragments).
///
/// # Errors
/// Describes the first checksum that does not verify.
pub fn validate_checksums(frame: &[u8]) -> Result<(), String> {
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let l3 = &frame[14..];
    match ethertype {
        ETH_P_IP => validate_v4(l3),
        ETH_P_IPV6 => validate_v6(l3),
        _ => Ok(()),
    }
}

fn validate_v4(l3: &[u8]) -> Result<(), String> {
    let (ip, _) = Ipv4Header::from_slice(l3).map_err(|e| format!("IPv4 header: {e}"))?;
    if ip.header_checksum != ip.calc_header_checksum() {
        return Err(format!(
            "IPv4 header checksum {:#06x} is wrong",
            ip.header_checksum
        ));
    }
    if ip.more_fragments || ip.fragment_offset.value() != 0 {
        return Ok(());
    }
    let body = &l3[ip.header_len()..usize::from(ip.total_len)];
    validate_l4(ip.protocol.0, body, Pseudo::V4(ip.source, ip.destination))
}

/// The L4 checksum of `body` (protocol `proto`) over `ip`'s pseudo-header.
fn validate_l4(proto: u8, body: &[u8], ip: Pseudo) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    match (proto, ip) {
        (6, _) => {
            let (h, payload) = TcpHeader::from_slice(body).map_err(|e| err(&e))?;
            let want = match ip {
                Pseudo::V4(s, d) => h.calc_checksum_ipv4_raw(s, d, payload),
                Pseudo::V6(s, d) => h.calc_checksum_ipv6_raw(s, d, payload),
            };
            check("TCP", h.checksum, want.map_err(|e| err(&e))?)
        }
        (17, _) => {
            let (h, payload) = UdpHeader::from_slice(body).map_err(|e| err(&e))?;
            let want = match ip {
                // IPv4 allows no checksum at all.
                Pseudo::V4(..) if h.checksum == 0 => return Ok(()),
                Pseudo::V4(s, d) => h.calc_checksum_ipv4_raw(s, d, payload),
                Pseudo::V6(s, d) => h.calc_checksum_ipv6_raw(s, d, payload),
            };
            check("UDP", h.checksum, want.map_err(|e| err(&e))?)
        }
        (1, Pseudo::V4(..)) => {
            let (h, payload) = Icmpv4Header::from_slice(body).map_err(|e| err(&e))?;
            let want = Icmpv4Header::with_checksum(h.icmp_type, payload).checksum;
            check("ICMP", h.checksum, want)
        }
        (58, Pseudo::V6(s, d)) => {
            let (h, payload) = Icmpv6Header::from_slice(body).map_err(|e| err(&e))?;
            let want = h.icmp_type.calc_checksum(s, d, payload);
            check("ICMPv6", h.checksum, want.map_err(|e| err(&e))?)
        }
        _ => Ok(()),
    }
}

fn validate_v6(l3: &[u8]) -> Result<(), String> {
    let src: [u8; 16] = l3[8..24].try_into().unwrap();
    let dst: [u8; 16] = l3[24..40].try_into().unwrap();
    let end = 40 + usize::from(u16::from_be_bytes([l3[4], l3[5]]));
    let mut next = l3[6];
    let mut off = 40;
    loop {
        match next {
            0 | 43 | 60 => {
                next = l3[off];
                off += (usize::from(l3[off + 1]) + 1) * 8;
            }
            44 => return Ok(()),
            _ => break,
        }
    }
    validate_l4(next, &l3[off..end], Pseudo::V6(src, dst))
}

fn check(what: &str, got: u16, want: u16) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "{what} checksum {got:#06x}, etherparse computes {want:#06x}"
        ))
    }
}
