//! Ring accounting for earliest-departure spraying (the model:
//! `ovpn_lb_common::queue`): counts what enters each tunnel's ring and what
//! its OpenVPN reads out. Three sets of hooks, best first (the loader tries
//! them in turn, `RingHooks`):
//!
//! - `fexit`: `tp_btf/net_dev_xmit` counts what the kernel queued into a
//!   tun device, `fexit/tun_do_read` each read (the exact ring, from its
//!   `tun_file`, and its bytes, from the return value), `fexit/tun_xdp_xmit`
//!   the XDP frames sent into a TAP device;
//! - `tp_btf`: the same enqueue, and `tp_btf/consume_skb` with the caller
//!   inside `tun_do_read` for the reads;
//! - `raw_tp`: both as raw tracepoints, every kernel field read with
//!   `bpf_probe_read_kernel`.
//!
//! Typed (BTF) programs load kernel fields directly: the verifier checks
//! each load against the kernel's types, with the offsets known as
//! constants because the loader writes them into read-only data
//! (`RING_LAYOUT`) before the object is loaded. The transmit tracepoint
//! runs for every packet any device on the host sends, so it rules out
//! other devices first (is the device's transmit function `tun_net_xmit`?),
//! then other namespaces, and counts with one atomic add on a cache line
//! only enqueues write, no clock read.

use aya_ebpf::helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel};
use ovpn_lb_common::queue::{After, Enqueued, KernelLayout, STALE_NS, TunnelQueue, count};

use crate::maps::{RINGS, ring_tunnel};

/// Where the kernel fields are: written by the loader into the object's
/// read-only data before it loads (all zero in an object loaded without it,
/// whose tracing programs are then never attached).
#[unsafe(no_mangle)]
static RING_LAYOUT: KernelLayout = KernelLayout {
    netns: 0,
    skb_len: 0,
    skb_dev: 0,
    dev_ifindex: 0,
    dev_net: 0,
    dev_ops: 0,
    ops_start_xmit: 0,
    net_inum: 0,
    dev_priv: 0,
    tun_tfiles: 0,
    tun_dev: 0,
    tfile_tx_ring: 0,
    ring_consumer_head: 0,
    ring_queue: 0,
    xdp_frame_len: 0,
    pad: 0,
    tun_xmit: 0,
    read_start: 0,
    read_end: 0,
};

/// One field of `RING_LAYOUT`. A volatile read keeps the compiler from
/// folding the zero it sees; the verifier reads the loader's value.
#[inline(always)]
fn layout<T: Copy>(field: &T) -> T {
    // SAFETY: a reference to a field of a static.
    unsafe { core::ptr::read_volatile(field) }
}

/// `layout(field)` as a byte offset.
#[inline(always)]
fn offset(field: &u32) -> usize {
    layout(field) as usize
}

/// The `T` at `base + off` through a typed kernel pointer: a plain load,
/// which the verifier checks against the kernel's type at that offset (a
/// load through a null or stale pointer reads 0, it does not fault).
#[inline(always)]
fn field<T: Copy>(base: usize, off: usize) -> T {
    // SAFETY: only for BTF-typed programs, whose loads from kernel pointers
    // the verifier checks and the JIT guards with an exception table.
    unsafe { core::ptr::read_volatile((base + off) as *const T) }
}

/// Reads a `T` at kernel address `addr` with fault handling.
#[inline(always)]
fn probe<T>(addr: usize) -> Option<T> {
    // SAFETY: the helper copies with fault handling: any address is safe to
    // try, and a failed read is an error, not a fault.
    unsafe { bpf_probe_read_kernel(addr as *const T).ok() }
}

/// Atomic add: enqueues of one tunnel run on any CPU at once. (The BPF
/// target lacks compare-and-swap, hence `AtomicU64::fetch_add`; the
/// intrinsic compiles to `BPF_ATOMIC_ADD`.)
#[inline(always)]
fn add(counter: *mut u64, value: u64) {
    // SAFETY: `counter` points into a map value, live for the program's run.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            counter, value,
        );
    }
}

/// A field another CPU may be writing: read once, as a whole word.
#[inline(always)]
fn load(field: *const u64) -> u64 {
    // SAFETY: `field` points into a map value, live for the program's run;
    // aligned 8-byte loads are single instructions.
    unsafe { core::ptr::read_volatile(field) }
}

/// Tunnel `id`'s record.
#[inline(always)]
fn record(id: u32) -> Option<*mut TunnelQueue> {
    let rings = RINGS.get_ptr_mut(0)?;
    // SAFETY: in bounds (the mask); the map value lives for the program's run.
    Some(unsafe { &raw mut (*rings).tunnels[id as usize & (ovpn_lb_common::MAX_TUNNELS - 1)] })
}

/// The enqueue side as it stands, each word read once.
#[inline(always)]
fn enqueued_now(q: *const TunnelQueue) -> Enqueued {
    // SAFETY: `q` points into a map value, live for the program's run.
    unsafe {
        Enqueued {
            queued: load(&raw const (*q).enq.queued),
            refused: load(&raw const (*q).enq.refused),
            pad: [0; 6],
        }
    }
}

/// Counts `packets` (packed, `count`) into tunnel `id`'s ring, or `refused`
/// packets it did not take.
#[inline(always)]
fn count_in(id: u32, packets: u64, refused: u64) {
    let Some(q) = record(id) else {
        return;
    };
    // SAFETY: `q` points into a map value; these two words are only ever
    // added to, atomically.
    unsafe {
        if packets != 0 {
            add(&raw mut (*q).enq.queued, packets);
        }
        if refused != 0 {
            add(&raw mut (*q).enq.refused, refused);
        }
    }
}

/// Counts a read of `bytes` out of tunnel `id`'s ring; `after` is the ring
/// right after it.
#[inline(always)]
fn count_out(id: u32, bytes: u64, after: After) {
    let Some(q) = record(id) else {
        return;
    };
    let enq = enqueued_now(q);
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the tunnel's one reader thread runs this, one read at a time,
    // so it is the only writer of the dequeue side; the LAN program only
    // reads it.
    let deq = unsafe { &mut (*q).deq };
    deq.read_one(bytes, now, enq, after);
    if deq.stale(now) {
        deq.catch_up(fastest_busy(now), now);
    }
}

/// The lowest drain cost among the tunnels measured busy lately (0 for
/// none): a stale estimate comes down that far, and only while others are
/// busy (a tunnel starved, not all of them idle). Rare (a tunnel without a
/// sample for `STALE_NS`), so a scan of every record is fine here.
#[inline(never)]
fn fastest_busy(now: u64) -> u64 {
    let Some(rings) = RINGS.get_ptr(0) else {
        return 0;
    };
    let mut fastest = 0u64;
    for id in 0..ovpn_lb_common::MAX_TUNNELS {
        // SAFETY: in bounds; the map value lives for the program's run.
        let (cost, sampled) = unsafe {
            let deq = &raw const (*rings).tunnels[id].deq;
            (
                load(&raw const (*deq).drain.ps_per_byte),
                load(&raw const (*deq).sampled_ns),
            )
        };
        let busy = now.saturating_sub(sampled) <= STALE_NS;
        if busy && cost != 0 && (fastest == 0 || cost < fastest) {
            fastest = cost;
        }
    }
    fastest
}

/// Tunnel id of `dev` (a typed `struct net_device *`) if it is one of our
/// tunnels: in our tunnel table and in our network namespace.
#[inline(always)]
fn our_tunnel_typed(dev: usize) -> Option<u32> {
    let l = &RING_LAYOUT;
    let id = ring_tunnel(field(dev, offset(&l.dev_ifindex)))?;
    let net: usize = field(dev, offset(&l.dev_net));
    let netns: u32 = field(net, offset(&l.net_inum));
    (netns == layout(&l.netns)).then_some(id)
}

/// `net_dev_xmit(skb, rc, dev, skb_len)` as a typed tracepoint, after a
/// device's transmit function: for a tun device the packet is in its ring
/// (rc 0) or was dropped, the ring full.
#[inline(always)]
pub fn enqueued_typed(dev: usize, rc: u64, len: u64) {
    let l = &RING_LAYOUT;
    // Every device's packets pass here: the cheapest test first.
    let ops: usize = field(dev, offset(&l.dev_ops));
    let xmit: u64 = field(ops, offset(&l.ops_start_xmit));
    if xmit != layout(&l.tun_xmit) || xmit == 0 {
        return;
    }
    let Some(id) = our_tunnel_typed(dev) else {
        return;
    };
    enqueue_outcome(id, rc, len);
}

/// `NET_XMIT_SUCCESS` (== `NETDEV_TX_OK`): the device took the packet.
const XMIT_SUCCESS: u64 = 0;
/// The tracepoint's `rc` and `skb_len` are 32 bits; the rest of the
/// argument register is not ours to trust.
const LOW_32: u64 = 0xffff_ffff;

#[inline(always)]
fn enqueue_outcome(id: u32, rc: u64, len: u64) {
    if rc & LOW_32 == XMIT_SUCCESS {
        count_in(id, count(len & LOW_32), 0);
    } else {
        count_in(id, 0, 1);
    }
}

/// `tun_do_read(tun, tfile, to, noblock, ptr)` returned `ret`: OpenVPN read
/// `ret` bytes out of `tfile`'s ring (0 or less: nothing read).
#[inline(always)]
pub fn read_fexit(tun: usize, tfile: usize, ret: i64) {
    if ret <= 0 {
        return;
    }
    let l = &RING_LAYOUT;
    let dev: usize = field(tun, offset(&l.tun_dev));
    let Some(id) = our_tunnel_typed(dev) else {
        return;
    };
    let ring = offset(&l.tfile_tx_ring);
    let head: u32 = field(tfile, ring + offset(&l.ring_consumer_head));
    let queue: usize = field(tfile, ring + offset(&l.ring_queue));
    count_out(id, ret.cast_unsigned(), after_read(queue, head));
}

/// The ring after a read: the slot at its consumer head is empty (null)
/// exactly when nothing is left. (The slots are not a typed type: read
/// with the helper.)
#[inline(always)]
fn after_read(queue: usize, head: u32) -> After {
    if queue == 0 {
        return After::Unknown;
    }
    match probe::<u64>(queue + head as usize * 8) {
        Some(0) => After::Empty,
        Some(_) => After::Backlogged,
        None => After::Unknown,
    }
}

/// `tun_xdp_xmit(dev, n, frames, flags)` returned `sent`: the first `sent`
/// of the `n` XDP frames are in `dev`'s ring, the rest were refused (full).
#[inline(always)]
pub fn enqueued_xdp(dev: usize, n: u64, frames: usize, sent: i64) {
    let Some(id) = our_tunnel_typed(dev) else {
        return;
    };
    let n = n & LOW_32;
    let sent = if sent < 0 {
        0
    } else {
        sent.cast_unsigned() & LOW_32
    };
    let l = &RING_LAYOUT;
    let mut packed = 0u64;
    // `XDP_BULK_QUEUE_SIZE`: a flush sends at most 16 frames.
    for i in 0..16 {
        if i >= sent {
            break;
        }
        let Some(frame) = probe::<usize>(frames + i as usize * 8) else {
            break;
        };
        let len: u32 = probe(frame + offset(&l.xdp_frame_len)).unwrap_or(0);
        packed += count(u64::from(len));
    }
    count_in(id, packed, n.saturating_sub(sent));
}

/// `consume_skb(skb, location)` as a typed tracepoint: with `location`
/// inside `tun_do_read`, OpenVPN has just read `skb` out of a tun ring.
#[inline(always)]
pub fn read_consumed_typed(skb: usize, location: u64) {
    let l = &RING_LAYOUT;
    // Cheapest test first: this runs for every packet the host frees.
    if location < layout(&l.read_start) || location >= layout(&l.read_end) {
        return;
    }
    let dev: usize = field(skb, offset(&l.skb_dev));
    let Some(id) = our_tunnel_typed(dev) else {
        return;
    };
    let len: u32 = field(skb, offset(&l.skb_len));
    count_out(id, u64::from(len), after_read_of(dev));
}

/// The ring of a tun device (its single queue's), read with the helper:
/// the device's private area is not a typed pointer.
#[inline(always)]
fn after_read_of(dev: usize) -> After {
    let l = &RING_LAYOUT;
    let tun = dev + offset(&l.dev_priv);
    let Some(tfile) = probe::<usize>(tun + offset(&l.tun_tfiles)).filter(|&t| t != 0) else {
        return After::Unknown;
    };
    let ring = tfile + offset(&l.tfile_tx_ring);
    let (Some(head), Some(queue)) = (
        probe::<u32>(ring + offset(&l.ring_consumer_head)),
        probe::<usize>(ring + offset(&l.ring_queue)),
    ) else {
        return After::Unknown;
    };
    after_read(queue, head)
}

/// Tunnel id of `dev` (a `struct net_device *`), every field read with the
/// helper: the raw tracepoints' arguments are untyped.
#[inline(always)]
fn our_tunnel_raw(dev: usize) -> Option<u32> {
    if dev == 0 {
        return None;
    }
    let l = &RING_LAYOUT;
    let id = ring_tunnel(probe(dev + offset(&l.dev_ifindex))?)?;
    let net: usize = probe(dev + offset(&l.dev_net))?;
    let netns: u32 = probe(net + offset(&l.net_inum))?;
    (netns == layout(&l.netns)).then_some(id)
}

/// `net_dev_xmit` as a raw tracepoint.
#[inline(always)]
pub fn enqueued_raw(dev: usize, rc: u64, len: u64) {
    if let Some(id) = our_tunnel_raw(dev) {
        enqueue_outcome(id, rc, len);
    }
}

/// `consume_skb` as a raw tracepoint.
#[inline(always)]
pub fn read_consumed_raw(skb: usize, location: u64) {
    let l = &RING_LAYOUT;
    if location < layout(&l.read_start) || location >= layout(&l.read_end) {
        return;
    }
    let Some(dev) = probe::<usize>(skb + offset(&l.skb_dev)) else {
        return;
    };
    let Some(id) = our_tunnel_raw(dev) else {
        return;
    };
    let Some(len) = probe::<u32>(skb + offset(&l.skb_len)) else {
        return;
    };
    count_out(id, u64::from(len), after_read_of(dev));
}
