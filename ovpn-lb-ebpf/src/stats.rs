//! Stage 5: per-CPU counters. Plain adds: each CPU owns its slot.

use ovpn_lb_common::Reason;

use crate::maps::{REASON_STATS, TUNNEL_STATS};

#[inline(always)]
pub fn reason(reason: Reason, bytes: u32) {
    if let Some(s) = REASON_STATS.get_ptr_mut(reason as u32) {
        unsafe {
            (*s).packets += 1;
            (*s).bytes += u64::from(bytes);
        }
    }
}

#[inline(always)]
pub fn tunnel_tx(tunnel: u32, bytes: u32) {
    if let Some(s) = TUNNEL_STATS.get_ptr_mut(tunnel) {
        unsafe {
            (*s).tx_packets += 1;
            (*s).tx_bytes += u64::from(bytes);
        }
    }
}

#[inline(always)]
pub fn tunnel_rx(tunnel: u32, bytes: u32) {
    if let Some(s) = TUNNEL_STATS.get_ptr_mut(tunnel) {
        unsafe {
            (*s).rx_packets += 1;
            (*s).rx_bytes += u64::from(bytes);
        }
    }
}
