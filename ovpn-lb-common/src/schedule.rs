//! Building the tables the LAN program picks tunnels from.
//!
//! Round robin: weights are reduced by their common divisor; when the reduced
//! total fits in [`SCHEDULE_SLOTS`], every tunnel gets exactly its share of
//! every `len` consecutive packets. Larger totals are apportioned over all
//! slots by largest remainder, each healthy tunnel keeping at least one slot.
//! Slots are ordered by smooth weighted round-robin, so a tunnel's packets
//! are spread out rather than bunched, which keeps queues at the far end
//! short and reordering low.
//!
//! Packet mode: the healthy tunnels, whose queues the LAN program compares
//! for every packet (`crate::queue`); their weights play no part there.
//!
//! Flow mode: each of the [`FLOW_SLOTS`] flow-hash slots belongs to the
//! healthy tunnel with the best weighted rendezvous (HRW) score for it:
//! tunnel `k` draws a pseudo-random `u` in (0, 1] for the slot and scores
//! `-ln(u) / weight_k`, the lowest score winning (Schindelhauer and Schomaker's
//! weighted rendezvous hashing: `k` wins with probability `weight_k / sum`).
//! The draw depends only on the slot and the tunnel id, so the table is the
//! same after a restart, a tunnel that leaves gives up exactly its own slots
//! (every other slot's winner is still the best of the rest), and a tunnel
//! that rejoins takes exactly those back. Integer arithmetic only: `-log2(u)`
//! in 32.32 fixed point.

use crate::maps::{FLOW_SLOTS, MAX_TUNNELS, SCHEDULE_SLOTS, Schedule};

/// [`SCHEDULE_SLOTS`] as the slot counter's type.
#[expect(clippy::cast_possible_truncation, reason = "256 fits; asserted below")]
const SLOTS: u32 = SCHEDULE_SLOTS as u32;
const _: () = assert!(SLOTS as usize == SCHEDULE_SLOTS);

/// Why a schedule could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleError {
    /// More tunnels than the datapath indexes.
    TooManyTunnels(usize),
}

const fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    a
}

/// Slots per tunnel: `weights[k]` is the weight of tunnel `k`, 0 for a tunnel that
/// is down or absent.
fn apportion(weights: &[u32], shares: &mut [u32; MAX_TUNNELS]) -> u32 {
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let total: u64 = weights.iter().map(|&w| u64::from(w / divisor)).sum();
    if total <= SCHEDULE_SLOTS as u64 {
        for (share, &w) in shares.iter_mut().zip(weights) {
            *share = w / divisor;
        }
        return u32::try_from(total).expect("total fits in the slot count");
    }
    let slots = SCHEDULE_SLOTS as u64;
    let mut remainders = [0u64; MAX_TUNNELS];
    let mut used = 0u32;
    for (k, &w) in weights.iter().enumerate() {
        if w == 0 {
            continue;
        }
        let exact = u64::from(w) * slots;
        let total_raw: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let share = u32::try_from(exact / total_raw).expect("share fits").max(1);
        shares[k] = share;
        remainders[k] = exact % total_raw;
        used += share;
    }
    // Hand out what floor() left over, biggest remainder first...
    while used < SLOTS {
        let k = (0..weights.len())
            .filter(|&k| weights[k] != 0)
            .max_by_key(|&k| (remainders[k], weights[k]))
            .expect("some tunnel has weight");
        shares[k] += 1;
        remainders[k] = 0;
        used += 1;
    }
    // ...and take back what the one-slot minimum overspent, from the biggest.
    while used > SLOTS {
        let k = (0..weights.len())
            .max_by_key(|&k| shares[k])
            .expect("some tunnel has slots");
        shares[k] -= 1;
        used -= 1;
    }
    used
}

/// Builds the schedule for tunnels `0..weights.len()`.
///
/// # Panics
/// Never: tunnel ids are checked to fit a slot before any is written.
///
/// # Errors
/// [`ScheduleError::TooManyTunnels`] for more than [`MAX_TUNNELS`] weights.
pub fn build(weights: &[u32]) -> Result<Schedule, ScheduleError> {
    if weights.len() > MAX_TUNNELS {
        return Err(ScheduleError::TooManyTunnels(weights.len()));
    }
    let mut shares = [0u32; MAX_TUNNELS];
    let len = apportion(weights, &mut shares);
    let mut schedule = Schedule {
        len,
        ..Schedule::default()
    };
    // Smooth weighted round-robin (as in nginx): each round every tunnel gains its
    // share, the richest is picked and pays the total.
    let mut credit = [0i64; MAX_TUNNELS];
    for slot in schedule.slots.iter_mut().take(len as usize) {
        let mut best = 0;
        for k in 0..weights.len() {
            credit[k] += i64::from(shares[k]);
            if shares[k] != 0 && (shares[best] == 0 || credit[k] > credit[best]) {
                best = k;
            }
        }
        credit[best] -= i64::from(len);
        *slot = u8::try_from(best).expect("tunnel ids fit in a slot");
    }
    build_flow_table(weights, &mut schedule.flow);
    for (k, _) in weights.iter().enumerate().filter(|&(_, &w)| w != 0) {
        schedule.members[schedule.members_len as usize] =
            u8::try_from(k).expect("tunnel ids fit in a slot");
        schedule.members_len += 1;
    }
    Ok(schedule)
}

/// Fixed seed of the rendezvous draws: the same table after every restart.
const FLOW_SEED: u64 = 0x6f76_706e_2d6c_6221;

/// `SplitMix64`'s output function: a bijective 64-bit mix.
const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `-log2(u)` of tunnel `tunnel`'s draw `u` in (0, 1] for flow slot `slot`,
/// in 32.32 fixed point: 53 minus the base-2 logarithm of a 53-bit integer,
/// whose fraction comes from repeated squaring of its top 32 bits.
fn neg_log2_draw(slot: usize, tunnel: usize) -> u64 {
    let h =
        mix64(FLOW_SEED ^ ((slot as u64) << 8 | tunnel as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    // x in [1, 2^53]; u = x / 2^53.
    let x = (h >> 11) + 1;
    let int = x.ilog2();
    // x / 2^int in [1, 2), as 1.31 fixed point.
    let mut y = if int >= 31 {
        x >> (int - 31)
    } else {
        x << (31 - int)
    };
    let mut frac = 0u64;
    for bit in (0..32).rev() {
        y = (y * y) >> 31;
        if y >= 1 << 32 {
            y >>= 1;
            frac |= 1 << bit;
        }
    }
    (53 << 32) - ((u64::from(int) << 32) | frac)
}

/// Fills `flow` with each slot's weighted rendezvous winner among tunnels
/// of non-zero weight (ties to the lower id); all 0 when none is healthy.
fn build_flow_table(weights: &[u32], flow: &mut [u8; FLOW_SLOTS]) {
    for (slot, owner) in flow.iter_mut().enumerate() {
        let mut best: Option<(u128, usize)> = None;
        for (k, &w) in weights.iter().enumerate() {
            if w == 0 {
                continue;
            }
            let score = (u128::from(neg_log2_draw(slot, k)) << 32) / u128::from(w);
            if best.is_none_or(|(b, _)| score < b) {
                best = Some((score, k));
            }
        }
        *owner = best.map_or(0, |(_, k)| {
            u8::try_from(k).expect("tunnel ids fit in a slot")
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn counts(s: &Schedule, n: usize) -> Vec<u32> {
        let mut c = std::vec![0u32; n];
        for &slot in &s.slots[..s.len as usize] {
            c[slot as usize] += 1;
        }
        c
    }

    #[test]
    fn exact_shares_for_small_weights() {
        let s = build(&[1, 2, 3]).unwrap();
        assert_eq!(s.len, 6);
        assert_eq!(counts(&s, 3), [1, 2, 3]);
    }

    #[test]
    fn common_divisor_is_removed() {
        let s = build(&[100, 200, 300]).unwrap();
        assert_eq!(s.len, 6);
        let s = build(&[5, 5, 5, 5]).unwrap();
        assert_eq!(s.len, 4);
        assert_eq!(&s.slots[..4], &[0, 1, 2, 3]);
    }

    #[test]
    fn down_tunnels_get_nothing() {
        let s = build(&[1, 0, 3]).unwrap();
        assert_eq!(counts(&s, 3), [1, 0, 3]);
    }

    #[test]
    fn all_down_is_empty() {
        assert_eq!(build(&[0, 0, 0]).unwrap().len, 0);
        assert_eq!(build(&[0, 0, 0]).unwrap().members_len, 0);
        assert_eq!(build(&[]).unwrap().len, 0);
    }

    #[test]
    fn packet_mode_compares_the_healthy_tunnels_whatever_their_weight() {
        let s = build(&[1, 0, 300, 2]).unwrap();
        assert_eq!(&s.members[..s.members_len as usize], &[0, 2, 3]);
    }

    #[test]
    fn smooth_order_interleaves() {
        let s = build(&[1, 2, 3]).unwrap();
        // Tunnel 2 never runs more than twice in a row, even across the wrap.
        let seq: Vec<u8> = s.slots[..6].iter().chain(&s.slots[..6]).copied().collect();
        assert!(
            seq.windows(3)
                .all(|w| !(w[0] == 2 && w[1] == 2 && w[2] == 2)),
            "{seq:?}"
        );
    }

    #[test]
    fn large_weights_are_apportioned_over_all_slots() {
        let s = build(&[1000, 1, 999]).unwrap();
        assert_eq!(s.len as usize, SCHEDULE_SLOTS);
        let c = counts(&s, 3);
        assert_eq!(c.iter().sum::<u32>() as usize, SCHEDULE_SLOTS);
        assert_eq!(c[1], 1, "a healthy tunnel keeps one slot");
        assert!(c[0].abs_diff(128) <= 1 && c[2].abs_diff(127) <= 1, "{c:?}");
    }

    #[test]
    fn sixty_four_tunnels() {
        let weights: Vec<u32> = (1..=64).collect();
        let s = build(&weights).unwrap();
        assert_eq!(s.len as usize, SCHEDULE_SLOTS);
        let c = counts(&s, 64);
        assert!(c.iter().all(|&n| n >= 1), "{c:?}");
        assert!(c[63] > c[0]);
        assert_eq!(build(&[1; 65]), Err(ScheduleError::TooManyTunnels(65)));
        assert_eq!(build(&[1; 64]).unwrap().len, 64);
    }

    fn flow_counts(s: &Schedule, n: usize) -> Vec<u32> {
        let mut c = std::vec![0u32; n];
        for &owner in &s.flow {
            c[owner as usize] += 1;
        }
        c
    }

    /// Weights 0 (down) for `down`, the rest as given.
    fn without(weights: &[u32], down: usize) -> Vec<u32> {
        let mut w = weights.to_vec();
        w[down] = 0;
        w
    }

    #[test]
    fn flow_table_is_deterministic() {
        let w = [3, 1, 4, 1, 5];
        assert_eq!(build(&w).unwrap().flow, build(&w).unwrap().flow);
        // A fixed vector, so a change of the draws cannot go unnoticed (it
        // would move flows on every gateway that upgrades).
        let s = build(&[1, 1, 1, 1]).unwrap();
        assert_eq!(&s.flow[..16], &FIRST_SLOTS_1111);
    }

    /// `build(&[1, 1, 1, 1]).flow[..16]` as first built.
    const FIRST_SLOTS_1111: [u8; 16] = [0, 2, 2, 3, 2, 3, 0, 3, 2, 0, 1, 1, 3, 1, 3, 1];

    #[test]
    fn a_tunnel_that_leaves_moves_exactly_its_slots_and_takes_them_back() {
        let cases: [&[u32]; 6] = [
            &[1, 1],
            &[1, 2, 3],
            &[5, 5, 5, 5],
            &[1, 10, 100, 1000, 7, 7, 7],
            &[1; 16],
            &[2; 64],
        ];
        for weights in cases {
            let all = build(weights).unwrap();
            let n = weights.len();
            let leaving: Vec<usize> = if n > 8 {
                std::vec![0, n / 2, n - 1]
            } else {
                (0..n).collect()
            };
            for k in leaving {
                let rest = build(&without(weights, k)).unwrap();
                for slot in 0..FLOW_SLOTS {
                    let (before, after) = (all.flow[slot], rest.flow[slot]);
                    if n == 1 {
                        continue;
                    }
                    if usize::from(before) == k {
                        assert_ne!(usize::from(after), k, "{weights:?} slot {slot}");
                    } else {
                        assert_eq!(before, after, "{weights:?}: {k} left, slot {slot} moved");
                    }
                }
                // Rejoining restores the very same table.
                assert_eq!(build(weights).unwrap().flow, all.flow);
            }
        }
    }

    #[test]
    fn a_weight_change_moves_slots_only_to_or_from_that_tunnel() {
        let before = build(&[1, 1, 1, 1]).unwrap();
        let after = build(&[1, 3, 1, 1]).unwrap();
        for slot in 0..FLOW_SLOTS {
            if before.flow[slot] != after.flow[slot] {
                assert_eq!(after.flow[slot], 1, "slot {slot}");
            }
        }
        let c = flow_counts(&after, 4);
        assert!(c[1] > c[0] * 2, "{c:?}");
    }

    /// Each tunnel's share of the flow slots is within 2 percentage points
    /// of its share of the weights, and the whole distribution within 5 %
    /// (total variation), for 1 to 64 tunnels. Rendezvous hashing samples:
    /// a share p of 4096 slots varies by sqrt(p (1 - p) / 4096), at most
    /// 0.8 points, and the total variation grows with the tunnel count
    /// (about 4.6 % at 64 equal tunnels).
    #[test]
    fn flow_shares_follow_the_weights() {
        let counts = [1usize, 2, 3, 4, 5, 6, 8, 11, 16, 24, 32, 48, 64];
        for n in counts {
            let patterns: [Vec<u32>; 3] = [
                std::vec![1; n],
                (1..=u32::try_from(n).unwrap()).collect(),
                (0..n).map(|k| [7, 1, 3][k % 3]).collect(),
            ];
            for weights in patterns {
                let s = build(&weights).unwrap();
                let c = flow_counts(&s, n);
                let total: u32 = weights.iter().sum();
                let mut variation = 0.0;
                for k in 0..n {
                    let want = f64::from(weights[k]) / f64::from(total);
                    #[expect(clippy::cast_precision_loss, reason = "small counts")]
                    let got = f64::from(c[k]) / FLOW_SLOTS as f64;
                    assert!(
                        (got - want).abs() <= 0.02,
                        "{n} tunnels {weights:?}: tunnel {k} has {got:.4} of the flows, weight {want:.4}"
                    );
                    variation += (got - want).abs() / 2.0;
                }
                assert!(
                    variation <= 0.05,
                    "{n} tunnels {weights:?}: variation {variation:.4}"
                );
            }
        }
    }

    #[test]
    fn no_healthy_tunnel_leaves_an_empty_schedule() {
        let s = build(&[0, 0]).unwrap();
        assert_eq!(s.len, 0);
        assert!(s.flow.iter().all(|&o| o == 0));
        let one = build(&[0, 0, 9]).unwrap();
        assert!(one.flow.iter().all(|&o| o == 2));
    }
}
