//! Pick the tunnel for a packet from the live schedule: packet mode takes
//! the tunnel where the packet would be read first (`ovpn_lb_common::queue`),
//! round robin walks the weighted slots with one cursor for every CPU, flow mode
//! looks the flow hash up in the rendezvous-hashed flow table.
//!
//! The picked tunnel must be ready: an entry with a device that still
//! exists (the kernel's device map) and a translation for the packet's
//! family. One whose device is gone (removed behind the loader's back) is
//! passed over for the next pick that excludes it, rather than the packet
//! being dropped.

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use ovpn_lb_common::{
    FLOW_SLOTS, MAX_TUNNELS, Reason, SCHEDULE_SLOTS, Schedule, TunnelConfig,
    maps::{SCHEDULE_BUFFERS, Spray},
    queue::{NEVER, SCAN_TUNNELS, Snapshot, TunnelQueue, rotate_among_ties},
};

use crate::{
    hook::Hook,
    log,
    maps::{
        ACTIVE_SCHED, LAST_PICK, RINGS, SCHEDULES, SPRAY_CURSOR, TIE_CURSOR, TUNNEL_DEVICES,
        TUNNELS, update_per_cpu, update_shared,
    },
};

/// "No tunnel": nothing excluded, or no pick.
const NONE: u32 = u32::MAX;
/// [`ovpn_lb_pick`]'s answer: the tunnel id in the low byte; in the next,
/// 1 + the id of a tunnel it passed over (not ready), if any; this bit
/// when there is no tunnel for the packet, and then `GONE` when the ones
/// picked were not ready (else there was none to pick).
const REFUSED: u32 = 1 << 31;
const GONE: u32 = 1 << 30;
const NO_TUNNEL: u32 = REFUSED;
const ID: u32 = 0xff;
const SKIPPED_SHIFT: u32 = 8;

/// The tunnel for a packet that is `len` bytes in a tunnel's ring, ready
/// for `family_bit`, and its entry, under hook `C`. `flow_hash` is only
/// called in flow mode.
#[inline(always)]
pub fn pick<C: Hook>(
    spray: u32,
    len: u32,
    family_bit: u32,
    flow_hash: impl FnOnce() -> u32,
) -> Result<(u32, &'static TunnelConfig), Reason> {
    let hash = if spray == Spray::Flow as u32 {
        flow_hash()
    } else {
        0
    };
    let picked = if C::EARLIEST_DEPARTURE {
        ovpn_lb_pick(spray, len, hash, family_bit)
    } else {
        ovpn_lb_pick_slots(spray, hash, family_bit)
    };
    if picked & REFUSED != 0 {
        if picked & GONE == 0 {
            return Err(Reason::NoTunnel);
        }
        // Logged here, not in the subprogram: its stack on top of the
        // logger's and the XDP program's would pass the 512 bytes allowed.
        let id = ((picked >> SKIPPED_SHIFT) & ID).saturating_sub(1);
        log::tunnel_not_ready(id, TUNNELS.get(id).map_or(0, |t| t.ifindex));
        return Err(Reason::TunnelGone);
    }
    let id = picked & ID;
    TUNNELS.get(id).map(|t| (id, t)).ok_or(Reason::TunnelGone)
}

/// [`pick`] past the packet: the tunnel id, or `REFUSED` and why. A picked
/// tunnel whose device is gone (removed while no loader runs to take it
/// out) is passed over once, for the next best.
///
/// A subprogram, not inlined: the verifier walks it once, not once per
/// state the parser reaches the pick with (twice over with the retry).
/// Scalars in and out, as a global function must.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn ovpn_lb_pick(spray: u32, len: u32, hash: u32, family_bit: u32) -> u32 {
    pick_ready::<true>(spray, len, hash, family_bit)
}

/// [`ovpn_lb_pick`] without earliest departure, packet spray walking the
/// slots (no packet length: an argument the callee ignores is left
/// unset, which the verifier refuses): for the XDP LAN program, whose own
/// stack (432 bytes) leaves no room under the 512 allowed for the
/// comparison's subprogram as well.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn ovpn_lb_pick_slots(spray: u32, hash: u32, family_bit: u32) -> u32 {
    pick_ready::<false>(spray, 0, hash, family_bit)
}

#[inline(always)]
fn pick_ready<const EARLIEST: bool>(spray: u32, len: u32, hash: u32, family_bit: u32) -> u32 {
    let first = pick_excluding::<EARLIEST>(spray, len, hash, NONE);
    if first & REFUSED != 0 || ready(first, family_bit) {
        return first;
    }
    let skipped = (first + 1) << SKIPPED_SHIFT;
    let second = pick_excluding::<EARLIEST>(spray, len, hash, first);
    if second & REFUSED != 0 || !ready(second, family_bit) {
        return REFUSED | GONE | skipped;
    }
    second | skipped
}

/// Tunnel id for a packet of `len` ring bytes other than `exclude` (or
/// [`NONE`]), or `NO_TUNNEL`.
#[inline(always)]
fn pick_excluding<const EARLIEST: bool>(spray: u32, len: u32, hash: u32, exclude: u32) -> u32 {
    let active = ACTIVE_SCHED.get(0).copied().unwrap_or(0) % SCHEDULE_BUFFERS;
    let Some(schedule) = SCHEDULES.get(active) else {
        return NO_TUNNEL;
    };
    let len_slots = schedule.len;
    if len_slots == 0 {
        return NO_TUNNEL;
    }
    if spray == Spray::Flow as u32 {
        // Rendezvous-hashed flow table: a tunnel leaving or rejoining moves
        // only its own flows. The mask is the modulo (a power of two).
        let id = u32::from(schedule.flow[hash as usize & (FLOW_SLOTS - 1)]);
        if id != exclude {
            return id;
        }
    } else if EARLIEST && spray == Spray::Packet as u32 && schedule.members_len != 0 {
        let id = ovpn_lb_earliest(active, len, exclude);
        if id != NONE {
            return id;
        }
    }
    round_robin(schedule, len_slots, exclude)
}

/// Whether tunnel `id` has a device and a translation for `family_bit`.
#[inline(always)]
fn ready(id: u32, family_bit: u32) -> bool {
    let Some(tunnel) = TUNNELS.get(id) else {
        return false;
    };
    // The device itself: gone (or replaced) since the loader last wrote the
    // entry, as when it is not running, a redirect would drop the packet
    // unseen.
    tunnel.ifindex != 0
        && tunnel.families & family_bit != 0
        && TUNNEL_DEVICES.get_ifindex(id) == Some(tunnel.ifindex)
}

/// The next slot's tunnel, or the one after where the next is `exclude`.
/// `len` is `schedule.len`, read once and known not to be 0 (read again
/// after a call, the compiler could not prove that).
#[inline(always)]
fn round_robin(schedule: &Schedule, len: u32, exclude: u32) -> u32 {
    let mut id = NONE;
    // One cursor for every CPU (`update_shared`). It wraps at the table's
    // length by a compare, not a division; a cursor past a table that
    // shrank starts over.
    update_shared(SPRAY_CURSOR.get_ptr_mut(0), |cursor| {
        for _ in 0..2 {
            let slot = if *cursor >= len { 0 } else { *cursor };
            *cursor = if slot + 1 >= len { 0 } else { slot + 1 };
            // The mask bounds the index for the verifier.
            id = u32::from(schedule.slots[slot as usize & (SCHEDULE_SLOTS - 1)]);
            if id != exclude {
                break;
            }
        }
    });
    if id == NONE || id == exclude {
        return NO_TUNNEL;
    }
    id
}

/// The member other than `exclude` whose queue would read a packet of
/// `len` ring bytes first, ties rotating. Compares every member up to
/// [`SCAN_TUNNELS`], else two at random and the one this CPU picked last.
///
/// A subprogram, not inlined: the verifier then walks the comparisons once
/// per state the parser reaches the pick with, not once per tunnel id the
/// scan could settle on times those states. `active` is the schedule buffer
/// the caller read (a global function takes scalars, not the map value):
/// the pick and its fallback see the same schedule.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn ovpn_lb_earliest(active: u32, len: u32, exclude: u32) -> u32 {
    let Some(schedule) = SCHEDULES.get(active % SCHEDULE_BUFFERS) else {
        return NONE;
    };
    // Every tunnel's figures: one lookup.
    let Some(rings) = RINGS.get_ptr(0) else {
        return NONE;
    };
    let members = schedule.members_len as usize;
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let len = u64::from(len);
    // Each member's departure and its tie allowance.
    let price = |index: usize| -> (u64, u64) {
        let id = u32::from(schedule.members[index & (MAX_TUNNELS - 1)]);
        if id == exclude {
            return (NEVER, 0);
        }
        let id = id as usize & (MAX_TUNNELS - 1);
        // SAFETY: in bounds (the mask); the map value lives for the
        // program's run.
        let s = snapshot(unsafe { &raw const (*rings).tunnels[id] });
        (
            s.departure(len, now, u64::from(schedule.path_ns[id])),
            s.tie_ps(len),
        )
    };
    let chosen = if members <= SCAN_TUNNELS {
        let mut departures = [NEVER; SCAN_TUNNELS];
        let (mut earliest, mut tie) = (NEVER, 0);
        // Read opaquely: knowing `members <= SCAN_TUNNELS`, the compiler
        // would otherwise loop to `members` alone and drop the index's
        // mask, and Linux 6.1's verifier, which does not carry that bound
        // to the loop, then walks the index past the array. A copy, so
        // that `members` itself stays a value the compiler knows (in
        // memory, the other branch's `% members` grew a division-by-zero
        // panic the verifier refuses).
        let scanned = members;
        for (index, departure) in departures.iter_mut().enumerate() {
            // SAFETY: a plain read of a local.
            if index >= unsafe { core::ptr::read_volatile(&raw const scanned) } {
                break;
            }
            let (d, t) = price(index);
            *departure = d;
            if d < earliest {
                (earliest, tie) = (d, t);
            }
        }
        // The rotation starts past the last pick of any CPU, kept below
        // `members` by a compare (no division): ties take turns.
        let last = TIE_CURSOR.get(0).map_or(0, |&c| c as usize);
        let start = if last + 1 >= members { 0 } else { last + 1 };
        // SAFETY: a plain read of a local.
        let candidates = unsafe { core::ptr::read_volatile(&raw const scanned) };
        let chosen = rotate_among_ties(&departures, candidates, earliest, tie, start);
        if let Some(index) = chosen {
            update_shared(TIE_CURSOR.get_ptr_mut(0), |cursor| *cursor = index as u32);
        }
        chosen
    } else {
        // SAFETY: a helper without arguments.
        let random = unsafe { bpf_get_prandom_u32() } as usize;
        let mut best = None;
        let mut earliest = NEVER;
        let mut consider = |index: usize| {
            let (d, _) = price(index);
            if d < earliest {
                earliest = d;
                best = Some(index);
            }
        };
        consider((random & 0xffff) % members);
        consider((random >> 16) % members);
        if let Some(&last) = LAST_PICK.get(0)
            && (last as usize) < members
        {
            consider(last as usize);
        }
        let last = best.map_or(NONE, |b| b as u32);
        update_per_cpu(LAST_PICK.get_ptr_mut(0), |l| *l = last);
        best
    };
    match chosen {
        Some(index) => u32::from(schedule.members[index & (MAX_TUNNELS - 1)]),
        None => NONE,
    }
}

/// What the pick reads of a tunnel's record. The tracing programs write
/// these fields meanwhile, each field whole, so each is read whole, once.
#[inline(always)]
fn snapshot(q: *const TunnelQueue) -> Snapshot {
    let load = |field: *const u64| {
        // SAFETY: `field` points into a map value, live for the program's
        // run; aligned 8-byte loads are single instructions.
        unsafe { core::ptr::read_volatile(field) }
    };
    // SAFETY: only field addresses are taken; `load` reads them.
    unsafe {
        Snapshot {
            queued: load(&raw const (*q).enq.queued),
            refused: load(&raw const (*q).enq.refused),
            read: load(&raw const (*q).deq.read),
            busy_until_ns: load(&raw const (*q).deq.busy_until_ns),
            cost_ps: load(&raw const (*q).deq.cost_ps),
            queued_at_read: load(&raw const (*q).deq.queued_at_read),
            stalled_after_ns: load(&raw const (*q).deq.stalled_after_ns),
            refused_at_read: load(&raw const (*q).deq.refused_at_read),
        }
    }
}
