//! The announcement in the kernel and on disk: the marker routes kept in
//! step with the verdict, and the health file.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, Result};

use super::{Announcer, Inputs};
use crate::{
    config::{AnnounceSpec, Net},
    netlink::{MarkerRoute, Netlink},
};

/// The marker route of `spec` for each of `prefixes`.
#[must_use]
pub fn markers(spec: &AnnounceSpec, prefixes: &[Net]) -> Vec<MarkerRoute> {
    prefixes
        .iter()
        .map(|net| MarkerRoute {
            dst: net.addr(),
            len: net.prefix_len(),
            table: spec.table,
            protocol: spec.protocol,
            metric: spec.metric,
        })
        .collect()
}

/// Makes the kernel's marker routes (those of `spec`'s table and protocol)
/// exactly `wanted`: stale ones (another prefix, another metric) go,
/// missing ones are added.
///
/// # Errors
/// If netlink fails.
pub async fn sync_markers(
    netlink: &Netlink,
    spec: &AnnounceSpec,
    wanted: &[MarkerRoute],
) -> Result<()> {
    let present = netlink
        .marker_routes(spec.table, spec.protocol)
        .await
        .context("listing marker routes")?;
    for stale in present.iter().filter(|r| !wanted.contains(r)) {
        netlink
            .delete_marker_route(stale)
            .await
            .with_context(|| format!("removing the marker route for {stale}"))?;
    }
    for route in wanted.iter().filter(|r| !present.contains(r)) {
        netlink
            .add_marker_route(route)
            .await
            .with_context(|| format!("adding the marker route for {route}"))?;
    }
    Ok(())
}

/// Where the health file is: as configured, or `health` in the run directory.
#[must_use]
pub fn health_file(spec: &AnnounceSpec, run_dir: &Path) -> PathBuf {
    spec.health_file
        .clone()
        .unwrap_or_else(|| run_dir.join("health"))
}

/// Writes the health file atomically: `0` announced, `1` withdrawn, as
/// keepalived's `track_file` reads it (with weight 0, non-zero is a fault).
///
/// # Errors
/// If it cannot be written.
pub fn write_health(path: &Path, announced: bool) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(if announced { b"0\n" } else { b"1\n" })?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The announcement of a running loader: the verdict, and what the kernel
/// and the health file say (kept in step, retried until they are).
pub struct Announcement {
    pub spec: AnnounceSpec,
    pub announcer: Announcer,
    /// Every marker route, announced or not.
    pub routes: Vec<MarkerRoute>,
    pub health_file: PathBuf,
    /// What the kernel and the file were last made to say.
    published: Option<bool>,
    /// Until then (a start, while the probes have not had their say) the
    /// kernel and the file keep what they say: what a previous loader
    /// announced stays, and nothing is announced before the tunnels are
    /// known to carry traffic.
    hold_until: Option<Instant>,
}

impl Announcement {
    #[must_use]
    pub fn new(spec: AnnounceSpec, remote: &[Net], run_dir: &Path) -> Self {
        Self {
            announcer: Announcer::new(spec.min_tunnels),
            routes: markers(&spec, remote),
            health_file: health_file(&spec, run_dir),
            spec,
            published: None,
            hold_until: None,
        }
    }

    /// Starts from what the kernel says (a previous loader's verdict:
    /// every marker route there, or not), and decides nothing until `at`
    /// (see `hold_until`).
    ///
    /// # Errors
    /// If the marker routes cannot be listed.
    pub async fn adopt(&mut self, netlink: &Netlink, at: Instant) -> Result<()> {
        let present = netlink
            .marker_routes(self.spec.table, self.spec.protocol)
            .await
            .context("listing marker routes")?;
        let announced = !self.routes.is_empty() && self.routes.iter().all(|r| present.contains(r));
        self.announcer.announced = announced;
        self.hold_until = Some(at);
        Ok(())
    }

    /// When a hold ends, if one is on.
    #[must_use]
    pub fn held_until(&self) -> Option<Instant> {
        self.hold_until.filter(|&t| t > Instant::now())
    }

    /// Writes the kernel and the file again at the next decision, whatever
    /// they were last made to say (someone may have changed them).
    pub fn resync(&mut self) {
        self.published = None;
    }

    /// Whether the maintenance file exists now.
    #[must_use]
    pub fn maintenance(&self) -> bool {
        self.spec.maintenance_file.exists()
    }

    /// Decides on `inputs` and makes the kernel and the file say it; true
    /// when the verdict changed.
    ///
    /// # Errors
    /// If the marker routes or the file cannot be written (the verdict
    /// stands; the next call tries again).
    pub async fn publish(&mut self, netlink: &Netlink, inputs: Inputs) -> Result<bool> {
        if self.held_until().is_some() && !inputs.stopping {
            return Ok(false);
        }
        let changed = self.announcer.decide(inputs);
        let announced = self.announcer.announced;
        if self.published != Some(announced) || changed {
            let wanted: &[MarkerRoute] = if announced { &self.routes } else { &[] };
            sync_markers(netlink, &self.spec, wanted).await?;
            write_health(&self.health_file, announced)?;
            self.published = Some(announced);
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_health_file_reads_as_keepalived_expects() {
        let dir = std::env::temp_dir().join(format!("ovpnlb-health-{}", std::process::id()));
        let path = dir.join("health");
        write_health(&path, true).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "0\n");
        write_health(&path, false).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "1\n");
        fs::remove_dir_all(&dir).unwrap();
    }
}
