//! The ovpn-lb loader as a library: the binary and the integration tests share it.

pub mod config;
pub mod datapath;
pub mod detach;
pub mod health;
pub mod hook;
pub mod interfaces;
pub mod management;
pub mod metrics;
pub mod neighbours;
pub mod netlink;
pub mod pins;
pub mod run;
pub mod status;
pub mod xdp_features;
