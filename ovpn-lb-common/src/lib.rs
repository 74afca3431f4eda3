//! Types and pure logic shared by the ovpn-lb BPF programs and the userspace loader.
//!
//! Everything here is `no_std` so the BPF crate can use it; everything with logic
//! in it is unit tested on the host.
#![no_std]
#![expect(
    clippy::inline_always,
    reason = "the BPF side needs these inlined into one program body"
)]

#[cfg(test)]
extern crate std;

pub mod checksum;
pub mod echo;
pub mod flow;
pub mod maps;
pub mod prefix;
pub mod probe;
pub mod queue;
pub mod reason;
pub mod schedule;

pub use maps::{
    FLOW_SLOTS, MAX_TUNNELS, ReasonStats, SCHEDULE_SLOTS, Schedule, SiteConfig, TunnelConfig,
    TunnelStats,
};
pub use prefix::{Prefix4, Prefix6};
pub use reason::Reason;
