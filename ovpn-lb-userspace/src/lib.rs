//! The ovpn-lb loader as a library: the binary and the integration tests
//! share it. Where things live:
//!
//! - `cli`: the command line; `run`: the loader (lock, start, events);
//!   `status`, `detach`: the other commands;
//! - `config`: the file (`file`), its meaning (`validate`, `hook`) and its
//!   encoding for the maps (`encode`);
//! - `tunnel` and `health`: one runtime record per tunnel; `announce`:
//!   whether this gateway may be sent traffic (marker routes, health file);
//! - `datapath`: the BPF object, its maps and attaching (`attach`), and
//!   what the running kernel offers it with the fallbacks (`kernel`);
//! - `kernel`: the `ovpn-lb kernel` command; `tun`: tun/TAP devices made
//!   by this process;
//! - `kernel_path`: the policy rules and table for what the kernel forwards;
//! - `netlink`: everything said to the kernel over netlink; `facts`: a
//!   snapshot of its devices; `openvpn`: the management client;
//! - `metrics`: the Prometheus families and their HTTP server;
//! - `generate`: both gateways' OpenVPN and ovpn-lb files from a few answers.

pub mod announce;
pub mod cli;
pub mod config;
pub mod datapath;
pub mod detach;
pub mod doctor;
pub mod facts;
pub mod generate;
pub mod health;
pub mod kernel;
pub mod kernel_path;
pub mod logging;
pub mod metrics;
pub mod netlink;
pub mod openvpn;
pub mod pins;
pub mod probe;
pub mod run;
pub mod status;
pub mod tun;
pub mod tunnel;
