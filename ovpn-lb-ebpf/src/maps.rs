//! Every map the programs share with userspace. Types come from ovpn-lb-common.

use aya_ebpf::{
    btf_maps::{Array, DevMapHash, HashMap, LpmTrie, PerCpuArray, RingBuf, lpm_trie::Key},
    macros::btf_map,
};
use ovpn_lb_common::{
    MAX_TUNNELS, ReasonStats, Schedule, SiteConfig, TunnelConfig, TunnelStats,
    maps::{MAX_PREFIXES, SCHEDULE_BUFFERS},
    probe::{Event as ProbeEvent, LocalView},
    queue::{Rings, slot},
    reason::REASON_COUNT,
};

#[btf_map]
pub static SITE: Array<SiteConfig, 1> = Array::new();

/// This gateway's view of its tunnels (bit k: tunnel k usable, as far as it
/// knows by itself) and its flags, written into the answers to the far
/// gateway's probes; all zero (unknown) until the loader writes it.
#[btf_map]
pub static PROBE_VIEW: Array<LocalView, 1> = Array::new();

/// Probe reports for the loader: answers to its probes, the far gateway's
/// probes reflected. 256 KiB: over 3,000 reports, more than the per-tunnel
/// budget (`PROBE_BUDGET`) lets all 64 tunnels send in 50 ms.
#[btf_map]
pub static PROBE_EVENTS: RingBuf<ProbeEvent, { 256 * 1024 }> = RingBuf::new();

/// Per tunnel, per kind (probe, answer): when the next report is due by the
/// budget (a generic cell rate), so the far side cannot fill
/// `PROBE_EVENTS` by flooding one tunnel. Not pinned: each load starts
/// afresh.
#[btf_map]
pub static PROBE_BUDGET: Array<[u64; 2], MAX_TUNNELS> = Array::new();

#[btf_map]
pub static TUNNELS: Array<TunnelConfig, MAX_TUNNELS> = Array::new();

/// Tunnel id -> its device. The kernel deletes an entry when the device
/// goes away, so a device removed while no loader runs is noticed here.
#[btf_map]
pub static TUNNEL_DEVICES: DevMapHash<MAX_TUNNELS> = DevMapHash::new();

/// Tunnel device ifindex -> tunnel id, for the tunnel ingress program.
#[btf_map]
pub static TUNNEL_BY_IF: HashMap<u32, u32, { MAX_TUNNELS * 2 }> = HashMap::new();

/// Destinations to spray (value `route::SPRAY`) or to leave alone (`route::EXCLUDE`).
#[btf_map]
pub static REMOTE_V4: LpmTrie<[u8; 4], u32, { MAX_PREFIXES as usize }> = LpmTrie::new();

#[btf_map]
pub static REMOTE_V6: LpmTrie<[u8; 16], u32, { MAX_PREFIXES as usize }> = LpmTrie::new();

/// Our translation prefixes (value: tunnel id): replies to them are restored.
#[btf_map]
pub static OUR_XLAT_V4: LpmTrie<[u8; 4], u32, { MAX_PREFIXES as usize }> = LpmTrie::new();

#[btf_map]
pub static OUR_XLAT_V6: LpmTrie<[u8; 16], u32, { MAX_PREFIXES as usize }> = LpmTrie::new();

/// Every prefix kept off the WAN outside the tunnels (value: a `guard::*`
/// kind): our LAN, the remote prefixes, both sides' translation prefixes.
#[btf_map]
pub static GUARD_V4: LpmTrie<[u8; 4], u32, { MAX_PREFIXES as usize }> = LpmTrie::new();

#[btf_map]
pub static GUARD_V6: LpmTrie<[u8; 16], u32, { MAX_PREFIXES as usize }> = LpmTrie::new();

#[btf_map]
pub static SCHEDULES: Array<Schedule, { SCHEDULE_BUFFERS as usize }> = Array::new();

/// Which of `SCHEDULES` packets read; userspace flips it after writing the other.
#[btf_map]
pub static ACTIVE_SCHED: Array<u32, 1> = Array::new();

/// Round-robin position, one for every CPU: a flow's packets leave from
/// more than one CPU (its sender's and its ACKs'), and with a cursor per
/// CPU consecutive packets went to the same tunnel in turn (GSO flows lost
/// a third of their goodput). See [`update_shared`].
#[btf_map]
pub static SPRAY_CURSOR: Array<u32, 1> = Array::new();

/// Packet mode: the member picked last, past which the rotation over tied
/// tunnels starts next; shared by every CPU, as `SPRAY_CURSOR`.
#[btf_map]
pub static TIE_CURSOR: Array<u32, 1> = Array::new();

/// Per CPU, packet mode with more tunnels than it compares: the member
/// index it picked last, compared again with the next packet.
#[btf_map]
pub static LAST_PICK: PerCpuArray<u32, 1> = PerCpuArray::new();

/// `BPF_F_MMAPABLE`: the array's data starts on a page, so each tunnel's
/// enqueue and dequeue sides keep to their own cache lines.
const MMAPABLE: usize = 1 << 10;

/// Every tunnel ring's accounting, one value indexed by tunnel id inside.
#[btf_map]
pub static RINGS: Array<Rings, 1, MMAPABLE> = Array::new();

/// The enqueue programs' device -> tunnel table (`slot::entry`), at slot
/// `ifindex % slot::SLOTS`; a slot two tunnels share sends them to
/// `TUNNEL_BY_IF`.
#[btf_map]
pub static RING_SLOTS: Array<u64, { slot::SLOTS }> = Array::new();

#[btf_map]
pub static TUNNEL_STATS: PerCpuArray<TunnelStats, MAX_TUNNELS> = PerCpuArray::new();

#[btf_map]
pub static REASON_STATS: PerCpuArray<ReasonStats, REASON_COUNT> = PerCpuArray::new();

/// Runs `f` on a per-CPU map slot, if there is one.
#[inline(always)]
pub fn update_per_cpu<T>(slot: Option<*mut T>, f: impl FnOnce(&mut T)) {
    if let Some(slot) = slot {
        // SAFETY: the kernel hands out a pointer into this CPU's copy of the
        // value, valid for the program's run; tc and XDP programs run with
        // migration disabled and do not nest on a CPU for the same hook, so
        // nothing else writes it meanwhile, and no other reference exists.
        f(unsafe { &mut *slot });
    }
}

/// Runs `f` on a copy of a map slot every CPU shares, if there is one, and
/// stores the result: a plain load and store, no atomic. Two CPUs at once
/// may both take the same position, which repeats a tunnel once; the value
/// is always one a CPU wrote, so never out of bounds of what `f` keeps.
#[inline(always)]
pub fn update_shared(slot: Option<*mut u32>, f: impl FnOnce(&mut u32)) {
    if let Some(slot) = slot {
        // SAFETY: `slot` points into an array map value, live for the
        // program's run; aligned 4-byte loads and stores are single
        // instructions, so other CPUs see one whole value or the other.
        unsafe {
            let mut value = core::ptr::read_volatile(slot);
            f(&mut value);
            core::ptr::write_volatile(slot, value);
        }
    }
}

/// Tunnel id of the tunnel device `ifindex` for the ring accounting: its
/// slot, or where two tunnels share one, `TUNNEL_BY_IF`.
#[inline(always)]
pub fn ring_tunnel(ifindex: u32) -> Option<u32> {
    let entry = RING_SLOTS.get(slot::of(ifindex) as u32)?;
    match slot::id(*entry, ifindex)? {
        slot::SHARED => tunnel_by_if(ifindex),
        id => Some(id),
    }
}

/// Tunnel id of the tunnel device `ifindex`, if it is one.
#[inline(always)]
pub fn tunnel_by_if(ifindex: u32) -> Option<u32> {
    let id = TUNNEL_BY_IF.get_ptr(ifindex)?;
    // SAFETY: the value pointer stays valid for the program's run (hash map
    // elements are freed after an RCU grace period); userspace replaces an
    // entry with one aligned 4-byte store, so the read sees one whole id.
    Some(unsafe { id.read() })
}

/// LPM key for an IPv4 address as stored in the packet.
#[inline(always)]
pub fn v4_key(addr: u32) -> Key<[u8; 4]> {
    Key::new(32, addr.to_ne_bytes())
}

/// LPM key for an IPv6 address given as four stored words.
#[inline(always)]
pub fn v6_key(addr: &[u32; 4]) -> Key<[u8; 16]> {
    // SAFETY: `[u32; 4]` and `[u8; 16]` have the same size and every bit
    // pattern is a valid `[u8; 16]`; the words hold the address bytes in
    // wire order already. (A byte-wise copy costs ~40 instructions.)
    Key::new(128, unsafe {
        core::mem::transmute::<[u32; 4], [u8; 16]>(*addr)
    })
}
