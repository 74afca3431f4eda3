//! The floors for `cargo xtask bench`: a tc and an XDP program that hand
//! every packet on, and the tc one with a clock read (what reading the
//! clock per packet costs).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_UNSPEC, xdp_action::XDP_PASS},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

#[classifier]
pub fn bench_floor(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// The floor and one `bpf_ktime_get_ns` (its result decides the verdict,
/// so it is not optimised away; it is never 0).
#[classifier]
pub fn bench_floor_clock(_ctx: TcContext) -> i32 {
    // SAFETY: a helper without arguments or side effects.
    if unsafe { bpf_ktime_get_ns() } == 0 {
        TC_ACT_OK
    } else {
        TC_ACT_UNSPEC
    }
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
