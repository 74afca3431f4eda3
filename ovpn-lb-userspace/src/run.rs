//! `ovpn-lb run`: validate, attach (or replace in place), then keep the schedule
//! in step with tunnel health until SIGINT or SIGTERM.

use std::{
    collections::HashMap,
    fs::File,
    os::fd::AsRawFd,
    path::Path,
    sync::mpsc::{self, Receiver, RecvTimeoutError, Sender},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::{
    SchedClassifier, TcAttachType,
    links::{FdLink, PinnedLink},
};
use ovpn_lb_common::{
    SiteConfig,
    maps::{Spray, programs, site_flags},
    schedule,
};
use signal_hook::{
    consts::signal::{SIGINT, SIGTERM},
    iterator::Signals,
};

use crate::{
    config::{self, Config, Device},
    datapath::{Attached, Datapath},
    detach,
    health::{Health, Management},
    hook::{Hook, TunnelKind},
    interfaces::{Interfaces, System},
    management,
    metrics::{self, TunnelView, Tunnels},
    neighbours,
    netlink::{LinkEvent, LinkMonitor, NeighbourEvent},
    pins::{Layout, drop_link},
    status::{ManagedNeighbour, State, TunnelState},
    xdp_features,
};

pub struct Options {
    /// Detach everything on SIGINT/SIGTERM instead of leaving the datapath running.
    pub detach_on_exit: bool,
}

enum Event {
    Links(Vec<LinkEvent>),
    Neighbours(Vec<NeighbourEvent>),
    XdpFeatures(Vec<(u32, u64)>),
    /// The feature notifications stopped: assume the worst.
    XdpFeaturesLost(String),
    LinkMonitorFailed(String),
    Management(usize, Option<String>),
    Signal(i32),
}

fn log(message: &str) {
    eprintln!("ovpn-lb: {message}");
}

/// How long a new `run` waits for the one it takes over from to exit.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(10);

fn try_lock(file: &File) -> bool {
    // SAFETY: flock on a descriptor we own.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Holds `run.lock` for the life of the process: one loader per layout. If a
/// `run` holds it, that one is asked to stop (SIGTERM, which leaves the
/// datapath attached) and this one takes over once it has gone.
fn lock(layout: &Layout) -> Result<File> {
    let path = layout.lock_file();
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    if try_lock(&file) {
        return Ok(file);
    }
    let Ok(old) = State::read(layout).map(|s| s.pid) else {
        bail!(
            "{} is held but no state names its owner; is another `ovpn-lb run` starting?",
            path.display()
        );
    };
    log(&format!("taking over from `ovpn-lb run` pid {old}"));
    // SAFETY: sending a signal to the pid our own state file names.
    unsafe { libc::kill(libc::pid_t::try_from(old)?, libc::SIGTERM) };
    let deadline = Instant::now() + TAKEOVER_TIMEOUT;
    while !try_lock(&file) {
        if Instant::now() > deadline {
            bail!("`ovpn-lb run` pid {old} did not exit within {TAKEOVER_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
    Ok(file)
}

/// The program id behind the link pinned at `pin`, if any.
fn pinned_program(pin: &Path) -> Option<u32> {
    PinnedLink::from_pin(pin)
        .ok()
        .and_then(|l| FdLink::from(l).info().ok())
        .map(|info| info.program_id())
}

/// Lists tc (tcx) and XDP programs on `iface` that are not ovpn-lb's: ours
/// are the ones behind our pinned links, if there are any yet.
fn foreign_programs(iface: &str, layout: &Layout, xdp_prog_id: u32) -> Vec<String> {
    let ours = pinned_program(&layout.link(iface));
    let mut found = Vec::new();
    if let Ok((_, progs)) = SchedClassifier::query_tcx(iface, TcAttachType::Ingress) {
        for p in progs {
            let name = p.name_as_str().unwrap_or("?").to_owned();
            if Some(p.id()) != ours {
                found.push(format!("tcx ingress program {name} (id {})", p.id()));
            }
        }
    }
    if xdp_prog_id != 0 && Some(xdp_prog_id) != pinned_program(&layout.xdp_link(iface)) {
        found.push(format!("XDP program id {xdp_prog_id}"));
    }
    found
}

/// The program for `iface` under `hook`: (program, is XDP).
fn tunnel_program(kind: TunnelKind, hook: Hook) -> (&'static str, bool) {
    match (kind, hook) {
        (TunnelKind::Tun, _) => (programs::TUNNEL_INGRESS, false),
        (TunnelKind::Tap, Hook::Tc) => (programs::TUNNEL_INGRESS_ETH, false),
        (TunnelKind::Tap, Hook::Xdp) => (programs::TUNNEL_INGRESS_XDP, true),
    }
}

/// Attaches `program` to `iface` with its hook, dropping a link of the other
/// hook that an earlier run (with another `mode`) left there.
fn attach(
    datapath: &mut Datapath,
    layout: &Layout,
    program: &str,
    xdp: bool,
    iface: &str,
) -> Result<Attached> {
    if xdp {
        drop_link(&layout.link(iface))?;
        datapath.attach_xdp_pinned(program, iface, &layout.xdp_link(iface))
    } else {
        drop_link(&layout.xdp_link(iface))?;
        datapath.attach_pinned(program, iface, &layout.link(iface))
    }
}

struct Loader<'a> {
    config: &'a Config,
    config_path: &'a Path,
    layout: &'a Layout,
    datapath: Datapath,
    health: Health,
    published: Option<Vec<u32>>,
    /// Each tunnel's device as written to the datapath.
    devices: Vec<Device>,
    /// Managed neighbour entries made for TAP tunnels.
    neighbours: Vec<ManagedNeighbour>,
    /// The `SITE` entry as written.
    site: SiteConfig,
    /// What the metrics endpoint shows besides counters.
    metrics: Tunnels,
}

impl Loader<'_> {
    fn tunnel_by_device(&self, name: &str) -> Option<usize> {
        self.config.tunnels.iter().position(|t| t.device == name)
    }

    /// Publishes the schedule if the rotation changed.
    fn publish(&mut self) -> Result<()> {
        let weights = self.health.weights();
        if self.published.as_ref() == Some(&weights) {
            return Ok(());
        }
        let schedule = schedule::build(&weights).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        self.datapath.publish_schedule(&schedule)?;
        let states: Vec<String> = self
            .config
            .tunnels
            .iter()
            .zip(&self.health.tunnels)
            .map(|(c, h)| format!("{}={}", c.device, h.state()))
            .collect();
        log(&format!("rotation: {}", states.join(" ")));
        if let Ok(mut views) = self.metrics.lock() {
            *views = self
                .config
                .tunnels
                .iter()
                .zip(&self.health.tunnels)
                .zip(&weights)
                .map(|((c, h), &weight)| TunnelView {
                    device: c.device.clone(),
                    up: h.in_rotation,
                    weight,
                })
                .collect();
        }
        self.published = Some(weights);
        self.write_state(true)
    }

    fn write_state(&self, running: bool) -> Result<()> {
        State {
            pid: std::process::id(),
            running,
            config: self.config_path.display().to_string(),
            mode: match self.config.spray {
                Spray::Packet => "packet".into(),
                Spray::Flow => "flow".into(),
            },
            hook: self.config.hook.name().into(),
            neighbours: self.neighbours.clone(),
            lan_interface: self.config.lan_interface.clone(),
            tunnels: self
                .config
                .tunnels
                .iter()
                .zip(&self.health.tunnels)
                .enumerate()
                .map(|(k, (c, h))| TunnelState {
                    id: u32::try_from(k).unwrap_or(u32::MAX),
                    device: c.device.clone(),
                    ifindex: h.ifindex,
                    weight: c.weight,
                    state: h.state().into(),
                    openvpn: match &h.management {
                        Management::None => None,
                        Management::Lost => Some("unreachable".into()),
                        Management::State(s) => Some(s.clone()),
                    },
                })
                .collect(),
        }
        .write(self.layout)
    }

    fn on_management(&mut self, k: usize, state: Option<String>) -> Result<()> {
        let m = state.map_or(Management::Lost, Management::State);
        let changed = self.health.tunnels[k].management != m;
        self.health.set_management(k, m, Instant::now());
        if changed {
            // `status` shows OpenVPN's state even when the rotation stays.
            self.write_state(true)?;
        }
        Ok(())
    }

    fn on_link(&mut self, e: &LinkEvent, now: Instant) -> Result<()> {
        let Some(k) = self.tunnel_by_device(&e.name) else {
            return Ok(());
        };
        let old = self.devices[k];
        let device = if e.removed {
            Device::default()
        } else {
            Device {
                ifindex: e.ifindex,
                mtu: e.mtu,
                mac: e.mac,
                // A new device has a new neighbour table: learn it again.
                peer_mac: if e.ifindex == old.ifindex {
                    old.peer_mac
                } else {
                    [0; 6]
                },
            }
        };
        self.health.set_link(k, device.ifindex, e.up, now);
        if device != old {
            self.set_device(k, device, old.ifindex)?;
        }
        if device.ifindex != old.ifindex {
            self.health.set_next_hop(k, false, now);
            if device.ifindex != 0 {
                self.attach_tunnel(k)?;
                log(&format!(
                    "tunnel {k} ({}): device is back as ifindex {}; attached",
                    e.name, device.ifindex
                ));
            } else {
                log(&format!("tunnel {k} ({}): device removed", e.name));
            }
        }
        Ok(())
    }

    fn set_device(&mut self, k: usize, device: Device, old_ifindex: u32) -> Result<()> {
        let id = u32::try_from(k)?;
        self.datapath.set_tunnel(
            id,
            &self.config.tunnels[k].datapath_config(&device),
            Some(old_ifindex),
        )?;
        self.devices[k] = device;
        Ok(())
    }

    /// A TAP tunnel's far end resolved, changed MAC, or became unreachable.
    fn on_neighbour(&mut self, n: &NeighbourEvent, now: Instant) -> Result<()> {
        let Some(k) = self.config.tunnels.iter().enumerate().position(|(k, t)| {
            t.next_hop == Some(n.addr) && self.devices[k].ifindex == n.ifindex && n.ifindex != 0
        }) else {
            return Ok(());
        };
        let peer_mac = n.mac.unwrap_or_default();
        let device = self.devices[k];
        if device.peer_mac != peer_mac {
            self.set_device(k, Device { peer_mac, ..device }, device.ifindex)?;
            log(&format!(
                "tunnel {k} ({}): next hop {} {}",
                self.config.tunnels[k].device,
                n.addr,
                n.mac.map_or("unresolved".to_owned(), |m| format!(
                    "is at {}",
                    mac_text(m)
                ))
            ));
        }
        self.health.set_next_hop(k, n.mac.is_some(), now);
        Ok(())
    }

    /// Attaches tunnel `k`'s program; a TAP tunnel's far end gets a managed
    /// neighbour entry so its MAC is learnt and kept fresh.
    fn attach_tunnel(&mut self, k: usize) -> Result<Attached> {
        let t = &self.config.tunnels[k];
        let (program, xdp) = tunnel_program(t.kind, self.config.hook);
        let how = attach(&mut self.datapath, self.layout, program, xdp, &t.device)?;
        if let Some(addr) = t.next_hop {
            // Without the entry the tunnel waits for the kernel to resolve the
            // far end some other way; say so, but keep the others running.
            match neighbours::manage(&t.device, addr) {
                Ok(true) => {
                    let n = ManagedNeighbour {
                        device: t.device.clone(),
                        addr,
                    };
                    if !self.neighbours.contains(&n) {
                        self.neighbours.push(n);
                    }
                }
                Ok(false) => log(&format!(
                    "tunnel {k} ({}): {addr} has a permanent neighbour entry; using it",
                    t.device
                )),
                Err(e) => log(&format!("tunnel {k} ({}): {e:#}", t.device)),
            }
        }
        Ok(how)
    }
}

impl Loader<'_> {
    /// The LAN driver's XDP features changed: restores go straight to it only
    /// while it can transmit XDP frames.
    fn on_xdp_features(&mut self, ifindex: u32, features: u64) -> Result<()> {
        if self.config.hook != Hook::Xdp || ifindex != self.site.lan_ifindex {
            return Ok(());
        }
        let site = with_lan_xmit(self.site, features);
        if site != self.site {
            self.datapath.set_site(&site)?;
            self.site = site;
            log_lan_xmit(&self.config.lan_interface, site);
        }
        Ok(())
    }
}

fn mac_text(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// Runs until SIGINT or SIGTERM.
///
/// # Errors
/// A configuration error (nothing is attached then), or a failure to attach.
pub fn run(config_path: &Path, layout: &Layout, options: &Options) -> Result<()> {
    let (config, warnings) = config::load(config_path, &System)?;
    for w in warnings {
        log(&format!("warning: {}", w.0));
    }
    layout.prepare()?;
    let _lock = lock(layout)?;
    let views = Tunnels::default();
    metrics::serve(config.metrics_listen, layout.clone(), views.clone())?;

    log(&format!("hook: {}", config.hook_reason));
    let monitor = LinkMonitor::open().context("opening an rtnetlink socket")?;
    let mut datapath = Datapath::load_pinned(layout)?;
    // Subscribed before the LAN's features are read, so no change falls between.
    let features = follow_xdp_features(&config);
    let site = site(&config, features.is_some());
    // Devices as the kernel reports them; MACs and far ends come from the dumps below.
    let devices: Vec<Device> = config
        .tunnels
        .iter()
        .map(|t| {
            System
                .lookup(&t.device)
                .map_or(Device::default(), |i| Device {
                    ifindex: i.ifindex,
                    mtu: i.mtu,
                    ..Device::default()
                })
        })
        .collect();
    datapath.write_config(&config, &site, &devices)?;
    let weights: Vec<u32> = config.tunnels.iter().map(|t| t.weight).collect();
    let has_mgmt: Vec<bool> = config
        .tunnels
        .iter()
        .map(|t| t.management.is_some())
        .collect();
    let needs_next_hop: Vec<bool> = config
        .tunnels
        .iter()
        .map(|t| t.kind == TunnelKind::Tap)
        .collect();
    let mut loader = Loader {
        config: &config,
        config_path,
        layout,
        datapath,
        health: Health::new(&weights, config.up_delay, &has_mgmt, &needs_next_hop),
        published: None,
        devices,
        neighbours: Vec::new(),
        site,
        metrics: views,
    };

    // Current link states and far-end MACs, then admit what is healthy
    // before attaching.
    monitor.request_dump()?;
    let mut xdp = HashMap::new();
    let now = Instant::now();
    drain_dump(
        &monitor,
        |e| {
            xdp.insert(e.name.clone(), e.xdp_prog_id);
            loader.on_link(e, now)
        },
        |_| Ok(()),
    )?;
    attach_all(&mut loader, &xdp)?;
    monitor.request_neighbour_dump()?;
    drain_dump(&monitor, |_| Ok(()), |n| loader.on_neighbour(n, now))?;
    loader.health.admit_healthy_now();
    loader.publish()?;
    loader.write_state(true)?;

    let rx = event_sources(monitor, features, &config)?;
    log(&format!(
        "running with {} tunnels; metrics on http://{}/metrics; SIGINT/SIGTERM to stop",
        config.tunnels.len(),
        config.metrics_listen
    ));

    let signal = serve(&mut loader, &rx)?;

    let name = if signal == SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    if options.detach_on_exit {
        drop(loader);
        for line in detach::all(layout)? {
            log(&format!("removed {line}"));
        }
        log(&format!("{name}: detached"));
    } else {
        loader.write_state(false)?;
        log(&format!(
            "{name}: exiting with the datapath attached (last schedule stays in force); `ovpn-lb detach` removes it"
        ));
    }
    Ok(())
}

/// Follows events until a signal; returns it.
fn serve(loader: &mut Loader, rx: &Receiver<Event>) -> Result<i32> {
    loop {
        let now = Instant::now();
        let wait = loader
            .health
            .next_deadline()
            .map_or(Duration::from_secs(1), |d| d.saturating_duration_since(now))
            .min(Duration::from_secs(1));
        match rx.recv_timeout(wait) {
            Ok(Event::Links(events)) => {
                for e in &events {
                    loader.on_link(e, Instant::now())?;
                }
            }
            Ok(Event::XdpFeatures(changes)) => {
                for (ifindex, features) in changes {
                    loader.on_xdp_features(ifindex, features)?;
                }
            }
            Ok(Event::XdpFeaturesLost(e)) => {
                log(&format!("XDP feature notifications failed ({e})"));
                let lan = loader.site.lan_ifindex;
                loader.on_xdp_features(lan, 0)?;
            }
            Ok(Event::Neighbours(events)) => {
                for n in &events {
                    loader.on_neighbour(n, Instant::now())?;
                }
            }
            Ok(Event::Management(k, state)) => loader.on_management(k, state)?,
            Ok(Event::LinkMonitorFailed(e)) => bail!("link monitor failed: {e}"),
            Ok(Event::Signal(sig)) => return Ok(sig),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => bail!("every event source stopped"),
        }
        loader.health.advance(Instant::now());
        loader.publish()?;
    }
}

/// Reads one dump to its end, handing over link and neighbour entries.
fn drain_dump(
    monitor: &LinkMonitor,
    mut on_link: impl FnMut(&LinkEvent) -> Result<()>,
    mut on_neighbour: impl FnMut(&NeighbourEvent) -> Result<()>,
) -> Result<()> {
    loop {
        let batch = monitor.next()?;
        for e in &batch.events {
            on_link(e)?;
        }
        for n in &batch.neighbours {
            on_neighbour(n)?;
        }
        if batch.done {
            return Ok(());
        }
    }
}

/// Under XDP, a subscription to driver feature changes; `None` under tc, or
/// if the kernel offers none (then restores always go through the kernel).
fn follow_xdp_features(config: &Config) -> Option<xdp_features::Watcher> {
    if config.hook != Hook::Xdp {
        return None;
    }
    xdp_features::Watcher::open()
        .map_err(|e| {
            log(&format!(
                "cannot follow XDP feature changes ({e}); restores go through the kernel"
            ));
        })
        .ok()
}

/// The `SITE` entry: the configuration plus what the LAN device can do.
/// `followed`: feature changes will be followed, so the XDP restore may
/// forward straight to the LAN while the driver allows it.
fn site(config: &Config, followed: bool) -> SiteConfig {
    let mut site = config.site();
    if let Some(lan) = System.lookup(&config.lan_interface) {
        site.lan_ifindex = lan.ifindex;
        if config.hook == Hook::Xdp && followed {
            site = with_lan_xmit(site, lan.xdp_features.unwrap_or(0));
            log_lan_xmit(&config.lan_interface, site);
        }
    }
    site
}

fn with_lan_xmit(mut site: SiteConfig, features: u64) -> SiteConfig {
    if features & xdp_features::NDO_XMIT != 0 {
        site.flags |= site_flags::LAN_XDP_XMIT;
    } else {
        site.flags &= !site_flags::LAN_XDP_XMIT;
    }
    site
}

fn log_lan_xmit(lan: &str, site: SiteConfig) {
    if site.flags & site_flags::LAN_XDP_XMIT != 0 {
        log(&format!(
            "{lan} takes XDP frames: restored packets go straight to it from the TAP devices"
        ));
    } else {
        log(&format!(
            "{lan} does not take XDP frames (no ndo-xmit): restored packets go through the kernel"
        ));
    }
}

/// Attaches (or replaces in place) the LAN program and the tunnel program on
/// every tunnel device that exists, reporting programs of others left alone.
fn attach_all(loader: &mut Loader, xdp: &HashMap<String, u32>) -> Result<()> {
    let config = loader.config;
    let layout = loader.layout;
    let lan = &config.lan_interface;
    let mut ifaces = vec![lan.clone()];
    ifaces.extend(
        config
            .tunnels
            .iter()
            .zip(&loader.devices)
            .filter(|(_, d)| d.ifindex != 0)
            .map(|(t, _)| t.device.clone()),
    );
    for iface in &ifaces {
        for foreign in foreign_programs(iface, layout, xdp.get(iface).copied().unwrap_or(0)) {
            log(&format!("{iface} also has {foreign}; left alone"));
        }
    }
    let lan_program = match config.hook {
        Hook::Tc => programs::LAN_INGRESS,
        Hook::Xdp => programs::LAN_INGRESS_XDP,
    };
    let how = attach(
        &mut loader.datapath,
        layout,
        lan_program,
        config.hook == Hook::Xdp,
        lan,
    )?;
    report(lan_program, lan, how);
    for k in 0..config.tunnels.len() {
        if loader.devices[k].ifindex != 0 {
            let how = loader.attach_tunnel(k)?;
            let t = &config.tunnels[k];
            report(tunnel_program(t.kind, config.hook).0, &t.device, how);
        }
    }
    Ok(())
}

fn report(program: &str, iface: &str, how: Attached) {
    log(&format!(
        "{program} on {iface}: {}",
        match how {
            Attached::Replaced => "replaced in place",
            Attached::Created => "attached",
        }
    ));
}

/// Link events, OpenVPN states and signals, on one channel.
fn event_sources(
    monitor: LinkMonitor,
    features: Option<xdp_features::Watcher>,
    config: &Config,
) -> Result<Receiver<Event>> {
    let (tx, rx) = mpsc::channel();
    spawn_link_thread(monitor, tx.clone());
    if let Some(watcher) = features {
        let tx = tx.clone();
        thread::spawn(move || {
            loop {
                match watcher.next() {
                    Ok(changes) if changes.is_empty() => {}
                    Ok(changes) => {
                        if tx.send(Event::XdpFeatures(changes)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Event::XdpFeaturesLost(e.to_string()));
                        return;
                    }
                }
            }
        });
    }
    for (k, t) in config.tunnels.iter().enumerate() {
        if let Some(addr) = t.management {
            let tx = tx.clone();
            let (mtx, mrx) = mpsc::channel();
            management::watch(k, addr, mtx);
            thread::spawn(move || {
                for (k, state) in mrx {
                    if tx.send(Event::Management(k, state)).is_err() {
                        return;
                    }
                }
            });
        }
    }
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
    let signal_tx = tx.clone();
    thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let _ = signal_tx.send(Event::Signal(sig));
        }
    });
    Ok(rx)
}

fn spawn_link_thread(monitor: LinkMonitor, tx: Sender<Event>) {
    thread::spawn(move || {
        loop {
            match monitor.next() {
                Ok(batch) => {
                    if !batch.events.is_empty() && tx.send(Event::Links(batch.events)).is_err() {
                        return;
                    }
                    if !batch.neighbours.is_empty()
                        && tx.send(Event::Neighbours(batch.neighbours)).is_err()
                    {
                        return;
                    }
                }
                // Overrun: events were lost, so take a fresh full view.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    if let Err(e) = monitor.request_dump() {
                        let _ = tx.send(Event::LinkMonitorFailed(e.to_string()));
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Event::LinkMonitorFailed(e.to_string()));
                    return;
                }
            }
        }
    });
}
