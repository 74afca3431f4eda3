//! The ovpn-lb loader as a library: the binary and the integration tests share it.

pub mod datapath;
