//! Per-CPU counters. Plain adds: each CPU owns its slot.

use ovpn_lb_common::Reason;

use crate::maps::{REASON_STATS, TUNNEL_STATS, update_per_cpu};

#[inline(always)]
pub fn reason(reason: Reason, bytes: u32) {
    update_per_cpu(REASON_STATS.get_ptr_mut(reason as u32), |s| {
        s.packets += 1;
        s.bytes += u64::from(bytes);
    });
}

#[inline(always)]
pub fn tunnel_tx(tunnel: u32, bytes: u32) {
    update_per_cpu(TUNNEL_STATS.get_ptr_mut(tunnel), |s| {
        s.tx_packets += 1;
        s.tx_bytes += u64::from(bytes);
    });
}

#[inline(always)]
pub fn tunnel_rx(tunnel: u32, bytes: u32) {
    update_per_cpu(TUNNEL_STATS.get_ptr_mut(tunnel), |s| {
        s.rx_packets += 1;
        s.rx_bytes += u64::from(bytes);
    });
}
