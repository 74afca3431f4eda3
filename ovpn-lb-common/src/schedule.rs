//! Building the slot table the LAN program walks.
//!
//! Weights are reduced by their common divisor; when the reduced total fits in
//! [`SCHEDULE_SLOTS`], every tunnel gets exactly its share of every `len`
//! consecutive packets. Larger totals are apportioned over all slots by largest
//! remainder, each healthy tunnel keeping at least one slot. Slots are ordered by
//! smooth weighted round-robin, so a tunnel's packets are spread out rather than
//! bunched, which keeps queues at the far end short and reordering low.

use crate::maps::{MAX_TUNNELS, SCHEDULE_SLOTS, Schedule};

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
    Ok(schedule)
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
        assert_eq!(build(&[]).unwrap().len, 0);
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
}
