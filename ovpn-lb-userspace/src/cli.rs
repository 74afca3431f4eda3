//! The command line, shared by the binary and the man page.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::pins::{DEFAULT_PIN_ROOT, DEFAULT_RUN_DIR};

/// Where `run`, `check` and `doctor` read the configuration unless told.
pub const DEFAULT_CONFIG: &str = "/etc/ovpn-lb/ovpn-lb.toml";

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
pub struct Cli {
    /// Directory on bpffs holding ovpn-lb's pinned maps and links. bpffs is
    /// mounted if missing.
    #[arg(long, global = true, default_value = DEFAULT_PIN_ROOT, value_name = "DIR")]
    pub pin_root: PathBuf,

    /// Directory for the state file that `status` reads and the run lock.
    #[arg(long, global = true, default_value = DEFAULT_RUN_DIR, value_name = "DIR")]
    pub run_dir: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
    /// a recovered one rejoins after `up_delay_ms`. A tunnel device that does
    /// not exist yet is a warning: the tunnel joins when it appears.
    ///
    /// Remote-bound packets that the datapath leaves to the kernel (over the
    /// tunnel MTU, TTL expiring) are routed by ovpn-lb's own policy rules and
    /// table (`kernel_route`), which lead only into tunnels.
    ///
    /// Metrics are served at http://<metrics.listen>/metrics. On SIGINT or
    /// SIGTERM the loader exits and the datapath stays attached with its last
    /// schedule, unless --detach-on-exit is given.
    Run {
        /// The TOML configuration (see ovpn-lb.example.toml).
        #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Detach everything on SIGINT/SIGTERM instead of leaving the datapath
        /// running for the next `run`.
        #[arg(long)]
        detach_on_exit: bool,
    },
    /// Validate the configuration and exit: 0 if it is good, 2 if not.
    Check {
        #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Check this gateway and say, for each problem, how to fix it:
    /// forwarding, reverse-path filtering on the tunnels, where the kernel
    /// sends remote-bound LAN traffic (never in the clear), MTUs, the tunnel
    /// devices, OpenVPN's management interfaces, the loader, and whether the
    /// far gateway answers probes.
    ///
    /// Exit code: 0 when nothing is wrong (warnings allowed), 1 when
    /// something is, 2 when the configuration does not validate.
    Doctor {
        #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The findings as JSON.
        #[arg(long)]
        json: bool,
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
        /// List every reason, also those that counted nothing.
        #[arg(long)]
        all: bool,
    },
    /// Stop a running `run`, then remove every link, pin, policy rule,
    /// route, neighbour entry and file ovpn-lb created, and nothing else.
    Detach,
}
