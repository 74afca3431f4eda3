//! Every map the programs share with userspace. Types come from ovpn-lb-common.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, PerCpuArray},
    macros::btf_map,
};
use ovpn_lb_common::{
    MAX_TUNNELS, ReasonStats, Schedule, SiteConfig, TunnelConfig, TunnelStats,
    maps::{MAX_PREFIXES, SCHEDULE_BUFFERS},
    reason::REASON_COUNT,
};

#[btf_map]
pub static SITE: Array<SiteConfig, 1> = Array::new();

#[btf_map]
pub static TUNNELS: Array<TunnelConfig, MAX_TUNNELS> = Array::new();

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

#[btf_map]
pub static SCHEDULES: Array<Schedule, { SCHEDULE_BUFFERS as usize }> = Array::new();

/// Which of `SCHEDULES` packets read; userspace flips it after writing the other.
#[btf_map]
pub static ACTIVE_SCHED: Array<u32, 1> = Array::new();

/// Per-CPU round-robin position: no atomics shared between CPUs.
#[btf_map]
pub static SPRAY_CURSOR: PerCpuArray<u32, 1> = PerCpuArray::new();

#[btf_map]
pub static TUNNEL_STATS: PerCpuArray<TunnelStats, MAX_TUNNELS> = PerCpuArray::new();

#[btf_map]
pub static REASON_STATS: PerCpuArray<ReasonStats, REASON_COUNT> = PerCpuArray::new();
