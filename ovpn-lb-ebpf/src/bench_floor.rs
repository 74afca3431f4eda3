//! The floor for `cargo xtask bench`: a tc program that hands every packet on.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};

#[classifier]
pub fn bench_floor(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
