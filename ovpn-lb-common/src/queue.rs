//! Earliest departure: which tunnel a packet would leave by first.
//!
//! Each tunnel device's transmit ring is the queue its OpenVPN drains, one
//! packet at a time, as fast as it can encrypt and send (or as its shaper or
//! link lets it). Two tracing programs account every ring: bytes in when the
//! kernel queues a packet into the device, bytes out when OpenVPN reads one.
//! Their difference is the backlog. How fast each reader drains is learnt
//! from reads that found work waiting: the time from one read to the next
//! while the ring stayed non-empty. Time the reader spent stalled with work
//! waiting counts; a read after the ring ran empty does not, as its wait is
//! the reader's wake-up, a fixed cost that would read as a huge cost per
//! byte for a small packet (the probes of an idle tunnel).
//!
//! A packet put on tunnel `k` now is read at about
//! `residual_k + (backlog_k + len) × cost_k`, where `residual_k` is what is
//! left of the packet OpenVPN is holding (read `last_len` bytes ago, at the
//! same cost per byte). The LAN program picks the tunnel with the smallest
//! figure. Spraying by it keeps every tunnel's queueing delay about equal, so
//! one flow's packets arrive in the order they were sent, and a slower tunnel
//! gets proportionally fewer packets without any configured weight.
//!
//! Everything here is pure arithmetic on one tunnel's figures, shared by the
//! BPF programs (which own the state) and the loader (which reports it).

/// A drain rate sample covers at least this much busy time: shorter windows
/// measure the reader's burstiness, not its rate.
pub const RATE_WINDOW_NS: u64 = 20_000_000;
/// Weight of a new sample in the smoothed cost: 1/2^`RATE_GAIN_SHIFT`.
pub const RATE_GAIN_SHIFT: u32 = 2;
/// A sample may raise the smoothed cost at most this many times. A tunnel
/// whose estimate went bad gets no packets, hence no new samples; a bounded
/// raise keeps one stall (a burst of retransmits at the far end, a pause of
/// the reader) from locking a tunnel out.
pub const MAX_RAISE: u64 = 4;
/// A tunnel nothing was queued on for this long is tried with the next
/// packet, whatever its estimate: how a stale estimate gets a new sample.
pub const RETRY_AFTER_NS: u64 = 20_000_000;
/// Cost per byte of a reader never measured: 10 ns per byte (100 MB/s),
/// taken until its first sample.
pub const UNMEASURED_PS_PER_BYTE: u64 = 10_000;
/// Tunnels the LAN program compares for every packet; with more healthy
/// tunnels it compares two at random and the one it picked last (the power
/// of two choices, with memory).
pub const SCAN_TUNNELS: usize = 8;

/// The accounting of one tunnel device's transmit ring, indexed by tunnel id
/// in `TUNNEL_QUEUES`. The enqueue program writes the first group from any
/// CPU (atomic adds); the dequeue program runs in the tunnel's single
/// reader and is the only writer of the rest. The loader zeroes an entry
/// when its tunnel gets a new device.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelQueue {
    /// Bytes the kernel has queued into the device's ring.
    pub enq_bytes: u64,
    pub enq_packets: u64,
    /// Packets the device refused (its ring was full): dropped by the kernel.
    pub ring_full: u64,
    /// The ring's producer index as of the last counted enqueue: tells the
    /// dequeue program whether every packet in the ring has been counted.
    pub counted_producer: u64,
    /// When a packet was last queued: a tunnel left alone for
    /// [`RETRY_AFTER_NS`] is tried again.
    pub last_enq_ns: u64,
    /// Bytes OpenVPN has read out of the ring.
    pub deq_bytes: u64,
    pub deq_packets: u64,
    /// When OpenVPN last read a packet, and its length.
    pub last_deq_ns: u64,
    pub last_len: u64,
    /// 1 while the ring held more packets after the last read.
    pub backlogged: u64,
    /// Times the dequeue program found the ring empty while the counters
    /// said otherwise (a read raced the count of its enqueue), and the bytes
    /// it set right.
    pub resyncs: u64,
    pub resync_bytes: u64,
    pub drain: Drain,
}

impl TunnelQueue {
    /// Whether a packet queued at `now` would be read at once: nothing
    /// waits in the ring, and the packet OpenVPN read last is done (by its
    /// reader's cost per byte).
    #[must_use]
    pub const fn idle(&self, now: u64) -> bool {
        let held_ps = self.last_len * Drain::planning_cost(self.drain.ps_per_byte);
        self.enq_bytes <= self.deq_bytes
            && now.saturating_sub(self.last_deq_ns).saturating_mul(1000) >= held_ps
    }
}

/// How fast a tunnel's reader drains its ring.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drain {
    /// Smoothed cost per byte, picoseconds; 0 until the first sample.
    pub ps_per_byte: u64,
    /// Samples taken.
    pub samples: u64,
    /// Bytes and busy time of the window being accumulated.
    pub window_bytes: u64,
    pub window_ns: u64,
}

impl Drain {
    /// One read of `bytes` that took `service_ns` of busy time. Returns true
    /// when it closed a window (a new sample).
    #[inline(always)]
    pub fn record(&mut self, bytes: u64, service_ns: u64) -> bool {
        self.window_bytes += bytes;
        self.window_ns += service_ns;
        if self.window_ns < RATE_WINDOW_NS || self.window_bytes == 0 {
            return false;
        }
        let mut sample = self.window_ns * 1000 / self.window_bytes;
        let old = self.ps_per_byte;
        if old != 0 && sample > old * MAX_RAISE {
            sample = old * MAX_RAISE;
        }
        self.ps_per_byte = if old == 0 {
            sample
        } else {
            old - (old >> RATE_GAIN_SHIFT) + (sample >> RATE_GAIN_SHIFT)
        };
        self.samples += 1;
        self.window_bytes = 0;
        self.window_ns = 0;
        true
    }

    /// The cost per byte to plan with.
    #[inline(always)]
    #[must_use]
    pub const fn planning_cost(ps_per_byte: u64) -> u64 {
        if ps_per_byte == 0 {
            UNMEASURED_PS_PER_BYTE
        } else {
            ps_per_byte
        }
    }

    /// Drain rate in bytes per second, 0 while unmeasured.
    #[must_use]
    pub const fn bytes_per_second(&self) -> u64 {
        match 1_000_000_000_000u64.checked_div(self.ps_per_byte) {
            Some(rate) => rate,
            None => 0,
        }
    }
}

/// How long the read just done at `now` took to serve, if it is a drain
/// sample: only when the previous read, at `last_deq_ns`, left work waiting.
#[inline(always)]
#[must_use]
pub const fn service_ns(backlogged: bool, last_deq_ns: u64, now: u64) -> Option<u64> {
    if backlogged && last_deq_ns != 0 && now > last_deq_ns {
        Some(now - last_deq_ns)
    } else {
        None
    }
}

/// What the LAN program reads of a tunnel's queue to price a packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub enq_bytes: u64,
    pub deq_bytes: u64,
    pub last_enq_ns: u64,
    pub last_deq_ns: u64,
    pub last_len: u64,
    pub ps_per_byte: u64,
}

impl Snapshot {
    /// Bytes queued and not yet read.
    #[inline(always)]
    #[must_use]
    pub const fn backlog(&self) -> u64 {
        self.enq_bytes.saturating_sub(self.deq_bytes)
    }

    /// When a packet of `len` bytes put on this tunnel at `now` would be
    /// read, in picoseconds from now (`path_ns` is the tunnel's extra path
    /// delay over the fastest tunnel). 0 for a tunnel due a retry.
    #[inline(always)]
    #[must_use]
    pub const fn departure_ps(&self, len: u64, now: u64, path_ns: u64) -> u64 {
        if now.saturating_sub(self.last_enq_ns) > RETRY_AFTER_NS {
            return 0;
        }
        let psb = Drain::planning_cost(self.ps_per_byte);
        // The packet OpenVPN read last is done `last_len` bytes' worth after
        // it read it: often most of the wait when the ring is short.
        // (Compared in ps, without a division: this runs per tunnel per
        // packet. A read over a second ago is long done, and bounds the
        // product.)
        let age_ns = now.saturating_sub(self.last_deq_ns);
        let residual_ps = if age_ns >= 1_000_000_000 {
            0
        } else {
            (self.last_len * psb).saturating_sub(age_ns * 1000)
        };
        residual_ps + path_ns * 1000 + (self.backlog() + len) * psb
    }

    /// [`Self::departure_ps`] with what breaks its ties.
    #[inline(always)]
    #[must_use]
    pub const fn departure(&self, len: u64, now: u64, path_ns: u64) -> Departure {
        Departure {
            ps: self.departure_ps(len, now, path_ns),
            last_enq_ns: self.last_enq_ns,
        }
    }
}

/// How the LAN program ranks tunnels for a packet: the earliest departure
/// first; at a tie (idle tunnels all read a packet at once) the tunnel
/// queued to longest ago, so that ties rotate over the tunnels instead of
/// all falling to the first one. Field order is the ranking (derived `Ord`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Departure {
    pub ps: u64,
    pub last_enq_ns: u64,
}

impl Departure {
    /// Ranks after every tunnel.
    pub const NEVER: Self = Self {
        ps: u64::MAX,
        last_enq_ns: u64::MAX,
    };
}

/// Where the tracing programs find what they read in kernel memory: struct
/// offsets from the running kernel's BTF, the address range of the function
/// that reads a tun ring, and our network namespace. Single entry of
/// `KERNEL_LAYOUT`, written by the loader before it attaches the tracing
/// programs; `netns` 0 turns them off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    /// Inode of our network namespace: the programs see every device on the
    /// host and keep to ours.
    pub netns: u32,
    /// `sk_buff.len`, `sk_buff.dev`.
    pub skb_len: u32,
    pub skb_dev: u32,
    /// `net_device.ifindex`, `net_device.nd_net`.
    pub dev_ifindex: u32,
    pub dev_net: u32,
    /// `net.ns.inum`.
    pub net_inum: u32,
    /// `netdev_priv()`: the size of `net_device`, aligned to 32. The private
    /// area of a tun device is its `tun_struct`.
    pub dev_priv: u32,
    /// `tun_struct.tfiles` (the queue a single-queue device's reader owns
    /// is `tfiles[0]`) and `tun_file.tx_ring`.
    pub tun_tfiles: u32,
    pub tfile_tx_ring: u32,
    /// `ptr_ring.producer`, `.consumer_head`, `.queue`.
    pub ring_producer: u32,
    pub ring_consumer_head: u32,
    pub ring_queue: u32,
    /// `[read_start, read_end)`: `tun_do_read`, where OpenVPN's read frees
    /// the packet it copied out.
    pub read_start: u64,
    pub read_end: u64,
}

const _: () = assert!(size_of::<TunnelQueue>() == 12 * 8 + size_of::<Drain>());
const _: () = assert!(size_of::<Drain>() == 32);
const _: () = assert!(size_of::<KernelLayout>() == 12 * 4 + 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C) with integer fields and no implicit padding (the size
    // assertions above would catch any).
    unsafe impl aya::Pod for super::TunnelQueue {}
    unsafe impl aya::Pod for super::KernelLayout {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_sample_is_taken_as_is_then_smoothed() {
        let mut d = Drain::default();
        // 1500 bytes per 1.5 ms: 1 µs per byte; not a window yet.
        assert!(!d.record(1500, 1_500_000));
        for _ in 0..13 {
            d.record(1500, 1_500_000);
        }
        assert_eq!(d.samples, 1);
        assert_eq!(d.ps_per_byte, 1_000_000);
        assert_eq!(d.bytes_per_second(), 1_000_000);
        // A twice-as-fast window moves it a quarter of the way.
        d.record(60_000, 30_000_000);
        assert_eq!(d.ps_per_byte, 1_000_000 - 250_000 + 125_000);
    }

    #[test]
    fn a_sample_raises_the_cost_at_most_fourfold() {
        let mut d = Drain {
            ps_per_byte: 1000,
            ..Drain::default()
        };
        // A 100 ms stall over 1000 bytes: 100 µs per byte, clamped to 4 ns.
        d.record(1000, 100_000_000);
        assert_eq!(d.ps_per_byte, 1000 - 250 + 1000);
    }

    #[test]
    fn only_reads_with_work_waiting_are_drain_samples() {
        // Work was waiting since the previous read: served since then.
        assert_eq!(service_ns(true, 100, 500), Some(400));
        // The ring had run empty: the wait was a wake-up, not a drain.
        assert_eq!(service_ns(false, 100, 500), None);
        // No previous read.
        assert_eq!(service_ns(true, 0, 500), None);
    }

    fn queue(backlog: u64, ps_per_byte: u64) -> Snapshot {
        Snapshot {
            enq_bytes: 10_000 + backlog,
            deq_bytes: 10_000,
            last_enq_ns: 1_000_000_000,
            last_deq_ns: 1_000_000_000,
            last_len: 0,
            ps_per_byte,
        }
    }

    #[test]
    fn the_faster_drain_wins_at_equal_backlog() {
        let now = 1_000_000_000;
        let slow = queue(3000, 2000).departure_ps(1500, now, 0);
        let fast = queue(3000, 1000).departure_ps(1500, now, 0);
        assert_eq!(fast, 4500 * 1000);
        assert_eq!(slow, 4500 * 2000);
    }

    #[test]
    fn backlog_and_rate_trade_off() {
        let now = 1_000_000_000;
        // Twice the rate with twice the backlog plus one packet: even.
        let a = queue(3000, 1000).departure_ps(1500, now, 0);
        let b = queue(750, 2000).departure_ps(1500, now, 0);
        assert_eq!(a, b);
    }

    #[test]
    fn the_held_packet_counts_until_it_is_done() {
        let now = 1_000_000_000;
        let mut q = queue(0, 1000);
        // Read 1500 bytes 1 µs ago at 1 ns per byte: 0.5 µs still to go.
        q.last_deq_ns = now - 1000;
        q.last_len = 1500;
        assert_eq!(q.departure_ps(100, now, 0), 500_000 + 100_000);
        // Long done: nothing left of it.
        q.last_deq_ns = now - 10_000;
        assert_eq!(q.departure_ps(100, now, 0), 100_000);
    }

    #[test]
    fn path_delay_adds_to_the_wait() {
        let now = 1_000_000_000;
        assert_eq!(
            queue(0, 1000).departure_ps(100, now, 2000),
            2_000_000 + 100_000
        );
    }

    #[test]
    fn an_untried_tunnel_is_retried() {
        let now = 1_000_000_000 + RETRY_AFTER_NS + 1;
        assert_eq!(queue(1_000_000, 1_000_000).departure_ps(1500, now, 0), 0);
    }

    #[test]
    fn idle_tunnels_tie_and_the_one_queued_to_longest_ago_goes_first() {
        let now = 10 * RETRY_AFTER_NS;
        let mut older = queue(0, 1000);
        older.last_enq_ns = 1;
        let mut newer = queue(500, 1000);
        newer.last_enq_ns = 2;
        let (a, b) = (older.departure(100, now, 0), newer.departure(100, now, 0));
        assert_eq!(a.ps, b.ps);
        assert!(a < b && b < Departure::NEVER);
        // Otherwise the earlier departure goes first, whichever tunnel was
        // queued to last.
        let now = 1_000_000_000;
        let empty = queue(0, 1000).departure(100, now, 0);
        let mut backlogged = queue(1000, 1000);
        backlogged.last_enq_ns = now - 1000;
        assert!(empty < backlogged.departure(100, now, 0));
    }

    #[test]
    fn an_unmeasured_reader_is_priced_at_the_default() {
        let now = 1_000_000_000;
        assert_eq!(
            queue(0, 0).departure_ps(1000, now, 0),
            1000 * UNMEASURED_PS_PER_BYTE
        );
    }

    #[test]
    fn a_ring_is_idle_when_empty_and_its_reader_done() {
        let now = 1_000_000_000;
        let mut q = TunnelQueue {
            enq_bytes: 3000,
            deq_bytes: 3000,
            last_deq_ns: now - 1000,
            last_len: 1500,
            drain: Drain {
                ps_per_byte: 1000,
                ..Drain::default()
            },
            ..TunnelQueue::default()
        };
        // Read 1 us ago, 1.5 us of work at 1 ns per byte: still on it.
        assert!(!q.idle(now));
        assert!(q.idle(now + 500));
        // Bytes waiting: not idle, however long ago the last read.
        q.enq_bytes += 100;
        assert!(!q.idle(now + 1_000_000));
    }

    #[test]
    fn counters_behind_a_resync_never_underflow() {
        let q = Snapshot {
            enq_bytes: 10,
            deq_bytes: 20,
            ..Snapshot::default()
        };
        assert_eq!(q.backlog(), 0);
    }
}
