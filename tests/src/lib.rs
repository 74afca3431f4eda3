//! Shared test support: privilege checks, network-namespace guards, packet
//! builders with independent checksum validation, and the BPF fixture harness.
#![allow(
    clippy::missing_panics_doc,
    reason = "test support: every failure is a panic with context, by design"
)]

pub mod bpffs;
pub mod fixture;
pub mod gateway;
pub mod lab;
pub mod netns;
pub mod packets;
pub mod traffic;
pub mod tun;

/// True when the test may run. Without root it skips with a message, except
/// under `CI=true`, where a skip is a failure.
#[must_use]
pub fn require_root(test: &str) -> bool {
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
