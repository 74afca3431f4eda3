//! `ovpn-lb detach`: remove every link, pin and file ovpn-lb made, nothing else.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result};
use ovpn_lb_common::maps::names;

use crate::{
    neighbours,
    pins::{BPFFS, Layout, drop_link, is_bpffs_mount, remove_if_present},
    status::State,
};

/// Detaches and unpins everything; returns one line per thing removed.
///
/// # Errors
/// If a pin or file exists but cannot be removed.
pub fn all(layout: &Layout) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    if let Ok(state) = State::read(layout) {
        for n in &state.neighbours {
            if neighbours::forget(&n.device, n.addr) {
                removed.push(format!("managed neighbour {} on {}", n.addr, n.device));
            }
        }
    }
    if let Ok(entries) = fs::read_dir(layout.links()) {
        for entry in entries.flatten() {
            let path = entry.path();
            // Dropping the last reference to a tcx or XDP link detaches it.
            drop_link(&path)?;
            removed.push(format!("link {}", path.display()));
        }
    }
    for name in names::ALL {
        let path = layout.maps().join(name);
        if path.exists() {
            remove_if_present(&path).with_context(|| format!("removing {}", path.display()))?;
            removed.push(format!("map pin {}", path.display()));
        }
    }
    for dir in [layout.links(), layout.maps()] {
        remove_if_present(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    unmount_own_bpffs(&layout.pin_root)?;
    remove_if_present(&layout.pin_root)
        .with_context(|| format!("removing {}", layout.pin_root.display()))?;
    for file in [layout.state_file(), layout.lock_file()] {
        if file.exists() {
            remove_if_present(&file).with_context(|| format!("removing {}", file.display()))?;
            removed.push(format!("file {}", file.display()));
        }
    }
    remove_if_present(&layout.run_dir)
        .with_context(|| format!("removing {}", layout.run_dir.display()))?;
    Ok(removed)
}

/// A custom pin root that `run` mounted a bpffs on is unmounted again.
fn unmount_own_bpffs(root: &Path) -> Result<()> {
    if root.starts_with(BPFFS) || !is_bpffs_mount(root) {
        return Ok(());
    }
    let status = Command::new("umount")
        .arg(root)
        .status()
        .context("running umount")?;
    anyhow::ensure!(status.success(), "could not unmount {}", root.display());
    Ok(())
}
