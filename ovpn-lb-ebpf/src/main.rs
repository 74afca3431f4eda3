//! ovpn-lb BPF programs.
//!
//! Layers, each using only those below it (`use crate::` per module):
//!
//! 1. `layout` (header layouts), `maps` (the maps shared with userspace) and
//!    `log` (rate-limited rare-path messages);
//! 2. packet access: `hook` (what tc and XDP contexts offer) and `packet`
//!    (bounds-checked typed header access over a hook);
//! 3. `parse`: validate IP headers, find the L4 header;
//! 4. stages: `schedule`, `translate`, `redirect`, `offload`, `forward`,
//!    `stats`, `verdict`;
//! 5. pipelines: `lan` (spray), `tunnel` (restore on ingress, translate on
//!    egress), `wan` (keep LAN traffic off the WAN), `queue` (account each
//!    tunnel's ring, for `schedule`: typed tracing programs, or raw
//!    tracepoints where those cannot run);
//! 6. entry points, here.
#![no_std]
#![no_main]
// `atomic_xadd`: the BPF target has no compare-and-swap, so no
// `AtomicU64::fetch_add`; the ring accounting needs an atomic add.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "core::intrinsics::atomic_xadd, as above")]
#![expect(
    clippy::inline_always,
    reason = "each program is one verified body; helpers must not become calls"
)]
#![expect(
    clippy::needless_pass_by_value,
    reason = "the classifier macro hands each entry point its context by value"
)]
#![expect(
    clippy::cast_possible_truncation,
    reason = "packet offsets and lengths stay below 64 KiB"
)]

mod forward;
mod hook;
mod lan;
mod layout;
mod log;
mod maps;
mod offload;
mod packet;
mod parse;
mod probe;
mod queue;
mod redirect;
mod schedule;
mod stats;
mod translate;
mod tunnel;
mod verdict;
mod wan;

use aya_ebpf::{
    macros::{btf_tracepoint, classifier, fexit, raw_tracepoint, xdp},
    programs::{BtfTracePointContext, FExitContext, RawTracePointContext, TcContext, XdpContext},
};
use ovpn_lb_common::Reason;

use crate::{
    hook::Hook,
    layout::ETH_HLEN,
    packet::Packet,
    tunnel::{Egress, Ingress},
};

/// tc ingress on the LAN device: spray remote-bound packets over the tunnels.
#[classifier]
pub fn lan_ingress(ctx: TcContext) -> i32 {
    lan::handle(&ctx)
}

/// The same as native XDP on the LAN device, for TAP tunnels.
#[xdp]
pub fn lan_ingress_xdp(ctx: XdpContext) -> u32 {
    lan::handle(&ctx).cast_unsigned()
}

/// tc ingress on every tun (L3) tunnel device: undo the translations.
#[classifier]
pub fn tunnel_ingress(ctx: TcContext) -> i32 {
    restore_tc::<0>(&ctx)
}

/// The same on tunnel devices with Ethernet framing (TAP). `BPF_PROG_TEST_RUN`
/// always hands tc programs an Ethernet frame, so the fixtures drive this one.
#[classifier]
pub fn tunnel_ingress_eth(ctx: TcContext) -> i32 {
    restore_tc::<ETH_HLEN>(&ctx)
}

/// The same as native XDP on TAP tunnel devices; restored packets go straight
/// to the LAN device where its driver can take them.
#[xdp]
pub fn tunnel_ingress_xdp(ctx: XdpContext) -> u32 {
    let pkt = Packet::new(&ctx);
    let len = pkt.len();
    let (reason, code) = match tunnel::restore::<_, ETH_HLEN>(&pkt) {
        Ok(Ingress::Restored(family)) => match forward::to_lan(&pkt, family) {
            Some(code) => (Reason::RestoredToLan, code),
            None => (Reason::Restored, ctx.pass_code()),
        },
        Ok(Ingress::ProbeReflected) => (Reason::ProbeReflected, ctx.bounce()),
        Ok(Ingress::ProbeReported) => (Reason::ProbeAnswered, ctx.drop_code()),
        Err(reason) => (reason, verdict::of(&ctx, reason)),
    };
    stats::reason(reason, len);
    code.cast_unsigned()
}

/// tc egress (tcx) on every tun tunnel device: translate LAN-sourced packets
/// the kernel itself routes into the tunnel (over the MTU, BIG TCP, the
/// gateway's own), so nothing leaves a tunnel untranslated.
#[classifier]
pub fn tunnel_egress(ctx: TcContext) -> i32 {
    egress_tc::<0>(&ctx)
}

/// The same on TAP tunnel devices (Ethernet framing).
#[classifier]
pub fn tunnel_egress_eth(ctx: TcContext) -> i32 {
    egress_tc::<ETH_HLEN>(&ctx)
}

/// tc egress (tcx) on each WAN device with Ethernet framing: nothing of the
/// LAN leaves there outside a tunnel.
#[classifier]
pub fn wan_egress_eth(ctx: TcContext) -> i32 {
    guard_tc::<ETH_HLEN>(&ctx)
}

/// The same on a WAN device without a link-layer header (PPP, tun).
#[classifier]
pub fn wan_egress(ctx: TcContext) -> i32 {
    guard_tc::<0>(&ctx)
}

/// Only what is dropped is counted: the WAN's own traffic passes uncounted.
#[inline(always)]
fn guard_tc<const L3: usize>(ctx: &TcContext) -> i32 {
    let pkt = Packet::unpulled(ctx);
    match wan::guard::<_, L3>(&pkt) {
        Ok(()) => ctx.pass_code(),
        Err(reason) => {
            stats::reason(reason, pkt.len());
            verdict::of(ctx, reason)
        }
    }
}

// Ring accounting (`queue`), three sets of hooks, best first; the loader
// attaches one set. Each entry point hands its arguments on.

/// After every device transmit (typed): a packet queued into one of our
/// tunnels' rings, or refused (the ring full).
#[btf_tracepoint(function = "net_dev_xmit")]
pub fn ring_enqueue(ctx: BtfTracePointContext) -> i32 {
    queue::enqueued_typed(ctx.arg(2), ctx.arg(1), ctx.arg(3));
    0
}

/// After OpenVPN's read from a tun ring: `tun_do_read(tun, tfile, to,
/// noblock, ptr)` and its return value.
#[fexit(function = "tun_do_read")]
pub fn ring_read(ctx: FExitContext) -> i32 {
    queue::read_fexit(ctx.arg(0), ctx.arg(1), ctx.arg(5));
    0
}

/// After XDP frames were sent into a TAP device: `tun_xdp_xmit(dev, n,
/// frames, flags)` and the number sent.
#[fexit(function = "tun_xdp_xmit")]
pub fn ring_enqueue_xdp(ctx: FExitContext) -> i32 {
    queue::enqueued_xdp(ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(4));
    0
}

/// Every freed packet (typed): OpenVPN's reads, where `fexit` cannot run.
#[btf_tracepoint(function = "consume_skb")]
pub fn ring_read_consumed(ctx: BtfTracePointContext) -> i32 {
    queue::read_consumed_typed(ctx.arg(0), ctx.arg(1));
    0
}

/// `net_dev_xmit` as a raw tracepoint, where typed tracing cannot run.
#[raw_tracepoint(tracepoint = "net_dev_xmit")]
pub fn ring_enqueue_raw(ctx: RawTracePointContext) -> i32 {
    queue::enqueued_raw(ctx.arg(2), ctx.arg(1), ctx.arg(3));
    0
}

/// `consume_skb` as a raw tracepoint.
#[raw_tracepoint(tracepoint = "consume_skb")]
pub fn ring_read_consumed_raw(ctx: RawTracePointContext) -> i32 {
    queue::read_consumed_raw(ctx.arg(0), ctx.arg(1));
    0
}

/// Sprayed packets pass here again: only what is translated (or refused)
/// is counted.
#[inline(always)]
fn egress_tc<const L3: usize>(ctx: &TcContext) -> i32 {
    let pkt = Packet::unpulled(ctx);
    match tunnel::egress::<_, L3>(&pkt) {
        Ok(Egress::Untouched) => ctx.pass_code(),
        Ok(Egress::Translated { id, ip_len }) => {
            stats::tunnel_tx(id, ip_len);
            stats::reason(Reason::TranslatedOnEgress, pkt.len());
            ctx.pass_code()
        }
        Err(reason) => {
            stats::reason(reason, pkt.len());
            verdict::of(ctx, reason)
        }
    }
}

#[inline(always)]
fn restore_tc<const L3: usize>(ctx: &TcContext) -> i32 {
    let pkt = Packet::new(ctx);
    let len = pkt.len();
    let (reason, code) = match tunnel::restore::<_, L3>(&pkt) {
        Ok(Ingress::Restored(_)) => (Reason::Restored, ctx.pass_code()),
        Ok(Ingress::ProbeReflected) => (Reason::ProbeReflected, ctx.bounce()),
        Ok(Ingress::ProbeReported) => (Reason::ProbeAnswered, ctx.drop_code()),
        Err(reason) => (reason, verdict::of(ctx, reason)),
    };
    stats::reason(reason, len);
    code
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
