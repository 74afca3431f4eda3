//! Pick the tunnel for a packet from the live schedule: packet mode takes
//! the tunnel where the packet would be read first (`ovpn_lb_common::queue`),
//! round robin walks the weighted slots with a per-CPU cursor, flow mode
//! looks the flow hash up in the rendezvous-hashed flow table.

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use ovpn_lb_common::{
    FLOW_SLOTS, MAX_TUNNELS, Reason, SCHEDULE_SLOTS, Schedule,
    maps::{SCHEDULE_BUFFERS, Spray},
    queue::{Departure, SCAN_TUNNELS, Snapshot},
};

use crate::{
    hook::Hook,
    maps::{ACTIVE_SCHED, LAST_PICK, SCHEDULES, SPRAY_CURSOR, TUNNEL_QUEUES, update_per_cpu},
};

/// Tunnel id for a packet of `len` bytes (as it will enter the tunnel)
/// under hook `C`. `flow_hash` is only called in flow mode.
#[inline(always)]
pub fn pick<C: Hook>(spray: u32, len: u32, flow_hash: impl FnOnce() -> u32) -> Result<u32, Reason> {
    let active = ACTIVE_SCHED.get(0).copied().unwrap_or(0) % SCHEDULE_BUFFERS;
    let schedule = SCHEDULES.get(active).ok_or(Reason::NoTunnel)?;
    let len_slots = schedule.len;
    if len_slots == 0 {
        return Err(Reason::NoTunnel);
    }
    if spray == Spray::Flow as u32 {
        // Rendezvous-hashed flow table: a tunnel leaving or rejoining moves
        // only its own flows. The mask is the modulo (a power of two).
        let slot = flow_hash() as usize & (FLOW_SLOTS - 1);
        return Ok(u32::from(schedule.flow[slot]));
    }
    if spray == Spray::Packet as u32 && C::RINGS_ACCOUNTED && schedule.members_len != 0 {
        let id = ovpn_lb_earliest(active, len);
        if id != NONE {
            return Ok(id);
        }
    }
    round_robin(schedule, len_slots)
}

/// `len` is `schedule.len`, read once and known not to be 0 (read again
/// after a call, the compiler could not prove that).
#[inline(always)]
fn round_robin(schedule: &Schedule, len: u32) -> Result<u32, Reason> {
    // Per-CPU cursor: plain load and store, nothing shared between CPUs.
    let mut position = None;
    update_per_cpu(SPRAY_CURSOR.get_ptr_mut(0), |cursor| {
        position = Some(*cursor);
        *cursor = cursor.wrapping_add(1);
    });
    let position = position.ok_or(Reason::NoTunnel)?;
    // The mask bounds the index for the verifier (userspace keeps len <= slots,
    // and checking that here would let the compiler drop the mask).
    let slot = (position % len) as usize & (SCHEDULE_SLOTS - 1);
    Ok(u32::from(schedule.slots[slot]))
}

/// "No pick": fall back to round robin.
const NONE: u32 = u32::MAX;

/// The member whose queue would read a `len`-byte packet first. Compares
/// every member up to [`SCAN_TUNNELS`], else two at random and the one this
/// CPU picked last.
///
/// A subprogram, not inlined: the verifier then walks the comparisons once
/// per state the parser reaches the pick with, not once per tunnel id the
/// scan could settle on times those states. `active` is the schedule buffer
/// the caller read (a global function takes scalars, not the map value):
/// the pick and its fallback see the same schedule.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn ovpn_lb_earliest(active: u32, len: u32) -> u32 {
    let Some(schedule) = SCHEDULES.get(active % SCHEDULE_BUFFERS) else {
        return NONE;
    };
    let members = schedule.members_len as usize;
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let len = u64::from(len);
    let mut best = NONE;
    let mut best_departure = Departure::NEVER;
    let mut consider = |index: usize| {
        let id = u32::from(schedule.members[index & (MAX_TUNNELS - 1)]);
        let path_ns = u64::from(schedule.path_ns[id as usize & (MAX_TUNNELS - 1)]);
        let departure = departure(id, len, now, path_ns);
        if departure < best_departure {
            best_departure = departure;
            best = index as u32;
        }
    };
    if members <= SCAN_TUNNELS {
        for index in 0..SCAN_TUNNELS {
            // Read opaquely: knowing `members <= SCAN_TUNNELS`, the compiler
            // would otherwise loop to `members` alone and drop the index's
            // mask, and Linux 6.1's verifier, which does not carry that
            // bound to the loop, then walks the index past the array.
            // SAFETY: a plain read of a local.
            if index >= unsafe { core::ptr::read_volatile(&raw const members) } {
                break;
            }
            consider(index);
        }
    } else {
        // SAFETY: a helper without arguments.
        let random = unsafe { bpf_get_prandom_u32() } as usize;
        consider((random & 0xffff) % members);
        consider((random >> 16) % members);
        if let Some(&last) = LAST_PICK.get(0)
            && (last as usize) < members
        {
            consider(last as usize);
        }
        update_per_cpu(LAST_PICK.get_ptr_mut(0), |last| *last = best);
    }
    if best == NONE {
        return NONE;
    }
    u32::from(schedule.members[best as usize & (MAX_TUNNELS - 1)])
}

/// When tunnel `id` would read a `len`-byte packet queued now;
/// [`Departure::NEVER`] without accounting for it.
#[inline(always)]
fn departure(id: u32, len: u64, now: u64, path_ns: u64) -> Departure {
    let Some(q) = TUNNEL_QUEUES.get_ptr(id) else {
        return Departure::NEVER;
    };
    // SAFETY: `q` points into a map value, live for the program's run. The
    // tracing programs write these fields meanwhile, each field whole, so
    // each is read whole, once.
    let snapshot = unsafe {
        Snapshot {
            enq_bytes: core::ptr::read_volatile(&raw const (*q).enq_bytes),
            deq_bytes: core::ptr::read_volatile(&raw const (*q).deq_bytes),
            last_enq_ns: core::ptr::read_volatile(&raw const (*q).last_enq_ns),
            last_deq_ns: core::ptr::read_volatile(&raw const (*q).last_deq_ns),
            last_len: core::ptr::read_volatile(&raw const (*q).last_len),
            ps_per_byte: core::ptr::read_volatile(&raw const (*q).drain.ps_per_byte),
        }
    };
    snapshot.departure(len, now, path_ns)
}
