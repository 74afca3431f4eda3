//! Rare-path logging through aya-log, read by the loader (aya-log 0.3.0):
//! a kernel helper refused a rewrite, or the configuration asks for
//! something the program cannot do. Never per packet: each CPU logs at most
//! once per second, and each message is its own BPF subprogram (not
//! inlined), so the fast path carries only a call on paths that are already
//! errors. Bottom layer: uses only its map and aya-log.

use aya_ebpf::{btf_maps::PerCpuArray, helpers::bpf_ktime_get_ns, macros::btf_map};
use aya_log_ebpf::{log, macro_support::Level};

use crate::maps::update_per_cpu;

/// Per CPU: when this CPU last logged, in ns since boot.
#[btf_map]
static LOG_LAST: PerCpuArray<u64, 1> = PerCpuArray::new();

/// Least time between two messages from one CPU.
const LOG_INTERVAL_NS: u64 = 1_000_000_000;

/// Kernel helpers whose refusal drops a packet as `rewrite_failed`.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum Helper {
    L4CsumReplace = 1,
    SkbChangeTail = 2,
    XdpAdjustTail = 3,
    CsumDiff = 4,
    /// Not a helper: an offloaded checksum over a segment too long to sum.
    SegmentTooLong = 5,
}

/// Whether this CPU may log now; if so, the time is recorded.
#[inline(always)]
fn allowed() -> bool {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut allowed = false;
    update_per_cpu(LOG_LAST.get_ptr_mut(0), |last| {
        if *last == 0 || now.wrapping_sub(*last) >= LOG_INTERVAL_NS {
            *last = now;
            allowed = true;
        }
    });
    allowed
}

/// What a message is about.
#[derive(Clone, Copy)]
enum Event {
    RewriteFailed(Helper),
    TunnelNotReady,
    LanMacUnset,
    Untranslatable,
    CleartextBlocked,
}

/// The one message writer: a single subprogram per program however many
/// call sites, as aya-log's record serialisation is several hundred
/// instructions.
#[inline(never)]
fn emit(event: Event, a: u64, b: i64) {
    if !allowed() {
        return;
    }
    let (level, text) = match event {
        Event::RewriteFailed(helper) => (
            Level::Error,
            match helper {
                Helper::L4CsumReplace => {
                    "bpf_l4_csum_replace refused a rewrite (-, error): dropped as rewrite_failed"
                }
                Helper::SkbChangeTail => {
                    "bpf_skb_change_tail refused a rewrite (-, error): dropped as rewrite_failed"
                }
                Helper::XdpAdjustTail => {
                    "bpf_xdp_adjust_tail refused a rewrite (-, error): dropped as rewrite_failed"
                }
                Helper::CsumDiff => {
                    "bpf_csum_diff refused a sum (-, error): dropped as rewrite_failed"
                }
                Helper::SegmentTooLong => {
                    "offloaded checksum over a segment above 4096 bytes (-, length): dropped as rewrite_failed"
                }
            },
        ),
        Event::TunnelNotReady => (
            Level::Warn,
            "scheduled tunnel not ready: no device or no prefix for the family (tunnel id, ifindex): dropped as tunnel_gone",
        ),
        Event::LanMacUnset => (
            Level::Warn,
            "SITE.lan_mac is not set: the XDP LAN program passes every frame as not_for_us",
        ),
        Event::Untranslatable => (
            Level::Warn,
            "LAN-sourced packet leaving a device without a translation (ifindex, family bit): dropped as untranslatable",
        ),
        Event::CleartextBlocked => (
            Level::Warn,
            "LAN traffic leaving a WAN device outside the tunnels (ifindex, prefix kind: 1 LAN, 2 remote, 3 ours translated, 4 peer's translated): dropped as cleartext_blocked",
        ),
    };
    log!(&(), level, "ovpn-lb: {} [{}, {}]", text, a, b);
}

/// A kernel helper refused to rewrite a packet (it returned `ret`), which
/// is dropped.
#[inline(always)]
pub fn rewrite_failed(helper: Helper, ret: i64) {
    emit(Event::RewriteFailed(helper), 0, ret);
}

/// The live schedule picked tunnel `id`, which has no device (being
/// replaced) or no translation prefix for the packet's family.
#[inline(always)]
pub fn tunnel_not_ready(id: u32, ifindex: u32) {
    emit(Event::TunnelNotReady, u64::from(id), i64::from(ifindex));
}

/// `SITE.lan_mac` is all zero: the XDP LAN program cannot tell which frames
/// are for this host and sprays none.
#[inline(always)]
pub fn lan_mac_unset() {
    emit(Event::LanMacUnset, 0, 0);
}

/// A LAN-sourced packet left device `ifindex`, where tunnel egress cannot
/// translate it (not a known tunnel, or no prefix for its family).
#[inline(always)]
pub fn untranslatable(ifindex: u32, family: u32) {
    emit(Event::Untranslatable, u64::from(ifindex), i64::from(family));
}

/// A packet with an address of kind `kind` (`guard::*`) tried to leave WAN
/// device `ifindex` outside the tunnels.
#[inline(always)]
pub fn cleartext_blocked(ifindex: u32, kind: u32) {
    emit(Event::CleartextBlocked, u64::from(ifindex), i64::from(kind));
}
