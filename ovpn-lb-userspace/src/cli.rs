//! The command line, shared by the binary and the man page.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    generate::{
        ha::{DEFAULT_GATEWAY_ASN, DEFAULT_ROUTER_ASN},
        plan::{
            DEFAULT_BINARY, DEFAULT_FIRST_PORT, DEFAULT_LINK_V4, DEFAULT_LINK_V6,
            DEFAULT_TRANSLATE_POOL_V4, DEFAULT_TRANSLATE_POOL_V6,
        },
    },
    pins::{DEFAULT_PIN_ROOT, DEFAULT_RUN_DIR},
};

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
#[command(name = "ovpn-lb", version, about, long_about)]
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
    /// from the pinned maps while `run` is going; with `[announce]`, whether
    /// the gateway announces the remote prefixes, and why.
    ///
    /// Rates come from two samples --interval apart. --json prints a stable
    /// document (see docs/deploying.md), --watch redraws in place until interrupted.
    /// --check prints one line and exits 0 while the gateway announces, 1
    /// while it does not (or has no `[announce]`), 2 when no loader runs: for
    /// keepalived's `track_script`.
    Status {
        /// Exit code only (and one line): 0 announced, 1 withdrawn, 2 not running.
        #[arg(long, conflicts_with_all = ["json", "watch", "all"])]
        check: bool,
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
    /// What this kernel offers ovpn-lb: loads every program (the verifier's
    /// word; nothing is attached), then says how tc programs attach (tcx or
    /// legacy tc), whether native XDP runs on a TAP device (tried on one in
    /// a namespace of its own), which spray modes work (packet spray needs
    /// its ring accounting), whether probes can be read, and how IPv6
    /// checksums are changed. Exit code 1 when the kernel refuses the
    /// programs (the reason names its version), 0 otherwise.
    Kernel,
    /// Stop a running `run`, then remove every link, pin, policy rule,
    /// route, neighbour entry and file ovpn-lb created, and nothing else.
    Detach,
    /// Write both gateways' configuration for N OpenVPN tunnels between two
    /// sites, ready to copy.
    ///
    /// Gateway A and gateway B each get a directory under --out that mirrors
    /// their file system from / on: per tunnel k an OpenVPN configuration
    /// (/etc/openvpn/tunK.conf: point to point over UDP port --port + k, TLS
    /// with peer-fingerprint, A the client and B the server), the gateway's
    /// self-signed certificate and key (made here; no CA), ovpn-lb.toml with
    /// both gateways' translation prefixes matching, a sysctl drop-in, the
    /// systemd unit ovpn-lb.service and a README.txt saying where each file
    /// goes. Nothing is written outside --out, and an existing non-empty
    /// --out is refused unless --force.
    ///
    /// Tunnel k's link is the first /30 of block k of --link-v4 (cut into up
    /// to 256 blocks: 10.99.k.0/30 by default), gateway A .1 and gateway B .2.
    /// Translation prefixes come from the pools: gateway A's tunnel k takes
    /// the k-th prefix of its LAN's length in the pool's first half, gateway
    /// B's in the second (by default 100.64.k.0/24 and 100.65.k.0/24 for /24
    /// LANs).
    ///
    /// With --pairs K, K gateway pairs join the sites (gateway-a and
    /// gateway-b, then gateway-a2 and gateway-b2, ...): pair p's tunnel k
    /// takes slot (p-1) x N + k of the ports, links and translation
    /// prefixes, so the first pair's are those of a one-pair site. With
    /// --ha bgp (the default for K > 1) each gateway gets FRR's frr.conf and
    /// daemons (eBGP with BFD to its site's router, announcing the far
    /// site's prefixes while ovpn-lb says it is healthy) and each site a
    /// directory with the router's part; with --ha vrrp each gateway gets a
    /// keepalived.conf (the site's virtual address, tracking ovpn-lb's
    /// health file). Either way ovpn-lb.toml gets an [announce] section.
    Generate(Box<GenerateArgs>),
}

/// How gateway pairs share a site.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HaArg {
    /// eBGP with BFD to the site router, which spreads flows by ECMP (FRR).
    Bgp,
    /// VRRP: the gateways share the LAN's next hop (keepalived), for sites
    /// without a router.
    Vrrp,
}

/// The kind of OpenVPN device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceKind {
    /// `dev tun`: bare IP packets.
    Tun,
    /// `dev tap`: Ethernet frames.
    Tap,
}

/// The answers `generate` needs.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Gateway A's WAN address or host name, as gateway B reaches it; with
    /// --pairs, one per pair, comma-separated.
    #[arg(long, value_name = "HOST", value_delimiter = ',', required = true)]
    pub wan_a: Vec<String>,
    /// Gateway B's WAN address or host name, as gateway A reaches it; one
    /// per pair.
    #[arg(long, value_name = "HOST", value_delimiter = ',', required = true)]
    pub wan_b: Vec<String>,
    /// Gateway A's LAN prefixes: one IPv4 and/or one IPv6, comma-separated or repeated.
    #[arg(long, value_name = "PREFIX", value_delimiter = ',', required = true)]
    pub lan_a: Vec<String>,
    /// Gateway B's LAN prefixes.
    #[arg(long, value_name = "PREFIX", value_delimiter = ',', required = true)]
    pub lan_b: Vec<String>,
    /// Gateway A's LAN interface.
    #[arg(long, value_name = "NAME")]
    pub lan_interface_a: String,
    /// Gateway B's LAN interface.
    #[arg(long, value_name = "NAME")]
    pub lan_interface_b: String,
    /// Gateway A's WAN interface, the one its tunnels' UDP leaves by: its
    /// `ovpn-lb.toml` then guards it by name (else ovpn-lb guards the default
    /// route's interface), and with IPv6 its sysctl drop-in keeps it taking
    /// router advertisements (`accept_ra = 2`).
    #[arg(long, value_name = "NAME")]
    pub wan_interface_a: Option<String>,
    /// Gateway B's WAN interface.
    #[arg(long, value_name = "NAME")]
    pub wan_interface_b: Option<String>,
    /// Number of tunnels (OpenVPN processes per gateway), 1 to 64.
    #[arg(long, short = 'n', default_value_t = 4)]
    pub tunnels: usize,
    /// UDP port of tunnel 0; tunnel k uses this + k on both gateways.
    #[arg(long, default_value_t = DEFAULT_FIRST_PORT)]
    pub port: u16,
    /// OpenVPN devices: tun (IP) or tap (Ethernet).
    #[arg(long, value_enum, default_value_t = DeviceKind::Tun)]
    pub kind: DeviceKind,
    /// OpenVPN's tun-mtu. Above 1500 makes jumbo tunnels: fewer, larger
    /// packets through each single-threaded OpenVPN (the WAN fragments them).
    #[arg(long, value_name = "BYTES")]
    pub tun_mtu: Option<u32>,
    /// The tunnels' link network (IPv4).
    #[arg(long, value_name = "PREFIX", default_value = DEFAULT_LINK_V4)]
    pub link_v4: String,
    /// The tunnels' IPv6 link network, for TAP tunnels with IPv6 LANs: tunnel k
    /// gets its k-th /64.
    #[arg(long, value_name = "PREFIX", default_value = DEFAULT_LINK_V6)]
    pub link_v6: String,
    /// Where IPv4 translation prefixes come from (first half gateway A's, second B's).
    #[arg(long, value_name = "PREFIX", default_value = DEFAULT_TRANSLATE_POOL_V4)]
    pub translate_pool_v4: String,
    /// Where IPv6 translation prefixes come from.
    #[arg(long, value_name = "PREFIX", default_value = DEFAULT_TRANSLATE_POOL_V6)]
    pub translate_pool_v6: String,
    /// Also protect each management socket with a password (a file per gateway).
    #[arg(long)]
    pub management_password: bool,
    /// Where the ovpn-lb binary is installed on the gateways.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_BINARY)]
    pub binary: PathBuf,
    /// The directory gateway A's files are installed under: / on a real
    /// gateway; another for a container or test bed. Paths in the files
    /// follow it. With --pairs, one for all or one per pair, comma-separated.
    #[arg(long, value_name = "DIR", value_delimiter = ',', default_value = "/")]
    pub root_a: Vec<PathBuf>,
    /// The directory gateway B's files are installed under.
    #[arg(long, value_name = "DIR", value_delimiter = ',', default_value = "/")]
    pub root_b: Vec<PathBuf>,
    /// Gateway pairs between the two sites, 1 to 16.
    #[arg(long, default_value_t = 1)]
    pub pairs: usize,
    /// How the pairs share each site: bgp (a site router, ECMP; the default
    /// with more than one pair) or vrrp (keepalived, no router).
    #[arg(long, value_enum)]
    pub ha: Option<HaArg>,
    /// A site-A gateway's own address(es) on its LAN interface, one per LAN
    /// address family, comma-separated; give it once per pair, in order.
    #[arg(long, value_name = "ADDR[,ADDR6]")]
    pub gateway_a: Vec<String>,
    /// A site-B gateway's own address(es); once per pair.
    #[arg(long, value_name = "ADDR[,ADDR6]")]
    pub gateway_b: Vec<String>,
    /// --ha bgp: site A's router's address(es) on the gateways' segment.
    #[arg(long, value_name = "ADDR", value_delimiter = ',')]
    pub router_a: Vec<String>,
    /// --ha bgp: site B's router's address(es).
    #[arg(long, value_name = "ADDR", value_delimiter = ',')]
    pub router_b: Vec<String>,
    /// --ha bgp: the AS of site A's gateways.
    #[arg(long, default_value_t = DEFAULT_GATEWAY_ASN)]
    pub asn_a: u32,
    /// --ha bgp: the AS of site B's gateways.
    #[arg(long, default_value_t = DEFAULT_GATEWAY_ASN)]
    pub asn_b: u32,
    /// --ha bgp: site A's router's AS.
    #[arg(long, default_value_t = DEFAULT_ROUTER_ASN)]
    pub router_asn_a: u32,
    /// --ha bgp: site B's router's AS.
    #[arg(long, default_value_t = DEFAULT_ROUTER_ASN)]
    pub router_asn_b: u32,
    /// --ha vrrp: the virtual address(es) site A's LAN routes the remote
    /// prefixes through, one per family.
    #[arg(long, value_name = "ADDR", value_delimiter = ',')]
    pub vip_a: Vec<String>,
    /// --ha vrrp: site B's virtual address(es).
    #[arg(long, value_name = "ADDR", value_delimiter = ',')]
    pub vip_b: Vec<String>,
    /// Output directory: gateway-a/ and gateway-b/ are written in it.
    #[arg(long, short, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace the gateway (and site) directories in an existing --out.
    #[arg(long)]
    pub force: bool,
}
