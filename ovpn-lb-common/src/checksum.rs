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

/// Folds a 64-bit sum of 32-bit words into 16 bits.
#[inline(always)]
#[must_use]
#[expect(
    clippy::cast_possible_truncation,
    reason = "two end-around folds leave 32 significant bits"
)]
pub const fn fold_wide(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    fold(sum as u32)
}

/// Whether a header whose 32-bit words (checksum field included, as
/// stored) add up to `sum` verifies: its ones' complement sum is 0xffff.
#[inline(always)]
#[must_use]
pub const fn verifies(sum: u64) -> bool {
    fold_wide(sum) == 0xffff
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

/// New checksum after fields covered by it changed by the 32-bit difference
/// `diff` (see [`diff4`], [`diff16`]). With `udp`, a result of 0 is stored as
/// 0xffff, since 0 means "no checksum" there.
#[inline(always)]
#[must_use]
pub const fn apply(check: u16, diff: u32, udp: bool) -> u16 {
    let new = !fold(add(!check as u32, diff));
    if udp && new == 0 { 0xffff } else { new }
}

/// Folded, uncomplemented sum of the IPv4 pseudo-header: what a sender that
/// leaves the L4 checksum to the NIC (`CHECKSUM_PARTIAL`) stores in the field.
#[inline(always)]
#[must_use]
pub const fn pseudo_v4(src: u32, dst: u32, proto: u8, l4_len: u16) -> u16 {
    let sum = add_word(add_word(0, src), dst)
        + u16::from_ne_bytes([0, proto]) as u32
        + u16::from_ne_bytes(l4_len.to_be_bytes()) as u32;
    fold(sum)
}

/// The same for IPv6.
#[inline(always)]
#[must_use]
pub const fn pseudo_v6(src: &[u32; 4], dst: &[u32; 4], proto: u8, l4_len: u16) -> u16 {
    let mut sum =
        u16::from_ne_bytes([0, proto]) as u32 + u16::from_ne_bytes(l4_len.to_be_bytes()) as u32;
    let mut i = 0;
    while i < 4 {
        sum = add_word(add_word(sum, src[i]), dst[i]);
        sum = (sum & 0xffff) + (sum >> 16);
        i += 1;
    }
    fold(sum)
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

    #[test]
    fn apply_matches_field_replacement() {
        for (check, from, to) in [
            (0x1234u16, 0x0a00_0001u32, 0x6440_0001u32),
            (0xffff, 0, 0xffff_ffff),
            (0x0001, 0xdead_beef, 0x0102_0304),
        ] {
            assert_eq!(
                apply(check, diff4(from, to), false),
                replace4(check, from, to)
            );
        }
        // A UDP result of 0 is sent as 0xffff.
        let zero = apply(0xffff, 0, true);
        assert_eq!(zero, 0xffff);
    }

    #[test]
    fn pseudo_header_sums_complete_a_partial_checksum() {
        // A UDP datagram 10.0.0.1:1000 -> 10.0.0.2:2000, payload "hi!".
        let src = [10, 0, 0, 1];
        let dst = [10, 0, 0, 2];
        let mut udp = [0x03, 0xe8, 0x07, 0xd0, 0, 11, 0, 0, b'h', b'i', b'!'];
        let field = pseudo_v4(u32::from_ne_bytes(src), u32::from_ne_bytes(dst), 17, 11);
        udp[6..8].copy_from_slice(&field.to_ne_bytes());
        // Completing = summing the L4 bytes with the pseudo sum in the field.
        let done = compute(&udp);
        udp[6..8].copy_from_slice(&done);
        let mut whole = Vec::new();
        whole.extend_from_slice(&src);
        whole.extend_from_slice(&dst);
        whole.extend_from_slice(&[0, 17, 0, 11]);
        whole.extend_from_slice(&udp);
        assert_eq!(compute(&whole), [0, 0], "completed checksum verifies");

        let v6 = |last: u8| {
            let mut w = [0u32; 4];
            w[0] = u32::from_ne_bytes([0xfd, 0, 0, 0x10]);
            w[3] = u32::from_ne_bytes([0, 0, 0, last]);
            w
        };
        let mut six = Vec::new();
        for w in v6(1).iter().chain(v6(2).iter()) {
            six.extend_from_slice(&w.to_ne_bytes());
        }
        six.extend_from_slice(&[0, 0, 0, 11, 0, 0, 0, 17]);
        let p = pseudo_v6(&v6(1), &v6(2), 17, 11);
        assert_eq!(
            !u16::from_be_bytes(compute(&six)),
            u16::from_be_bytes(p.to_ne_bytes()),
            "IPv6 pseudo-header sum"
        );
    }

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
    fn header_sums_verify_only_when_intact() {
        let mut rng = Rng(99);
        for _ in 0..50_000 {
            let options = usize::try_from(rng.next() % 11).unwrap();
            let mut h = rng.bytes(20 + 4 * options);
            h[10..12].fill(0);
            let check = compute(&h);
            h[10..12].copy_from_slice(&check);
            let sum = |h: &[u8]| -> u64 { h.chunks(4).map(|c| u64::from(load_u32(c, 0))).sum() };
            assert!(verifies(sum(&h)), "{h:02x?}");
            let i = usize::try_from(rng.next()).unwrap() % h.len();
            let flip = u8::try_from(rng.next() % 255 + 1).unwrap();
            h[i] ^= flip;
            // One changed byte moves the sum by d or d << 8 (0 < d < 256),
            // never by a multiple of 0xffff, so it can never verify.
            assert!(!verifies(sum(&h)), "corrupted {h:02x?}");
        }
    }

    /// The kernel's own arithmetic (`include/net/checksum.h`, generic C):
    /// `csum_add` with end-around carry, `csum_fold` = complement of the
    /// folded sum. Written out independently of ours, as the reference.
    mod kernel {
        pub fn csum_add(a: u32, b: u32) -> u32 {
            let (res, carry) = a.overflowing_add(b);
            res + u32::from(carry)
        }

        pub fn csum_fold(sum: u32) -> u16 {
            // (~sum - ror32(sum, 16)) >> 16, as in asm-generic/checksum.h.
            let r = (!sum).wrapping_sub(sum.rotate_right(16)) >> 16;
            u16::try_from(r).unwrap()
        }

        /// `csum_replace4`: the IPv4 header update `bpf_l3_csum_replace` does.
        pub fn csum_replace4(check: u16, from: u32, to: u32) -> u16 {
            csum_fold(csum_add(csum_add(!u32::from(check), !from), to))
        }

        /// `inet_proto_csum_replace_by_diff` on a packet without offload:
        /// what `bpf_l4_csum_replace` with size 0 does.
        pub fn replace_by_diff(check: u16, diff: u32) -> u16 {
            csum_fold(csum_add(diff, !u32::from(check)))
        }

        /// `bpf_l4_csum_replace` with `BPF_F_MARK_MANGLED_0`.
        pub fn replace_by_diff_udp(check: u16, diff: u32) -> u16 {
            if check == 0 {
                return 0;
            }
            match replace_by_diff(check, diff) {
                0 => 0xffff,
                c => c,
            }
        }
    }

    /// xorshift64*: deterministic random test data.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn word(&mut self) -> u32 {
            u32::try_from(self.next() >> 32).unwrap()
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n)
                .map(|_| u8::try_from(self.next() >> 56).unwrap())
                .collect()
        }
    }

    /// Folded ones' complement sum of `data` (wire-order words), uncomplemented.
    fn sum16(data: &[u8]) -> u16 {
        !u16::from_be_bytes(compute(data))
    }

    /// A 32-bit value that makes the ones' complement sum of `rest` plus it
    /// come out as 0xffff (negative zero), so the full checksum is 0x0000.
    fn word_forcing_zero_checksum(rest: &[u8], rng: &mut Rng) -> u32 {
        let hi = u16::try_from(rng.word() >> 16).unwrap();
        let partial = fold(u32::from(sum16(rest)) + u32::from(hi));
        let lo = match 0xffff - partial {
            0 => 0xffff,
            lo => lo,
        };
        u32::from_ne_bytes(
            [hi.to_be_bytes(), lo.to_be_bytes()]
                .concat()
                .try_into()
                .unwrap(),
        )
    }

    /// RFC 1624 section 3: a full recomputation gives 0x0000 here; the
    /// old RFC 1141 equation gave 0xffff.
    #[test]
    fn rfc1624_example_gives_zero() {
        let (hc, m, m2) = (0xdd2f_u16, 0x5555_u16, 0x3285_u16);
        let [hc, m, m2] = [hc, m, m2].map(|v| u16::from_ne_bytes(v.to_be_bytes()));
        assert_eq!(replace2(hc, m, m2), 0x0000);
        assert_eq!(
            kernel::csum_fold(u32::from(!hc) + u32::from(!m) + u32::from(m2)),
            0
        );
    }

    /// IPv4 header: every incremental update equals the full recomputation
    /// and the kernel's `csum_replace4`, also where the result is 0x0000.
    #[test]
    fn incremental_header_update_matches_full_recompute_and_kernel() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut zeros = 0;
        for round in 0..200_000_u32 {
            let mut h: Vec<u8> = rng.bytes(20);
            h[10] = 0;
            h[11] = 0;
            let check = compute(&h);
            h[10..12].copy_from_slice(&check);
            let old = load_u32(&h, 12);
            // Every fourth case is built to need 0x0000 after the change.
            let new = if round.is_multiple_of(4) {
                let mut rest = h.clone();
                rest[10..16].fill(0);
                word_forcing_zero_checksum(&rest, &mut rng)
            } else {
                rng.word()
            };
            let incremental = replace4(load_u16(&h, 10), old, new);
            assert_eq!(
                incremental,
                kernel::csum_replace4(load_u16(&h, 10), old, new),
                "kernel differs for {h:02x?} -> {new:#x}"
            );
            h[12..16].copy_from_slice(&new.to_ne_bytes());
            h[10..12].fill(0);
            let full = compute(&h);
            assert_eq!(incremental.to_ne_bytes(), full, "header {h:02x?}");
            if full == [0, 0] {
                zeros += 1;
            }
        }
        assert!(zeros >= 50_000, "only {zeros} zero results were exercised");
    }

    /// TTL decrement (16-bit field): the same, with results of 0x0000.
    #[test]
    fn ttl_update_matches_full_recompute_at_the_zero_edge() {
        let mut rng = Rng(42);
        let mut zeros = 0;
        for _ in 0..100_000 {
            let mut h = rng.bytes(20);
            h[8] = h[8].max(2);
            // Make the sum after the decrement negative zero now and then.
            if rng.next().is_multiple_of(2) {
                h[10..12].fill(0);
                let mut after = h.clone();
                after[8] -= 1;
                after[12..14].fill(0);
                let lo = match 0xffff - sum16(&after) {
                    0 => 0xffff,
                    lo => lo,
                };
                h[12..14].copy_from_slice(&lo.to_be_bytes());
            }
            h[10..12].fill(0);
            let check = compute(&h);
            h[10..12].copy_from_slice(&check);
            let before = load_u16(&h, 8);
            h[8] -= 1;
            let incremental = replace2(load_u16(&h, 10), before, load_u16(&h, 8));
            h[10..12].fill(0);
            let full = compute(&h);
            assert_eq!(incremental.to_ne_bytes(), full, "header {h:02x?}");
            zeros += usize::from(full == [0, 0]);
        }
        assert!(zeros > 1_000, "only {zeros} zero results were exercised");
    }

    /// L4 checksums updated by a 32-bit difference (IPv4 and IPv6 address
    /// changes) equal a full recomputation and the kernel helper's result;
    /// UDP sends a computed 0 as 0xffff and leaves "no checksum" alone.
    #[test]
    fn l4_diff_update_matches_full_recompute_and_kernel() {
        let mut rng = Rng(7);
        let mut zeros = 0;
        for round in 0..100_000_u32 {
            let v6 = round % 2 == 1;
            let addr_len = if v6 { 32 } else { 8 };
            // Pseudo-header addresses, then an L4 header with its checksum
            // at offset 6 (UDP-like), then payload.
            let payload = usize::try_from(rng.next() % 64).unwrap();
            let mut data = rng.bytes(addr_len + 8 + payload);
            data[addr_len + 6..addr_len + 8].fill(0);
            let check = compute(&data);
            let old: Vec<u8> = data[..addr_len].to_vec();
            let mut new = rng.bytes(addr_len);
            if round.is_multiple_of(3) {
                // Force a full result of 0x0000 by choosing the last word.
                let mut rest = data.clone();
                rest[..addr_len].copy_from_slice(&new);
                rest[addr_len - 4..addr_len].fill(0);
                let w = word_forcing_zero_checksum(&rest, &mut rng);
                new[addr_len - 4..].copy_from_slice(&w.to_ne_bytes());
            }
            let words = |b: &[u8]| -> Vec<u32> { b.chunks(4).map(|c| load_u32(c, 0)).collect() };
            let (ow, nw) = (words(&old), words(&new));
            let diff = if v6 {
                let quad = |w: &[u32]| -> [u32; 4] { w.try_into().unwrap() };
                add(
                    diff16(&quad(&ow[0..4]), &quad(&nw[0..4])),
                    diff16(&quad(&ow[4..8]), &quad(&nw[4..8])),
                )
            } else {
                add(diff4(ow[0], nw[0]), diff4(ow[1], nw[1]))
            };
            let stored = u16::from_ne_bytes(check);
            let tcp = apply(stored, diff, false);
            assert_eq!(tcp, kernel::replace_by_diff(stored, diff), "kernel differs");
            data[..addr_len].copy_from_slice(&new);
            let full = compute(&data);
            assert_eq!(tcp.to_ne_bytes(), full, "data {data:02x?}");
            // UDP stores a computed 0 as 0xffff (0 would mean "none").
            let stored_udp = if stored == 0 { 0xffff } else { stored };
            let udp = apply(stored_udp, diff, true);
            assert_eq!(udp, kernel::replace_by_diff_udp(stored_udp, diff));
            if full == [0, 0] {
                zeros += 1;
                assert_eq!(udp, 0xffff, "UDP sends a computed 0 as 0xffff");
            } else {
                assert_eq!(udp.to_ne_bytes(), full);
            }
        }
        assert!(zeros >= 30_000, "only {zeros} zero results were exercised");
        // An IPv4 UDP checksum of 0 ("none") stays 0 in the kernel helper;
        // the XDP path skips the update itself (see the hook).
        assert_eq!(kernel::replace_by_diff_udp(0, 0x1234_5678), 0);
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
