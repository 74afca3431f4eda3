//! The gateway's edges, followed like the tunnels: the LAN device (its
//! program re-attached when the device is recreated: a bridge, bond, VLAN
//! or veth brought down and up again by its owner) and the WAN devices
//! (each guarded on egress while it exists).

use std::{collections::BTreeMap, time::Instant};

use anyhow::{Context as _, Result};

use super::{Daemon, RETRY_AFTER, report, short};
use crate::{
    config::Wan,
    datapath::attach,
    netlink::{LinkFacts, LinkKind},
};

/// When an edge is to be read again.
#[derive(Debug, Default)]
pub struct Pending {
    /// At the next settle.
    pub dirty: bool,
    /// Reading failed: at the daemon's next retry.
    pub failed: bool,
}

impl Pending {
    fn retry(&mut self) {
        self.dirty |= std::mem::take(&mut self.failed);
    }
}

/// What is attached at the edges.
#[derive(Debug, Default)]
pub struct Edges {
    /// The LAN device the LAN program was last attached to (0: none).
    pub lan_attached: u32,
    /// WAN devices guarded now: name -> ifindex.
    pub wan: BTreeMap<String, u32>,
    pub lan_pending: Pending,
    pub wan_pending: Pending,
    /// The last "no WAN guard" warning was given (said once per change).
    pub warned_unguarded: bool,
}

impl Daemon {
    /// Reads the LAN device again: a new device gets the LAN program and
    /// `SITE` its index and MAC; a missing one is logged (nothing is
    /// sprayed until it is back).
    pub(super) async fn reconcile_lan(&mut self) -> Result<()> {
        let name = self.config.lan.interface.clone();
        let link = self
            .netlink
            .link(&name)
            .await
            .context("reading the LAN device")?;
        let was_up = self.lan.as_ref().is_some_and(|l| l.up);
        match &link {
            None if self.edges.lan_attached != 0 => {
                log::warn!(
                    "LAN {name}: device removed; nothing is sprayed until it is back, and its program is attached to the new one"
                );
                self.edges.lan_attached = 0;
            }
            Some(l) if l.ifindex != self.edges.lan_attached => {
                let started = Instant::now();
                let hook = self.config.hook;
                for (a, how) in self
                    .datapath
                    .attach(&self.layout, &name, &attach::lan(hook))
                    .with_context(|| format!("attaching to the LAN device {name}"))?
                {
                    report(&a, &name, how, self.datapath.tc_hook());
                }
                log::info!(
                    "LAN {name}: device is ifindex {}; its program attached in {} µs",
                    l.ifindex,
                    started.elapsed().as_micros()
                );
                self.edges.lan_attached = l.ifindex;
            }
            _ => {}
        }
        let up = link.as_ref().is_some_and(|l| l.up);
        if up != was_up && link.is_some() {
            log::info!("LAN {name}: {}", if up { "up" } else { "down" });
        }
        // The XDP transmit flag follows the driver's features separately.
        let site = ovpn_lb_common::SiteConfig {
            flags: self.site.flags,
            ..self.config.site(link.as_ref())
        };
        if site != self.site {
            self.datapath.set_site(&site)?;
            self.site = site;
        }
        self.lan = link;
        Ok(())
    }

    /// Guards every WAN device that exists (named, or the default routes'),
    /// attaching to new devices; a device once guarded stays guarded while
    /// it exists, whatever routes do meanwhile.
    pub(super) async fn reconcile_wan(&mut self) -> Result<()> {
        let links = self.netlink.links().await.context("listing devices")?;
        let ours = |l: &LinkFacts| {
            l.name == self.config.lan.interface
                || self.tunnels.iter().any(|t| t.spec.device == l.name)
        };
        let wanted: Vec<LinkFacts> = match &self.config.wan {
            Wan::Named(names) => links
                .iter()
                .filter(|l| names.contains(&l.name))
                .cloned()
                .collect(),
            Wan::DefaultRoute => {
                let devices = self
                    .netlink
                    .default_route_devices()
                    .await
                    .context("reading the default routes")?;
                links
                    .iter()
                    .filter(|l| {
                        !ours(l)
                            && (devices.contains(&l.ifindex)
                                || self.edges.wan.get(&l.name) == Some(&l.ifindex))
                    })
                    .cloned()
                    .collect()
            }
        };
        // Devices gone since: their links went with them; the pins go too.
        let gone: Vec<String> = self
            .edges
            .wan
            .iter()
            .filter(|&(name, &ifindex)| {
                !wanted
                    .iter()
                    .any(|l| l.name == *name && l.ifindex == ifindex)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.edges.wan.remove(&name);
            if !wanted.iter().any(|l| l.name == name) {
                self.datapath.detach_egress(&self.layout, &name)?;
                log::warn!("WAN {name}: device gone; it is guarded again once it is back");
            }
        }
        for l in &wanted {
            if self.edges.wan.get(&l.name) == Some(&l.ifindex) {
                continue;
            }
            let what = attach::wan(l.kind == LinkKind::Ethernet);
            match self.datapath.attach(&self.layout, &l.name, &what) {
                Ok(done) => {
                    for (a, how) in done {
                        report(&a, &l.name, how, self.datapath.tc_hook());
                    }
                    log::info!(
                        "WAN {}: guarded: nothing with a LAN, remote or translated address leaves it outside a tunnel",
                        l.name
                    );
                    self.edges.wan.insert(l.name.clone(), l.ifindex);
                }
                Err(e) => {
                    log::warn!("WAN {}: {}; trying again", l.name, short(&e));
                    self.edges.wan_pending.failed = true;
                    self.retry_at = Some(Instant::now() + RETRY_AFTER);
                }
            }
        }
        let unguarded = self.edges.wan.is_empty();
        if unguarded && !self.edges.warned_unguarded {
            log::warn!(
                "no WAN guard: {}",
                match &self.config.wan {
                    Wan::Named(names) =>
                        format!("none of wan.interfaces ({}) exists", names.join(", ")),
                    Wan::DefaultRoute =>
                        "the main table has no default route, and wan.interfaces is not set"
                            .to_owned(),
                }
            );
        }
        self.edges.warned_unguarded = unguarded;
        Ok(())
    }

    /// The edges to read again after a notification about `ifindex`/`name`
    /// (a link) or any route.
    pub(super) fn mark_edges(&mut self, link: Option<(u32, Option<&str>)>) {
        match link {
            Some((ifindex, name)) => {
                let lan = &self.config.lan.interface;
                if name == Some(lan.as_str())
                    || (ifindex != 0 && ifindex == self.edges.lan_attached)
                {
                    self.edges.lan_pending.dirty = true;
                }
                let wan_named = match &self.config.wan {
                    Wan::Named(names) => name.is_some_and(|n| names.iter().any(|w| w == n)),
                    Wan::DefaultRoute => true,
                };
                if wan_named || self.edges.wan.values().any(|&i| i == ifindex) {
                    self.edges.wan_pending.dirty = true;
                }
            }
            None => {
                if self.config.wan == Wan::DefaultRoute {
                    self.edges.wan_pending.dirty = true;
                }
            }
        }
    }

    /// Reads the edges again if marked, keeping a failure for a retry.
    pub(super) async fn settle_edges(&mut self) {
        if std::mem::take(&mut self.edges.lan_pending.dirty)
            && let Err(e) = super::answered(self.reconcile_lan()).await
        {
            log::warn!(
                "LAN {}: {}; trying again",
                self.config.lan.interface,
                short(&e)
            );
            self.edges.lan_pending.failed = true;
            self.retry_at = Some(Instant::now() + RETRY_AFTER);
        }
        if std::mem::take(&mut self.edges.wan_pending.dirty)
            && let Err(e) = super::answered(self.reconcile_wan()).await
        {
            log::warn!("WAN guard: {}; trying again", short(&e));
            self.edges.wan_pending.failed = true;
            self.retry_at = Some(Instant::now() + RETRY_AFTER);
        }
    }
}

impl Edges {
    /// What failed is read again (the retry is due).
    pub fn retry(&mut self) {
        self.lan_pending.retry();
        self.wan_pending.retry();
    }

    /// Everything is read again (notifications were lost, or it is time).
    pub fn mark_all(&mut self) {
        self.lan_pending.dirty = true;
        self.wan_pending.dirty = true;
    }
}
