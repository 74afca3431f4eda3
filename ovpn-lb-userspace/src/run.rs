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
    maps::{Mode, programs},
    schedule,
};
use signal_hook::{
    consts::signal::{SIGINT, SIGTERM},
    iterator::Signals,
};

use crate::{
    config::{self, Config},
    datapath::{Attached, Datapath},
    detach,
    health::{Health, Management},
    interfaces::{Interfaces, System},
    management,
    metrics::{self, TunnelView, Tunnels},
    netlink::{LinkEvent, LinkMonitor},
    pins::Layout,
    status::{State, TunnelState},
};

pub struct Options {
    /// Detach everything on SIGINT/SIGTERM instead of leaving the datapath running.
    pub detach_on_exit: bool,
}

enum Event {
    Links(Vec<LinkEvent>),
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

/// Lists tc (tcx) and XDP programs on `iface` that are not ovpn-lb's: ours
/// is the one behind our pinned link, if there is one yet.
fn foreign_programs(iface: &str, pin: &Path, xdp_prog_id: u32) -> Vec<String> {
    let ours = PinnedLink::from_pin(pin)
        .ok()
        .and_then(|l| FdLink::from(l).info().ok())
        .map(|info| info.program_id());
    let mut found = Vec::new();
    if let Ok((_, progs)) = SchedClassifier::query_tcx(iface, TcAttachType::Ingress) {
        for p in progs {
            let name = p.name_as_str().unwrap_or("?").to_owned();
            if Some(p.id()) != ours {
                found.push(format!("tcx ingress program {name} (id {})", p.id()));
            }
        }
    }
    if xdp_prog_id != 0 {
        found.push(format!("XDP program id {xdp_prog_id}"));
    }
    found
}

struct Loader<'a> {
    config: &'a Config,
    config_path: &'a Path,
    layout: &'a Layout,
    datapath: Datapath,
    health: Health,
    published: Option<Vec<u32>>,
    /// Each tunnel device's MTU as written to the datapath.
    mtus: Vec<u32>,
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
            mode: match self.config.mode {
                Mode::Packet => "packet".into(),
                Mode::Flow => "flow".into(),
            },
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
        let old = self.health.tunnels[k].ifindex;
        let ifindex = if e.removed { 0 } else { e.ifindex };
        let mtu = if e.removed { 0 } else { e.mtu };
        self.health.set_link(k, ifindex, e.up, now);
        if ifindex != old || mtu != self.mtus[k] {
            let id = u32::try_from(k)?;
            self.datapath.set_tunnel(
                id,
                &self.config.tunnels[k].datapath_config(ifindex, mtu),
                Some(old),
            )?;
            self.mtus[k] = mtu;
        }
        if ifindex != old {
            if ifindex != 0 {
                self.datapath.attach_pinned(
                    programs::TUNNEL_INGRESS,
                    &e.name,
                    &self.layout.link(&e.name),
                )?;
                log(&format!(
                    "tunnel {k} ({}): device is back as ifindex {ifindex}; attached",
                    e.name
                ));
            } else {
                log(&format!("tunnel {k} ({}): device removed", e.name));
            }
        }
        Ok(())
    }
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

    let monitor = LinkMonitor::open().context("opening an rtnetlink socket")?;
    let mut datapath = Datapath::load_pinned(layout)?;
    let devices: Vec<(u32, u32)> = config
        .tunnels
        .iter()
        .map(|t| {
            System
                .lookup(&t.device)
                .map_or((0, 0), |i| (i.ifindex, i.mtu))
        })
        .collect();
    datapath.write_config(&config, &devices)?;
    let ifindexes: Vec<u32> = devices.iter().map(|d| d.0).collect();
    let weights: Vec<u32> = config.tunnels.iter().map(|t| t.weight).collect();
    let has_mgmt: Vec<bool> = config
        .tunnels
        .iter()
        .map(|t| t.management.is_some())
        .collect();
    let mut loader = Loader {
        config: &config,
        config_path,
        layout,
        datapath,
        health: Health::new(&weights, config.up_delay, &has_mgmt),
        published: None,
        mtus: devices.iter().map(|d| d.1).collect(),
        metrics: views,
    };

    // Current link states, then admit what is healthy before attaching.
    monitor.request_dump()?;
    let mut xdp = HashMap::new();
    let now = Instant::now();
    loop {
        let batch = monitor.next()?;
        for e in &batch.events {
            xdp.insert(e.name.clone(), e.xdp_prog_id);
            if let Some(k) = loader.tunnel_by_device(&e.name) {
                loader.health.set_link(k, e.ifindex, e.up, now);
            }
        }
        if batch.done {
            break;
        }
    }
    loader.health.admit_healthy_now();
    loader.publish()?;

    attach_all(&mut loader, &ifindexes, &xdp)?;
    loader.write_state(true)?;

    let rx = event_sources(monitor, &config)?;
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

/// Attaches (or replaces in place) the LAN program and the tunnel program on
/// every tunnel device that exists, reporting programs of others left alone.
fn attach_all(loader: &mut Loader, ifindexes: &[u32], xdp: &HashMap<String, u32>) -> Result<()> {
    let config = loader.config;
    let layout = loader.layout;
    let mut attach_points = vec![(programs::LAN_INGRESS, config.lan_interface.clone())];
    for (k, t) in config.tunnels.iter().enumerate() {
        if ifindexes[k] != 0 {
            attach_points.push((programs::TUNNEL_INGRESS, t.device.clone()));
        }
    }
    for (program, iface) in &attach_points {
        let pin = layout.link(iface);
        for foreign in foreign_programs(iface, &pin, xdp.get(iface).copied().unwrap_or(0)) {
            log(&format!("{iface} also has {foreign}; left alone"));
        }
        let how = loader
            .datapath
            .attach_pinned(program, iface, &layout.link(iface))?;
        log(&format!(
            "{program} on {iface}: {}",
            match how {
                Attached::Replaced => "replaced in place",
                Attached::Created => "attached",
            }
        ));
    }
    Ok(())
}

/// Link events, OpenVPN states and signals, on one channel.
fn event_sources(monitor: LinkMonitor, config: &Config) -> Result<Receiver<Event>> {
    let (tx, rx) = mpsc::channel();
    spawn_link_thread(monitor, tx.clone());
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
                Ok(batch) if batch.events.is_empty() => {}
                Ok(batch) => {
                    if tx.send(Event::Links(batch.events)).is_err() {
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
