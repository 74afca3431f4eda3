//! ovpn-lb BPF programs. Entry points only; each stage lives in its own module.
#![no_std]
#![no_main]
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

mod lan;
mod maps;
mod packet;
mod parse;
mod redirect;
mod schedule;
mod stats;
mod translate;
mod tunnel;
mod verdict;

use aya_ebpf::{macros::classifier, programs::TcContext};

/// tc ingress on the LAN device: spray remote-bound packets over the tunnels.
#[classifier]
pub fn lan_ingress(ctx: TcContext) -> i32 {
    lan::handle(&ctx)
}

/// tc ingress on every tun (L3) tunnel device: undo the translations.
#[classifier]
pub fn tunnel_ingress(ctx: TcContext) -> i32 {
    tunnel::handle::<0>(&ctx)
}

/// The same on tunnel devices with Ethernet framing (TAP). `BPF_PROG_TEST_RUN`
/// always hands tc programs an Ethernet frame, so the fixtures drive this one.
#[classifier]
pub fn tunnel_ingress_eth(ctx: TcContext) -> i32 {
    tunnel::handle::<{ packet::ETH_HLEN }>(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
