//! Managed neighbour entries for TAP tunnels' far ends (Linux 5.16+,
//! `NTF_EXT_MANAGED`): the kernel resolves the address and keeps it
//! resolved without traffic, so the datapath can address frames to a MAC
//! that stays current. The MACs themselves arrive as neighbour events
//! (`netlink`). Made with iproute2, which every gateway has.

use std::{net::IpAddr, process::Command};

use anyhow::{Context as _, Result, ensure};

/// Creates (or keeps) a managed entry for `addr` on `device`; an operator's
/// permanent entry is left as it is. True if the entry is ours.
///
/// # Errors
/// If iproute2 is missing or the kernel refuses (older than 5.16).
pub fn manage(device: &str, addr: IpAddr) -> Result<bool> {
    let shown = Command::new("ip")
        .args(["neigh", "show", &addr.to_string(), "dev", device])
        .output()
        .context("running `ip neigh` (iproute2)")?;
    if String::from_utf8_lossy(&shown.stdout).contains("PERMANENT") {
        return Ok(false);
    }
    let out = Command::new("ip")
        .args([
            "neigh",
            "replace",
            &addr.to_string(),
            "dev",
            device,
            "managed",
        ])
        .output()
        .context("running `ip neigh` (iproute2)")?;
    ensure!(
        out.status.success(),
        "`ip neigh replace {addr} dev {device} managed` failed (managed neighbour entries need Linux 5.16+): {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(true)
}

/// Removes the entry for `addr` on `device`; true if there was one.
#[must_use]
pub fn forget(device: &str, addr: IpAddr) -> bool {
    Command::new("ip")
        .args(["neigh", "del", &addr.to_string(), "dev", device])
        .output()
        .is_ok_and(|o| o.status.success())
}
