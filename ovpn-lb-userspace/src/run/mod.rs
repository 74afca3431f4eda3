//! `ovpn-lb run`: validate, take the lock (taking over from a running
//! loader), attach, then follow the kernel until SIGINT or SIGTERM.
//!
//! - `lock`: one loader per datapath, and takeover;
//! - `daemon`: the records and what keeps the datapath in step with them;
//! - this module: the order of the start and the event loop.

pub mod daemon;
pub mod lock;

use std::path::Path;

use anyhow::{Context as _, Result};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    config,
    datapath::{Datapath, rings},
    detach,
    facts::Facts,
    metrics::{self, Snapshot, Views},
    netlink::{self, Netlink, netdev},
    openvpn,
    pins::Layout,
    probe::io::{Events as ProbeEvents, Pinger, Sender},
    status::State,
    tunnel::TunnelId,
};
use daemon::Daemon;

pub struct Options {
    /// Detach everything on SIGINT/SIGTERM instead of leaving the datapath running.
    pub detach_on_exit: bool,
}

/// Everything the event loop listens to besides the daemon's own timers.
struct Sources {
    netlink: mpsc::UnboundedReceiver<netlink::Event>,
    management: mpsc::UnboundedReceiver<openvpn::Report>,
    features: mpsc::UnboundedReceiver<Result<Vec<(u32, u64)>, String>>,
    probes: Option<ProbeEvents>,
    echoes: mpsc::UnboundedReceiver<(TunnelId, u16, u64)>,
}

/// Runs until SIGINT or SIGTERM.
///
/// # Errors
/// A configuration error (nothing is attached then), a failure to attach,
/// or an unrecoverable failure of the event sources; the state file then
/// says the loader exited and why.
pub async fn run(config_path: &Path, layout: &Layout, options: &Options) -> Result<()> {
    let (netlink, netlink_events) = Netlink::open().context("opening rtnetlink")?;
    let facts = Facts::gather(&netlink).await?;
    let (config, warnings) = config::load(config_path, &facts)?;
    for w in warnings {
        log::warn!("{}", w.0);
    }
    // Before anything is made: probes that cannot leave would declare every
    // tunnel dead.
    let sender = open_probe_sockets(&config)?;
    let mounted_bpffs = layout.prepare()?;
    let _lock = lock::acquire(layout, "run", lock::Ask::HandOver).await?;
    // Before the state file names us: a takeover's SIGUSR1 must find a handler.
    let mut signals = Signals::new()?;
    let previous = State::read(layout).ok();
    let had_datapath = datapath_attached(layout, &config.lan.interface);
    let started = start(
        config,
        config_path,
        layout,
        netlink,
        netlink_events,
        sender,
        previous,
        mounted_bpffs,
    )
    .await;
    let (mut daemon, mut sources) = match started {
        Ok(s) => s,
        Err(e) => return Err(abandon(layout, had_datapath, e).await),
    };
    let mut outcome = follow(&mut daemon, &mut sources, &mut signals, None).await;
    if let (Ok(signal @ ("SIGINT" | "SIGTERM")), Some(drain)) = (&outcome, daemon.drain_time()) {
        // Withdraw, and keep following health (and telling the far gateway
        // that we drain) while the routers move the traffic away; a second
        // signal cuts the drain short.
        log::info!(
            "{signal}: withdrawing; exiting in {} ms (announce.drain_ms)",
            drain.as_millis()
        );
        daemon.begin_stop().await;
        let drained = follow(
            &mut daemon,
            &mut sources,
            &mut signals,
            Some(tokio::time::Instant::now() + drain),
        )
        .await;
        if let Err(e) = drained {
            outcome = Err(e);
        }
    }
    finish(daemon, layout, options, outcome).await
}

/// Whether a datapath is attached to `lan` (a link pinned by an earlier
/// run): a start that fails then leaves it forwarding.
fn datapath_attached(layout: &Layout, lan: &str) -> bool {
    [layout.link(lan), layout.xdp_link(lan)]
        .iter()
        .any(|pin| aya::programs::links::PinnedLink::from_pin(pin).is_ok())
}

/// A start that failed: with no datapath before it, everything it made
/// goes (a half-made gateway refuses LAN traffic for the remote prefixes);
/// an earlier datapath stays attached, and the state file says why this
/// start failed.
async fn abandon(layout: &Layout, had_datapath: bool, e: anyhow::Error) -> anyhow::Error {
    if had_datapath {
        if let Ok(mut state) = State::read(layout) {
            state.running = false;
            state.exit_error = Some(format!("{e:#}"));
            let _ = state.write(layout);
        }
        return e.context("the start failed; the datapath attached before it stays");
    }
    match detach::all(layout).await {
        Ok(removed) => {
            for line in &removed {
                log::info!("removed {line}");
            }
            e.context("the start failed; nothing it made is left")
        }
        Err(undo) => e.context(format!("the start failed, and undoing it failed too ({undo:#}); `ovpn-lb detach` removes the rest")),
    }
}

/// The probe sockets, opened before anything is made: the sender of the
/// reflected probes (`AF_PACKET`), and a check that echo probes can be
/// sent (raw ICMP). Both need `CAP_NET_RAW`.
fn open_probe_sockets(config: &config::Config) -> Result<Option<Sender>> {
    if config.probe.is_none() {
        return Ok(None);
    }
    let how = "the loader needs CAP_NET_RAW and, under systemd, AF_PACKET in RestrictAddressFamilies; or set probe_interval_ms = 0 to run without probes";
    for t in &config.tunnels {
        if let config::Probing::Echo(target) = t.probing {
            Pinger::check(target).with_context(|| {
                format!(
                    "{}: cannot open a raw ICMP socket for echo probes; {how}",
                    t.device
                )
            })?;
        }
    }
    if !config
        .tunnels
        .iter()
        .any(|t| t.probing == config::Probing::Reflected)
    {
        return Ok(None);
    }
    Sender::open()
        .map(Some)
        .with_context(|| format!("cannot open the probe sender (an AF_PACKET socket); {how}"))
}

/// Everything from loading the datapath to the daemon's first publish.
#[expect(
    clippy::too_many_arguments,
    reason = "the start's inputs, each used once"
)]
async fn start(
    mut config: config::Config,
    config_path: &Path,
    layout: &Layout,
    netlink: Netlink,
    netlink_events: mpsc::UnboundedReceiver<netlink::Event>,
    sender: Option<Sender>,
    previous: Option<State>,
    mounted_bpffs: Option<std::path::PathBuf>,
) -> Result<(Daemon, Sources)> {
    let started = std::time::Instant::now();
    let listener = metrics::server::bind(config.metrics_listen).await?;
    log::info!("hook: {}", config.hook_reason);
    // The ring accounting (packet spray's, or any spray's where the
    // environment asks) reads kernel memory at offsets the object must
    // carry when it loads.
    let ring_layout = rings::accounted(config.spray).then(rings::kernel_layout);
    let mut datapath =
        Datapath::load_pinned(layout, ring_layout.as_ref().and_then(|r| r.as_ref().ok()))?;
    let rings_unknown = ring_layout.and_then(Result::err).map(|e| format!("{e:#}"));
    if config.hook == config::Hook::Xdp
        && let Some(why) = datapath.xdp_unavailable()
    {
        anyhow::bail!("the XDP hook cannot run here: {why}; hook = \"tc\" does");
    }
    forward_bpf_logs(&mut datapath);

    // Subscribed before the LAN's features are read at start, so no change
    // falls between.
    let (features_tx, features) = mpsc::unbounded_channel();
    let followed = config.hook == config::Hook::Xdp && follow_xdp_features(features_tx);
    let management = watch_management(&config);
    let views = Views::default();
    serve_metrics(listener, layout, &views);
    let probes = config
        .probe
        .and_then(|_| match datapath.take_probe_events() {
            Ok(ring) => ProbeEvents::new(ring)
                .map_err(anyhow::Error::from)
                .map_or_else(
                    |e| {
                        log::warn!("probe answers cannot be read ({e:#}): tunnels are not probed");
                        None
                    },
                    Some,
                ),
            Err(e) => {
                log::warn!("probe answers cannot be read ({e:#}): tunnels are not probed");
                None
            }
        });
    if probes.is_none() {
        // Unanswerable probes would declare every tunnel dead.
        config.probe = None;
    }
    let (echo_tx, echoes) = mpsc::unbounded_channel();
    let running = format!(
        "running with {} tunnels; metrics on http://{}/metrics; SIGINT/SIGTERM to stop",
        config.tunnels.len(),
        config.metrics_listen
    );
    // Fresh: a takeover may have taken a while.
    let facts = Facts::gather(&netlink).await?;
    let io = daemon::Io {
        datapath,
        netlink,
        views,
        mounted_bpffs,
        echo_tx,
        rings_unknown,
        sender,
        previous,
    };
    let mut daemon = Daemon::new(config, config_path, layout, io);
    daemon.start(&facts, followed).await?;
    log::info!(
        "{running} (started in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    let sources = Sources {
        netlink: netlink_events,
        management,
        features,
        probes,
        echoes,
    };
    Ok((daemon, sources))
}

/// SIGINT and SIGTERM (stop: withdraw, drain, exit), SIGUSR1 (a new
/// `run` takes over: exit at once, leaving the announcement to it).
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hand_over: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hand_over: signal(SignalKind::user_defined1())?,
        })
    }
}

/// The OpenVPN management watchers, one task per tunnel that has one.
fn watch_management(config: &config::Config) -> mpsc::UnboundedReceiver<openvpn::Report> {
    let (tx, rx) = mpsc::unbounded_channel();
    for (k, t) in config.tunnels.iter().enumerate() {
        if let Some(m) = &t.management {
            tokio::spawn(openvpn::watch(TunnelId::new(k), m.clone(), tx.clone()));
        }
    }
    rx
}

fn serve_metrics(listener: tokio::net::TcpListener, layout: &Layout, views: &Views) {
    let (layout, views) = (layout.clone(), views.clone());
    tokio::spawn(metrics::server::serve(
        listener,
        std::sync::Arc::new(move || metrics::encode(&Snapshot::take(&layout, &views))),
    ));
}

/// The event loop: until a signal (its name), `until` (the end of a
/// drain), or an event source failing.
async fn follow(
    daemon: &mut Daemon,
    s: &mut Sources,
    signals: &mut Signals,
    until: Option<tokio::time::Instant>,
) -> Result<&'static str> {
    let end = async {
        match until {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(end);
    loop {
        let wake = daemon.next_wakeup();
        tokio::select! {
            _ = signals.interrupt.recv() => return Ok("SIGINT"),
            _ = signals.terminate.recv() => return Ok("SIGTERM"),
            _ = signals.hand_over.recv() => return Ok("SIGUSR1 (a new run takes over)"),
            () = &mut end => return Ok("drained"),
            event = s.netlink.recv() => match event {
                Some(e) => daemon.on_netlink(&e),
                None => anyhow::bail!("the rtnetlink connection closed"),
            },
            Some((id, state)) = s.management.recv() => daemon.on_management(id, state),
            Some(reports) = next_probe_events(s.probes.as_mut()) => daemon.on_probe_events(&reports),
            Some((id, seq, at)) = s.echoes.recv() => daemon.on_echo(id, seq, at),
            Some(f) = s.features.recv() => match f {
                Ok(changes) => {
                    for (ifindex, bits) in changes {
                        daemon.on_xdp_features(ifindex, bits);
                    }
                }
                Err(why) => daemon.on_xdp_features_lost(&why),
            },
            () = tokio::time::sleep_until(wake.into()) => {}
        }
        // Drain what else is queued before touching the kernel.
        while let Ok(e) = s.netlink.try_recv() {
            daemon.on_netlink(&e);
        }
        daemon.settle().await;
    }
}

/// Leaves the datapath attached (the default) or detaches, and says in the
/// state file that the loader is gone, and why if it failed.
async fn finish(
    daemon: Daemon,
    layout: &Layout,
    options: &Options,
    outcome: Result<&'static str>,
) -> Result<()> {
    match outcome {
        Ok(signal) if options.detach_on_exit => {
            drop(daemon);
            for line in detach::all(layout).await? {
                log::info!("removed {line}");
            }
            log::info!("{signal}: detached");
            Ok(())
        }
        Ok(signal) => {
            daemon.state(false, None).write(layout)?;
            log::info!(
                "{signal}: exiting with the datapath attached (last schedule stays in force); `ovpn-lb detach` removes it"
            );
            Ok(())
        }
        Err(e) => {
            let _ = daemon.state(false, Some(format!("{e:#}"))).write(layout);
            Err(e)
        }
    }
}

/// The next probe reports, or never (no ring buffer, or it failed).
async fn next_probe_events(
    events: Option<&mut ProbeEvents>,
) -> Option<Vec<ovpn_lb_common::probe::Event>> {
    match events {
        Some(e) => e.next().await.ok(),
        None => std::future::pending().await,
    }
}

/// Follows the drivers' XDP feature changes on a task; false if the kernel
/// offers no notifications (restores then always go through the kernel).
fn follow_xdp_features(tx: mpsc::UnboundedSender<Result<Vec<(u32, u64)>, String>>) -> bool {
    let watcher = match netdev::Watcher::open() {
        Ok(w) => w,
        Err(e) => {
            log::warn!("cannot follow XDP feature changes ({e}); restores go through the kernel");
            return false;
        }
    };
    tokio::spawn(async move {
        loop {
            let next = watcher.next().await.map_err(|e| e.to_string());
            let failed = next.is_err();
            if tx.send(next).is_err() || failed {
                return;
            }
        }
    });
    true
}

/// aya-log's ring buffer, as a descriptor tokio can wait on.
struct LogRing<T>(aya_log::EbpfLogger<T>);

impl<T> std::os::fd::AsRawFd for LogRing<T> {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd as _;
        self.0.as_fd().as_raw_fd()
    }
}

/// The programs' rare-path messages (aya-log) go to the loader's log.
fn forward_bpf_logs(datapath: &mut Datapath) {
    match aya_log::EbpfLogger::init(datapath.ebpf_mut()) {
        // SAFETY: the logger owns its ring buffer's descriptor, open and the
        // same for as long as the AsyncFd holds it.
        Ok(logger) => match unsafe {
            AsyncFd::register_with_interest(LogRing(logger), tokio::io::Interest::READABLE)
        }
        .map_err(|e| e.into_parts().1)
        {
            Ok(mut fd) => {
                tokio::spawn(async move {
                    while let Ok(mut guard) = fd.readable_mut().await {
                        guard.get_inner_mut().0.flush();
                        guard.clear_ready();
                    }
                });
            }
            Err(e) => log::warn!("cannot follow the programs' log: {e}"),
        },
        Err(e) => log::debug!("no program log: {e}"),
    }
}
