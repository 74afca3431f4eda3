//! The ovpn-lb loader as a library: the binary and the integration tests share it.

pub mod config;
pub mod datapath;
pub mod interfaces;
