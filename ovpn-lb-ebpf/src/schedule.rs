//! Pick the tunnel for a packet from the live schedule: packet mode walks
//! the round-robin slots with a per-CPU cursor, flow mode looks the flow
//! hash up in the rendezvous-hashed flow table.

use ovpn_lb_common::{
    FLOW_SLOTS, Reason, SCHEDULE_SLOTS,
    maps::{SCHEDULE_BUFFERS, Spray},
};

use crate::maps::{ACTIVE_SCHED, SCHEDULES, SPRAY_CURSOR, update_per_cpu};

/// Tunnel id for this packet. `flow_hash` is only called in flow mode.
#[inline(always)]
pub fn pick(spray: u32, flow_hash: impl FnOnce() -> u32) -> Result<u32, Reason> {
    let active = ACTIVE_SCHED.get(0).copied().unwrap_or(0) % SCHEDULE_BUFFERS;
    let schedule = SCHEDULES.get(active).ok_or(Reason::NoTunnel)?;
    let len = schedule.len;
    if len == 0 {
        return Err(Reason::NoTunnel);
    }
    if spray == Spray::Flow as u32 {
        // Rendezvous-hashed flow table: a tunnel leaving or rejoining moves
        // only its own flows. The mask is the modulo (a power of two).
        let slot = flow_hash() as usize & (FLOW_SLOTS - 1);
        return Ok(u32::from(schedule.flow[slot]));
    }
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
