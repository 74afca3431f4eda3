//! Prefix matching and the stateless 1:1 prefix translation (NETMAP-style).
//!
//! Addresses are kept exactly as they sit on the wire: a `u32` (or four) loaded
//! natively from network-order bytes. Masking and merging are bitwise, so no byte
//! swapping is needed on the packet path.

/// An IPv4 prefix, in wire order (`u32::from_ne_bytes(octets)`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Prefix4 {
    pub addr: u32,
    pub mask: u32,
}

/// An IPv6 prefix, as four wire-order words.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Prefix6 {
    pub addr: [u32; 4],
    pub mask: [u32; 4],
}

const _: () = assert!(size_of::<Prefix4>() == 8);
const _: () = assert!(size_of::<Prefix6>() == 32);

/// Wire-order mask word for the bits of `len` that fall into the 32-bit word `word`.
const fn mask_word(len: u8, word: usize) -> u32 {
    let len = len as u32;
    let start = match word {
        0 => 0,
        1 => 32,
        2 => 64,
        3 => 96,
        _ => 128,
    };
    let bits = if len <= start {
        0
    } else if len >= start + 32 {
        32
    } else {
        len - start
    };
    let host = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    u32::from_ne_bytes(host.to_be_bytes())
}

impl Prefix4 {
    /// Builds a prefix, clearing host bits; `len` above 32 is clamped.
    #[must_use]
    pub const fn new(octets: [u8; 4], len: u8) -> Self {
        let len = if len > 32 { 32 } else { len };
        let mask = mask_word(len, 0);
        Self {
            addr: u32::from_ne_bytes(octets) & mask,
            mask,
        }
    }

    #[must_use]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "a mask has at most 128 bits set"
    )]
    pub const fn prefix_len(&self) -> u8 {
        u32::from_be_bytes(self.mask.to_ne_bytes()).count_ones() as u8
    }

    #[must_use]
    pub const fn octets(&self) -> [u8; 4] {
        self.addr.to_ne_bytes()
    }

    #[inline(always)]
    #[must_use]
    pub const fn contains(&self, addr: u32) -> bool {
        addr & self.mask == self.addr
    }

    /// Moves `addr` into this prefix, keeping its host bits.
    #[inline(always)]
    #[must_use]
    pub const fn translate(&self, addr: u32) -> u32 {
        (addr & !self.mask) | self.addr
    }
}

impl Prefix6 {
    /// Builds a prefix, clearing host bits; `len` above 128 is clamped.
    #[must_use]
    pub const fn new(octets: [u8; 16], len: u8) -> Self {
        let len = if len > 128 { 128 } else { len };
        let words = words_from_octets(octets);
        let mut addr = [0u32; 4];
        let mut mask = [0u32; 4];
        let mut i = 0;
        while i < 4 {
            mask[i] = mask_word(len, i);
            addr[i] = words[i] & mask[i];
            i += 1;
        }
        Self { addr, mask }
    }

    #[must_use]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "a mask has at most 128 bits set"
    )]
    pub const fn prefix_len(&self) -> u8 {
        let mut bits = 0;
        let mut i = 0;
        while i < 4 {
            bits += u32::from_be_bytes(self.mask[i].to_ne_bytes()).count_ones();
            i += 1;
        }
        bits as u8
    }

    #[must_use]
    pub const fn octets(&self) -> [u8; 16] {
        octets_from_words(self.addr)
    }

    #[inline(always)]
    #[must_use]
    pub const fn contains(&self, addr: &[u32; 4]) -> bool {
        (addr[0] & self.mask[0]) == self.addr[0]
            && (addr[1] & self.mask[1]) == self.addr[1]
            && (addr[2] & self.mask[2]) == self.addr[2]
            && (addr[3] & self.mask[3]) == self.addr[3]
    }

    /// Moves `addr` into this prefix, keeping its host bits.
    #[inline(always)]
    #[must_use]
    pub const fn translate(&self, addr: &[u32; 4]) -> [u32; 4] {
        [
            (addr[0] & !self.mask[0]) | self.addr[0],
            (addr[1] & !self.mask[1]) | self.addr[1],
            (addr[2] & !self.mask[2]) | self.addr[2],
            (addr[3] & !self.mask[3]) | self.addr[3],
        ]
    }
}

/// Wire-order words of an IPv6 address.
#[must_use]
pub const fn words_from_octets(o: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

#[must_use]
pub const fn octets_from_words(w: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = w[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(s: &str) -> u32 {
        u32::from_ne_bytes(s.parse::<Ipv4Addr>().unwrap().octets())
    }

    fn v6(s: &str) -> [u32; 4] {
        words_from_octets(s.parse::<Ipv6Addr>().unwrap().octets())
    }

    #[test]
    fn v4_translation_keeps_host_bits() {
        let to = Prefix4::new([100, 64, 1, 0], 24);
        let out = to.translate(v4("192.168.1.77"));
        assert_eq!(
            Ipv4Addr::from(out.to_ne_bytes()),
            Ipv4Addr::new(100, 64, 1, 77)
        );
        assert!(to.contains(out));
    }

    #[test]
    fn v4_odd_length_prefix() {
        let lan = Prefix4::new([10, 0, 0, 0], 20);
        let to = Prefix4::new([10, 99, 16, 0], 20);
        assert_eq!(lan.prefix_len(), 20);
        let out = to.translate(v4("10.0.13.200"));
        assert_eq!(
            Ipv4Addr::from(out.to_ne_bytes()),
            Ipv4Addr::new(10, 99, 29, 200)
        );
        assert!(lan.contains(v4("10.0.15.255")));
        assert!(!lan.contains(v4("10.0.16.0")));
    }

    #[test]
    fn v4_new_clears_host_bits_and_clamps() {
        assert_eq!(
            Prefix4::new([10, 1, 2, 3], 8),
            Prefix4::new([10, 0, 0, 0], 8)
        );
        assert_eq!(Prefix4::new([10, 1, 2, 3], 99).prefix_len(), 32);
        let all = Prefix4::new([1, 2, 3, 4], 0);
        assert!(all.contains(v4("203.0.113.9")));
    }

    #[test]
    fn v6_translation_across_word_boundary() {
        let lan = Prefix6::new("fd00:a::".parse::<Ipv6Addr>().unwrap().octets(), 36);
        let to = Prefix6::new("fd00:b:1000::".parse::<Ipv6Addr>().unwrap().octets(), 36);
        assert_eq!(lan.prefix_len(), 36);
        let host = v6("fd00:a:0abc::1234");
        assert!(lan.contains(&host));
        let out = to.translate(&host);
        assert_eq!(
            Ipv6Addr::from(octets_from_words(out)),
            "fd00:b:1abc::1234".parse::<Ipv6Addr>().unwrap()
        );
        assert!(to.contains(&out));
        assert!(!lan.contains(&out));
    }

    #[test]
    fn v6_round_trip_is_identity() {
        let lan = Prefix6::new("2001:db8:1::".parse::<Ipv6Addr>().unwrap().octets(), 64);
        let xl = Prefix6::new("2001:db8:ff::".parse::<Ipv6Addr>().unwrap().octets(), 64);
        let host = v6("2001:db8:1::dead:beef");
        assert_eq!(lan.translate(&xl.translate(&host)), host);
    }
}
