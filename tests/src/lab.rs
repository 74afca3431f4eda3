//! The built-in lab: two LANs joined by N real OpenVPN tunnels, all in network
//! namespaces, with ovpn-lb on both gateways (or on one, against plain routes).
//!
//! ```text
//! host A ── lan ── gateway A ══ tun0..tunN-1 (OpenVPN over the WAN veth) ══ gateway B ── lan ── host B
//! 192.168.10.5                                                                           192.168.20.5
//! fd00:a::5                                                                              fd00:b::5
//! ```
//!
//! Every gateway file comes from `ovpn-lb generate` (the library behind it):
//! the lab writes each gateway's files under its own root in the lab
//! directory (`gateway-a/etc/...`), starts OpenVPN from the generated
//! configurations (TLS with `peer-fingerprint`, management on a unix socket
//! under that root) and ovpn-lb from the generated `ovpn-lb.toml` with the
//! lab's options (weights, up-delay, spray, hook, a plain peer) on top.
//! Lab-only settings go on OpenVPN's command line: PID file, log, and a
//! 1 s / 5 s keepalive so that a dead peer is noticed quickly.
//!
//! Conditions for measuring: OpenVPN's own `--shaper` on gateway A's tunnels
//! (per tunnel, so tunnels can be unequal), a CPU quota on every OpenVPN
//! process or on gateway A's only, and "wire segments": the hosts' LAN veths
//! send TCP segments rather than GSO super-packets, as an Ethernet NIC puts
//! them on the wire. Without loaders the gateways route the far LAN through
//! tunnel 0, or spray it with nftables `numgen` (see `numgen`), the kernel's
//! own per-packet spray.
//!
//! With `Options::tap` the tunnels are OpenVPN `dev tap` devices `tap0..`,
//! each an Ethernet link `10.99.k.0/30` and `fd99:0:0:k::/64` between the
//! gateways (gateway A .1, gateway B .2), and the configurations name the far
//! end as each tunnel's `next_hop`.
//!
//! Everything the lab makes is written to `lab.json` in its directory before it
//! is made, so `Lab::drop`, a failed test and `cargo xtask lab down` all tear
//! down the same list: processes (by PID), namespaces, cgroups, mounts.

use std::{
    fmt::Write as _,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use ovpn_lb::{
    config::TunnelKind,
    config::file,
    generate::{self, Generated, Request, layout},
    pins::Layout,
    status::{Counters, State},
};
use ovpn_lb_common::TunnelStats;
use serde::{Deserialize, Serialize};

pub use ovpn_lb::generate::Side;

use crate::{
    loader, netns,
    numgen::{self, Numgen},
    openvpn::{self, OpenVpn},
    process::{self, pid_in},
    relay::Relay,
    teardown::{Record, Teardown},
    topology,
};

/// How gateway B forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Peer {
    /// ovpn-lb on both gateways, packet mode: one flow rides every tunnel.
    OvpnLb,
    /// Gateway B is a plain OpenVPN router (routes back per tunnel); gateway A
    /// runs ovpn-lb in flow mode.
    PlainRoutes,
}

/// What forwards on the gateways.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Forwarding {
    /// ovpn-lb: on both gateways, or on gateway A against a plain peer
    /// (`Peer::PlainRoutes`).
    OvpnLb,
    /// No ovpn-lb: kernel routes send the far LAN through tunnel 0 (the
    /// baselines; [`Lab::route_all_through`] moves them).
    Routes,
    /// No ovpn-lb: both gateways spray the far LAN over every tunnel with
    /// nftables `numgen` (see `numgen`).
    Numgen,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent switches of the lab, each its own setting"
)]
pub struct Options {
    pub tunnels: usize,
    /// Per-tunnel weights on gateway A (and B); default all 1.
    pub weights: Vec<u32>,
    pub peer: Peer,
    /// Hold each OpenVPN process to this share of a CPU (percent), as a
    /// single-threaded OpenVPN on a busy core would be.
    pub cpu_quota_percent: Option<u32>,
    pub up_delay_ms: u64,
    /// What forwards between the LANs and the tunnels.
    pub forwarding: Forwarding,
    /// How the loaders spray (`spray` in their configurations). Against a
    /// plain peer (`Peer::PlainRoutes`) gateway A sprays by flow whatever
    /// this says.
    pub spray: file::Spray,
    /// OpenVPN `--shaper` of gateway A's tunnel k, in bytes/s: `shaper[k]`,
    /// the last value for tunnels past the end; empty: unshaped. Gateway A's
    /// OpenVPN sends what host A sends to host B. OpenVPN skips shaper waits
    /// under 1 ms, so this limits a tunnel only up to about 1,000,000 B/s.
    pub shaper: Vec<u32>,
    /// Hold only gateway A's OpenVPN processes to `cpu_quota_percent`
    /// (gateway B's, which decrypt host A's data, run free).
    pub cpu_quota_a_only: bool,
    /// `shaper` on gateway B's tunnels too (the same rate per tunnel), as
    /// an operator who shapes a link shapes both of its ends.
    pub shaper_both: bool,
    /// One-way delay added to tunnel k's WAN path, ms: `path_delay_ms[k]`,
    /// the last value for tunnels past the end; empty: none. A UDP relay
    /// (see `relay`) in gateway B's namespace holds the tunnel's datagrams
    /// that long each way.
    pub path_delay_ms: Vec<u32>,
    /// OpenVPN's own defaults for its queues: the generated `txqueuelen`,
    /// `sndbuf` and `rcvbuf` lines are left out of both gateways'
    /// configurations.
    pub openvpn_defaults: bool,
    /// The hosts' LAN veths send segments (TSO and GSO off, the gateways'
    /// GRO off), as a real Ethernet LAN would, so that the gateway's program
    /// sees single packets rather than GSO super-packets.
    pub wire_segments: bool,
    /// OpenVPN TAP tunnels (`dev tapK`, Ethernet framing) instead of tun.
    pub tap: bool,
    /// The configuration's hook, `hook = "tc" | "xdp" | "auto"`; `None`
    /// leaves the generator's choice (`auto`). With TAP tunnels and any hook but tc, GRO
    /// is turned on at the hosts' ends of the LAN veths, which is what lets a
    /// veth transmit XDP frames (the XDP restore then forwards to the LAN).
    pub hook: Option<String>,
    /// The tunnels' MTU (the generator's `--tun-mtu`); `None`: OpenVPN's 1500.
    pub tun_mtu: Option<u32>,
    /// The MTU of the LAN veths, hosts' and gateways' ends; `None`: 1500.
    pub lan_mtu: Option<u32>,
    /// The MTU of the WAN veth; 9000 by default, so that OpenVPN's datagrams
    /// are never fragmented.
    pub wan_mtu: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tunnels: 4,
            weights: Vec::new(),
            peer: Peer::OvpnLb,
            cpu_quota_percent: None,
            up_delay_ms: 1000,
            forwarding: Forwarding::OvpnLb,
            spray: file::Spray::Packet,
            shaper: Vec::new(),
            cpu_quota_a_only: false,
            shaper_both: false,
            path_delay_ms: Vec::new(),
            openvpn_defaults: false,
            wire_segments: false,
            tap: false,
            hook: None,
            tun_mtu: None,
            lan_mtu: None,
            wan_mtu: 9000,
        }
    }
}

pub struct Lab {
    pub dir: PathBuf,
    pub options: Options,
    pub tag: String,
    teardown: Teardown,
    /// False once handed to `cargo xtask lab` to outlive this process.
    owned: bool,
    bin: PathBuf,
    /// The generated gateway files; `None` until [`Lab::generate`].
    generated: Option<Generated>,
    /// nftables spraying installed at set-up (`Forwarding::Numgen`).
    nft_spray: Vec<Numgen>,
    /// The tunnels' path delays (`Options::path_delay_ms`).
    relays: Vec<Relay>,
}

/// Numbers the labs of one test process.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// Host addresses.
pub const HOST_A: &str = "192.168.10.5";
/// Host A's address for the MPTCP path through tunnel `k` (`Lab::mptcp_paths`).
#[must_use]
pub fn mptcp_address(k: usize) -> String {
    format!("192.168.10.{}", 100 + k)
}
/// The first of gateway A's routing tables for the MPTCP paths.
const MPTCP_TABLE: usize = 300;
pub const HOST_B: &str = "192.168.20.5";
pub const HOST_A6: &str = "fd00:a::5";
pub const HOST_B6: &str = "fd00:b::5";
/// The gateways' WAN addresses, on the veth between them.
pub const WAN: [&str; 2] = ["172.30.0.1", "172.30.0.2"];
/// Each side's LAN: (host address with length, gateway address) per family.
const LANS: [[topology::LanFamily; 2]; 2] = [
    [
        ("192.168.10.5/24", "192.168.10.1"),
        ("fd00:a::5/64", "fd00:a::1"),
    ],
    [
        ("192.168.20.5/24", "192.168.20.1"),
        ("fd00:b::5/64", "fd00:b::1"),
    ],
];
const LAN_PREFIXES: [[&str; 2]; 2] = [
    ["192.168.10.0/24", "fd00:a::/64"],
    ["192.168.20.0/24", "fd00:b::/64"],
];
/// A capture filter for what must never cross the WAN: a LAN or translated
/// address in any header.
pub const CLEAR_TEXT: &str = "net 192.168.0.0/16 or net 100.64.0.0/10 or ip6 net fd00::/8";

/// How much `count` grew between two readings, per entry (tunnel or reason).
#[must_use]
pub fn growth<T>(before: &[T], after: &[T], count: impl Fn(&T) -> u64) -> Vec<u64> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| count(a) - count(b))
        .collect()
}

/// How many packets `reason` counted between two readings.
#[must_use]
pub fn grown(before: &Counters, after: &Counters, reason: ovpn_lb_common::Reason) -> u64 {
    let r = reason as usize;
    after.reasons[r].packets - before.reasons[r].packets
}

/// The LAN device on hosts and gateways.
pub const LAN_DEV: &str = "lan";
/// A delayed tunnel's relay listens this far above the tunnel's port.
const RELAY_PORT_OFFSET: u16 = 1000;
/// The WAN device on both gateways.
pub const WAN_DEV: &str = "wan";

impl Lab {
    /// Builds the lab in `dir` (created), naming everything after `tag`, and
    /// runs `ovpn-lb` from `bin`.
    ///
    /// # Panics
    /// If any step fails; what was made so far is torn down.
    #[must_use]
    pub fn up(dir: &Path, tag: &str, bin: &Path, options: Options) -> Self {
        let mut lab = Self::sites(dir, tag, bin, options);
        lab.generate();
        lab.delay_paths();
        lab.start_tunnels();
        lab.routes();
        if lab.options.forwarding == Forwarding::OvpnLb {
            lab.start_loader(Side::A);
            if lab.options.peer == Peer::OvpnLb {
                lab.start_loader(Side::B);
            }
        }
        lab.wait_reachable();
        lab
    }

    /// A lab for an integration test: a directory of its own under the temp
    /// directory, namespaces `<tag><pid><n>`, the workspace's `ovpn-lb`.
    #[must_use]
    pub fn for_test(tag: &str, options: Options) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("ovpnlb-{tag}-{pid}-{n}"));
        let _ = fs::remove_dir_all(&dir);
        let tag = format!("{tag}{}{n}", pid % 10_000);
        Self::up(&dir, &tag, &loader::loader_bin(), options)
    }

    /// The two sites without tunnels: namespaces, LANs, the WAN veth and a
    /// bpffs for the loaders' pins. For tests that install the gateway files
    /// themselves, as an operator would.
    ///
    /// # Panics
    /// If any step fails; what was made so far is torn down.
    #[must_use]
    pub fn sites(dir: &Path, tag: &str, bin: &Path, options: Options) -> Self {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut lab = Self {
            dir: dir.to_path_buf(),
            options,
            tag: tag.to_owned(),
            teardown: Teardown::save_to(&dir.join("lab.json")),
            owned: true,
            bin: bin.to_path_buf(),
            generated: None,
            nft_spray: Vec::new(),
            relays: Vec::new(),
        };
        for role in ["ha", "ga", "gb", "hb"] {
            lab.teardown.namespace(&lab.ns(role));
        }
        lab.lans();
        lab.wan();
        lab.teardown.bpffs(&lab.dir.join("bpf"));
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
        format!("{}{k}", if self.options.tap { "tap" } else { "tun" })
    }

    /// The directory gateway `side`'s files are installed under: its `/`.
    #[must_use]
    pub fn root(&self, side: Side) -> PathBuf {
        self.dir.join(side.name())
    }

    /// What the lab asks the generator for.
    #[must_use]
    pub fn request(&self) -> Request {
        let mut r = Request::new(
            WAN,
            [LAN_DEV, LAN_DEV],
            [&LAN_PREFIXES[0], &LAN_PREFIXES[1]],
        );
        r.tunnels = self.options.tunnels;
        // Both gateways' WAN is the veth between them: guarded by name.
        r.wan_interface = [Some(WAN_DEV.to_owned()), Some(WAN_DEV.to_owned())];
        r.kind = if self.options.tap {
            TunnelKind::Tap
        } else {
            TunnelKind::Tun
        };
        r.root = Side::BOTH.map(|side| self.root(side));
        r.tun_mtu = self.options.tun_mtu;
        r
    }

    /// Generates both gateways' files and installs each under its root.
    ///
    /// # Panics
    /// If the generator refuses the lab's request or a file cannot be written.
    pub fn generate(&mut self) {
        let generated = generate::generate(&self.request())
            .unwrap_or_else(|e| panic!("ovpn-lb generate: {e:#}"));
        for side in Side::BOTH {
            generated
                .gateway(side)
                .write_under(&self.root(side))
                .unwrap_or_else(|e| panic!("{e:#}"));
            self.make_run_dir(side);
        }
        self.generated = Some(generated);
        if self.options.openvpn_defaults {
            for side in Side::BOTH {
                for k in 0..self.options.tunnels {
                    Self::strip_queue_settings(&self.openvpn(side, k).config);
                }
            }
        }
    }

    /// One-way delay of tunnel `k`'s WAN path, if any.
    #[must_use]
    pub fn path_delay(&self, k: usize) -> Option<Duration> {
        let d = &self.options.path_delay_ms;
        d.get(k)
            .or(d.last())
            .filter(|&&ms| ms > 0)
            .map(|&ms| Duration::from_millis(u64::from(ms)))
    }

    /// Puts a relay on the WAN path of every tunnel with a path delay:
    /// gateway A's OpenVPN sends to the relay's port instead of gateway B's
    /// (the configuration's `remote`), and gateway B's OpenVPN answers
    /// whoever sends (`float`).
    fn delay_paths(&mut self) {
        for k in 0..self.options.tunnels {
            let Some(delay) = self.path_delay(k) else {
                continue;
            };
            let port = self.generated().plan.tunnels[k].port;
            let relay_port = port + RELAY_PORT_OFFSET;
            let b_wan = WAN[Side::B.index()];
            edit_lines(&self.openvpn(Side::A, k).config, |l| {
                Some(if l.starts_with("remote ") {
                    format!("remote {b_wan} {relay_port}")
                } else {
                    l.to_owned()
                })
            });
            edit_lines(&self.openvpn(Side::B, k).config, |l| {
                Some(if l.starts_with("remote ") {
                    format!("{l}\nfloat")
                } else {
                    l.to_owned()
                })
            });
            let at = |p: u16| SocketAddr::new(b_wan.parse().expect("an address"), p);
            self.relays.push(Relay::start(
                &self.gw(Side::B),
                at(relay_port),
                at(port),
                delay,
            ));
        }
    }

    /// Leaves OpenVPN's own defaults for its queues in `config`: no
    /// `txqueuelen`, `sndbuf` or `rcvbuf` line.
    fn strip_queue_settings(config: &Path) {
        edit_lines(config, |l| {
            let key = l.split_whitespace().next().unwrap_or("");
            (!matches!(key, "txqueuelen" | "sndbuf" | "rcvbuf")).then(|| l.to_owned())
        });
    }

    /// OpenVPN's runtime directory under `side`'s root, as Debian's
    /// tmpfiles.d makes it: the management sockets go there.
    pub fn make_run_dir(&self, side: Side) {
        let run = self.root(side).join(layout::RUN_DIR);
        fs::create_dir_all(&run).unwrap_or_else(|e| panic!("{}: {e}", run.display()));
    }

    fn generated(&self) -> &Generated {
        self.generated
            .as_ref()
            .expect("the lab's files are generated first")
    }

    /// Whether the hosts' LAN veth ends get GRO (so the gateways' LAN veths
    /// can transmit XDP frames): TAP tunnels under a hook that may be XDP.
    #[must_use]
    pub fn lan_xdp_transmit(&self) -> bool {
        self.options.tap && self.options.hook.as_deref() != Some("tc")
    }

    /// Route arguments that send through tunnel `k` from `side`, per family:
    /// `dev tunK`, or on a TAP link `via <far end> dev tapK`.
    fn through(&self, side: Side, k: usize, v6: bool) -> Vec<String> {
        let dev = self.dev(k);
        if !self.options.tap {
            return vec!["dev".into(), dev];
        }
        let tunnel = &self.generated().plan.tunnels[k];
        let via = if v6 {
            tunnel.link_address_v6(side.other())
        } else {
            Some(tunnel.link_address(side.other()))
        };
        let via = via.map(|a| a.to_string()).unwrap_or_default();
        vec!["via".into(), via, "dev".into(), dev]
    }

    fn route_through(&self, side: Side, prefix: &str, k: usize) {
        let v6 = prefix.contains(':');
        let mut args: Vec<String> = vec![if v6 { "-6" } else { "-4" }.into()];
        args.extend(["route".into(), "replace".into(), prefix.to_owned()]);
        args.extend(self.through(side, k, v6));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ip(&self.gw(side), &args);
    }

    /// Without ovpn-lb: both gateways route the far LAN through tunnel `k`
    /// (for one-tunnel baselines on each tunnel in turn).
    pub fn route_all_through(&self, k: usize) {
        for side in Side::BOTH {
            for prefix in LAN_PREFIXES[side.other().index()] {
                self.route_through(side, prefix, k);
            }
        }
    }

    /// Without ovpn-lb: host A's MPTCP paths, one per tunnel of the first
    /// `tunnels`, as a multipath user sets them up by changing the hosts:
    /// host A has address [`mptcp_address`]`(k)` for each, gateway A routes
    /// what comes from it into tunnel k (a rule and a table of its own),
    /// gateway B routes what goes to it back through tunnel k, and host A
    /// opens one subflow from each address but the first (the flow's own,
    /// bound to address 0). Both hosts accept that many subflows. Other
    /// traffic keeps host A's own address and the main tables' routes.
    pub fn mptcp_paths(&self, tunnels: usize) {
        let (ha, hb, ga, gb) = (
            self.host(Side::A),
            self.host(Side::B),
            self.gw(Side::A),
            self.gw(Side::B),
        );
        let limit = tunnels.to_string();
        for host in [&ha, &hb] {
            self.ip(host, &["mptcp", "endpoint", "flush"]);
            self.ip(
                host,
                &[
                    "mptcp",
                    "limits",
                    "set",
                    "subflow",
                    &limit,
                    "add_addr_accepted",
                    &limit,
                ],
            );
        }
        let far = LAN_PREFIXES[Side::B.index()][0];
        for k in 0..tunnels {
            let address = mptcp_address(k);
            let table = (MPTCP_TABLE + k).to_string();
            self.ip(
                &ha,
                &["addr", "replace", &format!("{address}/24"), "dev", LAN_DEV],
            );
            // Once per address, however often this runs.
            let _ = std::process::Command::new("ip")
                .args(["-n", &ga, "rule", "del", "from", &address])
                .stderr(std::process::Stdio::null())
                .status();
            self.ip(&ga, &["rule", "add", "from", &address, "lookup", &table]);
            let mut route: Vec<String> = ["route", "replace", far, "table", &table]
                .map(str::to_owned)
                .to_vec();
            route.extend(self.through(Side::A, k, false));
            self.ip(&ga, &route.iter().map(String::as_str).collect::<Vec<_>>());
            let mut back: Vec<String> = ["route", "replace", &format!("{address}/32")]
                .map(str::to_owned)
                .to_vec();
            back.extend(self.through(Side::B, k, false));
            self.ip(&gb, &back.iter().map(String::as_str).collect::<Vec<_>>());
            if k > 0 {
                self.ip(
                    &ha,
                    &[
                        "mptcp", "endpoint", "add", &address, "dev", LAN_DEV, "subflow",
                    ],
                );
            }
        }
    }

    /// Without ovpn-lb: both gateways spray the far LAN over tunnels
    /// `0..tunnels` with nftables `numgen`, until the result is dropped.
    /// Packets nftables does not mark (none from the LAN) keep the main
    /// table's route.
    #[must_use]
    pub fn numgen(&self, tunnels: usize) -> Vec<Numgen> {
        Side::BOTH
            .iter()
            .map(|&side| {
                let gw = self.gw(side);
                let through = |k, v6| self.through(side, k, v6);
                numgen::Numgen::install(
                    &numgen::Spray {
                        ns: &gw,
                        lan: LAN_DEV,
                        remote: &LAN_PREFIXES[side.other().index()],
                        tunnels,
                        through: &through,
                    },
                    &self.dir.join(format!("numgen-{}.nft", side.letter())),
                )
            })
            .collect()
    }

    /// `ip -n NS ARGS`.
    #[expect(
        clippy::must_use_candidate,
        reason = "most callers run it for its effect"
    )]
    pub fn ip(&self, ns: &str, args: &[&str]) -> String {
        netns::ip(ns, args)
    }

    /// `ip netns exec NS ARGS`.
    #[expect(
        clippy::must_use_candidate,
        reason = "most callers run it for its effect"
    )]
    pub fn exec(&self, ns: &str, args: &[&str]) -> String {
        netns::exec(ns, args)
    }

    /// The lab is up once host B answers host A over both address families
    /// (neighbour discovery and OpenVPN's first exchanges take a moment).
    fn wait_reachable(&self) {
        for target in [HOST_B, HOST_B6] {
            let answered = process::wait_until(Duration::from_secs(15), Duration::ZERO, || {
                netns::command(&self.host(Side::A), "ping")
                    .args(["-n", "-q", "-c", "1", "-W", "1", target])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            });
            assert!(
                answered,
                "host B ({target}) never answered host A:\n{}",
                self.diagnose()
            );
        }
    }

    /// Each host on its LAN veth behind its gateway; forwarding on.
    fn lans(&self) {
        for side in Side::BOTH {
            self.lan(side);
            topology::router(&self.gw(side), &[]);
        }
    }

    /// Side `side`'s LAN veth between host and gateway, with the lab's
    /// settings.
    fn lan(&self, side: Side) {
        let (host, gw) = (self.host(side), self.gw(side));
        topology::host_behind((&host, LAN_DEV), (&gw, LAN_DEV), &LANS[side.index()]);
        if self.lan_xdp_transmit() {
            self.exec(&host, &["ethtool", "-K", LAN_DEV, "gro", "on"]);
        }
        if let Some(mtu) = self.options.lan_mtu {
            for ns in [&host, &gw] {
                self.ip(ns, &["link", "set", LAN_DEV, "mtu", &mtu.to_string()]);
            }
        }
        if self.options.wire_segments {
            topology::wire_segments((&host, LAN_DEV), (&gw, LAN_DEV), true);
        }
    }

    /// Deletes gateway `side`'s LAN device (its host's end goes with it, a
    /// veth pair) and, after `gap`, makes it again as it was: a new device,
    /// as when a bridge, bond or VLAN is recreated.
    pub fn recreate_lan(&self, side: Side, gap: Duration) {
        self.ip(&self.gw(side), &["link", "del", LAN_DEV]);
        std::thread::sleep(gap);
        self.lan(side);
    }

    /// Whether the hosts' LAN veths send segments (see
    /// [`Options::wire_segments`]); may change while the lab runs.
    pub fn set_wire_segments(&self, on: bool) {
        for side in Side::BOTH {
            topology::wire_segments((&self.host(side), LAN_DEV), (&self.gw(side), LAN_DEV), on);
        }
    }

    /// The veth between the gateways that OpenVPN runs over, with
    /// `Options::wan_mtu`.
    fn wan(&self) {
        let (ga, gb) = (self.gw(Side::A), self.gw(Side::B));
        let (a, b) = (format!("{}/30", WAN[0]), format!("{}/30", WAN[1]));
        let end = |ns, addr| topology::End {
            mtu: Some(self.options.wan_mtu),
            ..topology::End::new(ns, WAN_DEV, addr)
        };
        topology::veth(&end(&ga, &[&a]), &end(&gb, &[&b]));
    }

    fn weight(&self, k: usize) -> u32 {
        self.options.weights.get(k).copied().unwrap_or(1)
    }

    /// Kernel routes where no ovpn-lb routes: without ovpn-lb (baselines),
    /// the remote LAN through tunnel 0, and with numgen sprayed by
    /// nftables over every tunnel; on a plain peer, our translated prefixes
    /// back through their own tunnels. A gateway running ovpn-lb needs none:
    /// its kernel path has ovpn-lb's own rules and table.
    fn routes(&mut self) {
        if self.options.forwarding != Forwarding::OvpnLb {
            for side in Side::BOTH {
                if side == Side::B && self.options.peer == Peer::PlainRoutes {
                    continue;
                }
                for prefix in LAN_PREFIXES[side.other().index()] {
                    self.route_through(side, prefix, 0);
                }
            }
            if self.options.forwarding == Forwarding::Numgen {
                self.nft_spray = self.numgen(self.options.tunnels);
            }
        }
        if self.options.peer == Peer::PlainRoutes {
            for tunnel in &self.generated().plan.tunnels {
                for prefix in &tunnel.translate[Side::A.index()] {
                    self.route_through(Side::B, &prefix.to_string(), tunnel.index);
                }
            }
        }
    }

    /// Gateway `side`'s OpenVPN for tunnel `k`, from its installed configuration.
    #[must_use]
    pub fn openvpn(&self, side: Side, k: usize) -> OpenVpn {
        let name = format!("openvpn-{}{k}", side.letter());
        OpenVpn {
            ns: self.gw(side),
            config: self.root(side).join(layout::openvpn_config(&self.dev(k))),
            pid_file: self.dir.join(format!("{name}.pid")),
            log: self.dir.join(format!("{name}.log")),
        }
    }

    /// Starts every tunnel, TLS servers (gateway B) first so that no
    /// client's first handshake packet finds a closed port, and waits until
    /// all are connected.
    fn start_tunnels(&mut self) {
        for side in [Side::B, Side::A] {
            for k in 0..self.options.tunnels {
                self.start_openvpn(side, k);
            }
        }
        for side in Side::BOTH {
            for k in 0..self.options.tunnels {
                self.wait_connected(side, k, Duration::from_secs(20));
            }
        }
    }

    /// Starts gateway `side`'s OpenVPN for tunnel `k` with the lab's options.
    ///
    /// # Panics
    /// If OpenVPN cannot start.
    pub fn start_openvpn(&mut self, side: Side, k: usize) {
        let openvpn = self.openvpn(side, k);
        let mut extra = vec!["--keepalive", "1", "5", "--verb", "3"];
        let shaper = self.shaper(side, k).map(|rate| rate.to_string());
        if let Some(rate) = &shaper {
            extra.extend(["--shaper", rate]);
        }
        self.start_tracked(&openvpn, &extra);
        if let Some(percent) = self.options.cpu_quota_percent
            && (side == Side::A || !self.options.cpu_quota_a_only)
        {
            let group = openvpn::cpu_group(&format!("{}-{}{k}", self.tag, side.letter()));
            self.teardown.cgroup(&group);
            let pid = openvpn.pid().expect("OpenVPN PID");
            openvpn::cap_cpu(&group, pid, percent);
        }
    }

    /// OpenVPN `--shaper` of gateway `side`'s tunnel `k` (bytes/s), if any:
    /// gateway A's, and gateway B's with `shaper_both`.
    #[must_use]
    pub fn shaper(&self, side: Side, k: usize) -> Option<u32> {
        let shaper = &self.options.shaper;
        (side == Side::A || self.options.shaper_both)
            .then(|| shaper.get(k).or(shaper.last()).copied())
            .flatten()
    }

    /// Records the PID file of a process about to be started (a booted
    /// machine), so that the lab's teardown kills it.
    pub fn track(&mut self, pid_file: &Path) {
        self.teardown.pid_file(pid_file);
    }

    /// Starts `openvpn` with `extra` options, its PID file recorded first.
    pub fn start_tracked(&mut self, openvpn: &OpenVpn, extra: &[&str]) {
        self.teardown.pid_file(&openvpn.pid_file);
        openvpn.start(extra);
    }

    /// Kills gateway `side`'s OpenVPN for tunnel `k` (by the PID it wrote);
    /// returns that PID.
    #[expect(
        clippy::must_use_candidate,
        reason = "most callers only kill; some wait for the PID to end"
    )]
    pub fn kill_openvpn(&self, side: Side, k: usize) -> Option<i32> {
        self.openvpn(side, k).kill()
    }

    /// Waits until OpenVPN `side`/`k` has completed its initialisation.
    ///
    /// # Panics
    /// If it does not within `timeout`.
    pub fn wait_connected(&self, side: Side, k: usize, timeout: Duration) {
        self.openvpn(side, k).wait_connected(timeout);
    }

    /// The gateway's ovpn-lb configuration: the generated one with the lab's
    /// options on top.
    #[must_use]
    pub fn loader_config(&self, side: Side) -> file::File {
        let mut c = generate::loader_config(&self.generated().plan, side);
        c.spray = if self.options.peer == Peer::PlainRoutes {
            file::Spray::Flow
        } else {
            self.options.spray
        };
        c.up_delay_ms = self.options.up_delay_ms;
        if let Some(hook) = &self.options.hook {
            c.hook = Some(hook.clone());
        }
        for (k, t) in c.tunnels.iter_mut().enumerate() {
            t.weight = self.weight(k);
            if self.options.peer == Peer::PlainRoutes {
                t.peer_translate.clear();
            }
        }
        c
    }

    /// [`Lab::loader_config`] as the file the loader reads.
    #[must_use]
    pub fn config_text(&self, side: Side) -> String {
        let toml = self
            .loader_config(side)
            .to_toml()
            .expect("a lab configuration is valid TOML");
        format!(
            "# ovpn-lb on lab gateway {side}: generated, with the lab's options on top.\n{toml}"
        )
    }

    /// Where gateway `side`'s `ovpn-lb.toml` is installed.
    #[must_use]
    pub fn config_path(&self, side: Side) -> PathBuf {
        self.root(side).join(layout::LOADER_CONFIG)
    }

    /// Where gateway `side`'s loader pins and keeps its state.
    #[must_use]
    pub fn layout(&self, side: Side) -> Layout {
        layout_in(&self.dir, side)
    }

    /// The loader of gateway `side`, as the lab runs it.
    #[must_use]
    pub fn loader(&self, side: Side) -> loader::Site {
        Self::loader_at(&self.dir, &self.tag, &self.bin, side)
    }

    /// The loader of gateway `side` of a lab built in `dir` under `tag`,
    /// for a process that did not build it (`cargo xtask lab status`).
    #[must_use]
    pub fn loader_at(dir: &Path, tag: &str, bin: &Path, side: Side) -> loader::Site {
        loader::Site {
            ns: format!("{tag}-g{}", side.letter()),
            bin: bin.to_path_buf(),
            layout: layout_in(dir, side),
        }
    }

    fn loader_pid_file(&self, side: Side) -> PathBuf {
        self.dir.join(format!("ovpn-lb-{}.pid", side.letter()))
    }

    /// The loader's log (every run on `side` appends to it).
    #[must_use]
    pub fn loader_log(&self, side: Side) -> PathBuf {
        self.dir.join(format!("ovpn-lb-{}.log", side.letter()))
    }

    /// Writes the configuration and starts `ovpn-lb run` on `side`; waits
    /// until it runs.
    ///
    /// # Panics
    /// If it does not start.
    pub fn start_loader(&mut self, side: Side) {
        let path = self.config_path(side);
        fs::write(&path, self.config_text(side))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        self.start_loader_with(side, &path);
    }

    /// Starts `ovpn-lb run --config CONFIG` on `side`, tracked by its PID.
    ///
    /// # Panics
    /// If it does not start.
    pub fn start_loader_with(&mut self, side: Side, config: &Path) {
        let pid_file = self.loader_pid_file(side);
        self.teardown.pid_file(&pid_file);
        let loader = self
            .loader(side)
            .start(config, &[], &self.loader_log(side), false);
        let pid = loader.release();
        fs::write(&pid_file, pid.to_string())
            .unwrap_or_else(|e| panic!("writing {}: {e}", pid_file.display()));
    }

    /// Kills the loader on `side` with SIGKILL (the datapath stays).
    pub fn kill_loader(&self, side: Side) {
        self.signal_loader(side, libc::SIGKILL);
    }

    /// Sends `signal` to the loader on `side` and forgets it; returns its PID.
    #[expect(
        clippy::must_use_candidate,
        reason = "only callers that wait for the exit need the PID"
    )]
    pub fn signal_loader(&self, side: Side, signal: i32) -> Option<i32> {
        let pid = pid_in(&self.loader_pid_file(side))?;
        process::signal(pid, signal);
        let _ = fs::remove_file(self.loader_pid_file(side));
        Some(pid)
    }

    /// Per-tunnel counters of gateway `side`, from its pinned maps.
    ///
    /// # Panics
    /// If the maps cannot be read.
    #[must_use]
    pub fn tunnel_stats(&self, side: Side) -> Vec<TunnelStats> {
        self.counters(side).tunnels
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

    /// Per tunnel, the times gateway `side`'s loader has taken it out of
    /// the rotation, for any cause (its state file).
    ///
    /// # Panics
    /// If the state cannot be read.
    #[must_use]
    pub fn departures(&self, side: Side) -> Vec<u64> {
        let state = State::read(&self.layout(side)).expect("the loader's state");
        state
            .tunnels
            .iter()
            .map(|t| t.departures.values().sum())
            .collect()
    }

    /// What to print when a check fails: loader logs, counters, routes.
    #[must_use]
    pub fn diagnose(&self) -> String {
        let mut out = String::new();
        for side in Side::BOTH {
            let gw = self.gw(side);
            let log = fs::read_to_string(self.loader_log(side)).unwrap_or_default();
            let _ = writeln!(out, "--- gateway {side:?} loader log:\n{log}");
            let n = u32::try_from(self.options.tunnels).unwrap_or(0);
            if let Ok(c) = Counters::read(&self.layout(side), n) {
                let _ = writeln!(out, "tunnels: {:?}", c.tunnels);
                let reasons: Vec<String> = ovpn_lb_common::Reason::ALL
                    .iter()
                    .zip(&c.reasons)
                    .filter(|(_, s)| s.packets > 0)
                    .map(|(r, s)| format!("{}={}", r.name(), s.packets))
                    .collect();
                let _ = writeln!(out, "reasons: {}", reasons.join(" "));
            }
            for args in [
                &["ip", "route"][..],
                &["ip", "neigh"],
                &["ip", "-br", "link"],
                &["bpftool", "net", "show"],
            ] {
                let o = netns::command(&gw, args[0])
                    .args(&args[1..])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                let _ = writeln!(out, "{}:\n{o}", args.join(" "));
            }
        }
        out
    }

    /// Hands the lab to the caller's caller: nothing is torn down on drop.
    pub fn persist(mut self) {
        self.owned = false;
        self.teardown.keep();
        for numgen in self.nft_spray.drain(..) {
            numgen.keep();
        }
    }

    /// Tears down everything `dir/lab.json` lists; safe to call twice.
    pub fn down(dir: &Path) {
        if !dir.join("lab.json").exists() {
            return;
        }
        Record::load(&dir.join("lab.json")).tear_down();
        let _ = fs::remove_dir_all(dir);
    }
}

/// Rewrites the file at `path` line by line: `f` gives each line's
/// replacement (several lines, or none).
fn edit_lines(path: &Path, f: impl Fn(&str) -> Option<String>) {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let out = text
        .lines()
        .filter_map(f)
        .fold(String::new(), |mut out, l| {
            out.push_str(&l);
            out.push('\n');
            out
        });
    fs::write(path, out).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn layout_in(dir: &Path, side: Side) -> Layout {
    Layout {
        pin_root: dir.join("bpf").join(side.letter()),
        run_dir: dir.join(format!("run-{}", side.letter())),
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.owned {
            self.nft_spray.clear();
            self.relays.clear();
            self.teardown.tear_down();
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
