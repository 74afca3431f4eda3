//! `ovpn-lb`: the gateway loader.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand};
use ovpn_lb::{
    config::{self, ConfigErrors},
    detach,
    interfaces::System,
    pins::{DEFAULT_PIN_ROOT, DEFAULT_RUN_DIR, Layout},
    run::{self, Options},
    status,
};

/// Spray one LAN's traffic over N OpenVPN tunnels, packet by packet, with
/// stateless per-tunnel source translation, in eBPF.
///
/// `run` attaches the datapath and keeps tunnel health current until SIGINT or
/// SIGTERM. On those signals it exits and leaves the datapath attached with its
/// last schedule, so a new `run` (an upgrade, a restart) takes over in place
/// without dropping a packet; `ovpn-lb detach` removes everything, and
/// `run --detach-on-exit` does so on the signal instead.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Directory on bpffs holding ovpn-lb's pinned maps and links. bpffs is
    /// mounted if missing.
    #[arg(long, global = true, default_value = DEFAULT_PIN_ROOT, value_name = "DIR")]
    pin_root: PathBuf,

    /// Directory for the state file that `status` reads and the run lock.
    #[arg(long, global = true, default_value = DEFAULT_RUN_DIR, value_name = "DIR")]
    run_dir: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration, attach (or replace in place), follow tunnel
    /// health until SIGINT or SIGTERM.
    ///
    /// Nothing is touched unless the whole configuration is valid. Programs are
    /// attached through tcx links pinned under --pin-root; if links are already
    /// pinned there (a previous run, even one killed with -9), their programs
    /// are replaced in place, atomically. If another `run` is going on the same
    /// --run-dir, it is asked to stop and this one takes over.
    ///
    /// Tunnel health comes from rtnetlink link events (device present, up, with
    /// carrier) and, where `management` is set, from OpenVPN's management
    /// interface (CONNECTED or not). A failed tunnel leaves the rotation at once;
    /// a recovered one rejoins after `up_delay_ms`.
    ///
    /// Metrics are served at http://<metrics.listen>/metrics. On SIGINT or
    /// SIGTERM the loader exits and the datapath stays attached with its last
    /// schedule, unless --detach-on-exit is given.
    Run {
        /// The TOML configuration (see ovpn-lb.example.toml).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Detach everything on SIGINT/SIGTERM instead of leaving the datapath
        /// running for the next `run`.
        #[arg(long)]
        detach_on_exit: bool,
    },
    /// Validate the configuration and exit: 0 if it is good, 2 if not.
    Check {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Per-tunnel state, weight, counters and rates, and counts per reason, read
    /// from the pinned maps while `run` is going.
    ///
    /// Rates come from two samples --interval apart. --json prints a stable
    /// document (see the README), --watch redraws in place until interrupted.
    Status {
        /// The stable JSON document instead of a table.
        #[arg(long)]
        json: bool,
        /// Seconds between the two samples that rates are computed from.
        #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
        interval: f64,
        /// Refresh in place every interval until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Remove every link, pin and file ovpn-lb created, and nothing else.
    Detach,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let layout = Layout {
        pin_root: cli.pin_root,
        run_dir: cli.run_dir,
    };
    let result = match cli.command {
        Command::Run {
            config,
            detach_on_exit,
        } => run::run(&config, &layout, &Options { detach_on_exit }),
        Command::Check { config } => check(&config),
        Command::Status {
            json,
            interval,
            watch,
        } => show_status(&layout, json, interval, watch),
        Command::Detach => detach::all(&layout).map(|removed| {
            for line in &removed {
                println!("removed {line}");
            }
            if removed.is_empty() {
                println!("nothing to detach");
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(errors) = e.downcast_ref::<ConfigErrors>() {
                for line in &errors.0 {
                    eprintln!("error: {line}");
                }
                eprintln!("nothing was attached");
                return ExitCode::from(2);
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> Result<()> {
    let (c, warnings) = config::load(path, &System)?;
    for w in warnings {
        eprintln!("warning: {}", w.0);
    }
    println!(
        "{}: valid; LAN {} , {} tunnels, {} remote prefixes",
        path.display(),
        c.lan_interface,
        c.tunnels.len(),
        c.remote.len()
    );
    Ok(())
}

fn show_status(layout: &Layout, json: bool, interval: f64, watch: bool) -> Result<()> {
    let interval = Duration::from_secs_f64(interval.clamp(0.05, 3600.0));
    loop {
        let report = status::report(layout, interval)?;
        let text = if json {
            serde_json::to_string_pretty(&report)?
        } else {
            status::render(&report)
        };
        if !watch {
            println!("{text}");
            return Ok(());
        }
        // Clear the screen and redraw, like `watch`.
        print!("\x1b[H\x1b[2J{text}");
    }
}
