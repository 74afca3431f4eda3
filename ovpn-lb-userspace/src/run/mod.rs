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
    datapath::Datapath,
    detach,
    facts::Facts,
    metrics::{self, Snapshot, Views},
    netlink::{Netlink, netdev},
    openvpn,
    pins::Layout,
};
use daemon::Daemon;

pub struct Options {
    /// Detach everything on SIGINT/SIGTERM instead of leaving the datapath running.
    pub detach_on_exit: bool,
}

/// Runs until SIGINT or SIGTERM.
///
/// # Errors
/// A configuration error (nothing is attached then), a failure to attach,
/// or an unrecoverable failure of the event sources; the state file then
/// says the loader exited and why.
pub async fn run(config_path: &Path, layout: &Layout, options: &Options) -> Result<()> {
    let (netlink, mut events) = Netlink::open().context("opening rtnetlink")?;
    let facts = Facts::gather(&netlink).await?;
    let (config, warnings) = config::load(config_path, &facts)?;
    for w in warnings {
        log::warn!("{}", w.0);
    }
    let mounted = layout.prepare()?;
    let _lock = lock::acquire(layout, "run").await?;
    let listener = metrics::server::bind(config.metrics_listen).await?;
    log::info!("hook: {}", config.hook_reason);
    let mut datapath = Datapath::load_pinned(layout)?;
    forward_bpf_logs(&mut datapath);

    // Subscribed before the LAN's features are read at start, so no change
    // falls between.
    let (features_tx, mut features) = mpsc::unbounded_channel();
    let followed = config.hook == config::Hook::Xdp && follow_xdp_features(features_tx);
    let (mgmt_tx, mut management) = mpsc::unbounded_channel();
    for (k, t) in config.tunnels.iter().enumerate() {
        if let Some(m) = &t.management {
            tokio::spawn(openvpn::watch(
                crate::tunnel::TunnelId::new(k),
                m.clone(),
                mgmt_tx.clone(),
            ));
        }
    }
    let views = Views::default();
    let render_layout = layout.clone();
    let render_views = views.clone();
    tokio::spawn(metrics::server::serve(
        listener,
        std::sync::Arc::new(move || {
            metrics::encode(&Snapshot::take(&render_layout, &render_views))
        }),
    ));
    let metrics_listen = config.metrics_listen;
    let tunnel_count = config.tunnels.len();
    // Fresh: a takeover may have taken a while.
    let facts = Facts::gather(&netlink).await?;
    let mut daemon = Daemon::new(
        config,
        config_path,
        layout,
        datapath,
        netlink,
        views,
        mounted,
    );
    daemon.start(&facts, followed).await?;
    log::info!(
        "running with {tunnel_count} tunnels; metrics on http://{metrics_listen}/metrics; SIGINT/SIGTERM to stop"
    );

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let outcome: Result<&str> = loop {
        let wake = daemon.next_wakeup();
        tokio::select! {
            _ = sigint.recv() => break Ok("SIGINT"),
            _ = sigterm.recv() => break Ok("SIGTERM"),
            event = events.recv() => match event {
                Some(e) => daemon.on_netlink(&e),
                None => break Err(anyhow::anyhow!("the rtnetlink connection closed")),
            },
            Some((id, state)) = management.recv() => daemon.on_management(id, state),
            Some(f) = features.recv() => match f {
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
        while let Ok(e) = events.try_recv() {
            daemon.on_netlink(&e);
        }
        daemon.settle().await;
    };
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
