//! `ovpn-lb detach`: stop a running loader, then remove every link, pin,
//! rule, route, neighbour entry and file ovpn-lb made, and nothing else.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result};

use crate::{
    kernel_path,
    netlink::Netlink,
    pins::{Layout, drop_link, is_bpffs_mount, remove_if_present},
    run::lock,
    status::State,
};

/// Stops a running `run` (it would otherwise follow a datapath that is no
/// longer there), then detaches; returns one line per thing removed.
///
/// # Errors
/// If the running loader does not stop, or something ovpn-lb made cannot be
/// removed.
pub async fn stop_and_detach(layout: &Layout) -> Result<Vec<String>> {
    let lock = if layout.run_dir.exists() {
        Some(lock::acquire(layout, "detach", lock::Ask::Stop).await?)
    } else {
        None
    };
    let removed = all(layout).await;
    drop(lock);
    removed
}

/// Detaches and unpins everything; the caller holds the run lock (or is the
/// loader itself, exiting).
///
/// # Errors
/// If something exists but cannot be removed.
pub async fn all(layout: &Layout) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let state = State::read(layout).ok();
    let netlink = Netlink::requests_only().context("opening rtnetlink")?;
    if let Some(state) = &state {
        for n in &state.neighbours {
            let Ok(Some(link)) = netlink.link(&n.device).await else {
                continue;
            };
            // Recorded before it was made: an operator's permanent entry
            // found in its place is not ours.
            if let Ok(Some(found)) = netlink.neighbour(link.ifindex, n.addr).await
                && found.permanent
            {
                continue;
            }
            if netlink
                .forget_neighbour(link.ifindex, n.addr)
                .await
                .unwrap_or(false)
            {
                removed.push(format!("managed neighbour {} on {}", n.addr, n.device));
            }
        }
        if let Some(a) = &state.announce {
            for route in netlink
                .marker_routes(a.table, a.protocol)
                .await
                .context("listing marker routes")?
            {
                netlink
                    .delete_marker_route(&route)
                    .await
                    .with_context(|| format!("removing the marker route for {route}"))?;
                removed.push(format!("marker route {route}"));
            }
            if a.health_file.exists() {
                remove_if_present(&a.health_file)
                    .with_context(|| format!("removing {}", a.health_file.display()))?;
                removed.push(format!("file {}", a.health_file.display()));
            }
        }
        for owned in state
            .kernel_route
            .iter()
            .chain(&state.retiring_kernel_routes)
        {
            removed.extend(
                kernel_path::remove(&netlink, owned)
                    .await
                    .context("removing ovpn-lb's policy rules and routes")?,
            );
        }
    }
    // Legacy tc filters first: their pins say which filters are ours.
    removed.extend(crate::datapath::attach::detach_legacy(layout)?);
    if let Ok(entries) = std::fs::read_dir(layout.links()) {
        for entry in entries.flatten() {
            let path = entry.path();
            // Dropping the last reference to a tcx or XDP link detaches it.
            drop_link(&path)?;
            removed.push(format!("link {}", path.display()));
        }
    }
    // Every pin there, an earlier build's maps included.
    if let Ok(entries) = std::fs::read_dir(layout.maps()) {
        for entry in entries.flatten() {
            let path = entry.path();
            remove_if_present(&path).with_context(|| format!("removing {}", path.display()))?;
            removed.push(format!("map pin {}", path.display()));
        }
    }
    for dir in [layout.links(), layout.maps()] {
        remove_if_present(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    if let Some(mount) = state.as_ref().and_then(|s| s.mounted_bpffs.as_deref()) {
        unmount_own_bpffs(mount, &layout.pin_root)?;
    }
    remove_if_present(&layout.pin_root)
        .with_context(|| format!("removing {}", layout.pin_root.display()))?;
    for file in [layout.state_file(), layout.lock_file()] {
        if file.exists() {
            remove_if_present(&file).with_context(|| format!("removing {}", file.display()))?;
            removed.push(format!("file {}", file.display()));
        }
    }
    match remove_if_present(&layout.run_dir) {
        // systemd's RuntimeDirectory, mounted into the unit: systemd removes it.
        Err(e) if e.kind() == std::io::ErrorKind::ResourceBusy => {}
        other => other.with_context(|| format!("removing {}", layout.run_dir.display()))?,
    }
    Ok(removed)
}

/// Unmounts the bpffs `run` mounted on a custom pin root; `/sys/fs/bpf`
/// stays, whoever mounted it, since others pin there too.
fn unmount_own_bpffs(mount: &Path, root: &Path) -> Result<()> {
    if mount != root || !is_bpffs_mount(mount) {
        return Ok(());
    }
    let status = Command::new("umount")
        .arg(mount)
        .status()
        .context("running umount")?;
    anyhow::ensure!(status.success(), "could not unmount {}", mount.display());
    Ok(())
}
