//! The running loader: one record per tunnel, kept in step with the kernel
//! (devices, neighbours, OpenVPN's state), and the datapath kept in step with
//! the records (tunnel entries, schedule, the kernel path's route); the LAN
//! and WAN devices followed alike (`edges`).
//!
//! Every handler's failure is logged and retried: a device that vanishes
//! between an event and the attach, a map write the kernel refuses once,
//! nothing of that stops the loader. Events are triggers; the state itself
//! is always read fresh from the kernel (see `netlink`).

mod edges;
mod probing;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::{Duration, Instant, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use ovpn_lb_common::{
    SiteConfig,
    maps::{Spray, site_flags},
    queue::RingHooks,
    schedule,
};
use tokio::sync::mpsc;

use crate::{
    announce::{self, kernel::Announcement},
    config::{Config, Hook, TunnelKind},
    datapath::{
        Datapath,
        attach::{self, Attached, Attachment},
        rings,
    },
    facts::Facts,
    health::{self, Management},
    kernel_path::{self, Owned},
    metrics::{AnnounceView, TunnelView, Views},
    netlink::{self, LinkFacts, Netlink, RouteTarget, netdev},
    pins::Layout,
    probe::{self, io::Sender, now_ns},
    status::{AnnounceState, ManagedNeighbour, ProbeState, State, TunnelState},
    tunnel::{Tunnel, TunnelId},
};

/// Pause before a failed step is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Every so often everything is read again, whatever the events said.
const RECONCILE_EVERY: Duration = Duration::from_secs(30);
/// How soon a maintenance file is noticed (created or removed).
const MAINTENANCE_POLL: Duration = Duration::from_millis(100);
/// A read of the kernel's state that takes longer failed: health and the
/// schedule must not wait on one lost answer.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// `read`, or an error if the kernel has not answered within
/// [`ANSWER_WAIT`].
async fn answered<T>(read: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(ANSWER_WAIT, read)
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "the kernel did not answer within {} s",
                ANSWER_WAIT.as_secs()
            ))
        })
}

/// What the daemon works with besides its configuration.
pub struct Io {
    pub datapath: Datapath,
    pub netlink: Netlink,
    /// Shared with the metrics server.
    pub views: Views,
    /// A bpffs `run` mounted, for `detach` to unmount.
    pub mounted_bpffs: Option<PathBuf>,
    /// Where the plain peers' pingers report echo replies.
    pub echo_tx: mpsc::UnboundedSender<(TunnelId, u16, u64)>,
    /// Why the ring accounting cannot know where kernel memory is, if it
    /// cannot (packet spray only: `rings::kernel_layout`).
    pub rings_unknown: Option<String>,
    /// Writes the reflected probes; opened before anything was made, as a
    /// probe sender that cannot open must stop the start.
    pub sender: Option<Sender>,
    /// What the previous `run` left on record: this one takes it over.
    pub previous: Option<State>,
}

pub struct Daemon {
    /// The validated configuration; its tunnels live in `tunnels`.
    config: Config,
    config_path: PathBuf,
    layout: Layout,
    tunnels: Vec<Tunnel>,
    datapath: Datapath,
    netlink: Netlink,
    lan: Option<LinkFacts>,
    /// The `SITE` entry as written.
    site: SiteConfig,
    /// The LAN driver's XDP features are followed (XDP hook only): the XDP
    /// restore may then forward straight to the LAN while it can transmit.
    lan_features_followed: bool,
    /// What is attached to the LAN and WAN devices.
    edges: edges::Edges,
    kernel: Owned,
    /// Earlier configurations' kernel paths still to remove.
    retiring: Vec<Owned>,
    routes: Option<(Option<RouteTarget>, Option<RouteTarget>)>,
    /// The live schedule's weights and path delays.
    published: Option<(Vec<u32>, Vec<u32>)>,
    /// Packet spray compares the tunnels' rings: their accounting runs, on
    /// these hooks.
    rings: Option<RingHooks>,
    /// Why the ring accounting cannot run, if it cannot.
    rings_unknown: Option<String>,
    /// What the kernel offers and the fallbacks in force.
    features: crate::datapath::kernel::Report,
    views: Views,
    neighbours: Vec<ManagedNeighbour>,
    mounted_bpffs: Option<PathBuf>,
    /// Tunnels to read again from the kernel, now.
    dirty: BTreeSet<TunnelId>,
    /// Tunnels whose reading failed, to read again at `retry_at`.
    failed: BTreeSet<TunnelId>,
    /// A step failed: try again then.
    retry_at: Option<Instant>,
    next_reconcile: Instant,
    /// What `status` last saw, to write the state file only on change.
    written: Option<State>,
    /// When the state file was last written (probe figures change all the
    /// time; they are written at most once a second).
    written_at: Instant,
    /// Probe settings; `None` when probes are off.
    probe: Option<probe::Settings>,
    /// Writes probes into the tunnel devices.
    sender: Option<Sender>,
    /// Our view and flags as last told to the datapath and the far gateway.
    announced: Option<ovpn_lb_common::probe::LocalView>,
    next_probe: Instant,
    /// When the tunnel devices' counters are read next (four times per probe
    /// interval: overload evidence, see `probe`).
    next_counters: Instant,
    /// Echo replies from the plain peers' pingers.
    echo_tx: mpsc::UnboundedSender<(TunnelId, u16, u64)>,
    /// `[announce]`: the marker routes and the health file, while healthy.
    announcement: Option<Announcement>,
    /// Stopping: withdrawn, draining until the loader exits.
    stopping: bool,
    /// What the far gateway of the pair says in its probes and answers
    /// (the newest fresh word on any tunnel).
    far_flags: announce::Flags,
}

fn short(e: &anyhow::Error) -> String {
    format!("{e:#}")
}

impl Daemon {
    /// Takes the configuration's tunnels into one record each.
    #[must_use]
    pub fn new(mut config: Config, config_path: &Path, layout: &Layout, io: Io) -> Self {
        let Io {
            datapath,
            netlink,
            views,
            mounted_bpffs,
            echo_tx,
            rings_unknown,
            sender,
            previous,
        } = io;
        let probe = config.probe;
        let tunnels = std::mem::take(&mut config.tunnels)
            .into_iter()
            .enumerate()
            .map(|(k, spec)| Tunnel::new(TunnelId::new(k), spec))
            .collect();
        let kernel = Owned::of(&config);
        let announcement = config
            .announce
            .clone()
            .map(|spec| Announcement::new(spec, &config.remote, &layout.run_dir));
        let previous = previous.unwrap_or_default();
        let mut retiring = previous.retiring_kernel_routes;
        retiring.extend(previous.kernel_route);
        retiring.retain(|old| old != &kernel);
        retiring.dedup();
        Self {
            config,
            config_path: config_path.to_path_buf(),
            layout: layout.clone(),
            tunnels,
            datapath,
            netlink,
            lan: None,
            site: SiteConfig::default(),
            lan_features_followed: false,
            edges: edges::Edges::default(),
            kernel,
            retiring,
            routes: None,
            published: None,
            rings: None,
            rings_unknown,
            features: crate::datapath::kernel::Report::default(),
            views,
            // Kept on record until `detach`, whatever this configuration says.
            neighbours: previous.neighbours,
            mounted_bpffs: mounted_bpffs.or(previous.mounted_bpffs),
            dirty: BTreeSet::new(),
            failed: BTreeSet::new(),
            retry_at: None,
            next_reconcile: Instant::now() + RECONCILE_EVERY,
            written: None,
            written_at: Instant::now(),
            probe,
            sender,
            announced: None,
            next_probe: Instant::now(),
            next_counters: Instant::now(),
            echo_tx,
            announcement,
            stopping: false,
            far_flags: announce::Flags::default(),
        }
    }

    #[must_use]
    pub fn tunnels(&self) -> &[Tunnel] {
        &self.tunnels
    }

    /// Writes the site and prefixes, installs the kernel path (on record in
    /// the state file first), takes every tunnel's device and far end from
    /// the kernel and attaches to it, admits what is healthy, publishes, and
    /// attaches the LAN program last. Nothing here drops traffic on a
    /// restart: a tunnel's entry keeps its far end's MAC while the device is
    /// the same.
    ///
    /// # Errors
    /// If the datapath cannot be configured or the LAN program attached.
    pub async fn start(&mut self, facts: &Facts, lan_features_followed: bool) -> Result<()> {
        self.lan = facts.link(&self.config.lan.interface).cloned();
        self.lan_features_followed = lan_features_followed;
        let mut site = self.config.site(self.lan.as_ref());
        if let Some(lan) = &self.lan {
            site = self.with_lan_xmit(
                site,
                facts.xdp_features.get(&lan.ifindex).copied().unwrap_or(0),
            );
        }
        self.datapath.set_site(&site)?;
        self.site = site;
        let specs: Vec<_> = self.tunnels.iter().map(|t| t.spec.clone()).collect();
        self.datapath.sync_prefixes(
            &self.config.remote_entries(),
            &crate::config::translation_entries(&specs),
            &crate::config::guard_entries(&self.config, &specs),
        )?;
        let wanted = kernel_path::wanted(&self.config, &specs);
        // On record before it is made: a crash or a failure from here on
        // leaves nothing the next `run` or `detach` does not know of.
        self.record()?;
        while let Some(old) = self.retiring.first().cloned() {
            for line in kernel_path::retire(&self.netlink, &old, &self.kernel, &wanted.rules)
                .await
                .context("removing an earlier configuration's policy rules")?
            {
                log::info!("removed {line} (an earlier kernel_route)");
            }
            self.retiring.remove(0);
            self.record()?;
        }
        kernel_path::install(&self.netlink, &self.kernel, &wanted).await?;

        self.features = self.datapath.kernel_report();
        // The WAN guard as soon as the kernel path is there.
        self.edges.wan_pending.dirty = true;
        self.settle_edges().await;
        self.rings = self.account_rings();
        self.features.log();
        for k in 0..self.tunnels.len() {
            let link = facts.link(&self.tunnels[k].spec.device).cloned();
            if let Some(l) = &link {
                self.report_foreign(&l.name.clone(), facts);
            }
            // The entry a previous run left: its far-end MAC stays valid while
            // the device is the same one, so a restart drops nothing.
            let previous = self.datapath.tunnel(self.tunnels[k].id.raw()).ok();
            if let (Some(prev), Some(l)) = (previous, &link)
                && prev.ifindex == l.ifindex
            {
                self.tunnels[k].peer_mac = prev.peer_mac;
            }
            if let Err(e) = self.take_device(k, link).await {
                log::warn!("{}: {}; trying again", self.tunnels[k].label(), short(&e));
                self.failed.insert(self.tunnels[k].id);
                self.retry_at = Some(Instant::now() + RETRY_AFTER);
            }
        }
        let ifindexes: Vec<u32> = self.tunnels.iter().map(Tunnel::ifindex).collect();
        self.datapath
            .retire_tunnels(self.tunnels.len(), &ifindexes)?;
        for t in &mut self.tunnels {
            t.health.admit_now();
        }
        // The first verdict waits until the probes could have taken out a
        // tunnel that does not carry traffic.
        if let (Some(a), Some(settings)) = (&mut self.announcement, self.probe) {
            let at = Instant::now() + settings.detection() + settings.interval;
            if let Err(e) = a.adopt(&self.netlink, at).await {
                log::warn!("announcing: {}", short(&e));
            }
        }
        self.announce();
        self.publish().await;
        // The LAN program last, onto maps that hold everything it reads: a
        // takeover of another build's maps sprays from its first packet.
        let lan = self.config.lan.interface.clone();
        self.report_foreign(&lan, facts);
        for (a, how) in self
            .datapath
            .attach(&self.layout, &lan, &attach::lan(self.config.hook))?
        {
            report(&a, &lan, how, self.datapath.tc_hook());
        }
        self.edges.lan_attached = self.lan.as_ref().map_or(0, |l| l.ifindex);
        Ok(())
    }

    /// Switches the ring accounting on where packet spray can use it, on
    /// the best hooks the kernel takes, off elsewhere; which hooks run.
    /// Where it cannot run, packet spray walks the round-robin slots, and
    /// says so (the kernel report names why).
    fn account_rings(&mut self) -> Option<RingHooks> {
        if !rings::accounted(self.config.spray) {
            self.stop_accounting();
            self.features.accounting(false, None);
            return None;
        }
        let packet = self.config.spray == Spray::Packet;
        if self.config.hook == Hook::Xdp {
            // The XDP LAN program walks the slots whatever is accounted:
            // its stack leaves no room for the comparison. A choice of
            // configuration, not a kernel's fallback.
            if packet {
                log::warn!(
                    "spray = \"packet\" under the XDP hook sprays round robin: the XDP LAN program has no room for the comparison"
                );
            }
            self.stop_accounting();
            self.features.accounting(false, None);
            return None;
        }
        let chosen = match &self.rings_unknown {
            Some(why) => Err(anyhow::anyhow!("{why}")),
            None => rings::hooks_to_try().and_then(|hooks| {
                // Hooks this kernel lacks are not tried.
                let (hooks, blocked): (Vec<_>, Vec<_>) = hooks
                    .into_iter()
                    .map(|h| (h, crate::datapath::kernel::ring_hooks_blocker(h)))
                    .partition(|(_, why)| why.is_none());
                let blocked: Vec<String> = blocked
                    .into_iter()
                    .map(|(h, why)| format!("{}: {}", h.name(), why.unwrap_or_default()))
                    .collect();
                for b in &blocked {
                    log::info!("ring accounting: {b}; not tried");
                }
                let hooks: Vec<RingHooks> = hooks.into_iter().map(|(h, _)| h).collect();
                if hooks.is_empty() {
                    anyhow::bail!("{}", blocked.join("; "));
                }
                let (h, failed) = self.datapath.account_rings(&self.layout, &hooks)?;
                for f in failed {
                    log::info!("ring accounting: {f}; trying the next hooks");
                }
                Ok(h)
            }),
        };
        match chosen {
            Ok(h) if !packet => {
                log::warn!(
                    "rings accounted by {} ({}) though spray = \"{}\" does not use them ({}=1)",
                    h.name(),
                    describe_hooks(h),
                    self.config.spray.name(),
                    rings::ACCOUNT_ENV
                );
                self.features.accounting(true, None);
                Some(h)
            }
            Ok(h) => {
                log::info!(
                    "packet spray: each packet takes the tunnel it leaves by first; rings accounted by {} ({})",
                    h.name(),
                    describe_hooks(h)
                );
                self.features.accounting(true, None);
                let lan = &self.config.lan.interface;
                if crate::facts::gro_enabled(lan).unwrap_or(false) {
                    log::warn!(
                        "{lan} merges received TCP segments (GRO): packet spray places each merged packet whole, which reorders; `ethtool -K {lan} gro off` lets it place every segment"
                    );
                }
                Some(h)
            }
            Err(e) => {
                // Half attached would count enqueues without reads. The
                // kernel report's fallback carries the warning, where it
                // is one: the other sprays never needed the rings.
                self.stop_accounting();
                if packet {
                    let why = format!("it cannot see the tunnels' rings ({})", short(&e));
                    self.features.accounting(false, Some(&why));
                } else {
                    log::warn!(
                        "rings not accounted ({}=1): {}",
                        rings::ACCOUNT_ENV,
                        short(&e)
                    );
                    self.features.accounting(false, None);
                }
                None
            }
        }
    }

    fn stop_accounting(&mut self) {
        if let Err(e) = self.datapath.stop_accounting(&self.layout) {
            log::warn!("switching the ring accounting off: {}", short(&e));
        }
    }

    fn report_foreign(&self, iface: &str, facts: &Facts) {
        let xdp = facts.link(iface).map_or(0, |l| l.xdp_prog_id);
        for foreign in attach::foreign_programs(iface, &self.layout, self.datapath.tc_hook(), xdp) {
            log::info!("{iface} also has {foreign}; left alone");
        }
    }

    /// Tunnel `k`'s device is now `link` (`None`: gone, or of the wrong kind):
    /// attach to a new device, learn its far end, write the entry, update
    /// health.
    async fn take_device(&mut self, k: usize, link: Option<LinkFacts>) -> Result<()> {
        let now = Instant::now();
        let link = link.filter(|l| {
            let fits = matches!(
                (self.tunnels[k].spec.kind, l.kind),
                (TunnelKind::Tun, netlink::LinkKind::L3PointToPoint)
                    | (TunnelKind::Tap, netlink::LinkKind::Ethernet)
            );
            if !fits {
                log::warn!(
                    "{}: {} ({}) does not fit kind = \"{}\"; left out of the rotation",
                    self.tunnels[k].label(),
                    l.name,
                    l.kind,
                    self.tunnels[k].spec.kind.name()
                );
                return false;
            }
            // Packet spray would see an unfollowed queue as idle for ever.
            if self.rings.is_some()
                && self.config.spray == Spray::Packet
                && let Some(why) = l.driver.why_no_ring()
            {
                log::warn!(
                    "{}: {} is {why}: packet spray cannot see its queue; left out of the rotation",
                    self.tunnels[k].label(),
                    l.name
                );
                return false;
            }
            true
        });
        let old_ifindex = self.tunnels[k].ifindex();
        let new_ifindex = link.as_ref().map_or(0, |l| l.ifindex);
        if new_ifindex != old_ifindex {
            self.tunnels[k].peer_mac = [0; 6];
        }
        let before = self.tunnels[k].entry();
        self.tunnels[k].link.clone_from(&link);
        if new_ifindex != old_ifindex && new_ifindex != 0 {
            let t = &self.tunnels[k];
            let what = attach::tunnel(t.spec.kind, self.config.hook);
            let device = t.spec.device.clone();
            let label = t.label();
            let done = self.datapath.attach(&self.layout, &device, &what);
            match done {
                Ok(done) => {
                    for (a, how) in done {
                        report(&a, &device, how, self.datapath.tc_hook());
                    }
                }
                Err(e) => {
                    // Not attached: keep it out until a retry succeeds.
                    self.tunnels[k].link = None;
                    self.write_entry(k, &before, old_ifindex)?;
                    self.tunnels[k].health.set_link(false, now);
                    return Err(e.context(format!("{label}: attaching")));
                }
            }
            log::info!("{label}: device is ifindex {new_ifindex}; programs attached");
            // A new ring (not the same device a previous run left in the
            // entry): the old device's figures say nothing about it.
            let id = self.tunnels[k].id.raw();
            let same = self
                .datapath
                .tunnel(id)
                .is_ok_and(|e| e.ifindex == new_ifindex);
            if !same && let Err(e) = self.datapath.reset_queue(id, now_ns()) {
                log::warn!("{label}: {}", short(&e));
            }
        }
        if new_ifindex == 0 && old_ifindex != 0 {
            log::info!("{}: device removed", self.tunnels[k].label());
        }
        if let (Some(l), Some(addr)) = (&link, self.tunnels[k].spec.next_hop) {
            self.manage_neighbour(k, l.ifindex, addr).await;
            let mac = self
                .netlink
                .neighbour(l.ifindex, addr)
                .await
                .context("reading the neighbour table")?
                .and_then(|n| n.mac)
                .unwrap_or([0; 6]);
            if mac != self.tunnels[k].peer_mac {
                log::info!(
                    "{}: next hop {addr} {}",
                    self.tunnels[k].label(),
                    if mac == [0; 6] {
                        "unresolved".to_owned()
                    } else {
                        format!("is at {}", mac_text(mac))
                    }
                );
            }
            self.tunnels[k].peer_mac = mac;
        }
        self.write_entry(k, &before, old_ifindex)?;
        let t = &mut self.tunnels[k];
        t.health.set_link(link.as_ref().is_some_and(|l| l.up), now);
        let known = t.peer_mac != [0; 6];
        t.health.set_next_hop(known, now);
        self.follow_probes(k, new_ifindex != old_ifindex);
        Ok(())
    }

    fn write_entry(
        &mut self,
        k: usize,
        before: &ovpn_lb_common::TunnelConfig,
        old_ifindex: u32,
    ) -> Result<()> {
        let entry = self.tunnels[k].entry();
        let current = self.datapath.tunnel(self.tunnels[k].id.raw()).ok();
        if &entry != before || current.as_ref() != Some(&entry) {
            self.datapath
                .set_tunnel(self.tunnels[k].id.raw(), &entry, Some(old_ifindex))
                .with_context(|| {
                    format!("{}: writing its datapath entry", self.tunnels[k].label())
                })?;
        }
        Ok(())
    }

    /// A TAP tunnel's far end gets a managed neighbour entry, which the kernel
    /// keeps resolved; without it the tunnel waits until the kernel resolves
    /// the far end some other way.
    async fn manage_neighbour(&mut self, k: usize, ifindex: u32, addr: std::net::IpAddr) {
        let device = self.tunnels[k].spec.device.clone();
        let n = ManagedNeighbour { device, addr };
        let recorded = self.neighbours.contains(&n);
        if !recorded {
            // On record first (`detach` leaves a permanent entry alone).
            self.neighbours.push(n.clone());
            if let Err(e) = self.record() {
                log::warn!("{}: {}", self.tunnels[k].label(), short(&e));
            }
        }
        let made = self.netlink.manage_neighbour(ifindex, addr).await;
        if !recorded && !matches!(made, Ok(true)) {
            self.neighbours.retain(|m| m != &n);
        }
        match made {
            Ok(true) => {}
            Ok(false) => log::info!(
                "{}: {addr} has a permanent neighbour entry; using it",
                self.tunnels[k].label()
            ),
            Err(e) => log::warn!(
                "{}: cannot make a managed neighbour entry for {addr} (Linux 5.16+): {e}",
                self.tunnels[k].label()
            ),
        }
    }

    /// Reads tunnel `k`'s device (and far end) again from the kernel.
    async fn reconcile(&mut self, k: usize) -> Result<()> {
        let link = self
            .netlink
            .link(&self.tunnels[k].spec.device)
            .await
            .context("reading a link")?;
        self.take_device(k, link).await
    }

    /// Handles one notification.
    pub fn on_netlink(&mut self, event: &netlink::Event) {
        match event {
            netlink::Event::Overrun => {
                log::warn!("netlink notifications were lost; reading every tunnel again");
                self.mark_all();
            }
            netlink::Event::Route => self.mark_edges(None),
            netlink::Event::Link { ifindex, name } => {
                self.mark_edges(Some((*ifindex, name.as_deref())));
                for t in &self.tunnels {
                    if name.as_deref() == Some(t.spec.device.as_str())
                        || (*ifindex != 0 && *ifindex == t.ifindex())
                    {
                        self.dirty.insert(t.id);
                    }
                }
            }
            netlink::Event::Neighbour { ifindex } => {
                for t in &self.tunnels {
                    if t.spec.kind == TunnelKind::Tap && *ifindex == t.ifindex() {
                        self.dirty.insert(t.id);
                    }
                }
            }
        }
    }

    fn mark_all(&mut self) {
        self.dirty.extend(self.tunnels.iter().map(|t| t.id));
        self.edges.mark_all();
    }

    /// OpenVPN's management interface said something (`None`: lost it).
    pub fn on_management(&mut self, id: TunnelId, state: Option<String>) {
        let m = state.map_or(Management::Lost, Management::State);
        self.tunnels[id.index()]
            .health
            .set_management(m, Instant::now());
    }

    /// The LAN driver's XDP features changed: restores go straight to it
    /// only while it can transmit XDP frames.
    pub fn on_xdp_features(&mut self, ifindex: u32, features: u64) {
        if self.config.hook != Hook::Xdp || ifindex != self.site.lan_ifindex {
            return;
        }
        let site = self.with_lan_xmit(self.site, features);
        if site != self.site {
            match self.datapath.set_site(&site) {
                Ok(()) => self.site = site,
                Err(e) => {
                    log::warn!("writing SITE: {}; trying again", short(&e));
                    self.retry_at = Some(Instant::now() + RETRY_AFTER);
                }
            }
        }
    }

    fn with_lan_xmit(&self, mut site: SiteConfig, features: u64) -> SiteConfig {
        let lan = &self.config.lan.interface;
        let can = self.config.hook == Hook::Xdp
            && self.lan_features_followed
            && features & netdev::NDO_XMIT != 0;
        let had = site.flags & site_flags::LAN_XDP_XMIT != 0;
        if can {
            site.flags |= site_flags::LAN_XDP_XMIT;
        } else {
            site.flags &= !site_flags::LAN_XDP_XMIT;
        }
        if self.config.hook == Hook::Xdp && (can != had || self.written.is_none()) {
            if can {
                log::info!(
                    "{lan} takes XDP frames: restored packets go straight to it from the TAP devices"
                );
            } else {
                log::info!(
                    "{lan} does not take XDP frames (no ndo-xmit): restored packets go through the kernel"
                );
            }
        }
        site
    }

    /// The feature notifications stopped: assume the worst.
    pub fn on_xdp_features_lost(&mut self, why: &str) {
        log::warn!("XDP feature notifications failed ({why}); restores go through the kernel");
        self.lan_features_followed = false;
        let lan = self.site.lan_ifindex;
        self.on_xdp_features(lan, 0);
    }

    /// When the loop must wake up without an event.
    #[must_use]
    pub fn next_wakeup(&self) -> Instant {
        let up_delay = self.config.up_delay;
        let (now, instant) = (now_ns(), Instant::now());
        let probes = self.probe.into_iter().flat_map(|settings| {
            self.tunnels
                .iter()
                .filter_map(move |t| t.tracker.deadline(&settings))
                .map(move |at| instant + Duration::from_nanos(at.saturating_sub(now)))
                .chain([self.next_probe, self.next_counters])
        });
        self.tunnels
            .iter()
            .filter_map(|t| t.health.deadline(up_delay))
            .chain(self.retry_at)
            .chain(probes)
            .chain([self.next_reconcile])
            // The maintenance file is looked for this often.
            .chain(
                self.announcement
                    .as_ref()
                    .map(|_| instant + MAINTENANCE_POLL),
            )
            .chain(
                self.announcement
                    .as_ref()
                    .and_then(Announcement::held_until),
            )
            .min()
            .unwrap_or(self.next_reconcile)
    }

    /// Reads again what is dirty or due, advances health, publishes.
    pub async fn settle(&mut self) {
        let now = Instant::now();
        if now >= self.next_reconcile {
            self.mark_all();
            if let Some(a) = &mut self.announcement {
                a.resync();
            }
            self.next_reconcile = now + RECONCILE_EVERY;
        }
        // What failed waits for its retry; what events marked is read now.
        if self.retry_at.is_some_and(|t| now >= t) {
            self.retry_at = None;
            let failed = std::mem::take(&mut self.failed);
            self.dirty.extend(failed);
            self.edges.retry();
        }
        self.settle_edges().await;
        for id in std::mem::take(&mut self.dirty) {
            if let Err(e) = answered(self.reconcile(id.index())).await {
                log::warn!(
                    "{}: {}; trying again",
                    self.tunnels[id.index()].label(),
                    short(&e)
                );
                self.failed.insert(id);
                self.retry_at = Some(Instant::now() + RETRY_AFTER);
            }
        }
        self.settle_probes();
        self.announce();
        let up_delay = self.config.up_delay;
        for t in &mut self.tunnels {
            t.health.advance(Instant::now(), up_delay);
        }
        self.publish().await;
    }

    /// Publishes the schedule, the kernel path's route and the views if the
    /// rotation changed, and the state file if anything `status` shows did.
    async fn publish(&mut self) {
        let weights: Vec<u32> = self.tunnels.iter().map(Tunnel::live_weight).collect();
        // Packet spray adds each path's extra delay to the tunnel's wait,
        // from the probes (tunnels in the rotation only).
        let offsets: Vec<Option<i64>> = self
            .tunnels
            .iter()
            .map(|t| {
                t.health
                    .in_rotation
                    .then_some(t.tracker.forward_offset_ns)
                    .flatten()
            })
            .collect();
        let paths = probe::path_delays(&offsets, self.config.path_delay_max);
        let rotation_changed = self.published.as_ref().map(|p| &p.0) != Some(&weights);
        if self.published.as_ref() != Some(&(weights.clone(), paths.clone())) {
            match schedule::build(&weights)
                .map_err(|e| anyhow::anyhow!("{e:?}"))
                .and_then(|mut s| {
                    if self.rings.is_none() {
                        // Nothing to compare: round robin.
                        s.members_len = 0;
                    }
                    s.path_ns[..paths.len()].copy_from_slice(&paths);
                    self.datapath.publish_schedule(&s)
                }) {
                Ok(()) => {
                    let states: Vec<String> = self
                        .tunnels
                        .iter()
                        .map(|t| match (t.health.state(), t.health.fault()) {
                            (s @ "down", Some(c)) => format!("{}={s}({})", t.spec.device, c.name()),
                            (s, _) => format!("{}={s}", t.spec.device),
                        })
                        .collect();
                    if rotation_changed {
                        log::info!("rotation: {}", states.join(" "));
                    }
                    self.published = Some((weights.clone(), paths));
                }
                Err(e) => {
                    log::warn!("publishing the schedule: {}; trying again", short(&e));
                    self.retry_at = Some(Instant::now() + RETRY_AFTER);
                }
            }
        }
        self.follow_announcement().await;
        if let Ok(mut views) = self.views.lock() {
            views.announce = self.announcement.as_ref().map(|a| AnnounceView {
                announced: a.announcer.announced,
                transitions: a.announcer.transitions,
                blocks: a.announcer.blocks.clone(),
            });
            views.tunnels = self
                .tunnels
                .iter()
                .map(|t| TunnelView {
                    device: t.spec.device.clone(),
                    up: t.health.in_rotation,
                    weight: t.live_weight(),
                    rtt: (t.tracker.sent > 0).then(|| t.tracker.rtt.clone()),
                    probes_sent: t.tracker.sent,
                    probes_answered: t.tracker.answered,
                    departures: t.health.departures,
                })
                .collect();
        }
        let targets = kernel_path::targets(&self.tunnels);
        if self.routes != Some(targets) {
            match kernel_path::route(&self.netlink, &self.kernel, targets).await {
                Ok(()) => self.routes = Some(targets),
                Err(e) => {
                    log::warn!("kernel path: {}; trying again", short(&e));
                    self.retry_at = Some(Instant::now() + RETRY_AFTER);
                }
            }
        }
        // Probe figures move all the time: those alone are written at most
        // once a second; anything else at once.
        let state = self.state(true, None);
        let due = match &self.written {
            None => true,
            Some(w) => {
                w.without_probe_figures() != state.without_probe_figures()
                    || (w != &state && self.written_at.elapsed() >= Duration::from_secs(1))
            }
        };
        if due {
            match state.write(&self.layout) {
                Ok(()) => {
                    self.written = Some(state);
                    self.written_at = Instant::now();
                }
                Err(e) => log::warn!("writing the state file: {}", short(&e)),
            }
        }
    }

    /// The announcement follows the rotation, the LAN, the maintenance
    /// file, the stop and the far gateway's flags.
    async fn follow_announcement(&mut self) {
        let inputs = self.announce_inputs();
        let Some(a) = &mut self.announcement else {
            return;
        };
        match a.publish(&self.netlink, inputs).await {
            Ok(true) => log::info!("{}", a.announcer.explain()),
            Ok(false) => {}
            Err(e) => {
                log::warn!("announcing: {}; trying again", short(&e));
                self.retry_at = Some(Instant::now() + RETRY_AFTER);
            }
        }
    }

    fn announce_inputs(&self) -> announce::Inputs {
        announce::Inputs {
            in_rotation: self.tunnels.iter().filter(|t| t.health.in_rotation).count(),
            lan_up: self.lan.as_ref().is_some_and(|l| l.up),
            maintenance: self
                .announcement
                .as_ref()
                .is_some_and(Announcement::maintenance),
            stopping: self.stopping,
            far: self.far_flags,
        }
    }

    /// What this gateway tells the far one of its pair: it drains
    /// (maintenance file, stopping), its LAN is down.
    #[must_use]
    pub fn own_flags(&self) -> announce::Flags {
        self.announce_inputs().own_flags()
    }

    /// Stopping: withdraws now (the far gateway hears that we drain); the
    /// caller keeps the loop going for the drain time, then exits.
    pub async fn begin_stop(&mut self) {
        self.stopping = true;
        // The far gateway hears it at once, in a round of probes.
        self.announce();
        self.publish().await;
    }

    /// How long a stop drains before the loader exits: `announce.drain_ms`,
    /// none without `[announce]`.
    #[must_use]
    pub fn drain_time(&self) -> Option<Duration> {
        self.announcement.as_ref().map(|a| a.spec.drain)
    }

    /// Writes the state file now: what is about to be made is on record.
    fn record(&mut self) -> Result<()> {
        let state = self.state(true, None);
        state.write(&self.layout)?;
        self.written = Some(state);
        self.written_at = Instant::now();
        Ok(())
    }

    /// What `status` and `detach` read.
    #[must_use]
    pub fn state(&self, running: bool, exit_error: Option<String>) -> State {
        State {
            pid: std::process::id(),
            running,
            exit_error,
            config: self.config_path.display().to_string(),
            spray: self.config.spray.name().into(),
            hook: self.config.hook.name().into(),
            ring_accounting: self.rings.map(|h| h.name().to_owned()),
            neighbours: self.neighbours.clone(),
            lan_interface: self.config.lan.interface.clone(),
            wan_guard: self.edges.wan.keys().cloned().collect(),
            kernel_route: Some(self.kernel.clone()),
            retiring_kernel_routes: self.retiring.clone(),
            mounted_bpffs: self.mounted_bpffs.clone(),
            kernel: Some(self.features.clone()),
            announce: self.announcement.as_ref().map(|a| AnnounceState {
                announced: a.announcer.announced,
                reasons: a.announcer.blocks.clone(),
                explanation: a.announcer.explain(),
                in_rotation: a.announcer.inputs.map_or(0, |i| i.in_rotation),
                min_tunnels: a.spec.min_tunnels,
                transitions: a.announcer.transitions,
                since: a
                    .announcer
                    .since
                    .duration_since(UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs_f64()),
                prefixes: a.routes.iter().map(ToString::to_string).collect(),
                table: a.spec.table,
                protocol: a.spec.protocol,
                metric: a.spec.metric,
                health_file: a.health_file.clone(),
                maintenance_file: a.spec.maintenance_file.clone(),
                drain_ms: u64::try_from(a.spec.drain.as_millis()).unwrap_or(u64::MAX),
                flags: a
                    .announcer
                    .inputs
                    .map(|i| i.own_flags())
                    .unwrap_or_default(),
                far_flags: self.far_flags,
            }),
            tunnels: self
                .tunnels
                .iter()
                .map(|t| TunnelState {
                    id: t.id.raw(),
                    device: t.spec.device.clone(),
                    ifindex: t.ifindex(),
                    weight: t.spec.weight,
                    state: t.health.state().into(),
                    cause: t.health.fault().map(|c| c.name().to_owned()),
                    since: t
                        .health
                        .last_change
                        .and_then(|c| c.at.duration_since(UNIX_EPOCH).ok())
                        .map(|d| d.as_secs_f64()),
                    openvpn: match &t.health.management {
                        Management::None => None,
                        Management::Lost => Some("unreachable".into()),
                        Management::State(s) => Some(s.clone()),
                    },
                    probe: probe_state(t),
                    departures: health::Cause::ALL
                        .iter()
                        .zip(t.health.departures)
                        .filter(|(_, n)| *n > 0)
                        .map(|(c, n)| (c.name().to_owned(), n))
                        .collect(),
                    peer_flags: t
                        .peer
                        .map(|w| probing::flag_names(w.said.flags))
                        .unwrap_or_default(),
                })
                .collect(),
        }
    }

    /// The datapath, for the logger and the probes.
    pub fn datapath_mut(&mut self) -> &mut Datapath {
        &mut self.datapath
    }

    #[must_use]
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
}

/// A probed tunnel's figures for `status`.
#[expect(clippy::cast_precision_loss, reason = "milliseconds for display")]
fn probe_state(t: &Tunnel) -> Option<ProbeState> {
    if t.tracker.sent == 0 {
        return None;
    }
    let ms = |ns: u64| ns as f64 / 1e6;
    Some(ProbeState {
        rtt_last_ms: ms(t.tracker.rtt.last),
        rtt_smoothed_ms: ms(t.tracker.rtt.smoothed),
        rtt_min_ms: ms(t.tracker.rtt.min),
        sent: t.tracker.sent,
        answered: t.tracker.answered,
        // Over the last probes whose answers are overdue: a second's grace.
        loss: t.tracker.loss(now_ns(), 1_000_000_000),
        kept_by_traffic: t.kept_by_traffic,
    })
}

/// What each set of ring hooks is, for the log.
fn describe_hooks(h: RingHooks) -> &'static str {
    match h {
        RingHooks::Fexit => {
            "fexit on tun_do_read (and tun_xdp_xmit where the kernel takes it), tp_btf on net_dev_xmit"
        }
        RingHooks::BtfTracepoint => "tp_btf on net_dev_xmit and consume_skb",
        RingHooks::RawTracepoint => "raw tracepoints on net_dev_xmit and consume_skb",
    }
}

fn report(a: &Attachment, iface: &str, how: Attached, hook: attach::TcHook) {
    let tc = match hook {
        attach::TcHook::Tcx => "tcx",
        attach::TcHook::Legacy => "tc",
    };
    let point = match a.point {
        attach::Point::Ingress => format!("{tc} ingress"),
        attach::Point::Egress => format!("{tc} egress"),
        attach::Point::Xdp => "native XDP".to_owned(),
    };
    log::info!(
        "{} on {iface} ({point}): {}",
        a.program,
        match how {
            Attached::Replaced => "replaced in place",
            Attached::Created => "attached",
        }
    );
}

fn mac_text(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}
