//! The test bed: everything the integration tests, `cargo xtask lab`/`run`
//! and the benchmark build their networks and run their checks with.
//!
//! - `process`: commands, child processes, PID files, waiting on logs;
//! - `netns`: network namespaces and running commands in them;
//! - `topology`: veth links, a LAN host behind its gateway, router settings;
//! - `tun`: tun/TAP devices opened by the test itself;
//! - `bpffs`: pin directories and private bpffs mounts;
//! - `teardown`: the record of what a test bed made, torn down in one place;
//! - `openvpn`: OpenVPN processes (and CPU quotas); `loader`: the `ovpn-lb`
//!   binary; configuration comes from the generator (`ovpn_lb::generate`);
//! - `frr`, `keepalived`: FRR instances and keepalived per namespace, for
//!   gateway pairs behind a router (BGP) or sharing a LAN (VRRP);
//!   `failover`: faults on such pairs and what they cost (routes, pings,
//!   transfers);
//! - `numgen`: nftables `numgen` per-packet spraying, the kernel's own way;
//! - `lab`: two sites joined by real OpenVPN tunnels; `gateway`: one gateway
//!   with tun devices held by the test, for the loader's tests;
//! - `relay`: a UDP relay that delays a tunnel's datagrams (a longer WAN
//!   path);
//! - `machine`: booted systemd containers joined to a lab's namespaces, for
//!   the package's test;
//! - `lag`: the machine's scheduling lag beside a timing check;
//! - `traffic`: TCP, UDP, ping and captures between namespaces;
//! - `packets` and `fixture`: packet builders and the `BPF_PROG_TEST_RUN`
//!   harness.
#![allow(
    clippy::missing_panics_doc,
    reason = "test support: every failure is a panic with context, by design"
)]

pub mod bpffs;
pub mod failover;
pub mod fixture;
pub mod frr;
pub mod gateway;
pub mod keepalived;
pub mod lab;
pub mod lag;
pub mod loader;
pub mod machine;
pub mod netns;
pub mod numgen;
pub mod openvpn;
pub mod packets;
pub mod ping;
pub mod process;
pub mod relay;
pub mod teardown;
pub mod topology;
pub mod traffic;
pub mod tun;

use std::sync::{Mutex, MutexGuard};

/// Tests that build labs or measure timing (the 100 ms health bound) run one
/// at a time even when the test harness runs threads in parallel.
static SERIAL: Mutex<()> = Mutex::new(());

/// Names the factor by which a slow machine stretches the test bed's time
/// limits (a whole number; 1 when unset).
pub const SLOWDOWN_ENV: &str = "OVPN_LB_TEST_SLOWDOWN";

/// `limit` stretched by [`SLOWDOWN_ENV`]. `cargo xtask kernels` sets it in
/// emulated guests, where everything runs several times slower; a native
/// run leaves every limit as written.
#[must_use]
pub fn slowed(limit: std::time::Duration) -> std::time::Duration {
    limit * slowdown()
}

/// The factor [`SLOWDOWN_ENV`] names.
#[must_use]
pub fn slowdown() -> u32 {
    std::env::var(SLOWDOWN_ENV)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1)
}

/// Holds the one-at-a-time lock for the caller's scope.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// For a test that needs root and must run alone: the lock that keeps it
/// alone, or `None` (the skip said, see [`require_root`]) without root. The
/// test is named by its thread, which libtest names after it.
#[must_use]
pub fn root_alone() -> Option<MutexGuard<'static, ()>> {
    let name = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned();
    require_root(&name).then(serial)
}

/// True when the test may run. Without root it skips with a message, except
/// under `CI=true`, where a skip is a failure.
#[must_use]
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs root (CAP_BPF, CAP_NET_ADMIN) and CI=true forbids skipping it"
    );
    eprintln!(
        "SKIPPED {test}: needs root (CAP_BPF, CAP_NET_ADMIN); run `cargo xtask test` as root"
    );
    false
}
