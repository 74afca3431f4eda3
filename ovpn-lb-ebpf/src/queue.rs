//! Ring accounting for earliest-departure spraying (the model:
//! `ovpn_lb_common::queue`). Two raw tracepoints, global to the host: every
//! packet any device transmits and every packet the kernel frees pass
//! through them, so both keep to our network namespace and our tunnels
//! before they touch anything. (fentry on `tun_net_xmit` and `tun_do_read`
//! would be the direct hooks; raw tracepoints are what kernels without
//! tracing-program support still allow.)
//!
//! Kernel memory is read with `bpf_probe_read_kernel` at offsets the loader
//! took from the running kernel's BTF (`KERNEL_LAYOUT`): a wrong offset
//! gives a wrong figure, never a fault.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    programs::RawTracePointContext,
};
use ovpn_lb_common::queue::{KernelLayout, TunnelQueue, service_ns};

use crate::maps::{KERNEL_LAYOUT, TUNNEL_QUEUES, tunnel_by_if};

/// `NET_XMIT_SUCCESS` (== `NETDEV_TX_OK`): the device took the packet.
const XMIT_SUCCESS: u64 = 0;
/// A packet length field is 32 bits; the rest of the argument register is
/// not ours to trust.
const LEN_MASK: u64 = 0xffff_ffff;

/// Reads a `T` at kernel address `addr`.
#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
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
    // aligned 8-byte loads and stores are single instructions.
    unsafe { core::ptr::read_volatile(field) }
}

#[inline(always)]
fn store(field: *mut u64, value: u64) {
    // SAFETY: as in `load`.
    unsafe { core::ptr::write_volatile(field, value) }
}

/// Tunnel id of `dev` (a `struct net_device *`) if it is one of our tunnels.
#[inline(always)]
fn tunnel_of(layout: &KernelLayout, dev: u64) -> Option<u32> {
    if dev == 0 {
        return None;
    }
    let net: u64 = read(dev + u64::from(layout.dev_net))?;
    let netns: u32 = read(net + u64::from(layout.net_inum))?;
    if netns != layout.netns {
        return None;
    }
    tunnel_by_if(read(dev + u64::from(layout.dev_ifindex))?)
}

/// The ring of a tun device (a `struct ptr_ring *`): its single queue's.
#[inline(always)]
fn ring_of(layout: &KernelLayout, dev: u64) -> Option<u64> {
    let tun = dev + u64::from(layout.dev_priv);
    let tfile: u64 = read(tun + u64::from(layout.tun_tfiles))?;
    (tfile != 0).then_some(tfile + u64::from(layout.tfile_tx_ring))
}

/// The layout, if the loader has switched the accounting on.
#[inline(always)]
fn layout() -> Option<&'static KernelLayout> {
    KERNEL_LAYOUT.get(0).filter(|l| l.netns != 0)
}

/// `net_dev_xmit(skb, rc, dev, skb_len)`, after a device's transmit
/// function: for a tun device, the packet is in its ring (rc 0) or was
/// dropped because the ring was full.
#[inline(always)]
pub fn enqueued(ctx: &RawTracePointContext) {
    let Some(layout) = layout() else {
        return;
    };
    let dev: u64 = ctx.arg(2);
    let Some(id) = tunnel_of(layout, dev) else {
        return;
    };
    let Some(q) = TUNNEL_QUEUES.get_ptr_mut(id) else {
        return;
    };
    let rc: u64 = ctx.arg(1);
    let len: u64 = ctx.arg(3);
    // SAFETY: `q` points into a map value, live for the program's run; its
    // fields are only ever touched whole (`load`, `store`, `add`), as
    // enqueues on other CPUs and the tunnel's reader write them too.
    unsafe {
        if rc & LEN_MASK != XMIT_SUCCESS {
            add(&raw mut (*q).ring_full, 1);
            return;
        }
        store(&raw mut (*q).last_enq_ns, bpf_ktime_get_ns());
        add(&raw mut (*q).enq_bytes, len & LEN_MASK);
        add(&raw mut (*q).enq_packets, 1);
        // The producer index once this packet is counted (the tracepoint
        // runs after the produce): the dequeue side's proof that it has
        // seen every count.
        if let Some(ring) = ring_of(layout, dev)
            && let Some(producer) = read::<u32>(ring + u64::from(layout.ring_producer))
        {
            store(&raw mut (*q).counted_producer, u64::from(producer));
        }
    }
}

/// `consume_skb(skb, location)`: with `location` inside `tun_do_read`,
/// OpenVPN has just read `skb` out of a tun device's ring.
#[inline(always)]
pub fn dequeued(ctx: &RawTracePointContext) {
    let Some(layout) = layout() else {
        return;
    };
    // Cheapest test first: this runs for every packet the host frees.
    let location: u64 = ctx.arg(1);
    if location < layout.read_start || location >= layout.read_end {
        return;
    }
    let skb: u64 = ctx.arg(0);
    let Some(dev) = read::<u64>(skb + u64::from(layout.skb_dev)) else {
        return;
    };
    let Some(id) = tunnel_of(layout, dev) else {
        return;
    };
    let (Some(len), Some(ring), Some(q)) = (
        read::<u32>(skb + u64::from(layout.skb_len)),
        ring_of(layout, dev),
        TUNNEL_QUEUES.get_ptr_mut(id),
    ) else {
        return;
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the map value lives for the program's run. The tunnel's one
    // reader thread runs this, one read at a time, so it is the only writer
    // of the dequeue fields; the fields other CPUs write are only loaded
    // and stored whole (`load`, `store`, `add`).
    let q: &mut TunnelQueue = unsafe { &mut *q };
    let bytes = u64::from(len);
    if let Some(ns) = service_ns(q.backlogged != 0, q.last_deq_ns, now) {
        q.drain.record(bytes, ns);
    }
    q.deq_bytes += bytes;
    q.deq_packets += 1;
    q.last_deq_ns = now;
    q.last_len = bytes;
    resync(layout, q, ring);
}

/// After a read: is the ring empty? Then every byte counted in has been
/// read, and the counters are set to agree. The enqueue count lands just
/// after the packet is in the ring, so a quick reader can read a packet
/// before its bytes are counted; without this the backlog would drift up.
#[inline(always)]
fn resync(layout: &KernelLayout, q: &mut TunnelQueue, ring: u64) {
    // In this order: the producer index of the last count, the bytes
    // counted, then the ring. Equal producer indexes mean every packet
    // produced so far is in the bytes read here.
    let counted = load(&raw const q.counted_producer);
    let enq = load(&raw const q.enq_bytes);
    let head: Option<u32> = read(ring + u64::from(layout.ring_consumer_head));
    let queue: Option<u64> = read(ring + u64::from(layout.ring_queue));
    let (Some(head), Some(queue)) = (head, queue) else {
        return;
    };
    if queue == 0 {
        return;
    }
    let Some(next) = read::<u64>(queue + u64::from(head) * 8) else {
        return;
    };
    if next != 0 {
        q.backlogged = 1;
        return;
    }
    q.backlogged = 0;
    let producer: Option<u32> = read(ring + u64::from(layout.ring_producer));
    if producer.map(u64::from) != Some(counted) {
        // A produce not yet counted: leave it to a later read.
        return;
    }
    if q.deq_bytes != enq {
        q.resyncs += 1;
        q.resync_bytes += q.deq_bytes.abs_diff(enq);
        q.deq_bytes = enq;
    }
    q.deq_packets = load(&raw const q.enq_packets);
}
