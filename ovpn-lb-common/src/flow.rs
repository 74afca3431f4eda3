//! Flow hashing for flow mode: one 5-tuple always maps to the same schedule slot.

/// Incremental 32-bit hasher (multiply-rotate rounds, murmur3 finaliser).
/// Cheap enough for the packet path and well spread over small tables.
#[derive(Clone, Copy, Debug)]
pub struct FlowHasher(u32);

const SEED: u32 = 0x9e37_79b9;

impl FlowHasher {
    #[inline(always)]
    #[must_use]
    pub const fn new() -> Self {
        Self(SEED)
    }

    #[inline(always)]
    #[must_use]
    pub const fn word(self, w: u32) -> Self {
        let k = w
            .wrapping_mul(0xcc9e_2d51)
            .rotate_left(15)
            .wrapping_mul(0x1b87_3593);
        Self(
            (self.0 ^ k)
                .rotate_left(13)
                .wrapping_mul(5)
                .wrapping_add(0xe654_6b64),
        )
    }

    #[inline(always)]
    #[must_use]
    pub const fn finish(self) -> u32 {
        let mut h = self.0;
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }
}

impl Default for FlowHasher {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(src: u32, dst: u32, ports: u32, proto: u32) -> u32 {
        FlowHasher::new()
            .word(src)
            .word(dst)
            .word(ports)
            .word(proto)
            .finish()
    }

    #[test]
    fn deterministic() {
        assert_eq!(tuple(1, 2, 3, 6), tuple(1, 2, 3, 6));
        assert_ne!(tuple(1, 2, 3, 6), tuple(1, 2, 4, 6));
        assert_ne!(tuple(1, 2, 3, 6), tuple(2, 1, 3, 6));
    }

    #[test]
    fn spreads_source_ports_evenly_over_six_slots() {
        let mut buckets = [0u32; 6];
        for port in 0..60_000u32 {
            buckets[(tuple(0x0a00_0001, 0x0a01_0002, port << 16 | 0x01bb, 6) % 6) as usize] += 1;
        }
        for (i, &b) in buckets.iter().enumerate() {
            assert!((9_500..10_500).contains(&b), "bucket {i} got {b} of 60000");
        }
    }
}
