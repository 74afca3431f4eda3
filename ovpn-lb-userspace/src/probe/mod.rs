//! Tunnel liveness and delay from in-band probes (the wire format is in
//! `ovpn_lb_common::probe`; `io` sends them and reads the answers).
//!
//! Each gateway sends a probe into every tunnel every interval; the far
//! gateway's tunnel program reflects it. A tunnel is dead once no probe sent
//! in the last `misses` intervals has been answered, as BFD's detection time
//! counts from the last packet heard: `misses` x interval after the path
//! failed at the latest. Every probe and answer also carries its sender's
//! view of the tunnels (bit k: tunnel k usable as far as that gateway knows
//! by itself), so a failure only one side can see (its OpenVPN process died,
//! its device went away) reaches the other side with the next probe on any
//! tunnel that still works: the side that noticed sends one at once.
//!
//! Overload is not silence. Probes queue in the tunnel device's ring with
//! the data, and a ring kept full by more traffic than the tunnel carries
//! drops or delays them past the detection time (on either gateway, for
//! probes and answers alike). So a tunnel that has answered, and whose far
//! gateway has probed it, also stays alive while its device shows both
//! directions working: packets arriving from the far end (the device's
//! receive count grows: the far end's data, probes and answers) and its
//! OpenVPN reading the ring (the transmit count, counted at each read,
//! grows). A count that grew is taken to have grown at the reading before,
//! so this evidence ends no later after the last packet than the answers
//! do: a silent path failure is noticed as fast as without it. What it
//! cannot see, packets of ours lost after our OpenVPN read them, the far
//! gateway sees as silence on its side: it says so in its view, which
//! vetoes the tunnel here.

pub mod io;

use std::{collections::VecDeque, time::Duration};

use ovpn_lb_common::probe::Said;

/// Round-trip time buckets of the Prometheus histogram, seconds.
pub const RTT_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
];

/// Probes remembered, answered or not: answers may still come for the
/// newest, and the recent loss is counted over all of them.
const HISTORY: usize = 64;

/// How often and how patiently a tunnel is probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub interval: Duration,
    /// Intervals without an answer before the tunnel is dead.
    pub misses: u32,
}

impl Settings {
    /// The promise: a failed tunnel is out of the rotation this long after
    /// its path failed, at the latest.
    #[must_use]
    pub fn detection(&self) -> Duration {
        self.interval * self.misses
    }

    /// How long after the newest answer arrived a tunnel stays alive: the
    /// detection time less a quarter of an interval, which the loader keeps
    /// to notice and publish in time on a busy machine. Counted from the
    /// answer's arrival, not its probe's departure, so that a long round
    /// trip never reads as silence (BFD counts the same way).
    #[must_use]
    pub fn silence(&self) -> Duration {
        self.detection().saturating_sub(self.interval / 4)
    }
}

/// Round-trip statistics, ns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rtt {
    pub last: u64,
    /// Exponentially weighted, 1/8 per sample (as TCP's SRTT).
    pub smoothed: u64,
    pub min: u64,
    /// Counts per bucket of [`RTT_BUCKETS`] (not cumulative), and above.
    pub buckets: Vec<u64>,
    pub sum_ns: u64,
    pub count: u64,
}

impl Rtt {
    fn add(&mut self, ns: u64) {
        self.last = ns;
        self.smoothed = if self.count == 0 {
            ns
        } else {
            self.smoothed - self.smoothed / 8 + ns / 8
        };
        self.min = if self.count == 0 {
            ns
        } else {
            self.min.min(ns)
        };
        if self.buckets.is_empty() {
            self.buckets = vec![0; RTT_BUCKETS.len() + 1];
        }
        #[expect(clippy::cast_precision_loss, reason = "bucket boundaries in seconds")]
        let seconds = ns as f64 / 1e9;
        let b = RTT_BUCKETS
            .iter()
            .position(|&le| seconds <= le)
            .unwrap_or(RTT_BUCKETS.len());
        self.buckets[b] += 1;
        self.sum_ns += ns;
        self.count += 1;
    }
}

/// One tunnel's probing, pure: times are `CLOCK_MONOTONIC` ns, the clock the
/// BPF programs stamp with.
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    next_seq: u32,
    /// (seq, sent at, answered, a path sample) of the last [`HISTORY`]
    /// probes; see [`Tracker::queued_behind_traffic`].
    history: VecDeque<(u32, u64, bool, bool)>,
    /// When probing (re)started: the first answers get `misses` intervals too.
    started_ns: Option<u64>,
    /// When the newest answer arrived.
    answered_at_ns: Option<u64>,
    pub sent: u64,
    pub answered: u64,
    pub rtt: Rtt,
    /// Forward one-way delay plus the (unknown, common) clock offset: the
    /// far gateway's reflect time minus our send time, the smallest of the
    /// last [`PATH_WINDOW_NS`]. Queues and scheduling only ever add to a
    /// sample, so the smallest is the path's own. Only differences between
    /// tunnels mean anything.
    pub forward_offset_ns: Option<i64>,
    /// (receive time, offset) of the window's samples, offsets ascending:
    /// the front is the minimum (a monotonic queue).
    offsets: VecDeque<(u64, i64)>,
    /// The far gateway has probed this tunnel since probing (re)started:
    /// it runs ovpn-lb, probes, and reaches us by this very tunnel.
    far_probed: bool,
    /// The device's counters at the last look, and when each last grew.
    traffic: Option<Traffic>,
}

/// What the loader reads of a tunnel device's traffic, each a count that
/// only grows: its evidence of working while probes are lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets the device received (written in by our OpenVPN: the far
    /// end's data, probes and answers).
    pub rx: u64,
    /// Packets our OpenVPN read out of the ring.
    pub tx: u64,
}

/// The counters at the last reading, and when each was last seen to grow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Traffic {
    last: Counters,
    /// When they were read.
    read_ns: u64,
    /// When each grew (`rx`, `tx`), 0: not since probing started.
    grew_ns: [u64; 2],
}

/// How far back the path's forward offset is the minimum of: long enough to
/// include a moment with the tunnel's queue empty, short enough to follow a
/// changed path.
pub const PATH_WINDOW_NS: u64 = 10_000_000_000;

impl Tracker {
    /// Starts (or restarts, after the device came back) at `now`.
    pub fn start(&mut self, now: u64) {
        self.history.clear();
        self.started_ns = Some(now);
        self.answered_at_ns = None;
        self.far_probed = false;
        self.traffic = None;
    }

    /// Stops probing (the device is gone).
    pub fn stop(&mut self) {
        self.history.clear();
        self.started_ns = None;
        self.answered_at_ns = None;
        self.far_probed = false;
        self.traffic = None;
    }

    /// A probe of the far gateway arrived by this tunnel.
    pub fn far_probe(&mut self) {
        self.far_probed = self.started_ns.is_some();
    }

    /// The tunnel's counters read at `now`. A count that grew did so since
    /// the last reading, and that is when it is taken to have grown: the
    /// evidence never outlives the packets by more than the silence, as
    /// answers do not.
    pub fn counters(&mut self, now: Counters, at: u64) {
        let Some(t) = &mut self.traffic else {
            self.traffic = Some(Traffic {
                last: now,
                read_ns: at,
                grew_ns: [0; 2],
            });
            return;
        };
        let pairs = [(now.rx, t.last.rx), (now.tx, t.last.tx)];
        for (grew, (new, old)) in t.grew_ns.iter_mut().zip(pairs) {
            if new > old {
                *grew = t.read_ns;
            }
        }
        (t.last, t.read_ns) = (now, at);
    }

    /// Until when the device's traffic keeps the tunnel alive: it has
    /// answered and the far gateway has probed it (so the far gateway
    /// follows our direction, and its view vetoes what we cannot see), and
    /// both counts grew.
    fn carried_until(&self, window: u64) -> Option<u64> {
        let t = self
            .traffic
            .filter(|_| self.far_probed && self.answered_at_ns.is_some())?;
        let since = t.grew_ns[0].min(t.grew_ns[1]);
        (since > 0).then_some(since + window)
    }

    /// Alive by its traffic alone: no answer within the window, but both
    /// directions of the device working (see the module's notes).
    #[must_use]
    pub fn kept_by_traffic(&self, now: u64, settings: &Settings) -> bool {
        let window = nanos(settings.silence());
        self.answered_at_ns.is_some_and(|t| now > t + window)
            && self.carried_until(window).is_some_and(|until| now <= until)
    }

    #[must_use]
    pub fn probing(&self) -> bool {
        self.started_ns.is_some()
    }

    /// A round at `now` in which no probe could be sent at all (no socket
    /// to send it with): nothing is counted as sent, and the silence so far
    /// proves nothing, so the verdict waits for `misses` intervals of probes
    /// that do leave. (A probe the kernel refused on its way into the
    /// tunnel, a firewall or a full queue, is sent and lost: the tunnel's
    /// path lost it.)
    pub fn unsendable(&mut self, now: u64) {
        self.started_ns = Some(now);
        self.answered_at_ns = None;
    }

    /// The next probe's sequence number, noted as sent at `now`.
    pub fn send(&mut self, now: u64) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back((seq, now, false, true));
        self.sent += 1;
        seq
    }

    /// The probe just sent queued behind traffic (its tunnel's ring held
    /// packets, or its OpenVPN was still on one): its forward time is that
    /// wait plus the path, so it is no sample of the path. Without this, a
    /// busy slow tunnel's path looks longer by its own queue, which packet
    /// spray already counts: the tunnel would be priced twice and starve.
    pub fn queued_behind_traffic(&mut self) {
        if let Some(last) = self.history.back_mut() {
            last.3 = false;
        }
    }

    /// An answer to probe `seq`, sent at `sent_ns` (as the answer says),
    /// reflected at `reflected_ns` (far clock), received at `received_ns`.
    /// False for an answer to no probe of ours (stale, or forged).
    pub fn answer(&mut self, seq: u32, sent_ns: u64, reflected_ns: u64, received_ns: u64) -> bool {
        let Some(probe) = self
            .history
            .iter_mut()
            .find(|(s, at, answered, _)| *s == seq && *at == sent_ns && !answered)
        else {
            return false;
        };
        probe.2 = true;
        let path_sample = probe.3;
        self.answered += 1;
        self.rtt.add(received_ns.saturating_sub(sent_ns));
        if self.answered_at_ns.is_none_or(|t| received_ns > t) {
            self.answered_at_ns = Some(received_ns);
        }
        #[expect(clippy::cast_possible_wrap, reason = "clock values stay below 2^63")]
        let offset = reflected_ns as i64 - sent_ns as i64;
        // Sliding-window minimum: drop what a newer, smaller sample beats
        // for the rest of its time, and what fell out of the window.
        if path_sample {
            while self.offsets.back().is_some_and(|&(_, o)| o >= offset) {
                self.offsets.pop_back();
            }
            self.offsets.push_back((received_ns, offset));
        }
        while self
            .offsets
            .front()
            .is_some_and(|&(at, _)| at + PATH_WINDOW_NS < received_ns)
        {
            self.offsets.pop_front();
        }
        self.forward_offset_ns = self.offsets.front().map(|&(_, o)| o);
        true
    }

    /// An ICMP echo reply to our probe whose sequence number ends in `seq16`,
    /// received at `received_ns`. False for one we did not send.
    pub fn echo_reply(&mut self, seq16: u16, received_ns: u64) -> bool {
        let Some(&(seq, sent, _, _)) = self
            .history
            .iter()
            .find(|&&(s, _, answered, _)| s & 0xffff == u32::from(seq16) && !answered)
        else {
            return false;
        };
        let answered = self.answer(seq, sent, 0, received_ns);
        // An echo carries no far-end time.
        self.forward_offset_ns = None;
        self.offsets.clear();
        answered
    }

    /// `Some(alive)` once the tunnel has had its chance to answer; `None`
    /// while not probing, within the first `misses` intervals, and while
    /// this loader itself has not probed on time (see [`Self::silence_from`]).
    #[must_use]
    pub fn alive(&self, now: u64, settings: &Settings) -> Option<bool> {
        let window = nanos(settings.silence());
        let from = self.silence_from(settings)?;
        if self
            .history
            .back()
            .is_some_and(|&(_, sent, _, _)| now > sent + stall(settings))
        {
            return None;
        }
        // The device's traffic (see the module's notes) keeps it alive too.
        let carried = self.carried_until(window).is_some_and(|until| now <= until);
        match self.answered_at_ns {
            Some(t) if t >= from => Some(now <= t + window || carried),
            _ if now > from + window => Some(carried),
            _ if self.answered_at_ns.is_some() => Some(true),
            _ => None,
        }
    }

    /// When `alive` will turn false if nothing is heard, for the timer.
    #[must_use]
    pub fn deadline(&self, settings: &Settings) -> Option<u64> {
        let window = nanos(settings.silence());
        let heard = self.silence_from(settings)? + window;
        Some(heard.max(self.carried_until(window).unwrap_or(0)) + 1)
    }

    /// Since when silence counts against the tunnel: the newest answer's
    /// arrival (or the start), unless this loader stopped probing for a
    /// while since then (stopped by a signal, starved of CPU on a busy
    /// machine): then from its first probe after that pause. Silence nobody
    /// asked to break says nothing about a path, and taking every tunnel
    /// out at once for the loader's own pause would be an outage.
    fn silence_from(&self, settings: &Settings) -> Option<u64> {
        let mut from = self.answered_at_ns.or(self.started_ns)?;
        let stall = stall(settings);
        let mut previous: Option<u64> = None;
        for &(_, sent, _, _) in &self.history {
            if previous.is_some_and(|p| sent > from && sent - p > stall) {
                from = sent;
            }
            previous = Some(sent);
        }
        Some(from)
    }

    /// Unanswered share of the recent probes whose answers are overdue
    /// (sent more than `after` ns before `now`), for `status`.
    #[must_use]
    pub fn loss(&self, now: u64, after: u64) -> f64 {
        let due = self
            .history
            .iter()
            .filter(|(_, at, _, _)| at.saturating_add(after) < now);
        let (total, lost) = due.fold((0u32, 0u32), |(t, l), (_, _, answered, _)| {
            (t + 1, l + u32::from(!answered))
        });
        if total == 0 {
            0.0
        } else {
            f64::from(lost) / f64::from(total)
        }
    }
}

/// What the far gateway last said on one tunnel, and when we heard it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerWord {
    pub said: Said,
    /// Our `CLOCK_MONOTONIC` at arrival, ns.
    pub heard_ns: u64,
}

impl PeerWord {
    /// Heard within the detection time: what it says still counts.
    #[must_use]
    pub fn fresh(&self, now: u64, settings: &Settings) -> bool {
        let window = u64::try_from(settings.detection().as_nanos()).unwrap_or(u64::MAX);
        now <= self.heard_ns.saturating_add(window)
    }

    /// Keeps in `slot` the newer word by the far clock; one no longer fresh
    /// (the far gateway may have rebooted, its clock started again) yields
    /// to any.
    pub fn keep_newest(slot: &mut Option<PeerWord>, word: PeerWord, settings: &Settings) {
        let replace = slot.is_none_or(|kept| {
            word.said.far_ns >= kept.said.far_ns || !kept.fresh(word.heard_ns, settings)
        });
        if replace {
            *slot = Some(word);
        }
    }
}

/// What the far gateway says now, by its own clock, among the words heard
/// recently on any tunnel (`None`: none is fresh). Its view is `None` when
/// it has none (probes off, its loader starting, an older peer without
/// one), which then vetoes nothing; its flags couple the pair's
/// announcements.
pub fn newest_said<'a>(
    words: impl IntoIterator<Item = &'a PeerWord>,
    now: u64,
    settings: &Settings,
) -> Option<Said> {
    ovpn_lb_common::probe::newest(
        words
            .into_iter()
            .filter(|w| w.fresh(now, settings))
            .map(|w| w.said),
    )
}

/// The far gateway's [`flags::COUPLED`] bits, from each tunnel's word and
/// whether the tunnel is in the rotation: what its newest fresh word says;
/// with none fresh, its newest word on a tunnel still in the rotation (one
/// kept in by its traffic while an overloaded ring loses its probes keeps
/// what was said last, so a pair withdrawn together does not announce
/// again for want of a probe); a word on a tunnel gone from the rotation
/// counts for nothing once stale.
///
/// [`flags::COUPLED`]: ovpn_lb_common::probe::flags::COUPLED
pub fn far_flags<'a>(
    words: impl IntoIterator<Item = (&'a PeerWord, bool)> + Clone,
    now: u64,
    settings: &Settings,
) -> u16 {
    newest_said(words.clone().into_iter().map(|(w, _)| w), now, settings)
        .or_else(|| {
            ovpn_lb_common::probe::newest(
                words
                    .into_iter()
                    .filter(|&(_, in_rotation)| in_rotation)
                    .map(|(w, _)| w.said),
            )
        })
        .map_or(0, |s| s.coupled())
}

/// Path delays are published in whole steps of this much (rounded down):
/// finer differences are noise of the OpenVPN processes' scheduling, and
/// each change republishes the schedule.
pub const PATH_QUANTUM_NS: i64 = 1_000_000;

/// How much longer each tunnel's forward path is than the fastest one's,
/// from the probes' forward offsets (`None`: not known, taken as 0), in
/// steps of [`PATH_QUANTUM_NS`], and at most `max` (`path_delay_max_ms`: a
/// path taken as that far is used once every other tunnel is that far
/// backlogged). Only differences between tunnels mean anything: the far
/// clock's offset is common to all.
#[must_use]
pub fn path_delays(offsets: &[Option<i64>], max: Duration) -> Vec<u32> {
    let max = i64::try_from(max.as_nanos()).unwrap_or(i64::MAX);
    let Some(fastest) = offsets.iter().flatten().min() else {
        return vec![0; offsets.len()];
    };
    offsets
        .iter()
        .map(|o| {
            let extra = o.map_or(0, |o| o - fastest).min(max);
            let steps = extra / PATH_QUANTUM_NS;
            u32::try_from(steps * PATH_QUANTUM_NS).unwrap_or(0)
        })
        .collect()
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A gap between two probes of one tunnel longer than this is a pause of
/// the loader's, not of the path's: the silence window, and at least two
/// intervals (one missed round is no pause).
fn stall(settings: &Settings) -> u64 {
    nanos(settings.silence()).max(nanos(settings.interval * 2))
}

/// `CLOCK_MONOTONIC` now, ns: the clock of `bpf_ktime_get_ns`.
#[must_use]
pub fn now_ns() -> u64 {
    // SAFETY: clock_gettime into a timespec we own.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts);
        ts
    };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn probes_that_cannot_be_sent_neither_count_nor_kill_the_tunnel() {
        let settings = Settings {
            interval: Duration::from_millis(100),
            misses: 3,
        };
        let mut t = Tracker::default();
        t.start(0);
        for round in 1..=20 {
            t.unsendable(round * 100 * MS);
        }
        assert_eq!(t.sent, 0, "nothing left, nothing counted");
        assert_eq!(
            t.alive(2_000 * MS, &settings),
            None,
            "no verdict without probes"
        );
        // Probes that leave and go unanswered do kill it, `misses` intervals on.
        for round in 21..=24 {
            t.send(round * 100 * MS);
        }
        assert_eq!(t.sent, 4);
        assert_eq!(t.alive(2_400 * MS, &settings), Some(false));
    }

    #[test]
    fn probes_queued_behind_traffic_are_no_path_samples() {
        let mut t = Tracker::default();
        t.start(0);
        let seq = t.send(0);
        assert!(t.answer(seq, 0, 2 * MS, 4 * MS));
        assert_eq!(t.forward_offset_ns, Some(i64::try_from(2 * MS).unwrap()));
        // Behind a full ring: a much later reflect, an RTT, no path sample.
        let seq = t.send(100 * MS);
        t.queued_behind_traffic();
        assert!(t.answer(seq, 100 * MS, 150 * MS, 160 * MS));
        assert_eq!(t.rtt.last, 60 * MS);
        assert_eq!(t.forward_offset_ns, Some(i64::try_from(2 * MS).unwrap()));
        // Once the window has passed without a clean sample: unknown.
        let late = PATH_WINDOW_NS + 200 * MS;
        let seq = t.send(late);
        t.queued_behind_traffic();
        assert!(t.answer(seq, late, late + 50 * MS, late + 60 * MS));
        assert_eq!(t.forward_offset_ns, None);
    }

    #[test]
    fn the_forward_offset_is_the_window_minimum() {
        let mut t = Tracker::default();
        t.start(0);
        let answer = |t: &mut Tracker, at_ms: u64, offset_ms: u64| {
            let sent = at_ms * MS;
            let seq = t.send(sent);
            assert!(t.answer(seq, sent, sent + offset_ms * MS, sent + 2 * offset_ms * MS));
            t.forward_offset_ns
        };
        let ms = i64::try_from(MS).unwrap();
        assert_eq!(answer(&mut t, 100, 5), Some(5 * ms));
        // Queueing adds to samples: the minimum stays.
        assert_eq!(answer(&mut t, 200, 9), Some(5 * ms));
        assert_eq!(answer(&mut t, 300, 7), Some(5 * ms));
        // A smaller one is the new minimum at once.
        assert_eq!(answer(&mut t, 400, 4), Some(4 * ms));
        // Ten seconds on, the old minimum has left the window: the path got
        // longer, and that is learnt.
        assert_eq!(answer(&mut t, 9_000, 8), Some(4 * ms));
        assert_eq!(answer(&mut t, 10_500, 8), Some(8 * ms));
    }

    #[test]
    fn path_delays_are_differences_in_quantum_steps() {
        let ms = 1_000_000;
        // A far clock 5 s ahead; tunnel 1 is 3.7 ms longer (3 whole ms), 2
        // unknown, 3 0.9 ms longer (noise: 0), 4 absurdly far (capped).
        let offsets = [
            Some(5_000 * ms),
            Some(5_003 * ms + 700_000),
            None,
            Some(5_000 * ms + 900_000),
            Some(9_000 * ms),
        ];
        let max = Duration::from_millis(100);
        assert_eq!(
            path_delays(&offsets, max),
            [0, 3_000_000, 0, 0, 100_000_000]
        );
        assert_eq!(path_delays(&[None, None], max), [0, 0]);
        // A lower limit (path_delay_max_ms) holds every path to it; 0 sprays
        // as if every path were as short as the shortest.
        let two = Duration::from_millis(2);
        assert_eq!(path_delays(&offsets, two), [0, 2_000_000, 0, 0, 2_000_000]);
        assert_eq!(path_delays(&offsets, Duration::ZERO), [0; 5]);
    }

    use super::*;

    const MS: u64 = 1_000_000;
    const S: Settings = Settings {
        interval: Duration::from_millis(100),
        misses: 3,
    };

    #[test]
    fn dead_within_three_intervals_of_the_newest_answer() {
        let mut t = Tracker::default();
        t.start(0);
        assert_eq!(t.alive(100 * MS, &S), None, "within its first chance");
        let seq = t.send(100 * MS);
        assert!(t.answer(seq, 100 * MS, 5, 101 * MS));
        assert_eq!(t.rtt.last, MS);
        // The path fails at 150 ms: probes at 200, 300, 400 go unanswered.
        for at in [200, 300, 400] {
            t.send(at * MS);
        }
        assert_eq!(t.alive(376 * MS, &S), Some(true));
        assert_eq!(t.deadline(&S), Some(376 * MS + 1));
        assert_eq!(t.alive(376 * MS + 1, &S), Some(false));
        // 275 ms of silence: 25 ms kept to act within 300 ms of the failure.
        const { assert!(376 * MS + 1 - 101 * MS <= 300 * MS) };
        // An answer brings it back.
        let seq = t.send(500 * MS);
        assert!(t.answer(seq, 500 * MS, 0, 502 * MS));
        assert_eq!(t.alive(502 * MS, &S), Some(true));
    }

    #[test]
    fn a_long_round_trip_is_not_silence() {
        // 400 ms there and back, probes every 100 ms, every one answered.
        let mut t = Tracker::default();
        t.start(0);
        for k in 0..30 {
            let sent = k * 100 * MS;
            assert_eq!(t.send(sent), u32::try_from(k).unwrap());
            if k >= 4 {
                let earlier = sent - 400 * MS;
                let s = u32::try_from(k - 4).unwrap();
                assert!(t.answer(s, earlier, 0, sent));
            }
            if sent > 400 * MS {
                assert_eq!(t.alive(sent + 99 * MS, &S), Some(true), "at {sent}");
            }
        }
    }

    #[test]
    fn never_answered_is_dead_after_its_chance() {
        let mut t = Tracker::default();
        t.start(0);
        for at in [0, 100, 200] {
            t.send(at * MS);
        }
        assert_eq!(t.alive(275 * MS, &S), None);
        assert_eq!(t.alive(276 * MS, &S), Some(false));
        t.stop();
        assert_eq!(t.alive(400 * MS, &S), None);
    }

    #[test]
    fn a_pause_of_the_loader_is_no_silence_of_the_path() {
        let mut t = Tracker::default();
        t.start(0);
        let seq = t.send(100 * MS);
        assert!(t.answer(seq, 100 * MS, 0, 101 * MS));
        // The loader stops at 150 ms (SIGSTOP, no CPU) and runs again at
        // 2 s: before it probes, no verdict; once it has, a full window.
        assert_eq!(t.alive(2_000 * MS, &S), None);
        t.send(2_000 * MS);
        assert_eq!(t.alive(2_000 * MS, &S), Some(true));
        assert_eq!(t.deadline(&S), Some(2_275 * MS + 1));
        t.send(2_100 * MS);
        t.send(2_200 * MS);
        assert_eq!(t.alive(2_275 * MS, &S), Some(true));
        // Still no answer a window after it resumed: that is the path.
        assert_eq!(t.alive(2_275 * MS + 1, &S), Some(false));
        // A single missed round is no pause: detection is not delayed.
        let mut t = Tracker::default();
        t.start(0);
        let seq = t.send(100 * MS);
        assert!(t.answer(seq, 100 * MS, 0, 101 * MS));
        t.send(300 * MS);
        assert_eq!(t.alive(376 * MS + 1, &S), Some(false));
    }

    #[test]
    fn stale_or_forged_answers_are_ignored() {
        let mut t = Tracker::default();
        t.start(0);
        let seq = t.send(10 * MS);
        assert!(!t.answer(seq + 1, 10 * MS, 0, 11 * MS), "no such probe");
        assert!(!t.answer(seq, 9 * MS, 0, 11 * MS), "wrong send time");
        assert!(t.answer(seq, 10 * MS, 0, 11 * MS));
        assert!(!t.answer(seq, 10 * MS, 0, 11 * MS), "answered twice");
        assert_eq!(t.answered, 1);
    }

    #[test]
    fn rtt_statistics_and_histogram() {
        let mut t = Tracker::default();
        t.start(0);
        for (i, rtt) in [800_000u64, 3 * MS, 30 * MS].iter().enumerate() {
            let at = u64::try_from(i).unwrap() * 100 * MS;
            let seq = t.send(at);
            t.answer(seq, at, 0, at + rtt);
        }
        assert_eq!(t.rtt.min, 800_000);
        assert_eq!(t.rtt.last, 30 * MS);
        assert_eq!(t.rtt.count, 3);
        // 0.8 ms <= 1 ms, 3 ms <= 5 ms, 30 ms <= 50 ms.
        assert_eq!(t.rtt.buckets[1], 1);
        assert_eq!(t.rtt.buckets[3], 1);
        assert_eq!(t.rtt.buckets[6], 1);
        assert!(t.rtt.smoothed > 800_000 && t.rtt.smoothed < 30 * MS);
        assert!(t.loss(1_000 * MS, 100 * MS).abs() < f64::EPSILON);
        t.send(300 * MS);
        assert!((t.loss(1_000 * MS, 100 * MS) - 0.25).abs() < f64::EPSILON);
    }

    fn newest_view(words: &[PeerWord], now: u64, settings: &Settings) -> Option<u64> {
        newest_said(words, now, settings).and_then(|s| s.view)
    }

    fn word(view: Option<u64>, far_ms: u64, heard_ms: u64) -> PeerWord {
        PeerWord {
            said: Said {
                view,
                flags: 0,
                far_ns: far_ms * MS,
            },
            heard_ns: heard_ms * MS,
        }
    }

    #[test]
    fn the_peer_view_is_the_newest_by_the_far_clock_and_only_while_fresh() {
        // Tunnel 0's word was said later by the far clock, though heard
        // earlier (tunnel 1 is slower): tunnel 0's view counts.
        let words = [word(Some(0b101), 1_050, 100), word(Some(0b111), 1_000, 120)];
        assert_eq!(newest_view(&words, 200 * MS, &S), Some(0b101));
        // After the detection time, nothing counts.
        assert_eq!(
            newest_view(&words, 401 * MS, &S),
            Some(0b111),
            "tunnel 0's word is stale"
        );
        assert_eq!(newest_view(&words, 421 * MS, &S), None);
        // The newest saying "unknown" vetoes nothing.
        let words = [word(Some(0), 1_000, 100), word(None, 1_050, 110)];
        assert_eq!(newest_view(&words, 200 * MS, &S), None);
    }

    #[test]
    fn the_far_flags_outlast_lost_probes_only_on_tunnels_in_the_rotation() {
        use ovpn_lb_common::probe::flags::{DRAINING, LAN_DOWN};
        let flagged = |flags, far_ms, heard_ms| PeerWord {
            said: Said {
                view: Some(0b11),
                flags,
                far_ns: far_ms * MS,
            },
            heard_ns: heard_ms * MS,
        };
        let draining = flagged(DRAINING, 1_000, 100);
        let well = flagged(0, 900, 90);
        // Fresh: the newest by the far clock.
        let words = [(&draining, true), (&well, true)];
        assert_eq!(far_flags(words, 200 * MS, &S), DRAINING);
        // Stale, its tunnel kept in the rotation by traffic: still draining
        // (without this, the gateway announced again each time an
        // overloaded ring lost a detection time's probes).
        assert_eq!(far_flags(words, 2_000 * MS, &S), DRAINING);
        // Stale, its tunnels out of the rotation: nothing.
        let words = [(&draining, false), (&well, false)];
        assert_eq!(far_flags(words, 2_000 * MS, &S), 0);
        // A fresh word lifts a stale one whatever the clocks say (the far
        // gateway restarted, its clock with it).
        let rebooted = flagged(0, 5, 1_900);
        let words = [(&draining, true), (&rebooted, true)];
        assert_eq!(far_flags(words, 2_000 * MS, &S), 0);
        let lan = flagged(LAN_DOWN | (1 << 9), 6, 1_950);
        let words = [(&draining, true), (&rebooted, true), (&lan, true)];
        assert_eq!(far_flags(words, 2_000 * MS, &S), LAN_DOWN);
    }

    #[test]
    fn a_tunnels_word_is_replaced_only_by_a_newer_one() {
        let mut slot = None;
        PeerWord::keep_newest(&mut slot, word(Some(1), 1_000, 100), &S);
        // Said earlier, heard later (reordered): kept out.
        PeerWord::keep_newest(&mut slot, word(Some(2), 990, 110), &S);
        assert_eq!(slot.unwrap().said.view, Some(1));
        // A far clock that started again (a reboot): taken once the kept
        // word is stale.
        PeerWord::keep_newest(&mut slot, word(Some(3), 5, 500), &S);
        assert_eq!(slot.unwrap().said.view, Some(3));
    }

    /// Reads counters growing as `grow` says (rx, tx) every 50 ms from
    /// `from` to `to` ms, and sends a probe (never answered) every 100 ms,
    /// as the loader does; the counters read last.
    fn read_every_50ms(
        t: &mut Tracker,
        mut c: Counters,
        from: u64,
        to: u64,
        grow: [bool; 2],
    ) -> Counters {
        for at in (from..=to).step_by(50) {
            c.rx += u64::from(grow[0]) * 5;
            c.tx += u64::from(grow[1]) * 5;
            t.counters(c, at * MS);
            if at % 100 == 0 {
                t.send(at * MS);
            }
        }
        c
    }

    #[test]
    fn a_full_ring_is_not_silence_while_both_directions_carry() {
        let mut t = Tracker::default();
        t.start(0);
        let seq = t.send(0);
        assert!(t.answer(seq, 0, 1, MS));
        // The far gateway has not probed this tunnel: its traffic is no
        // evidence, the silence counts.
        let c = read_every_50ms(&mut t, Counters::default(), 0, 300, [true; 2]);
        assert_eq!(t.alive(300 * MS, &S), Some(false));
        // It has: packets keep arriving and OpenVPN keeps reading, while
        // every probe and answer is lost in a full ring.
        t.far_probe();
        let c = read_every_50ms(&mut t, c, 350, 3_000, [true; 2]);
        assert_eq!(t.alive(3_010 * MS, &S), Some(true));
        assert!(t.kept_by_traffic(3_010 * MS, &S));
        // Grown since the reading before: taken as then.
        assert_eq!(t.deadline(&S), Some(2_950 * MS + 275 * MS + 1));
        // OpenVPN stops reading (or the far end stops sending): dead after
        // the same silence, counted from the reading before the last growth.
        for grow in [[true, false], [false, true]] {
            let mut t2 = t.clone();
            read_every_50ms(&mut t2, c, 3_050, 3_300, grow);
            assert_eq!(t2.alive(2_950 * MS + 275 * MS, &S), Some(true));
            assert_eq!(t2.alive(2_950 * MS + 276 * MS, &S), Some(false));
        }
        // A restart forgets it all.
        t.start(6_000 * MS);
        read_every_50ms(&mut t, c, 6_000, 6_300, [true; 2]);
        assert_eq!(t.alive(6_300 * MS, &S), Some(false));
    }
}
