//! Where each generated file goes on a gateway, relative to its root (`/`
//! on a real gateway). The output directory mirrors these paths, so a
//! gateway's directory is copied onto `/` as it is.

use std::path::{Path, PathBuf};

/// OpenVPN's configurations: Debian's `openvpn@NAME.service` runs
/// `/etc/openvpn/NAME.conf`.
pub const OPENVPN_DIR: &str = "etc/openvpn";

/// Tunnel `device`'s OpenVPN configuration.
#[must_use]
pub fn openvpn_config(device: &str) -> PathBuf {
    Path::new(OPENVPN_DIR).join(device).with_extension("conf")
}

/// The gateway's certificate and key, and the management password.
pub const PKI_DIR: &str = "etc/openvpn/ovpn-lb";
pub const PASSWORD: &str = "etc/openvpn/ovpn-lb/management.pw";

/// The certificate of the gateway called `name`.
#[must_use]
pub fn certificate(name: &str) -> PathBuf {
    PathBuf::from(format!("{PKI_DIR}/{name}.crt"))
}

/// Its private key, beside it.
#[must_use]
pub fn private_key(name: &str) -> PathBuf {
    certificate(name).with_extension("key")
}

/// OpenVPN's runtime directory on Debian (made by its tmpfiles.d entry):
/// the management sockets.
pub const RUN_DIR: &str = "run/openvpn";

/// Tunnel `device`'s management socket.
#[must_use]
pub fn management_socket(device: &str) -> PathBuf {
    PathBuf::from(format!("{RUN_DIR}/{device}.sock"))
}

pub const LOADER_CONFIG: &str = "etc/ovpn-lb/ovpn-lb.toml";
pub const SYSCTL: &str = "etc/sysctl.d/60-ovpn-lb.conf";
pub const UNIT: &str = "etc/systemd/system/ovpn-lb.service";
pub const README: &str = "README.txt";

/// FRR's integrated configuration and the daemons it runs (`--ha bgp`).
pub const FRR_CONF: &str = "etc/frr/frr.conf";
pub const FRR_DAEMONS: &str = "etc/frr/daemons";
/// keepalived's configuration (`--ha vrrp`).
pub const KEEPALIVED_CONF: &str = "etc/keepalived/keepalived.conf";
/// While this file exists the gateway withdraws (`announce.maintenance_file`).
pub const MAINTENANCE: &str = "etc/ovpn-lb/maintenance";
/// `0` while the gateway announces, `1` while not (`announce.health_file`).
pub const HEALTH: &str = "run/ovpn-lb/health";

/// Per site (`--ha bgp`): the router's part, to merge into its FRR
/// configuration, and its sysctls; relative to the site's directory.
pub const ROUTER_FRR: &str = "router-frr.conf";
pub const ROUTER_SYSCTL: &str = "router-sysctl.conf";
