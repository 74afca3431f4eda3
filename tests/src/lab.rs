//! The built-in lab: two LANs joined by N real OpenVPN tunnels, all in network
//! namespaces, with ovpn-lb on both gateways (or on one, against plain routes).
//!
//! ```text
//! host A ── lan ── gateway A ══ tun0..tunN-1 (OpenVPN over the WAN veth) ══ gateway B ── lan ── host B
//! 192.168.10.5                                                                           192.168.20.5
//! fd00:a::5                                                                              fd00:b::5
//! ```
//!
//! With `Options::tap` the tunnels are OpenVPN `dev tap` devices `tap0..`
//! instead, each an Ethernet link `10.99.k.0/24` and `fd99:k::/64` between the
//! gateways (gateway A .1, gateway B .2), and the configurations name the far
//! end as each tunnel's `next_hop`.
//!
//! Everything the lab makes is written to `lab.json` in its directory before it
//! is made, so `Lab::drop`, a failed test and `cargo xtask lab down` all tear
//! down the same list: processes (by PID), namespaces, cgroups, mounts.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use ovpn_lb::{pins::Layout, status::Counters};
use ovpn_lb_common::TunnelStats;
use serde::{Deserialize, Serialize};

use crate::netns::run;

/// The two gateways.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Side {
    A,
    B,
}

impl Side {
    fn letter(self) -> &'static str {
        match self {
            Side::A => "a",
            Side::B => "b",
        }
    }

    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// How gateway B forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Peer {
    /// ovpn-lb on both gateways, packet mode: one flow rides every tunnel.
    OvpnLb,
    /// Gateway B is a plain OpenVPN router (routes back per tunnel); gateway A
    /// runs ovpn-lb in flow mode.
    PlainRoutes,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Options {
    pub tunnels: usize,
    /// Per-tunnel weights on gateway A (and B); default all 1.
    pub weights: Vec<u32>,
    pub peer: Peer,
    /// Hold each OpenVPN process to this share of a CPU (percent), as a
    /// single-threaded OpenVPN on a busy core would be.
    pub cpu_quota_percent: Option<u32>,
    pub up_delay_ms: u64,
    /// Run the loaders (false: tunnels only, for baselines).
    pub loaders: bool,
    /// Flow mode on both gateways even when both run ovpn-lb.
    pub flow_mode: bool,
    /// OpenVPN TAP tunnels (`dev tapK`, Ethernet framing) instead of tun.
    pub tap: bool,
    /// The configuration's hook, `mode = "tc" | "xdp" | "auto"`; `None`
    /// leaves the loader's default. With TAP tunnels and any hook but tc, GRO
    /// is turned on at the hosts' ends of the LAN veths, which is what lets a
    /// veth transmit XDP frames (the XDP restore then forwards to the LAN).
    pub hook: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tunnels: 4,
            weights: Vec::new(),
            peer: Peer::OvpnLb,
            cpu_quota_percent: None,
            up_delay_ms: 1000,
            loaders: true,
            flow_mode: false,
            tap: false,
            hook: None,
        }
    }
}

/// Everything to tear down, recorded before it exists.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    pub namespaces: Vec<String>,
    pub mounts: Vec<PathBuf>,
    pub cgroups: Vec<PathBuf>,
    /// PID files of processes the lab started.
    pub pid_files: Vec<PathBuf>,
}

pub struct Lab {
    pub dir: PathBuf,
    pub options: Options,
    pub tag: String,
    record: Record,
    /// False once handed to `cargo xtask lab` to outlive this process.
    owned: bool,
    bin: PathBuf,
}

/// Host addresses.
pub const HOST_A: &str = "192.168.10.5";
pub const HOST_B: &str = "192.168.20.5";
pub const HOST_A6: &str = "fd00:a::5";
pub const HOST_B6: &str = "fd00:b::5";

const CGROUP_CPU: &str = "/sys/fs/cgroup/cpu";
const CFS_PERIOD_US: u32 = 10_000;

fn write_file(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

impl Lab {
    /// Builds the lab in `dir` (created), naming everything after `tag`, and
    /// runs `ovpn-lb` from `bin`.
    ///
    /// # Panics
    /// If any step fails; what was made so far is torn down.
    #[must_use]
    pub fn up(dir: &Path, tag: &str, bin: &Path, options: Options) -> Self {
        fs::create_dir_all(dir).unwrap();
        let mut lab = Self {
            dir: dir.to_path_buf(),
            options,
            tag: tag.to_owned(),
            record: Record::default(),
            owned: true,
            bin: bin.to_path_buf(),
        };
        lab.build();
        lab
    }

    /// Namespace name of a role: `ha`, `ga`, `gb`, `hb`.
    #[must_use]
    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.tag)
    }

    #[must_use]
    pub fn gw(&self, side: Side) -> String {
        self.ns(&format!("g{}", side.letter()))
    }

    #[must_use]
    pub fn host(&self, side: Side) -> String {
        self.ns(&format!("h{}", side.letter()))
    }

    /// Tunnel `k`'s device on either gateway: `tunK`, or `tapK` with TAP
    /// tunnels.
    #[must_use]
    pub fn dev(&self, k: usize) -> String {
        if self.options.tap {
            format!("tap{k}")
        } else {
            format!("tun{k}")
        }
    }

    /// Whether the hosts' LAN veth ends get GRO (so the gateways' LAN veths
    /// can transmit XDP frames): TAP tunnels under a hook that may be XDP.
    #[must_use]
    pub fn lan_xdp_transmit(&self) -> bool {
        self.options.tap && self.options.hook.as_deref() != Some("tc")
    }

    /// Route arguments that send through tunnel `k` from `side`, per family:
    /// `dev tunK`, or on a TAP link `via <far end> dev tapK` (the far end's
    /// `fd99:k::` address for IPv6).
    fn through(&self, side: Side, k: usize, v6: bool) -> Vec<String> {
        let dev = self.dev(k);
        if !self.options.tap {
            return vec!["dev".into(), dev];
        }
        let peer = match side {
            Side::A => 2,
            Side::B => 1,
        };
        let via = if v6 {
            format!("fd99:{k:x}::{peer}")
        } else {
            format!("10.99.{k}.{peer}")
        };
        vec!["via".into(), via, "dev".into(), dev]
    }

    fn route_through(&self, side: Side, v6: bool, prefix: &str, k: usize) {
        let mut args: Vec<String> = Vec::new();
        if v6 {
            args.push("-6".into());
        }
        args.extend(["route".into(), "add".into(), prefix.to_owned()]);
        args.extend(self.through(side, k, v6));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ip(&self.gw(side), &args);
    }

    fn save(&self) {
        write_file(
            &self.dir.join("lab.json"),
            &serde_json::to_string_pretty(&self.record).unwrap(),
        );
    }

    fn add_ns(&mut self, name: &str) {
        self.record.namespaces.push(name.to_owned());
        self.save();
        run("ip", &["netns", "add", name]);
        self.ip(name, &["link", "set", "lo", "up"]);
    }

    /// `ip -n NS ARGS`.
    #[expect(
        clippy::must_use_candidate,
        reason = "most callers run it for its effect"
    )]
    pub fn ip(&self, ns: &str, args: &[&str]) -> String {
        let mut full = vec!["-n", ns];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// `ip netns exec NS ARGS`.
    #[expect(
        clippy::must_use_candidate,
        reason = "most callers run it for its effect"
    )]
    pub fn exec(&self, ns: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", ns];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    fn build(&mut self) {
        let (ha, ga, gb, hb) = (self.ns("ha"), self.ns("ga"), self.ns("gb"), self.ns("hb"));
        for ns in [&ha, &ga, &gb, &hb] {
            self.add_ns(ns);
        }
        self.lans();
        self.wan();
        let key = self.dir.join("static.key");
        run("openvpn", &["--genkey", "secret", key.to_str().unwrap()]);
        for k in 0..self.options.tunnels {
            for side in [Side::A, Side::B] {
                self.start_openvpn(side, k);
            }
        }
        self.wait_tunnels_connected();
        self.routes();
        if self.options.loaders {
            let bpf = self.dir.join("bpf");
            fs::create_dir_all(&bpf).unwrap();
            self.record.mounts.push(bpf.clone());
            self.save();
            run("mount", &["-t", "bpf", "bpf", bpf.to_str().unwrap()]);
            self.start_loader(Side::A);
            if self.options.peer == Peer::OvpnLb {
                self.start_loader(Side::B);
            }
        }
        self.wait_reachable();
    }

    /// The lab is up once host B answers host A over both address families
    /// (neighbour discovery and OpenVPN's first exchanges take a moment).
    fn wait_reachable(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        for target in [HOST_B, HOST_B6] {
            loop {
                let ok = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &self.host(Side::A),
                        "ping",
                        "-n",
                        "-q",
                        "-c",
                        "1",
                        "-W",
                        "1",
                        target,
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "host B ({target}) never answered host A:\n{}",
                    self.diagnose()
                );
            }
        }
    }

    /// Each host on its LAN veth behind its gateway; forwarding on.
    fn lans(&self) {
        let (ha, ga, gb, hb) = (self.ns("ha"), self.ns("ga"), self.ns("gb"), self.ns("hb"));
        for (host, gw, net4, net6) in [
            (&ha, &ga, "192.168.10", "fd00:a"),
            (&hb, &gb, "192.168.20", "fd00:b"),
        ] {
            self.ip(
                host,
                &[
                    "link", "add", "lan", "type", "veth", "peer", "name", "lan", "netns", gw,
                ],
            );
            self.ip(
                host,
                &["addr", "add", &format!("{net4}.5/24"), "dev", "lan"],
            );
            self.ip(
                host,
                &[
                    "addr",
                    "add",
                    &format!("{net6}::5/64"),
                    "dev",
                    "lan",
                    "nodad",
                ],
            );
            self.ip(host, &["link", "set", "lan", "up"]);
            if self.lan_xdp_transmit() {
                self.exec(host, &["ethtool", "-K", "lan", "gro", "on"]);
            }
            self.ip(
                host,
                &["route", "add", "default", "via", &format!("{net4}.1")],
            );
            self.ip(
                host,
                &[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("{net6}::1"),
                ],
            );
            self.ip(gw, &["addr", "add", &format!("{net4}.1/24"), "dev", "lan"]);
            self.ip(
                gw,
                &[
                    "addr",
                    "add",
                    &format!("{net6}::1/64"),
                    "dev",
                    "lan",
                    "nodad",
                ],
            );
            self.ip(gw, &["link", "set", "lan", "up"]);
            self.exec(
                gw,
                &[
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv4.ip_forward=1",
                    "net.ipv6.conf.all.forwarding=1",
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0",
                ],
            );
        }
    }

    /// The veth between the gateways that OpenVPN runs over.
    fn wan(&self) {
        let (ga, gb) = (self.ns("ga"), self.ns("gb"));
        // WAN: jumbo MTU so OpenVPN's encapsulated packets are never fragmented.
        self.ip(
            &ga,
            &[
                "link", "add", "wan", "type", "veth", "peer", "name", "wan", "netns", &gb,
            ],
        );
        self.ip(&ga, &["addr", "add", "172.30.0.1/30", "dev", "wan"]);
        self.ip(&gb, &["addr", "add", "172.30.0.2/30", "dev", "wan"]);
        for gw in [&ga, &gb] {
            self.ip(gw, &["link", "set", "wan", "mtu", "9000", "up"]);
        }
    }

    fn weight(&self, k: usize) -> u32 {
        self.options.weights.get(k).copied().unwrap_or(1)
    }

    /// Kernel routes where no ovpn-lb routes: without loaders (baselines),
    /// the remote LAN through tunnel 0; on a plain peer, our translated
    /// prefixes back through their own tunnels. A gateway running ovpn-lb
    /// needs none: its kernel path has ovpn-lb's own rules and table.
    fn routes(&self) {
        if !self.options.loaders {
            self.route_through(Side::A, false, "192.168.20.0/24", 0);
            self.route_through(Side::A, true, "fd00:b::/64", 0);
        }
        match self.options.peer {
            Peer::OvpnLb if !self.options.loaders => {
                self.route_through(Side::B, false, "192.168.10.0/24", 0);
                self.route_through(Side::B, true, "fd00:a::/64", 0);
            }
            Peer::OvpnLb => {}
            Peer::PlainRoutes => {
                for k in 0..self.options.tunnels {
                    self.route_through(Side::B, false, &format!("100.64.{k}.0/24"), k);
                    self.route_through(Side::B, true, &format!("fd00:64:{k:x}::/64"), k);
                }
            }
        }
    }

    fn pid_file(&self, side: Side, k: usize) -> PathBuf {
        self.dir.join(format!("openvpn-{}{k}.pid", side.letter()))
    }

    /// Starts gateway `side`'s OpenVPN for tunnel `k` (p2p, static key, UDP).
    ///
    /// # Panics
    /// If OpenVPN cannot start.
    pub fn start_openvpn(&mut self, side: Side, k: usize) {
        let (local, remote) = match side {
            Side::A => ("172.30.0.1", "172.30.0.2"),
            Side::B => ("172.30.0.2", "172.30.0.1"),
        };
        let (me, peer) = match side {
            Side::A => (1, 2),
            Side::B => (2, 1),
        };
        let pid_file = self.pid_file(side, k);
        if !self.record.pid_files.contains(&pid_file) {
            self.record.pid_files.push(pid_file.clone());
            self.save();
        }
        let _ = fs::remove_file(&pid_file);
        let dev = self.dev(k);
        let ifconfig_local = format!("10.99.{k}.{me}");
        let port = (1194 + k).to_string();
        let mgmt = (7500 + k).to_string();
        // tun: a p2p link, `--ifconfig local remote`. tap: an Ethernet link,
        // `--ifconfig local netmask`, plus an IPv6 address for the kernel's
        // IPv6 route through it.
        let (dev_type, ifconfig_remote) = if self.options.tap {
            ("tap", "255.255.255.0".to_owned())
        } else {
            ("tun", format!("10.99.{k}.{peer}"))
        };
        let ipv6 = [
            "--ifconfig-ipv6".to_owned(),
            format!("fd99:{k:x}::{me}/64"),
            format!("fd99:{k:x}::{peer}"),
        ];
        let ipv6: &[String] = if self.options.tap { &ipv6 } else { &[] };
        let log = self.dir.join(format!("openvpn-{}{k}.log", side.letter()));
        let key = self.dir.join("static.key");
        let mut args: Vec<&str> = vec![
            "openvpn",
            "--dev",
            &dev,
            "--dev-type",
            dev_type,
            "--ifconfig",
            &ifconfig_local,
            &ifconfig_remote,
        ];
        args.extend(ipv6.iter().map(String::as_str));
        args.extend([
            "--proto",
            "udp",
            "--local",
            local,
            "--lport",
            &port,
            "--remote",
            remote,
            "--rport",
            &port,
            "--secret",
            key.to_str().unwrap(),
            "--cipher",
            "AES-256-CBC",
            "--auth",
            "SHA256",
            "--ping",
            "1",
            "--ping-restart",
            "5",
            "--management",
            "127.0.0.1",
            &mgmt,
            "--writepid",
            pid_file.to_str().unwrap(),
            "--log",
            log.to_str().unwrap(),
            "--verb",
            "3",
            "--daemon",
        ]);
        self.exec(&self.gw(side), &args);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pid_file.exists() {
            assert!(
                Instant::now() < deadline,
                "OpenVPN {side:?}{k} wrote no PID file"
            );
            thread::sleep(Duration::from_millis(20));
        }
        if let Some(percent) = self.options.cpu_quota_percent {
            self.cap_cpu(side, k, percent);
        }
    }

    fn pid(path: &Path) -> Option<i32> {
        fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// Kills gateway `side`'s OpenVPN for tunnel `k` (by the PID it wrote).
    pub fn kill_openvpn(&self, side: Side, k: usize) {
        if let Some(pid) = Self::pid(&self.pid_file(side, k)) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = fs::remove_file(self.pid_file(side, k));
        }
    }

    fn cap_cpu(&mut self, side: Side, k: usize, percent: u32) {
        let group = PathBuf::from(CGROUP_CPU).join(format!("{}-{}{k}", self.tag, side.letter()));
        if !self.record.cgroups.contains(&group) {
            self.record.cgroups.push(group.clone());
            self.save();
        }
        fs::create_dir_all(&group).unwrap_or_else(|e| panic!("cgroup {}: {e}", group.display()));
        write_file(&group.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string());
        write_file(
            &group.join("cpu.cfs_quota_us"),
            &(CFS_PERIOD_US * percent / 100).to_string(),
        );
        let pid = Self::pid(&self.pid_file(side, k)).expect("OpenVPN PID");
        write_file(&group.join("cgroup.procs"), &pid.to_string());
    }

    /// Waits until every OpenVPN reports CONNECTED on its management port.
    fn wait_tunnels_connected(&self) {
        for side in [Side::A, Side::B] {
            for k in 0..self.options.tunnels {
                self.wait_connected(side, k, Duration::from_secs(20));
            }
        }
    }

    /// Waits until OpenVPN `side`/`k` has completed its initialisation
    /// (its log, rewritten at each start, says so). The management interface
    /// takes one client at a time and the loader holds it, so the log it is.
    ///
    /// # Panics
    /// If it does not within `timeout`.
    pub fn wait_connected(&self, side: Side, k: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let log = self.dir.join(format!("openvpn-{}{k}.log", side.letter()));
        loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Initialization Sequence Completed") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "OpenVPN {side:?}{k} did not connect:\n{text}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The gateway's ovpn-lb configuration, as an operator would write it.
    #[must_use]
    pub fn config_text(&self, side: Side) -> String {
        let (lan4, lan6, remote4, remote6, mine, theirs) = match side {
            Side::A => (
                "192.168.10.0/24",
                "fd00:a::/64",
                "192.168.20.0/24",
                "fd00:b::/64",
                "64",
                "65",
            ),
            Side::B => (
                "192.168.20.0/24",
                "fd00:b::/64",
                "192.168.10.0/24",
                "fd00:a::/64",
                "65",
                "64",
            ),
        };
        let mode = if self.options.peer == Peer::PlainRoutes || self.options.flow_mode {
            "flow"
        } else {
            "packet"
        };
        let mut t = format!(
            "# ovpn-lb on lab gateway {side:?}, written by the lab.\n\
             remote_prefixes = [\"{remote4}\", \"{remote6}\"]\n\
             spray = \"{mode}\"\n\
             up_delay_ms = {}\n",
            self.options.up_delay_ms
        );
        if let Some(hook) = &self.options.hook {
            let _ = writeln!(t, "mode = \"{hook}\"");
        }
        let _ = write!(
            t,
            "\n[lan]\ninterface = \"lan\"\nprefixes = [\"{lan4}\", \"{lan6}\"]\n"
        );
        for k in 0..self.options.tunnels {
            let _ = write!(
                t,
                "\n[[tunnel]]\ndevice = \"{}\"\ntranslate = [\"100.{mine}.{k}.0/24\", \"fd00:{mine}:{k:x}::/64\"]\n",
                self.dev(k)
            );
            if self.options.tap {
                let peer = match side {
                    Side::A => 2,
                    Side::B => 1,
                };
                let _ = writeln!(t, "kind = \"tap\"\nnext_hop = \"10.99.{k}.{peer}\"");
            }
            if self.options.peer == Peer::OvpnLb {
                let _ = writeln!(
                    t,
                    "peer_translate = [\"100.{theirs}.{k}.0/24\", \"fd00:{theirs}:{k:x}::/64\"]"
                );
            }
            let _ = write!(
                t,
                "weight = {}\nmanagement = \"127.0.0.1:{}\"\n",
                self.weight(k),
                7500 + k
            );
        }
        t
    }

    #[must_use]
    pub fn config_path(&self, side: Side) -> PathBuf {
        self.dir.join(format!("gateway-{}.toml", side.letter()))
    }

    #[must_use]
    pub fn layout(&self, side: Side) -> Layout {
        Layout {
            pin_root: self.dir.join("bpf").join(side.letter()),
            run_dir: self.dir.join(format!("run-{}", side.letter())),
        }
    }

    fn loader_pid_file(&self, side: Side) -> PathBuf {
        self.dir.join(format!("ovpn-lb-{}.pid", side.letter()))
    }

    /// Writes the configuration and starts `ovpn-lb run` on `side`; waits
    /// until it runs.
    ///
    /// # Panics
    /// If it does not start.
    pub fn start_loader(&mut self, side: Side) {
        write_file(&self.config_path(side), &self.config_text(side));
        let pid_file = self.loader_pid_file(side);
        if !self.record.pid_files.contains(&pid_file) {
            self.record.pid_files.push(pid_file.clone());
            self.save();
        }
        let layout = self.layout(side);
        let log = self.dir.join(format!("ovpn-lb-{}.log", side.letter()));
        let log_start = fs::metadata(&log).map_or(0, |m| usize::try_from(m.len()).unwrap_or(0));
        let child = Command::new("ip")
            .args(["netns", "exec", &self.gw(side)])
            .arg(&self.bin)
            .arg("--pin-root")
            .arg(&layout.pin_root)
            .arg("--run-dir")
            .arg(&layout.run_dir)
            .args(["run", "--config", self.config_path(side).to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        write_file(&pid_file, &child.id().to_string());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if text
                .get(log_start..)
                .is_some_and(|new| new.contains("running with"))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "ovpn-lb on {side:?} did not start:\n{text}"
            );
            thread::sleep(Duration::from_millis(20));
        }
        // The child is reaped by whoever outlives it; we track it by PID.
        std::mem::forget(child);
    }

    /// Kills the loader on `side` with SIGKILL (the datapath stays).
    pub fn kill_loader(&self, side: Side) {
        if let Some(pid) = Self::pid(&self.loader_pid_file(side)) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = fs::remove_file(self.loader_pid_file(side));
        }
    }

    /// Per-tunnel counters of gateway `side`, from its pinned maps.
    ///
    /// # Panics
    /// If the maps cannot be read.
    #[must_use]
    pub fn tunnel_stats(&self, side: Side) -> Vec<TunnelStats> {
        let n = u32::try_from(self.options.tunnels).unwrap();
        Counters::read(&self.layout(side), n)
            .expect("pinned counters")
            .tunnels
    }

    /// Per-tunnel and per-reason counters of gateway `side`, from its pinned
    /// maps (reasons indexed by `Reason as usize`).
    ///
    /// # Panics
    /// If the maps cannot be read.
    #[must_use]
    pub fn counters(&self, side: Side) -> Counters {
        let n = u32::try_from(self.options.tunnels).unwrap();
        Counters::read(&self.layout(side), n).expect("pinned counters")
    }

    /// What to print when a check fails: loader logs, counters, routes.
    #[must_use]
    pub fn diagnose(&self) -> String {
        let mut out = String::new();
        for side in [Side::A, Side::B] {
            let gw = self.gw(side);
            let log = fs::read_to_string(self.dir.join(format!("ovpn-lb-{}.log", side.letter())))
                .unwrap_or_default();
            let _ = writeln!(out, "--- gateway {side:?} loader log:\n{log}");
            if let Ok(c) = Counters::read(
                &self.layout(side),
                u32::try_from(self.options.tunnels).unwrap_or(0),
            ) {
                let _ = writeln!(out, "tunnels: {:?}", c.tunnels);
                let reasons: Vec<String> = ovpn_lb_common::Reason::ALL
                    .iter()
                    .zip(&c.reasons)
                    .filter(|(_, s)| s.packets > 0)
                    .map(|(r, s)| format!("{}={}", r.name(), s.packets))
                    .collect();
                let _ = writeln!(out, "reasons: {}", reasons.join(" "));
            }
            for args in [&["route"][..], &["neigh"], &["-br", "link"]] {
                let mut full = vec!["-n", gw.as_str()];
                full.extend_from_slice(args);
                let o = Command::new("ip")
                    .args(&full)
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                let _ = writeln!(out, "ip {args:?}:\n{o}");
            }
            let o = Command::new("ip")
                .args(["netns", "exec", &gw, "bpftool", "net", "show"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let _ = writeln!(out, "bpftool net show:\n{o}");
        }
        out
    }

    /// Hands the lab to the caller's caller: nothing is torn down on drop.
    pub fn persist(mut self) {
        self.owned = false;
    }

    /// Tears down everything `dir/lab.json` lists; safe to call twice.
    pub fn down(dir: &Path) {
        let Ok(text) = fs::read_to_string(dir.join("lab.json")) else {
            return;
        };
        let record: Record = serde_json::from_str(&text).unwrap_or_default();
        teardown(&record);
        let _ = fs::remove_dir_all(dir);
    }

    #[must_use]
    pub fn other(side: Side) -> Side {
        side.other()
    }
}

fn teardown(record: &Record) {
    for pid_file in &record.pid_files {
        if let Some(pid) = Lab::pid(pid_file) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = fs::remove_file(pid_file);
    }
    // Give killed processes a moment to release devices and mounts.
    thread::sleep(Duration::from_millis(200));
    for ns in &record.namespaces {
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
    for group in &record.cgroups {
        for _ in 0..20 {
            if fs::remove_dir(group).is_ok() || !group.exists() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
    for mount in &record.mounts {
        let ok = Command::new("umount")
            .arg(mount)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(mount).status();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.owned {
            teardown(&self.record);
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
