//! The floors for `cargo xtask bench`: a tc and an XDP program that hand
//! every packet on.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action::XDP_PASS},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

#[classifier]
pub fn bench_floor(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[xdp]
pub fn bench_floor_xdp(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
