//! `cargo xtask lab up|down|status`, and `cargo xtask run` with no arguments:
//! the built-in lab of real OpenVPN tunnels in network namespaces, with
//! ovpn-lb on both gateways.

use std::{fs, path::PathBuf, sync::atomic::Ordering};

use anyhow::{Result, bail};
use ovpn_lb::{config::file, generate::ha::HaKind};
use ovpn_lb_common::TunnelStats;
use ovpn_lb_tests::{
    lab::{Forwarding, Gw, HOST_B, Lab, Options, Peer, Side, growth},
    netns,
    traffic::{iperf3_goodput_mbit, iperf3_server},
};

use crate::{
    build, setup,
    tools::{is_root, release_loader, stop_flag, workspace_root},
};

/// Namespace prefix of the interactive lab.
const TAG: &str = "olab";

fn dir() -> PathBuf {
    workspace_root().join("target/lab")
}

#[derive(clap::Args, Clone)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "command-line switches, each its own setting"
)]
pub struct LabArgs {
    /// Number of OpenVPN tunnels between the gateways.
    #[arg(long, default_value_t = 4)]
    pub tunnels: usize,
    /// Gateway B as a plain OpenVPN router and gateway A in flow mode.
    #[arg(long)]
    pub one_sided: bool,
    /// How the gateways spray: packet (earliest departure), round-robin or
    /// flow (ovpn-lb's `spray`), or numgen: no ovpn-lb, both gateways spray
    /// with nftables `numgen inc mod N`, a mark, and one fwmark rule and
    /// routing table per tunnel (the kernel's own per-packet spray; real LAN
    /// addresses, nothing translated).
    #[arg(long, value_parser = parse_lab_spray, default_value = "packet")]
    pub spray: LabSpray,
    /// Hold each OpenVPN process to this percentage of a CPU.
    #[arg(long, value_name = "PERCENT")]
    pub cpu_quota: Option<u32>,
    /// Which gateways' OpenVPN processes --cpu-quota holds: both, or a
    /// (gateway A's only).
    #[arg(long, value_enum, default_value = "both", requires = "cpu_quota")]
    pub cpu_quota_on: QuotaOn,
    /// OpenVPN `--shaper` (bytes/s) of gateway A's tunnels, one per tunnel,
    /// comma-separated; the last value holds for the rest. OpenVPN shapes
    /// only up to about 1000000.
    #[arg(long, value_delimiter = ',', value_name = "BYTES_PER_S")]
    pub shaper: Vec<u32>,
    /// --shaper on gateway B's tunnels too.
    #[arg(long, requires = "shaper")]
    pub shaper_both: bool,
    /// One-way delay added to tunnel k's WAN path, ms, one per tunnel,
    /// comma-separated (the last value for the rest): a UDP relay in
    /// gateway B's namespace holds each tunnel's datagrams. Its threads run
    /// in this process: with `lab up` they end when it returns.
    #[arg(long, value_delimiter = ',', value_name = "MS")]
    pub path_delay: Vec<u32>,
    /// The loaders' `path_delay_max_ms`: how much of a longer path packet
    /// spray counts (default: the loader's).
    #[arg(long, value_name = "MS")]
    pub path_delay_max_ms: Option<u64>,
    /// OpenVPN's own defaults for its queues: no `txqueuelen`, `sndbuf` or
    /// `rcvbuf` in the generated configurations.
    #[arg(long)]
    pub openvpn_defaults: bool,
    /// The hosts' LAN veths send segments (TSO/GSO off), as on a real
    /// Ethernet LAN, rather than GSO super-packets.
    #[arg(long)]
    pub wire_segments: bool,
    /// OpenVPN TAP tunnels (`dev tapK`, an Ethernet link each) instead of tun.
    #[arg(long)]
    pub tap: bool,
    /// The gateways' hook (`hook` in their configurations): tc, xdp (TAP
    /// tunnels only) or auto; the loader's default (auto) when not given.
    #[arg(long, alias = "mode", value_name = "HOOK", value_parser = ["tc", "xdp", "auto"])]
    pub hook: Option<String>,
    /// Gateway pairs between the sites, each with --tunnels tunnels: with
    /// more than one, a router per site runs FRR and spreads flows over the
    /// pairs that announce (BGP, ECMP), every gateway running FRR too.
    #[arg(long, default_value_t = 1)]
    pub pairs: usize,
    /// How the pairs share a site: bgp (the default with several pairs) or
    /// vrrp (keepalived on the gateways, the hosts on their LAN).
    #[arg(long, value_enum)]
    pub ha: Option<HaArg>,
}

/// `--ha`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HaArg {
    Bgp,
    Vrrp,
}

/// `--spray`: an ovpn-lb spray mode, or nftables numgen instead of ovpn-lb.
#[derive(Clone, Copy, Debug)]
pub enum LabSpray {
    OvpnLb(file::Spray),
    Numgen,
}

/// `--cpu-quota-on`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum QuotaOn {
    Both,
    A,
}

impl LabArgs {
    fn options(&self) -> Result<Options> {
        if self.pairs > 1 || self.ha.is_some() {
            if !matches!(self.spray, LabSpray::OvpnLb(_)) || self.one_sided || self.tap {
                bail!(
                    "--pairs and --ha run ovpn-lb on every gateway over tun tunnels: not with --spray numgen, --one-sided or --tap"
                );
            }
            if !(1..=8).contains(&self.pairs) {
                bail!("--pairs {}: the lab takes 1 to 8", self.pairs);
            }
        }
        let (forwarding, spray) = match self.spray {
            LabSpray::OvpnLb(spray) => (Forwarding::OvpnLb, spray),
            LabSpray::Numgen if self.one_sided => {
                bail!("--spray numgen runs no ovpn-lb, and --one-sided runs it on gateway A")
            }
            LabSpray::Numgen => (Forwarding::Numgen, file::Spray::default()),
        };
        Ok(Options {
            tunnels: self.tunnels,
            peer: if self.one_sided {
                Peer::PlainRoutes
            } else {
                Peer::OvpnLb
            },
            forwarding,
            spray,
            cpu_quota_percent: self.cpu_quota,
            cpu_quota_a_only: self.cpu_quota_on == QuotaOn::A,
            shaper: self.shaper.clone(),
            shaper_both: self.shaper_both,
            path_delay_ms: self.path_delay.clone(),
            path_delay_max_ms: self.path_delay_max_ms,
            openvpn_defaults: self.openvpn_defaults,
            wire_segments: self.wire_segments,
            tap: self.tap,
            hook: self.hook.clone(),
            pairs: self.pairs,
            ha: self.ha.map(|h| match h {
                HaArg::Bgp => HaKind::Bgp,
                HaArg::Vrrp => HaKind::Vrrp,
            }),
            ..Options::default()
        })
    }
}

fn parse_lab_spray(value: &str) -> Result<LabSpray, String> {
    if value == "numgen" {
        return Ok(LabSpray::Numgen);
    }
    parse_spray(value)
        .map(LabSpray::OvpnLb)
        .map_err(|e| format!("{e}, or `numgen`"))
}

/// A `spray` value as the configuration file spells it.
pub fn parse_spray(value: &str) -> Result<file::Spray, String> {
    use serde::{Deserialize as _, de::IntoDeserializer as _};
    file::Spray::deserialize(value.into_deserializer())
        .map_err(|e: serde::de::value::Error| e.to_string())
}

/// A `spray` value's name in the configuration file.
pub fn spray_name(spray: file::Spray) -> String {
    serde_json::to_value(spray)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn prepare() -> Result<()> {
    if !is_root() {
        bail!("the lab makes network namespaces and attaches BPF programs: run as root");
    }
    setup::run()?;
    build::all()?;
    if dir().join("lab.json").exists() {
        bail!(
            "a lab is already up in {}: `cargo xtask lab down` first",
            dir().display()
        );
    }
    Ok(())
}

fn describe(lab: &Lab) {
    println!("lab is up in {}", lab.dir.display());
    let gateways: Vec<String> = lab
        .gateways()
        .iter()
        .map(|&g| format!("{} ({})", lab.gw(g), g.name()))
        .collect();
    println!(
        "  namespaces: {} (host A), {} (host B), gateways {}",
        lab.host(Side::A),
        lab.host(Side::B),
        gateways.join(", ")
    );
    match lab.options.routing() {
        Some(HaKind::Bgp) => println!(
            "  routers {} and {} run FRR (ECMP over the pairs that announce): ip netns exec {} vtysh --vty_socket {} -c 'show ip route'",
            lab.router(Side::A),
            lab.router(Side::B),
            lab.router(Side::A),
            lab.router_frr(Side::A).run_dir.display()
        ),
        Some(HaKind::Vrrp) => println!(
            "  each site's hosts and gateways share a LAN ({} and {} are its switches); keepalived holds .1",
            lab.router(Side::A),
            lab.router(Side::B)
        ),
        None => {}
    }
    println!(
        "  {} OpenVPN {} tunnels per pair ({}..) over the WAN veth (TLS, peer-fingerprint), hook {}, logs in {}",
        lab.options.tunnels,
        if lab.options.tap { "tap" } else { "tun" },
        lab.dev(0),
        lab.options.hook.as_deref().unwrap_or("auto (default)"),
        lab.dir.display()
    );
    println!("  {}", conditions(&lab.options));
    if lab.options.forwarding == Forwarding::Numgen {
        println!(
            "  no ovpn-lb: both gateways spray with nftables numgen (rules in {}/numgen-*.nft)",
            lab.dir.display()
        );
        return;
    }
    for gw in lab.gateways() {
        if gw.side == Side::B && lab.options.peer == Peer::PlainRoutes {
            println!("  gateway B: plain OpenVPN routes, no ovpn-lb");
            continue;
        }
        let layout = lab.layout(gw);
        println!(
            "  {}: files under {} (config {})",
            gw.name(),
            lab.root(gw).display(),
            lab.config_path(gw).display()
        );
        println!(
            "    status:  ip netns exec {} {} --pin-root {} --run-dir {} status",
            lab.gw(gw),
            release_loader().display(),
            layout.pin_root.display(),
            layout.run_dir.display()
        );
        println!(
            "    metrics: ip netns exec {} curl -s http://127.0.0.1:9477/metrics",
            lab.gw(gw)
        );
    }
    println!(
        "  try:      ip netns exec {} iperf3 -c {HOST_B} -t 10",
        lab.host(Side::A)
    );
}

/// The lab's spray, shapers, quotas and LAN segments, in one line.
fn conditions(o: &Options) -> String {
    let spray = if o.forwarding == Forwarding::Numgen {
        "nftables numgen".to_owned()
    } else {
        format!("spray {}", spray_name(o.spray))
    };
    let shaper = if o.shaper.is_empty() {
        "unshaped".to_owned()
    } else {
        let rates: Vec<String> = o.shaper.iter().map(u32::to_string).collect();
        format!("gateway A's OpenVPN --shaper {} B/s", rates.join(", "))
    };
    let quota = match (o.cpu_quota_percent, o.cpu_quota_a_only) {
        (None, _) => "no CPU quota".to_owned(),
        (Some(p), false) => format!("every OpenVPN at {p}% of a CPU"),
        (Some(p), true) => format!("gateway A's OpenVPNs at {p}% of a CPU"),
    };
    let lan = if o.wire_segments {
        "hosts send wire segments (TSO/GSO off)"
    } else {
        "hosts send GSO super-packets"
    };
    format!("{spray}; {shaper}; {quota}; {lan}")
}

pub fn up(args: &LabArgs) -> Result<()> {
    let options = args.options()?;
    prepare()?;
    let lab = Lab::up(&dir(), TAG, &release_loader(), options);
    describe(&lab);
    println!("`cargo xtask lab down` tears it all down");
    lab.persist();
    Ok(())
}

#[expect(clippy::unnecessary_wraps, reason = "every command returns a Result")]
pub fn down() -> Result<()> {
    if !dir().join("lab.json").exists() {
        println!("no lab is up");
        return Ok(());
    }
    Lab::down(&dir());
    println!("lab torn down");
    Ok(())
}

pub fn status() -> Result<()> {
    let record = dir().join("lab.json");
    if !record.exists() {
        println!("no lab is up");
        return Ok(());
    }
    println!("{}", fs::read_to_string(record)?);
    // Every gateway the lab may have: those whose loader left a run directory.
    for pair in 0..ovpn_lb::generate::plan::MAX_PAIRS {
        for side in Side::BOTH {
            let gw = Gw::new(pair, side);
            let site = Lab::loader_at(&dir(), TAG, &release_loader(), gw);
            if !site.layout.run_dir.exists() {
                continue;
            }
            let out = site.ovpn_lb(&["status", "--interval", "0.5"]);
            println!("{}:\n{}", gw.name(), String::from_utf8_lossy(&out.stdout));
        }
    }
    Ok(())
}

/// One line of per-tunnel rates from gateway `side`'s `status --json`.
fn rates(lab: &Lab, side: Side) -> Option<String> {
    let report = lab.loader(side).try_status("1")?;
    let line: Vec<String> = report["tunnels"]
        .as_array()?
        .iter()
        .map(|t| {
            format!(
                "{} {} {:>7.1} Mbit/s {:>6} pkt/s",
                t["device"].as_str().unwrap_or("?"),
                t["state"].as_str().unwrap_or("?"),
                t["tx_bits_per_second"].as_f64().unwrap_or(0.0) / 1e6,
                t["tx_packets_per_second"].as_f64().unwrap_or(0.0).round()
            )
        })
        .collect();
    Some(line.join(" | "))
}

/// What the demo's flow did: iperf3's goodput and retransmits, each
/// tunnel's share of the packets gateway A sprayed meanwhile, and one
/// tunnel's goodput alone, measured first in the same lab.
struct FlowSummary {
    seconds: f64,
    mbit_per_s: f64,
    retransmits: u64,
    /// (device, percent of the sprayed packets).
    shares: Vec<(String, f64)>,
    /// Mbit/s of one tunnel alone ([`one_tunnel`]), if measured.
    alone: Option<f64>,
}

impl FlowSummary {
    /// From iperf3's `-J` report, gateway A's tunnel counters before and
    /// after the flow, and one tunnel's goodput alone.
    fn new(lab: &Lab, iperf3_json: &str, before: &[TunnelStats], alone: Option<f64>) -> Self {
        let v: serde_json::Value = serde_json::from_str(iperf3_json).unwrap_or_default();
        let end = &v["end"];
        let sprayed = growth(before, &lab.tunnel_stats(Side::A), |t| t.tx_packets);
        let total: u64 = sprayed.iter().sum();
        #[expect(
            clippy::cast_precision_loss,
            reason = "packet counts, for a percentage"
        )]
        let shares = sprayed
            .iter()
            .enumerate()
            .map(|(k, &n)| (lab.dev(k), 100.0 * n as f64 / total.max(1) as f64))
            .collect();
        let received = &end["sum_received"];
        Self {
            seconds: received["seconds"].as_f64().unwrap_or(0.0),
            mbit_per_s: iperf3_goodput_mbit(&v),
            retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
            shares,
            alone,
        }
    }
}

/// Goodput in Mbit/s of one tunnel alone in `lab`, over [`BASELINE_SECONDS`]:
/// host A to gateway B's own end of the first tunnel. That address is no
/// remote prefix, so ovpn-lb leaves the flow to the kernel, which routes it
/// through that tunnel alone, with the same OpenVPN settings as the flow
/// the demo sprays. `None` when it could not be measured.
fn one_tunnel(lab: &Lab) -> Option<f64> {
    let far = lab
        .generated()
        .plan()
        .tunnels
        .first()?
        .link_address(Side::B)
        .to_string();
    let server = iperf3_server(&lab.gw(Side::B));
    let out = netns::command(&lab.host(Side::A), "iperf3")
        .args(["-J", "-c", &far, "-t", &BASELINE_SECONDS.to_string()])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    drop(server);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(iperf3_goodput_mbit(&v)).filter(|&mbit| mbit > 0.0)
}

impl std::fmt::Display for FlowSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shares: Vec<String> = self
            .shares
            .iter()
            .map(|(dev, percent)| format!("{dev} {percent:.1} %"))
            .collect();
        write!(
            f,
            "flow done after {:.0} s: {:.1} Mbit/s goodput",
            self.seconds, self.mbit_per_s
        )?;
        #[expect(clippy::cast_precision_loss, reason = "a tunnel count, for a ratio")]
        let n = self.shares.len().max(1) as f64;
        match self.alone {
            Some(alone) => write!(
                f,
                ", {:.2} of {n} x one tunnel ({alone:.1} Mbit/s alone, measured first)",
                self.mbit_per_s / (n * alone)
            )?,
            None => write!(f, " (one tunnel alone could not be measured)")?,
        }
        write!(
            f,
            ", {} retransmits; sprayed packets: {}",
            self.retransmits,
            shares.join(", ")
        )
    }
}

/// How long the demo's iperf3 flow runs.
const DEMO_SECONDS: u64 = 20;
/// How long the demo measures one tunnel alone before it.
const BASELINE_SECONDS: u64 = 10;

/// `cargo xtask run` with no arguments: bring the lab up, run an iperf3
/// flow while printing live per-tunnel rates, sum it up in one line, then
/// keep the lab up until Ctrl-C, which tears everything down.
pub fn demo(args: &LabArgs) -> Result<()> {
    let options = args.options()?;
    prepare()?;
    let stop = stop_flag()?;
    let lab = Lab::up(&dir(), TAG, &release_loader(), options);
    describe(&lab);
    println!(
        "\nmeasuring one tunnel alone for {BASELINE_SECONDS} s (host A to gateway B's end of the first tunnel, which the kernel routes)"
    );
    let alone = one_tunnel(&lab);
    match alone {
        Some(mbit) => println!("one tunnel alone: {mbit:.1} Mbit/s"),
        None => println!("one tunnel alone: not measured (iperf3 gave no result)"),
    }
    println!(
        "\nrunning a {DEMO_SECONDS} s iperf3 TCP flow from host A to host B; Ctrl-C tears the lab down\n"
    );
    let server = iperf3_server(&lab.host(Side::B));
    let report = lab.dir.join("iperf3.json");
    let before = lab.tunnel_stats(Side::A);
    let mut client = netns::command(&lab.host(Side::A), "iperf3")
        .args(["-J", "-c", HOST_B, "-t", &DEMO_SECONDS.to_string()])
        .stdout(fs::File::create(&report)?)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let started = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        // Each sample takes a second.
        if let Some(line) = rates(&lab, Side::A) {
            println!("[{:>4}s] A->B  {line}", started.elapsed().as_secs());
        }
        if client.try_wait()?.is_some() {
            let json = fs::read_to_string(&report).unwrap_or_default();
            println!("{}", FlowSummary::new(&lab, &json, &before, alone));
            println!("the lab stays up for your own commands (above); Ctrl-C tears it down");
            break;
        }
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = client.kill();
    let _ = client.wait();
    drop(server);
    drop(lab);
    println!("\nlab torn down");
    Ok(())
}
