//! `cargo xtask lab up|down|status`, and `cargo xtask run` with no arguments:
//! the built-in lab of real OpenVPN tunnels in network namespaces, with
//! ovpn-lb on both gateways.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use ovpn_lb_tests::lab::{HOST_B, Lab, Options, Peer, Side};

use crate::{
    build::{self, workspace_root},
    setup,
};

/// Namespace prefix of the interactive lab.
const TAG: &str = "olab";

fn dir() -> PathBuf {
    workspace_root().join("target/lab")
}

fn loader() -> PathBuf {
    workspace_root().join("target/release/ovpn-lb")
}

#[derive(clap::Args, Clone)]
pub struct LabArgs {
    /// Number of OpenVPN tunnels between the gateways.
    #[arg(long, default_value_t = 4)]
    pub tunnels: usize,
    /// Gateway B as a plain OpenVPN router and gateway A in flow mode.
    #[arg(long)]
    pub one_sided: bool,
    /// Flow mode on both gateways (one flow stays on one tunnel).
    #[arg(long)]
    pub flow: bool,
    /// Hold each OpenVPN process to this percentage of a CPU.
    #[arg(long, value_name = "PERCENT")]
    pub cpu_quota: Option<u32>,
    /// OpenVPN TAP tunnels (`dev tapK`, an Ethernet link each) instead of tun.
    #[arg(long)]
    pub tap: bool,
    /// The gateways' hook (`mode` in their configurations): tc, xdp (TAP
    /// tunnels only) or auto; the loader's default (auto) when not given.
    #[arg(long, value_name = "HOOK", value_parser = ["tc", "xdp", "auto"])]
    pub mode: Option<String>,
}

impl LabArgs {
    fn options(&self) -> Options {
        Options {
            tunnels: self.tunnels,
            peer: if self.one_sided {
                Peer::PlainRoutes
            } else {
                Peer::OvpnLb
            },
            cpu_quota_percent: self.cpu_quota,
            flow_mode: self.flow,
            tap: self.tap,
            hook: self.mode.clone(),
            ..Options::default()
        }
    }
}

fn prepare() -> Result<()> {
    if !setup::is_root() {
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
    println!(
        "  namespaces: {} (host A), {} (gateway A), {} (gateway B), {} (host B)",
        lab.host(Side::A),
        lab.gw(Side::A),
        lab.gw(Side::B),
        lab.host(Side::B)
    );
    println!(
        "  {} OpenVPN {} tunnels ({}..) over the WAN veth, hook {}, logs in {}",
        lab.options.tunnels,
        if lab.options.tap { "tap" } else { "tun" },
        lab.dev(0),
        lab.options.hook.as_deref().unwrap_or("auto (default)"),
        lab.dir.display()
    );
    for side in [Side::A, Side::B] {
        if side == Side::B && lab.options.peer == Peer::PlainRoutes {
            println!("  gateway B: plain OpenVPN routes, no ovpn-lb");
            continue;
        }
        let layout = lab.layout(side);
        println!(
            "  gateway {side:?}: config {}",
            lab.config_path(side).display()
        );
        println!(
            "    status:  ip netns exec {} {} --pin-root {} --run-dir {} status",
            lab.gw(side),
            loader().display(),
            layout.pin_root.display(),
            layout.run_dir.display()
        );
        println!(
            "    metrics: ip netns exec {} curl -s http://127.0.0.1:9477/metrics",
            lab.gw(side)
        );
    }
    println!(
        "  try:      ip netns exec {} iperf3 -c {HOST_B} -t 10",
        lab.host(Side::A)
    );
}

pub fn up(args: &LabArgs) -> Result<()> {
    prepare()?;
    let lab = Lab::up(&dir(), TAG, &loader(), args.options());
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
    println!("{}", std::fs::read_to_string(record)?);
    for side in ["a", "b"] {
        let run_dir = dir().join(format!("run-{side}"));
        if !run_dir.exists() {
            continue;
        }
        println!("gateway {}:", side.to_uppercase());
        let _ = Command::new("ip")
            .args(["netns", "exec", &format!("{TAG}-g{side}")])
            .arg(loader())
            .arg("--pin-root")
            .arg(dir().join("bpf").join(side))
            .arg("--run-dir")
            .arg(&run_dir)
            .args(["status", "--interval", "0.5"])
            .status();
    }
    Ok(())
}

fn rates(lab: &Lab, side: Side) -> Option<serde_json::Value> {
    let layout = lab.layout(side);
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.gw(side)])
        .arg(loader())
        .arg("--pin-root")
        .arg(&layout.pin_root)
        .arg("--run-dir")
        .arg(&layout.run_dir)
        .args(["status", "--json", "--interval", "1"])
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// `cargo xtask run` with no arguments: bring the lab up, run an iperf3 demo,
/// print live per-tunnel counters until Ctrl-C, then tear everything down.
pub fn demo(args: &LabArgs) -> Result<()> {
    prepare()?;
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    let lab = Lab::up(&dir(), TAG, &loader(), args.options());
    describe(&lab);
    println!("\nrunning a 20 s iperf3 TCP flow from host A to host B; Ctrl-C tears the lab down\n");
    let mut server = Command::new("ip")
        .args(["netns", "exec", &lab.host(Side::B), "iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    thread::sleep(Duration::from_millis(300));
    let mut client = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.host(Side::A),
            "iperf3",
            "-c",
            HOST_B,
            "-t",
            "20",
            "-i",
            "0",
        ])
        .stdout(std::fs::File::create(lab.dir.join("iperf3.txt"))?)
        .stderr(Stdio::null())
        .spawn()?;
    let started = Instant::now();
    let mut reported = false;
    while !stop.load(Ordering::Relaxed) {
        if let Some(report) = rates(&lab, Side::A) {
            let line: Vec<String> = report["tunnels"]
                .as_array()
                .into_iter()
                .flatten()
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
            println!(
                "[{:>4}s] A->B  {}",
                started.elapsed().as_secs(),
                line.join(" | ")
            );
        }
        if !reported && client.try_wait()?.is_some() {
            reported = true;
            let text = std::fs::read_to_string(lab.dir.join("iperf3.txt")).unwrap_or_default();
            for l in text
                .lines()
                .filter(|l| l.contains("sender") || l.contains("receiver"))
            {
                println!("iperf3: {}", l.trim());
            }
            println!("demo done; counters keep updating, Ctrl-C to tear down");
        }
    }
    let _ = client.kill();
    let _ = client.wait();
    let _ = server.kill();
    let _ = server.wait();
    drop(lab);
    println!("\nlab torn down");
    Ok(())
}
