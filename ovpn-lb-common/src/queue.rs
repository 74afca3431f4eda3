//! Earliest departure: which tunnel a packet would leave by first.
//!
//! Each tunnel device's transmit ring is the queue its OpenVPN drains, one
//! packet at a time, as fast as it can encrypt and send (or as its shaper or
//! link lets it). Tracing programs account every ring: packets and bytes in
//! when the kernel queues a packet into the device, out when OpenVPN reads
//! one. Their difference is the backlog. How fast each reader drains is
//! learnt from reads that found work waiting: the time from one read to the
//! next while the ring stayed non-empty. Time the reader spent stalled with
//! work waiting counts; a read after the ring ran empty does not, as its
//! wait is the reader's wake-up, a fixed cost that would read as a huge cost
//! per byte for a small packet (the probes of an idle tunnel).
//!
//! A packet put on tunnel `k` now is read at about
//! `busy_k + (backlog_k + len) × cost_k`, where `busy_k` is what is left of
//! the packet OpenVPN is holding (read `last_len` bytes ago, at the same
//! cost per byte). `len` is what the packet becomes in the ring: a GSO
//! packet is `gso_segs` packets there, each with its own headers. The LAN
//! program picks the tunnel with the smallest figure; tunnels within the
//! packet's own drain time of it tie, and ties rotate. Spraying by it
//! keeps every tunnel's queueing delay about equal, so one flow's packets
//! arrive in the order they were sent, and a slower tunnel gets
//! proportionally fewer packets without any configured weight.
//!
//! A tunnel leaves the pick at once when its ring refused a packet (full)
//! since its reader last read, or when packets queued up and its reader has
//! not read for [`STALL_NS`] past the packet it holds (an OpenVPN hung or
//! paused): no probe is needed to see that, and no loader. Its next read
//! brings it back.
//!
//! The record's layout keeps the writers apart: the enqueue side is one
//! cache line that any CPU adds to (one atomic add per packet), the
//! dequeue side two lines that only the tunnel's one reader writes. All
//! tunnels' records are one map value, so a packet's pick costs one lookup.
//!
//! Everything here is pure arithmetic on one tunnel's figures, shared by the
//! BPF programs (which own the state) and the loader (which reports it).

use crate::maps::{MAX_TUNNELS, programs};

/// A drain rate sample covers at least this much busy time: shorter windows
/// measure the reader's burstiness, not its rate.
pub const RATE_WINDOW_NS: u64 = 20_000_000;
/// Weight of a new sample in the smoothed cost: 1/2^`RATE_GAIN_SHIFT`.
pub const RATE_GAIN_SHIFT: u32 = 2;
/// A sample may raise the smoothed cost at most this many times: one stall
/// (a burst of retransmits at the far end, a pause of the reader) must not
/// lock a tunnel out, since a tunnel priced out gets no packets and so no
/// new samples.
pub const MAX_RAISE: u64 = 4;
/// Cost per byte of a reader never measured: 10 ns per byte (100 MB/s),
/// taken until its first sample.
pub const UNMEASURED_PS_PER_BYTE: u64 = 10_000;
/// A reader that has not read for this long past the packet it holds, while
/// [`STALL_PACKETS`] or more were queued since its last read, has stopped
/// (hung, paused, or its OpenVPN gone). Longer than the off-CPU stretches
/// of an OpenVPN held to a CPU quota (under 10 ms with a 10 ms period).
pub const STALL_NS: u64 = 10_000_000;
/// Packets queued since the last read before a silent reader counts as
/// stopped: one could be a read the accounting has not seen yet.
pub const STALL_PACKETS: u64 = 2;
/// A tunnel that carried no data and had no drain sample for this long is
/// starved: priced too high (a reader slowed for a while by a busy CPU,
/// whose samples each raise the estimate up to [`MAX_RAISE`] times), it
/// gets no packets, so no backlog and no new samples. While other tunnels
/// are measured busy, each of its reads (its probes) after this long takes
/// a quarter off its estimate, never below the fastest busy tunnel's: it
/// then gets packets again, and if it really is slow, their backlog
/// measures it at once. (All idle, or it carrying data, nothing changes.)
pub const STALE_NS: u64 = 200_000_000;
/// A read of at least this many bytes is data (a probe is 76).
pub const DATA_BYTES: u64 = 256;
/// Tunnels the LAN program compares for every packet; with more healthy
/// tunnels it compares two at random and the one it picked last (the power
/// of two choices, with memory).
pub const SCAN_TUNNELS: usize = 8;

/// Bits of a packed ring counter that count bytes; the bits above count
/// packets. A packet of `len` bytes adds [`count`]`(len)`, so one atomic add
/// counts both, and the difference of two counters is the packets and
/// bytes between them (as long as fewer than 2^40 bytes lie between).
pub const BYTE_BITS: u32 = 40;
const BYTE_MASK: u64 = (1 << BYTE_BITS) - 1;

/// What one packet of `len` bytes adds to a packed counter.
#[inline(always)]
#[must_use]
pub const fn count(len: u64) -> u64 {
    (1 << BYTE_BITS) | (len & BYTE_MASK)
}

/// Packets and bytes counted in `to` and not in `from` (both packed); none
/// where `from` is ahead (a read counted before its own enqueue). Packets
/// counted in at one length and out at another can leave more packets but
/// fewer bytes: those bytes borrow from the packets' half, and read as
/// none, not as a terabyte waiting.
#[inline(always)]
#[must_use]
pub const fn between(from: u64, to: u64) -> Packets {
    let d = to.wrapping_sub(from);
    #[expect(clippy::cast_possible_wrap, reason = "the sign is the point")]
    if d as i64 <= 0 {
        return Packets {
            packets: 0,
            bytes: 0,
        };
    }
    let (packets, bytes) = (d >> BYTE_BITS, d & BYTE_MASK);
    if bytes >= 1 << (BYTE_BITS - 1) {
        Packets {
            packets: packets + 1,
            bytes: 0,
        }
    } else {
        Packets { packets, bytes }
    }
}

/// The packets and bytes a packed counter holds since it was 0 (packets
/// modulo 2^24, bytes modulo 2^40).
#[inline(always)]
#[must_use]
pub const fn unpack(counter: u64) -> Packets {
    Packets {
        packets: counter >> BYTE_BITS,
        bytes: counter & BYTE_MASK,
    }
}

/// A number of packets and their bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Packets {
    pub packets: u64,
    pub bytes: u64,
}

/// The enqueue side of a tunnel's ring: one cache line, written by the
/// enqueue programs from any CPU with atomic adds only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Enqueued {
    /// Packets and bytes the kernel queued into the ring, packed ([`count`]).
    pub queued: u64,
    /// Packets the device refused (its ring was full): dropped by the kernel.
    pub refused: u64,
    pub pad: [u64; 6],
}

/// The dequeue side: two cache lines, written only by the tunnel's reader
/// (its OpenVPN's one thread, through the dequeue program). The first line
/// holds what the LAN program reads to price a packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dequeued {
    /// Packets and bytes OpenVPN read out of the ring, packed ([`count`]).
    pub read: u64,
    /// Until when the reader is busy with the packet it read last, at its
    /// cost per byte.
    pub busy_until_ns: u64,
    /// The cost per byte to plan with, ps: the drain estimate, or
    /// [`UNMEASURED_PS_PER_BYTE`] before the first (0 in a fresh record
    /// means the same).
    pub cost_ps: u64,
    /// `Enqueued::queued` as of the last read: what queued up since.
    pub queued_at_read: u64,
    /// After this a reader that has not read again, while packets queued
    /// up, has stopped ([`STALL_NS`] past `busy_until_ns`).
    pub stalled_after_ns: u64,
    /// `Enqueued::refused` as of the last read: a refusal since means the
    /// ring filled up and the reader has not read since.
    pub refused_at_read: u64,
    /// When OpenVPN last read a packet, and its length.
    pub last_read_ns: u64,
    pub last_len: u64,
    /// 1 while the ring held more packets after the last read.
    pub backlogged: u64,
    /// Times a read found the ring empty while the counters said otherwise
    /// (a packet freed unread: the device purged, a failed copy), and the
    /// bytes set right.
    pub resyncs: u64,
    pub resync_bytes: u64,
    pub drain: Drain,
    /// When a sample last confirmed the estimate, the tunnel last carried
    /// data, or its estimate was last lowered as stale ([`STALE_NS`]).
    pub sampled_ns: u64,
}

/// The accounting of one tunnel device's transmit ring. The loader starts
/// it afresh when its tunnel gets a new device.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelQueue {
    pub enq: Enqueued,
    pub deq: Dequeued,
}

/// Every tunnel's ring accounting, the single value of `RINGS`,
/// indexed by tunnel id: one lookup per packet for all of them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rings {
    pub tunnels: [TunnelQueue; MAX_TUNNELS],
}

impl Default for Rings {
    fn default() -> Self {
        Self {
            tunnels: [TunnelQueue::default(); MAX_TUNNELS],
        }
    }
}

impl TunnelQueue {
    /// A record for a new device at `now`: nothing counted, and a reader
    /// that has not read yet is not taken for stopped before `STALL_NS`.
    #[must_use]
    pub const fn fresh(now: u64) -> Self {
        let mut q = Self {
            enq: Enqueued {
                queued: 0,
                refused: 0,
                pad: [0; 6],
            },
            deq: Dequeued {
                read: 0,
                busy_until_ns: 0,
                cost_ps: 0,
                queued_at_read: 0,
                stalled_after_ns: 0,
                refused_at_read: 0,
                last_read_ns: 0,
                last_len: 0,
                backlogged: 0,
                resyncs: 0,
                resync_bytes: 0,
                drain: Drain {
                    ps_per_byte: 0,
                    samples: 0,
                    window_bytes: 0,
                    window_ns: 0,
                },
                sampled_ns: 0,
            },
        };
        q.deq.stalled_after_ns = now + STALL_NS;
        q
    }

    /// Packets and bytes waiting in the ring.
    #[must_use]
    pub const fn backlog(&self) -> Packets {
        between(self.deq.read, self.enq.queued)
    }

    /// Whether a packet queued at `now` would be read at once: nothing
    /// waits in the ring, and the packet OpenVPN read last is done.
    #[must_use]
    pub const fn idle(&self, now: u64) -> bool {
        self.backlog().packets == 0 && now >= self.deq.busy_until_ns
    }

    /// What the LAN program reads to price a packet on this tunnel.
    #[must_use]
    pub const fn snapshot(&self) -> Snapshot {
        Snapshot {
            queued: self.enq.queued,
            refused: self.enq.refused,
            read: self.deq.read,
            busy_until_ns: self.deq.busy_until_ns,
            cost_ps: self.deq.cost_ps,
            queued_at_read: self.deq.queued_at_read,
            stalled_after_ns: self.deq.stalled_after_ns,
            refused_at_read: self.deq.refused_at_read,
        }
    }
}

/// What the reader saw of the ring right after a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// Nothing left in it.
    Empty,
    /// More packets wait.
    Backlogged,
    /// The dequeue hook could not look: judged from the counters.
    Unknown,
}

impl Dequeued {
    /// OpenVPN read a packet of `bytes` at `now`; `enq` is the enqueue side
    /// as it stands now, `after` the ring right after the read.
    #[inline(always)]
    pub fn read_one(&mut self, bytes: u64, now: u64, enq: Enqueued, after: After) {
        if let Some(ns) = service_ns(self.backlogged != 0, self.last_read_ns, now)
            && self.drain.record(bytes, ns)
        {
            self.sampled_ns = now;
        }
        if bytes >= DATA_BYTES {
            self.sampled_ns = now;
        }
        self.read = self.read.wrapping_add(count(bytes));
        let cost = Drain::planning_cost(self.drain.ps_per_byte);
        self.cost_ps = cost;
        self.last_read_ns = now;
        self.last_len = bytes;
        // ps to ns, without a division on the BPF side's hot path: this
        // runs once per read, in the reader's own system call.
        self.busy_until_ns = now + bytes * cost / 1000;
        self.stalled_after_ns = self.busy_until_ns + STALL_NS;
        self.queued_at_read = enq.queued;
        self.refused_at_read = enq.refused;
        let waiting = between(self.read, enq.queued);
        match after {
            After::Backlogged => self.backlogged = 1,
            After::Unknown => self.backlogged = u64::from(waiting.packets != 0),
            After::Empty => {
                self.backlogged = 0;
                // Everything produced has been read. More packets counted
                // in than out is packets freed unread (a purge, a failed
                // copy), and as many with other bytes a length counted
                // differently: set right. (Fewer is an enqueue not counted
                // yet: it will be.)
                let ahead = between(enq.queued, self.read);
                if waiting.packets != 0 || (ahead.packets == 0 && ahead.bytes + waiting.bytes != 0)
                {
                    self.resyncs += 1;
                    self.resync_bytes += waiting.bytes + ahead.bytes;
                    self.read = enq.queued;
                }
            }
        }
    }
}

impl Dequeued {
    /// Whether the drain estimate is stale at `now` ([`STALE_NS`]).
    #[inline(always)]
    #[must_use]
    pub const fn stale(&self, now: u64) -> bool {
        self.drain.ps_per_byte != 0 && now.saturating_sub(self.sampled_ns) > STALE_NS
    }

    /// A stale estimate a quarter lower, never below `fastest` (the lowest
    /// cost per byte of a tunnel measured busy lately; 0 for none, and
    /// then unchanged).
    #[inline(always)]
    pub const fn catch_up(&mut self, fastest: u64, now: u64) {
        let lowered = self.drain.ps_per_byte - (self.drain.ps_per_byte >> 2);
        if fastest != 0 && fastest < self.drain.ps_per_byte {
            self.drain.ps_per_byte = if lowered > fastest { lowered } else { fastest };
        }
        self.cost_ps = Drain::planning_cost(self.drain.ps_per_byte);
        self.sampled_ns = now;
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
/// sample: only when the previous read, at `last_read_ns`, left work waiting.
#[inline(always)]
#[must_use]
pub const fn service_ns(backlogged: bool, last_read_ns: u64, now: u64) -> Option<u64> {
    if backlogged && last_read_ns != 0 && now > last_read_ns {
        Some(now - last_read_ns)
    } else {
        None
    }
}

/// What the LAN program reads of a tunnel's record to price a packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub queued: u64,
    pub refused: u64,
    pub read: u64,
    pub busy_until_ns: u64,
    pub cost_ps: u64,
    pub queued_at_read: u64,
    pub stalled_after_ns: u64,
    pub refused_at_read: u64,
}

impl Snapshot {
    /// Whether the tunnel is out of the pick at `now`: its ring refused a
    /// packet since its reader last read, or packets queued up and its
    /// reader has not read for [`STALL_NS`] past the packet it holds.
    #[inline(always)]
    #[must_use]
    pub const fn stopped(&self, now: u64) -> bool {
        self.refused != self.refused_at_read
            || (now > self.stalled_after_ns
                && between(self.queued_at_read, self.queued).packets >= STALL_PACKETS)
    }

    /// When a packet that is `len` bytes in the ring, put on this tunnel at
    /// `now`, would be read, in picoseconds from now (`path_ns` is the
    /// tunnel's extra path delay over the fastest tunnel).
    #[inline(always)]
    #[must_use]
    pub const fn departure_ps(&self, len: u64, now: u64, path_ns: u64) -> u64 {
        let cost = Drain::planning_cost(self.cost_ps);
        let busy_ns = self.busy_until_ns.saturating_sub(now);
        let backlog = between(self.read, self.queued).bytes;
        (busy_ns + path_ns) * 1000 + (backlog + len) * cost
    }

    /// How the LAN program ranks this tunnel for the packet: its departure,
    /// [`NEVER`] while it is stopped.
    #[inline(always)]
    #[must_use]
    pub const fn departure(&self, len: u64, now: u64, path_ns: u64) -> u64 {
        if self.stopped(now) {
            return NEVER;
        }
        self.departure_ps(len, now, path_ns)
    }

    /// How much later than the earliest a departure may be and still count
    /// as a tie, for a packet of `len` ring bytes on this (the earliest)
    /// tunnel: the packet's own drain time. Ties rotate over the tunnels,
    /// so a merged packet (tens of kilobytes) goes round the tunnels whose
    /// queues are within its own size of each other, and idle tunnels take
    /// turns, instead of one tunnel, a hair ahead by its estimate, taking
    /// burst after burst.
    #[inline(always)]
    #[must_use]
    pub const fn tie_ps(&self, len: u64) -> u64 {
        len * Drain::planning_cost(self.cost_ps)
    }
}

/// The departure of a tunnel out of the pick: stopped, or not compared.
pub const NEVER: u64 = u64::MAX;

/// The tunnel the LAN program picks among the first `candidates` of
/// `departures` (ps, [`NEVER`] for none) for a packet the earliest of them
/// would take `tie_ps` to drain: the first, from position `start` round,
/// within `tie_ps` of the earliest. `None` when every one is [`NEVER`].
/// Pure, for the BPF pick and its tests.
///
/// `candidates` apart from the slice's length: the BPF pick passes its
/// whole array and the count read opaquely, so the index is checked
/// against the array's constant length (Linux 6.1's verifier bounds a
/// stack index only by a constant, not by another register).
#[inline(always)]
#[must_use]
pub fn rotate_among_ties(
    departures: &[u64],
    candidates: usize,
    earliest: u64,
    tie_ps: u64,
    start: usize,
) -> Option<usize> {
    if earliest == NEVER {
        return None;
    }
    let n = candidates;
    let bound = earliest.saturating_add(tie_ps);
    let mut index = if start < n { start } else { 0 };
    for _ in 0..SCAN_TUNNELS {
        if index >= n {
            break;
        }
        match departures.get(index) {
            Some(&d) if d <= bound => return Some(index),
            Some(_) => {}
            None => break,
        }
        index += 1;
        if index == n {
            index = 0;
        }
    }
    None
}

/// Which hooks account the rings, best first: the loader tries each in
/// turn and says which runs.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RingHooks {
    /// `fexit` on `tun_do_read` (the exact ring and bytes of each read) and
    /// on `tun_xdp_xmit` (XDP frames into a TAP device), `tp_btf` on
    /// `net_dev_xmit`: typed loads, only tun traffic pays more than a
    /// compare.
    Fexit = 1,
    /// `tp_btf` on `net_dev_xmit` and `consume_skb` (every freed packet
    /// pays a compare of the caller's address): kernels without
    /// trampolines, or a tun module whose functions cannot be traced.
    BtfTracepoint = 2,
    /// Raw tracepoints on the same two, every field read with
    /// `bpf_probe_read_kernel`: what kernels without typed tracing allow.
    RawTracepoint = 3,
}

impl RingHooks {
    /// The programs that account the rings with this set: all of them
    /// run, or the set does not.
    #[must_use]
    pub const fn programs(self) -> &'static [programs::Tracing] {
        use programs::{
            RING_ENQUEUE, RING_ENQUEUE_RAW, RING_READ, RING_READ_CONSUMED, RING_READ_CONSUMED_RAW,
        };
        match self {
            RingHooks::Fexit => &[RING_ENQUEUE, RING_READ],
            RingHooks::BtfTracepoint => &[RING_ENQUEUE, RING_READ_CONSUMED],
            RingHooks::RawTracepoint => &[RING_ENQUEUE_RAW, RING_READ_CONSUMED_RAW],
        }
    }

    /// Programs the set adds where the kernel takes them: `fexit` on
    /// `tun_xdp_xmit` counts XDP frames sent into a TAP device, which only
    /// the XDP hook sends. Older verifiers refuse it (5.15: "R1 type=ctx
    /// expected=fp") while taking the rest of the set, and the tc hook's
    /// packet spray does without it.
    #[must_use]
    pub const fn extras(self) -> &'static [programs::Tracing] {
        match self {
            RingHooks::Fexit => &[programs::RING_ENQUEUE_XDP],
            RingHooks::BtfTracepoint | RingHooks::RawTracepoint => &[],
        }
    }

    /// Best first.
    pub const ALL: [Self; 3] = [Self::Fexit, Self::BtfTracepoint, Self::RawTracepoint];

    /// As the log, `status`, `doctor` and the metrics name it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Fexit => "fexit",
            Self::BtfTracepoint => "tp_btf",
            Self::RawTracepoint => "raw_tp",
        }
    }

    /// By name, as `OVPN_LB_RING_HOOKS` gives it.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.name() == name)
    }
}

/// An entry of `RING_SLOTS` (the enqueue programs' ifindex -> tunnel id
/// table): `ifindex << 32 | id`, one word so that a reader never sees half
/// of one entry and half of another. Slot `ifindex % RING_SLOTS`.
pub mod slot {
    /// Entries in the table.
    pub const SLOTS: usize = 1024;
    /// The id half of a slot two tunnels' devices share: look the ifindex
    /// up in `TUNNEL_BY_IF` instead.
    pub const SHARED: u32 = u32::MAX;

    /// The slot of device `ifindex`.
    #[inline(always)]
    #[must_use]
    pub const fn of(ifindex: u32) -> usize {
        ifindex as usize & (SLOTS - 1)
    }

    /// An entry naming tunnel `id` for device `ifindex`.
    #[inline(always)]
    #[must_use]
    pub const fn entry(ifindex: u32, id: u32) -> u64 {
        ((ifindex as u64) << 32) | id as u64
    }

    /// The tunnel id `entry` gives for device `ifindex`: `None` for another
    /// device's entry (or none), `Some(SHARED)` for a shared slot (which
    /// names no device).
    #[inline(always)]
    #[must_use]
    pub const fn id(entry: u64, ifindex: u32) -> Option<u32> {
        #[expect(clippy::cast_possible_truncation, reason = "the halves")]
        let (device, id) = ((entry >> 32) as u32, entry as u32);
        if id == SHARED || (device == ifindex && ifindex != 0) {
            Some(id)
        } else {
            None
        }
    }
}

/// Where the tracing programs find what they read in kernel memory: struct
/// offsets from the running kernel's BTF, the addresses of the tun
/// functions they recognise, and our network namespace. The loader writes
/// it into the object's read-only data before loading (`RING_LAYOUT`): the
/// verifier then knows every offset as a constant, which typed loads need.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    /// Inode of our network namespace: the programs see every device on the
    /// host and keep to ours.
    pub netns: u32,
    /// `sk_buff.len`, `sk_buff.dev`.
    pub skb_len: u32,
    pub skb_dev: u32,
    /// `net_device.ifindex`, `net_device.nd_net`, `net_device.netdev_ops`.
    pub dev_ifindex: u32,
    pub dev_net: u32,
    pub dev_ops: u32,
    /// `net_device_ops.ndo_start_xmit`.
    pub ops_start_xmit: u32,
    /// `net.ns.inum`.
    pub net_inum: u32,
    /// `netdev_priv()`: the size of `net_device`, aligned to 32. The private
    /// area of a tun device is its `tun_struct`.
    pub dev_priv: u32,
    /// `tun_struct.tfiles` (the queue a single-queue device's reader owns
    /// is `tfiles[0]`), `tun_struct.dev` and `tun_file.tx_ring`.
    pub tun_tfiles: u32,
    pub tun_dev: u32,
    pub tfile_tx_ring: u32,
    /// `ptr_ring.consumer_head`, `.queue`.
    pub ring_consumer_head: u32,
    pub ring_queue: u32,
    /// `xdp_frame.len`.
    pub xdp_frame_len: u32,
    pub pad: u32,
    /// `tun_net_xmit`: a device whose transmit function it is, is a tun
    /// device (tun or TAP).
    pub tun_xmit: u64,
    /// `[read_start, read_end)`: `tun_do_read`, where OpenVPN's read frees
    /// the packet it copied out (the `consume_skb` hooks).
    pub read_start: u64,
    pub read_end: u64,
}

const _: () = assert!(size_of::<Enqueued>() == 64);
const _: () = assert!(size_of::<Dequeued>() == 128);
const _: () = assert!(size_of::<TunnelQueue>() == 192);
const _: () = assert!(size_of::<Rings>() == 192 * MAX_TUNNELS);
const _: () = assert!(size_of::<Drain>() == 32);
const _: () = assert!(size_of::<KernelLayout>() == 16 * 4 + 24);
const _: () = assert!(slot::SLOTS.is_power_of_two());

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C) with integer fields and no implicit padding (the size
    // assertions above would catch any).
    unsafe impl aya::Pod for super::TunnelQueue {}
    unsafe impl aya::Pod for super::Rings {}
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

    #[test]
    fn packed_counters_count_packets_and_bytes_and_wrap() {
        let mut c = u64::MAX - 3 * count(0);
        let start = c;
        for len in [1500, 76, 64_000] {
            c = c.wrapping_add(count(len));
        }
        assert_eq!(
            between(start, c),
            Packets {
                packets: 3,
                bytes: 65_576
            }
        );
        assert_eq!(unpack(count(1500) + count(76)).packets, 2);
        assert_eq!(unpack(count(1500) + count(76)).bytes, 1576);
        // The reader ahead of the count of its own packet: nothing waits.
        assert_eq!(between(c, start), Packets::default());
        assert_eq!(between(c, c), Packets::default());
        // One packet more counted in, with fewer bytes than counted out:
        // a packet, no bytes (not 2^40 of them).
        let out = 10 * count(1500);
        let into = 9 * count(1500) + 2 * count(100);
        assert_eq!(
            between(out, into),
            Packets {
                packets: 1,
                bytes: 0
            }
        );
    }

    const NOW: u64 = 1_000_000_000;

    /// `backlog` bytes (in `backlog / 1000` packets, at least one) waiting,
    /// read at `cost_ps`, the reader done with its last packet.
    fn queue(backlog: u64, cost_ps: u64) -> Snapshot {
        let read = 10 * count(1000);
        let mut queued = read;
        let mut left = backlog;
        while left > 0 {
            let len = left.min(1000);
            queued += count(len);
            left -= len;
        }
        Snapshot {
            queued,
            read,
            cost_ps,
            queued_at_read: queued,
            stalled_after_ns: NOW + STALL_NS,
            ..Snapshot::default()
        }
    }

    #[test]
    fn the_faster_drain_wins_at_equal_backlog() {
        let slow = queue(3000, 2000).departure_ps(1500, NOW, 0);
        let fast = queue(3000, 1000).departure_ps(1500, NOW, 0);
        assert_eq!(fast, 4500 * 1000);
        assert_eq!(slow, 4500 * 2000);
    }

    #[test]
    fn backlog_and_rate_trade_off() {
        // Twice the rate with twice the backlog plus one packet: even.
        let a = queue(3000, 1000).departure_ps(1500, NOW, 0);
        let b = queue(750, 2000).departure_ps(1500, NOW, 0);
        assert_eq!(a, b);
    }

    #[test]
    fn the_held_packet_counts_until_it_is_done() {
        let mut q = queue(0, 1000);
        // Busy 0.5 µs more with the packet it read.
        q.busy_until_ns = NOW + 500;
        assert_eq!(q.departure_ps(100, NOW, 0), 500_000 + 100_000);
        // Done: nothing left of it.
        q.busy_until_ns = NOW - 1;
        assert_eq!(q.departure_ps(100, NOW, 0), 100_000);
    }

    #[test]
    fn path_delay_adds_to_the_wait() {
        assert_eq!(
            queue(0, 1000).departure_ps(100, NOW, 2000),
            2_000_000 + 100_000
        );
    }

    #[test]
    fn a_backlog_counts_however_long_ago_anything_was_queued() {
        // 64 KB still waiting on a 1 MB/s reader: 64 ms, not 0 because the
        // last enqueue was long ago (the old retry rule that put a second
        // GSO burst behind the first).
        let q = queue(64_000, 1_000_000);
        assert_eq!(
            q.departure_ps(1500, NOW + 30_000_000, 0),
            65_500 * 1_000_000
        );
    }

    #[test]
    fn a_reader_that_stopped_is_out_of_the_pick() {
        let q = queue(3000, 1000);
        // Packets queued since its last read; within STALL_NS it is priced.
        let mut stalled = q;
        stalled.queued_at_read = q.read;
        assert_ne!(stalled.departure(1500, NOW, 0), NEVER);
        // Past it, out.
        assert_eq!(stalled.departure(1500, NOW + STALL_NS + 1, 0), NEVER);
        // One packet queued since: maybe a read not counted yet; still in.
        let mut one = q;
        one.queued_at_read = q.queued - count(1000);
        assert_ne!(one.departure(1500, NOW + STALL_NS + 1, 0), NEVER);
        // An idle reader is never stopped, however long ago it read.
        assert!(!queue(0, 1000).stopped(NOW + 1_000 * STALL_NS));
    }

    #[test]
    fn a_refused_packet_takes_the_tunnel_out_until_its_next_read() {
        let mut q = queue(0, 1000);
        q.refused = 1;
        assert_eq!(q.departure(100, NOW, 0), NEVER);
        let mut deq = Dequeued::default();
        let enq = Enqueued {
            queued: q.queued,
            refused: 1,
            ..Enqueued::default()
        };
        deq.read_one(1000, NOW, enq, After::Backlogged);
        assert_eq!(deq.refused_at_read, 1);
    }

    #[test]
    fn ties_within_the_packets_own_drain_time_rotate() {
        // A 1000-byte packet at 1 ns per byte: ties within 1 µs.
        let tie = queue(0, 1000).tie_ps(1000);
        assert_eq!(tie, 1_000_000);
        let deps = [5_000_000, 5_500_000, 7_000_000, NEVER];
        // 0 and 1 tie; 2 is 2 µs behind; 3 is out.
        let picks: std::vec::Vec<_> = (0..4)
            .map(|start| rotate_among_ties(&deps, 4, 5_000_000, tie, start))
            .collect();
        assert_eq!(picks, [Some(0), Some(1), Some(0), Some(0)]);
        // A merged packet of 3000 bytes: 2 is within its drain time too.
        let tie = queue(0, 1000).tie_ps(3000);
        assert_eq!(rotate_among_ties(&deps, 4, 5_000_000, tie, 2), Some(2));
        // None compared in: none.
        assert_eq!(rotate_among_ties(&[NEVER; 3], 3, NEVER, tie, 0), None);
        // A start past the candidates starts over.
        assert_eq!(rotate_among_ties(&deps, 2, 5_000_000, 0, 7), Some(0));
        // A count past the slice reads nothing past it: the scan ends there.
        assert_eq!(rotate_among_ties(&deps[..1], 4, 5_000_000, 0, 0), Some(0));
        assert_eq!(rotate_among_ties(&deps[..1], 4, 5_000_000, 0, 1), None);
    }

    #[test]
    fn an_unmeasured_reader_is_priced_at_the_default() {
        assert_eq!(
            queue(0, 0).departure_ps(1000, NOW, 0),
            1000 * UNMEASURED_PS_PER_BYTE
        );
    }

    #[test]
    fn a_read_updates_what_the_pick_reads() {
        let mut deq = Dequeued::default();
        let enq = Enqueued {
            queued: 2 * count(1500),
            ..Enqueued::default()
        };
        deq.read_one(1500, NOW, enq, After::Backlogged);
        assert_eq!(between(deq.read, enq.queued).packets, 1);
        assert_eq!(deq.cost_ps, UNMEASURED_PS_PER_BYTE);
        assert_eq!(deq.busy_until_ns, NOW + 15_000);
        assert_eq!(deq.stalled_after_ns, NOW + 15_000 + STALL_NS);
        assert_eq!(deq.queued_at_read, enq.queued);
        // The next read, 1 ms later with work waiting, is a drain sample.
        deq.read_one(1500, NOW + 1_000_000, enq, After::Empty);
        assert_eq!(deq.drain.window_ns, 1_000_000);
        assert_eq!(deq.backlogged, 0);
        assert_eq!(deq.resyncs, 0);
    }

    #[test]
    fn an_empty_ring_sets_the_counters_right_when_packets_were_freed_unread() {
        // Three packets counted in, one read: the ring is empty after it,
        // so two were freed unread (a purge).
        let enq = Enqueued {
            queued: 3 * count(1000),
            ..Enqueued::default()
        };
        let mut deq = Dequeued::default();
        deq.read_one(1000, NOW, enq, After::Empty);
        assert_eq!(deq.read, enq.queued);
        assert_eq!((deq.resyncs, deq.resync_bytes), (1, 2000));
        // As many packets in as out, bytes out of step: set right.
        let mut drift = Dequeued::default();
        let enq = Enqueued {
            queued: count(1000) + count(200),
            ..Enqueued::default()
        };
        drift.read_one(1000, NOW, enq, After::Backlogged);
        drift.read_one(300, NOW + 1, enq, After::Empty);
        assert_eq!(
            (drift.read, drift.resyncs, drift.resync_bytes),
            (enq.queued, 1, 100)
        );
        // A read counted before its own enqueue: left alone, the count
        // lands later.
        let mut early = Dequeued::default();
        early.read_one(1000, NOW, Enqueued::default(), After::Empty);
        assert_eq!(early.read, count(1000));
        assert_eq!(early.resyncs, 0);
    }

    #[test]
    fn a_tunnel_carrying_data_is_not_stale() {
        let mut deq = Dequeued {
            drain: Drain {
                ps_per_byte: 4000,
                ..Drain::default()
            },
            ..Dequeued::default()
        };
        // Probes only: stale after STALE_NS.
        deq.read_one(76, NOW, Enqueued::default(), After::Empty);
        assert!(deq.stale(NOW + STALE_NS + 1));
        // A data packet, though it made no sample: fed, not stale.
        deq.read_one(1500, NOW + STALE_NS, Enqueued::default(), After::Empty);
        assert!(!deq.stale(NOW + STALE_NS + 1));
    }

    #[test]
    fn a_stale_estimate_comes_down_to_the_fastest_tunnels() {
        let mut deq = Dequeued {
            drain: Drain {
                ps_per_byte: 4000,
                ..Drain::default()
            },
            sampled_ns: NOW,
            ..Dequeued::default()
        };
        assert!(!deq.stale(NOW + STALE_NS));
        assert!(deq.stale(NOW + STALE_NS + 1));
        // A quarter off, stamped: not stale again for STALE_NS.
        deq.catch_up(1000, NOW + STALE_NS + 1);
        assert_eq!((deq.drain.ps_per_byte, deq.cost_ps), (3000, 3000));
        assert!(!deq.stale(NOW + 2 * STALE_NS));
        // Never below the fastest.
        deq.catch_up(2500, NOW + 3 * STALE_NS);
        assert_eq!(deq.drain.ps_per_byte, 2500);
        deq.catch_up(2500, NOW + 5 * STALE_NS);
        assert_eq!(deq.drain.ps_per_byte, 2500);
        // No tunnel busy: unchanged.
        deq.catch_up(0, NOW + 7 * STALE_NS);
        assert_eq!(deq.drain.ps_per_byte, 2500);
        // A sample confirms the estimate afresh.
        let enq = Enqueued::default();
        let at = NOW + 6 * STALE_NS;
        deq.read_one(100, at, enq, After::Backlogged);
        deq.read_one(10_000_000, at + RATE_WINDOW_NS, enq, After::Empty);
        assert_eq!(deq.sampled_ns, at + RATE_WINDOW_NS);
        // Unmeasured: never stale.
        assert!(!Dequeued::default().stale(NOW));
    }

    #[test]
    fn a_ring_is_idle_when_empty_and_its_reader_done() {
        let mut q = TunnelQueue::fresh(NOW);
        let enq = Enqueued {
            queued: count(1500),
            ..Enqueued::default()
        };
        q.enq = enq;
        q.deq.read_one(1500, NOW, enq, After::Empty);
        // 1500 B at the default 10 ns per byte: busy 15 µs.
        assert!(!q.idle(NOW + 1000));
        assert!(q.idle(NOW + 15_000));
        // Packets waiting: not idle, however long ago the last read.
        q.enq.queued += count(100);
        assert!(!q.idle(NOW + 1_000_000_000));
    }

    #[test]
    fn a_fresh_record_gives_a_new_reader_time_to_start() {
        let mut s = TunnelQueue::fresh(NOW).snapshot();
        s.queued = 5 * count(100);
        assert!(!s.stopped(NOW + STALL_NS - 1));
        assert!(s.stopped(NOW + STALL_NS + 1));
    }

    #[test]
    fn ring_slots_name_their_device() {
        let e = slot::entry(1025, 7);
        assert_eq!(slot::of(1025), 1);
        assert_eq!(slot::id(e, 1025), Some(7));
        assert_eq!(slot::id(e, 1), None);
        assert_eq!(slot::id(0, 0), None);
        assert_eq!(
            slot::id(slot::entry(0, slot::SHARED), 9),
            Some(slot::SHARED)
        );
    }

    #[test]
    fn ring_hooks_by_name() {
        for h in RingHooks::ALL {
            assert_eq!(RingHooks::from_name(h.name()), Some(h));
        }
        assert_eq!(RingHooks::from_name("kprobe"), None);
        // No set depends on another's extra: a kernel refusing it must
        // leave every set able to run.
        for h in RingHooks::ALL {
            for e in h.extras() {
                assert!(RingHooks::ALL.iter().all(|o| !o.programs().contains(e)));
            }
        }
    }
}
