//! Internet checksum arithmetic (RFC 1071, incremental updates per RFC 1624).
//!
//! All values are raw wire-order loads. A ones' complement sum commutes with byte
//! swapping, so the arithmetic is correct whatever the host byte order, provided
//! the checksum and the data words are loaded the same way.

/// Folds a 32-bit ones' complement accumulator into 16 bits.
#[inline(always)]
#[must_use]
#[expect(
    clippy::cast_possible_truncation,
    reason = "folding leaves 16 significant bits"
)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Adds the two 16-bit halves of `word` to `sum`.
#[inline(always)]
const fn add_word(sum: u32, word: u32) -> u32 {
    sum + (word >> 16) + (word & 0xffff)
}

/// New checksum after a 32-bit field changes from `from` to `to` (RFC 1624, eqn. 3).
#[inline(always)]
#[must_use]
pub const fn replace4(check: u16, from: u32, to: u32) -> u16 {
    let sum = add_word(add_word(!check as u32, !from), to);
    !fold(sum)
}

/// New checksum after a 16-bit field changes from `from` to `to`.
#[inline(always)]
#[must_use]
pub const fn replace2(check: u16, from: u16, to: u16) -> u16 {
    let sum = !check as u32 + !from as u32 + to as u32;
    !fold(sum)
}

/// 32-bit ones' complement difference between two 128-bit fields: the value the
/// kernel's `bpf_l4_csum_replace` takes as `to` when `from` is 0 and the size is 0
/// (same as `bpf_csum_diff(from, 16, to, 16, 0)`).
#[inline(always)]
#[must_use]
#[expect(
    clippy::cast_possible_truncation,
    reason = "two end-around folds leave 32 significant bits"
)]
pub const fn diff16(from: &[u32; 4], to: &[u32; 4]) -> u32 {
    let mut sum: u64 = 0;
    let mut i = 0;
    while i < 4 {
        sum += (!from[i]) as u64 + to[i] as u64;
        i += 1;
    }
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum as u32
}

/// 32-bit ones' complement sum of `a` and `b`.
#[inline(always)]
#[must_use]
pub const fn add(a: u32, b: u32) -> u32 {
    let (sum, carry) = a.overflowing_add(b);
    sum.wrapping_add(carry as u32)
}

/// 32-bit ones' complement difference between two 32-bit fields (see [`diff16`]).
#[inline(always)]
#[must_use]
pub const fn diff4(from: u32, to: u32) -> u32 {
    add(!from, to)
}

/// Full checksum of `data` as it would be stored (wire-order bytes).
/// Used by userspace and tests; the packet path only does incremental updates.
#[must_use]
pub fn compute(data: &[u8]) -> [u8; 2] {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(u16::from_be_bytes([*last, 0]));
    }
    (!fold(sum)).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// An IPv4 header from a real capture (checksum 0xb861).
    const HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    fn load_u16(b: &[u8], off: usize) -> u16 {
        u16::from_ne_bytes([b[off], b[off + 1]])
    }

    fn load_u32(b: &[u8], off: usize) -> u32 {
        u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
    }

    #[test]
    fn compute_matches_known_header() {
        let mut h = HEADER;
        h[10] = 0;
        h[11] = 0;
        assert_eq!(compute(&h), [0xb8, 0x61]);
        assert_eq!(compute(&HEADER), [0, 0], "a valid header sums to zero");
    }

    #[test]
    fn replace4_matches_recompute_for_many_addresses() {
        let mut seed = 0x1234_5678_u32;
        for _ in 0..10_000 {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let mut h = HEADER;
            let old = load_u32(&h, 12);
            let new = seed;
            let check = replace4(load_u16(&h, 10), old, new);
            h[12..16].copy_from_slice(&new.to_ne_bytes());
            h[10..12].copy_from_slice(&check.to_ne_bytes());
            assert_eq!(compute(&h), [0, 0], "address {new:#x}");
        }
    }

    #[test]
    fn replace2_ttl_decrement() {
        let mut h = HEADER;
        let old = load_u16(&h, 8);
        h[8] -= 1;
        let check = replace2(load_u16(&h, 10), old, load_u16(&h, 8));
        h[10..12].copy_from_slice(&check.to_ne_bytes());
        assert_eq!(compute(&h), [0, 0]);
    }

    /// Applies a 32-bit difference to a stored checksum as the kernel does
    /// for `bpf_l4_csum_replace` with size 0 on a non-offloaded packet.
    fn apply_diff(check: u16, diff: u32) -> u16 {
        let sum = u64::from(diff) + u64::from(!check);
        !fold(u32::try_from((sum & 0xffff_ffff) + (sum >> 32)).unwrap())
    }

    #[test]
    fn diff4_pairs_match_recompute() {
        // Pseudo-header-like block: src, dst, then payload.
        let block = |s: u32, d: u32| {
            let mut v = Vec::new();
            v.extend_from_slice(&s.to_ne_bytes());
            v.extend_from_slice(&d.to_ne_bytes());
            v.extend_from_slice(b"\x00\x06\x00\x14payload!");
            v
        };
        let mut seed = 7_u32;
        for _ in 0..5_000 {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let (os, od, ns, nd) = (
                seed,
                seed.rotate_left(7),
                seed ^ 0xdead_beef,
                seed.rotate_right(3),
            );
            let old = u16::from_ne_bytes(compute(&block(os, od)));
            let diff = add(diff4(os, ns), diff4(od, nd));
            assert_eq!(apply_diff(old, diff).to_ne_bytes(), compute(&block(ns, nd)));
        }
    }

    #[test]
    fn diff16_updates_a_pseudo_header_sum() {
        // Sum over two IPv6 addresses plus a payload; change one address and apply
        // the diff the way the kernel does for a non-offloaded checksum.
        let from = [0x0000_0dfd_u32, 0, 0x1122_3344, 0x0100_0000];
        let to = [0xbeef_0dfd_u32, 0xffff_ffff, 0x1122_3344, 0x0200_0000];
        let payload: Vec<u8> = (0..37u8).collect();
        let make = |a: &[u32; 4]| {
            let mut d = Vec::new();
            for w in a {
                d.extend_from_slice(&w.to_ne_bytes());
            }
            d.extend_from_slice(&payload);
            d
        };
        let old_check = u16::from_ne_bytes(compute(&make(&from)));
        let new_check = apply_diff(old_check, diff16(&from, &to));
        assert_eq!(new_check.to_ne_bytes(), compute(&make(&to)));
    }
}
