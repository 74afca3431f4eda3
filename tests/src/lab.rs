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
//! With `Options::pairs` above 1 (or `Options::ha`), the sites are joined by
//! several gateway pairs, each with its own WAN veth and tunnels, and hosts
//! have several addresses. Under BGP a router namespace per site sits
//! between the hosts and its gateways (a bridge for the gateways' LANs),
//! every router and gateway runs FRR from the generator's files (the
//! gateways' `frr.conf`, the sites' router part), and the routers spread
//! flows over the pairs that announce by ECMP. Under VRRP the site's
//! namespace is a switch: hosts and gateways share the LAN, and the
//! gateways run keepalived from their generated `keepalived.conf`.
//!
//! ```text
//! host A ── router A ═╤═ gateway A  ══ pair 1 ══ gateway B  ═╤═ router B ── host B
//! .5 .6 .7 .8         └─ gateway A2 ══ pair 2 ══ gateway B2 ─┘
//! ```
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
    generate::{self, Generated, Request, gateway_name, ha::HaKind, layout},
    pins::Layout,
    status::{Counters, State},
};
use ovpn_lb_common::TunnelStats;
use serde::{Deserialize, Serialize};

pub use ovpn_lb::generate::Side;

use crate::{
    frr::Frr,
    keepalived::Keepalived,
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

/// One gateway of the lab: its pair (from 0) and its site.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gw {
    pub pair: usize,
    pub side: Side,
}

impl From<Side> for Gw {
    /// The first pair's gateway on `side`.
    fn from(side: Side) -> Self {
        Self { pair: 0, side }
    }
}

impl Gw {
    #[must_use]
    pub fn new(pair: usize, side: Side) -> Self {
        Self { pair, side }
    }

    /// `a`, `b` for the first pair, `a2`, `b2` for the second, ...
    #[must_use]
    pub fn tag(self) -> String {
        match self.pair {
            0 => self.side.letter().to_owned(),
            p => format!("{}{}", self.side.letter(), p + 1),
        }
    }

    /// As the generator names it: `gateway-a`, `gateway-a2`, ...
    #[must_use]
    pub fn name(self) -> String {
        gateway_name(self.pair, self.side)
    }

    /// The other gateway of its pair.
    #[must_use]
    pub fn peer(self) -> Self {
        Self::new(self.pair, self.side.other())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent switches of the lab, each its own setting"
)]
pub struct Options {
    pub tunnels: usize,
    /// Gateway pairs between the sites (tunnels each).
    pub pairs: usize,
    /// How the pairs share a site; `None`: a lone pair, or BGP for several.
    pub ha: Option<HaKind>,
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
    /// The loaders' `path_delay_max_ms`; `None`: the generated default.
    pub path_delay_max_ms: Option<u64>,
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

impl Options {
    /// How the pairs share a site, if they do (BGP where several are
    /// asked for without saying).
    #[must_use]
    pub fn routing(&self) -> Option<HaKind> {
        self.ha.or((self.pairs > 1).then_some(HaKind::Bgp))
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tunnels: 4,
            pairs: 1,
            ha: None,
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
            path_delay_max_ms: None,
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
    /// When FRR or keepalived started (several pairs): the first instance,
    /// and the last (the lab starts them one after another, where sites
    /// start each gateway's on its own).
    pub routing_started: Option<std::time::Instant>,
    pub routing_all_started: Option<std::time::Instant>,
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
/// The first pair's WAN addresses, on the veth between its gateways.
pub const WAN: [&str; 2] = ["172.30.0.1", "172.30.0.2"];

/// Pair `pair`'s WAN address on `side`: 172.30.<pair>.1 and .2.
#[must_use]
pub fn wan(gw: Gw) -> String {
    format!("172.30.{}.{}", gw.pair, gw.side.index() + 1)
}

/// Under BGP, each site's segment between its router (.1) and its
/// gateways (pair p: .2 + p), per family.
const SEGMENTS: [[&str; 2]; 2] = [
    ["192.168.110.", "fd00:a:1::"],
    ["192.168.120.", "fd00:b:1::"],
];
/// Under VRRP the gateways sit on the LAN: the virtual address is .1 (the
/// hosts' default route), pair p's gateway .2 + p.
const LAN_BASES: [[&str; 2]; 2] = [["192.168.10.", "fd00:a::"], ["192.168.20.", "fd00:b::"]];
/// Addresses per host with several pairs (.5 on): flows between different
/// addresses hash onto different pairs.
pub const HOST_ADDRESSES: usize = 4;

/// Host `side`'s addresses with several pairs: (IPv4, IPv6), `.5` first.
#[must_use]
pub fn host_addresses(side: Side) -> Vec<(String, String)> {
    let [v4, v6] = LAN_BASES[side.index()];
    (0..HOST_ADDRESSES)
        .map(|i| (format!("{v4}{}", 5 + i), format!("{v6}{:x}", 5 + i)))
        .collect()
}
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
            for gw in lab.gateways() {
                if gw.side == Side::A || lab.options.peer == Peer::OvpnLb {
                    lab.start_loader(gw);
                }
            }
        }
        lab.start_routing();
        lab.wait_reachable();
        lab
    }

    /// With several pairs: FRR on the routers and every gateway (BGP), or
    /// keepalived on every gateway (VRRP), from the generated files.
    fn start_routing(&mut self) {
        self.routing_started = Some(std::time::Instant::now());
        match self.options.routing() {
            Some(HaKind::Bgp) => {
                for side in Side::BOTH {
                    self.install_router(side);
                    let frr = self.router_frr(side);
                    self.start_frr(&frr);
                }
                for gw in self.gateways() {
                    let frr = self.frr(gw);
                    self.start_frr(&frr);
                }
            }
            Some(HaKind::Vrrp) => {
                for gw in self.gateways() {
                    let k = self.keepalived(gw);
                    for f in k.pid_files() {
                        self.teardown.pid_file(&f);
                    }
                    k.start();
                }
            }
            None => {}
        }
        self.routing_all_started = Some(std::time::Instant::now());
    }

    fn start_frr(&mut self, frr: &Frr) {
        for f in frr.pid_files() {
            self.teardown.pid_file(&f);
        }
        frr.start();
    }

    /// Site `side`'s router as an operator would set it up from the
    /// generator's part for it: its FRR configuration (a hostname, then
    /// `router-frr.conf` as written) with bgpd and bfdd, and
    /// `router-sysctl.conf` applied.
    fn install_router(&self, side: Side) {
        let generated = self.dir.join(format!("site-{}", side.letter()));
        let read = |name: &str| {
            let path = generated.join(name);
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        let frr = self.router_frr(side);
        fs::create_dir_all(&frr.conf_dir).unwrap_or_else(|e| panic!("{e}"));
        let conf = format!(
            "frr defaults traditional\nhostname router-{}\n!\n{}",
            side.letter(),
            read(layout::ROUTER_FRR)
        );
        fs::write(frr.conf_dir.join("frr.conf"), conf).unwrap_or_else(|e| panic!("{e}"));
        fs::write(frr.conf_dir.join("daemons"), "bgpd=yes\nbfdd=yes\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let sysctl = generated.join(layout::ROUTER_SYSCTL);
        self.exec(
            &self.router(side),
            &["sysctl", "-q", "-p", &sysctl.display().to_string()],
        );
    }

    /// Gateway `gw`'s FRR: its generated `/etc/frr`, its state under its root.
    #[must_use]
    pub fn frr(&self, gw: impl Into<Gw>) -> Frr {
        let gw = gw.into();
        let root = self.root(gw);
        Frr {
            ns: self.gw(gw),
            conf_dir: root.join("etc/frr"),
            run_dir: root.join("run/frr"),
        }
    }

    /// Site `side`'s router's FRR.
    #[must_use]
    pub fn router_frr(&self, side: Side) -> Frr {
        let root = self.dir.join(format!("router-{}", side.letter()));
        Frr {
            ns: self.router(side),
            conf_dir: root.join("etc/frr"),
            run_dir: root.join("run/frr"),
        }
    }

    /// BFD sessions gone down so far on both sites' routers, by bfdd's own
    /// counters, but those of the peers `except` names (site, address).
    #[must_use]
    pub fn bfd_session_downs(&self, except: impl Fn(Side, &str) -> bool) -> u64 {
        Side::BOTH
            .iter()
            .map(|&side| {
                let v = self.router_frr(side).json("show bfd peers counters json");
                v.as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| !except(side, p["peer"].as_str().unwrap_or_default()))
                    // bfdd's own key (not `session-down-events`: no such key, always 0).
                    .filter_map(|p| p["session-down"].as_u64())
                    .sum::<u64>()
            })
            .sum()
    }

    /// Gateway `gw`'s keepalived (VRRP), from its generated configuration.
    #[must_use]
    pub fn keepalived(&self, gw: impl Into<Gw>) -> Keepalived {
        let gw = gw.into();
        let root = self.root(gw);
        Keepalived {
            ns: self.gw(gw),
            config: root.join(layout::KEEPALIVED_CONF),
            dir: root.join("run/keepalived"),
        }
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
            routing_started: None,
            routing_all_started: None,
        };
        for role in lab.roles() {
            lab.teardown.namespace(&lab.ns(&role));
        }
        if lab.options.routing().is_some() {
            lab.site_networks();
        } else {
            lab.lans();
        }
        for pair in 0..lab.options.pairs.max(1) {
            lab.wan(pair);
        }
        lab.teardown.bpffs(&lab.dir.join("bpf"));
        lab
    }

    /// Namespace name of a role: `ha`, `ga`, `gb`, `hb`; `ga2`, `gb2`, ...
    /// for further pairs' gateways; `ra`, `rb` for the sites' routers.
    #[must_use]
    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.tag)
    }

    /// Every namespace role of this lab.
    fn roles(&self) -> Vec<String> {
        let mut roles = vec!["ha".to_owned(), "hb".to_owned()];
        if self.options.routing().is_some() {
            roles.extend(["ra".to_owned(), "rb".to_owned()]);
        }
        roles.extend(self.gateways().iter().map(|g| format!("g{}", g.tag())));
        roles
    }

    /// Every gateway, pair by pair (A then B).
    #[must_use]
    pub fn gateways(&self) -> Vec<Gw> {
        (0..self.options.pairs.max(1))
            .flat_map(|pair| Side::BOTH.map(|side| Gw::new(pair, side)))
            .collect()
    }

    /// Gateway `gw`'s namespace.
    #[must_use]
    pub fn gw(&self, gw: impl Into<Gw>) -> String {
        self.ns(&format!("g{}", gw.into().tag()))
    }

    /// Site `side`'s router (BGP) or switch (VRRP) namespace.
    #[must_use]
    pub fn router(&self, side: Side) -> String {
        self.ns(&format!("r{}", side.letter()))
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

    /// The directory gateway `gw`'s files are installed under: its `/`.
    #[must_use]
    pub fn root(&self, gw: impl Into<Gw>) -> PathBuf {
        self.dir.join(gw.into().name())
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
        let pairs = self.options.pairs.max(1);
        r.pairs = pairs;
        r.wan = Side::BOTH.map(|side| (0..pairs).map(|p| wan(Gw::new(p, side))).collect());
        r.root = Side::BOTH.map(|side| (0..pairs).map(|p| self.root(Gw::new(p, side))).collect());
        r.tun_mtu = self.options.tun_mtu;
        // What the files name as ovpn-lb (keepalived's check script) is
        // the binary the lab runs.
        r.binary.clone_from(&self.bin);
        if let Some(kind) = self.options.routing() {
            r.routing.ha = Some(kind);
            let (router_or_vip, bases) = match kind {
                HaKind::Bgp => (&mut r.routing.router, SEGMENTS),
                HaKind::Vrrp => (&mut r.routing.vip, LAN_BASES),
            };
            for side in Side::BOTH {
                let [v4, v6] = bases[side.index()];
                router_or_vip[side.index()] = vec![format!("{v4}1"), format!("{v6}1")];
                r.routing.gateways[side.index()] = (0..pairs)
                    .map(|p| format!("{v4}{},{v6}{:x}", 2 + p, 2 + p))
                    .collect();
            }
        }
        r
    }

    /// Generates both gateways' files and installs each under its root.
    ///
    /// # Panics
    /// If the generator refuses the lab's request or a file cannot be written.
    pub fn generate(&mut self) {
        let generated = generate::generate(&self.request())
            .unwrap_or_else(|e| panic!("ovpn-lb generate: {e:#}"));
        for files in generated.directories() {
            files
                .write_under(&self.dir.join(&files.name))
                .unwrap_or_else(|e| panic!("{e:#}"));
        }
        for gw in self.gateways() {
            self.make_run_dir(gw);
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
            let port = self.generated().plan().tunnels[k].port;
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

    /// OpenVPN's runtime directory under `gw`'s root, as Debian's
    /// tmpfiles.d makes it: the management sockets go there.
    pub fn make_run_dir(&self, gw: impl Into<Gw>) {
        let run = self.root(gw).join(layout::RUN_DIR);
        fs::create_dir_all(&run).unwrap_or_else(|e| panic!("{}: {e}", run.display()));
    }

    /// The generated files of every pair.
    ///
    /// # Panics
    /// Before [`Lab::generate`].
    #[must_use]
    pub fn generated(&self) -> &Generated {
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
        let tunnel = &self.generated().plan().tunnels[k];
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
        // BGP sessions come up after the tunnels.
        let timeout = Duration::from_secs(if self.options.routing().is_some() {
            30
        } else {
            15
        });
        for target in [HOST_B, HOST_B6] {
            let answered = process::wait_until(timeout, Duration::ZERO, || {
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

    /// With several pairs: per site, the hosts (several addresses) behind
    /// a router whose bridge joins the gateways' LANs (BGP), or on a switch
    /// with the gateways (VRRP, the hosts routing through the virtual
    /// address); forwarding on the gateways and the router.
    fn site_networks(&self) {
        let kind = self.options.routing().unwrap_or(HaKind::Bgp);
        // Link-local addresses at once (BGP over IPv6 waits for them), and
        // global ones kept across a link down and up.
        for role in self.roles() {
            self.exec(
                &self.ns(&role),
                &[
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv6.conf.default.accept_dad=0",
                    "net.ipv6.conf.all.keep_addr_on_down=1",
                    "net.ipv6.conf.default.keep_addr_on_down=1",
                ],
            );
        }
        for side in Side::BOTH {
            let (host, router) = (self.host(side), self.router(side));
            let [lan4, lan6] = LAN_BASES[side.index()];
            let mut host_addrs: Vec<String> = Vec::new();
            for (v4, v6) in host_addresses(side) {
                host_addrs.extend([format!("{v4}/24"), format!("{v6}/64")]);
            }
            let host_addrs: Vec<&str> = host_addrs.iter().map(String::as_str).collect();
            let (bridge, segment) = match kind {
                HaKind::Bgp => {
                    let router_addrs = [format!("{lan4}1/24"), format!("{lan6}1/64")];
                    let router_addrs: Vec<&str> = router_addrs.iter().map(String::as_str).collect();
                    topology::veth(
                        &topology::End::new(&host, LAN_DEV, &host_addrs),
                        &topology::End::new(&router, "hosts", &router_addrs),
                    );
                    topology::router(&router, &[]);
                    let [s4, s6] = SEGMENTS[side.index()];
                    let seg = [format!("{s4}1/24"), format!("{s6}1/64")];
                    let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
                    topology::bridge(&router, "gws", &seg);
                    ("gws", SEGMENTS[side.index()])
                }
                HaKind::Vrrp => {
                    topology::bridge(&router, "lan", &[]);
                    topology::veth(
                        &topology::End::new(&host, LAN_DEV, &host_addrs),
                        &topology::End::new(&router, "hosts", &[]),
                    );
                    topology::plug(&router, "hosts", "lan");
                    ("lan", LAN_BASES[side.index()])
                }
            };
            // The router's address, or the virtual one: .1 either way.
            for gateway in [format!("{lan4}1"), format!("{lan6}1")] {
                let family = if gateway.contains(':') { "-6" } else { "-4" };
                self.ip(&host, &[family, "route", "add", "default", "via", &gateway]);
            }
            for pair in 0..self.options.pairs.max(1) {
                let gw = Gw::new(pair, side);
                let ns = self.gw(gw);
                let port = format!("to-g{}", gw.tag());
                let [s4, s6] = segment;
                let addrs = [
                    format!("{s4}{}/24", 2 + pair),
                    format!("{s6}{:x}/64", 2 + pair),
                ];
                let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
                topology::veth(
                    &topology::End::new(&router, &port, &[]),
                    &topology::End::new(&ns, LAN_DEV, &addrs),
                );
                topology::plug(&router, &port, bridge);
                topology::router(&ns, &[]);
            }
        }
        if self.options.wire_segments {
            self.set_wire_segments(true);
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
            if self.options.routing().is_none() {
                topology::wire_segments((&self.host(side), LAN_DEV), (&self.gw(side), LAN_DEV), on);
                continue;
            }
            // The router would merge what the host cut: its end too.
            topology::wire_segments(
                (&self.host(side), LAN_DEV),
                (&self.router(side), "hosts"),
                on,
            );
            if on {
                for pair in 0..self.options.pairs.max(1) {
                    let ns = self.gw(Gw::new(pair, side));
                    self.exec(&ns, &["ethtool", "-K", LAN_DEV, "gro", "off"]);
                }
            }
        }
    }

    /// The veth between pair `pair`'s gateways that OpenVPN runs over,
    /// with `Options::wan_mtu`.
    fn wan(&self, pair: usize) {
        let [ga, gb] = Side::BOTH.map(|side| self.gw(Gw::new(pair, side)));
        let [a, b] = Side::BOTH.map(|side| format!("{}/30", wan(Gw::new(pair, side))));
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
            for tunnel in &self.generated().plan().tunnels {
                for prefix in &tunnel.translate[Side::A.index()] {
                    self.route_through(Side::B, &prefix.to_string(), tunnel.index);
                }
            }
        }
    }

    /// Gateway `gw`'s OpenVPN for tunnel `k`, from its installed configuration.
    #[must_use]
    pub fn openvpn(&self, gw: impl Into<Gw>, k: usize) -> OpenVpn {
        let gw = gw.into();
        let name = format!("openvpn-{}{k}", gw.tag());
        OpenVpn {
            ns: self.gw(gw),
            config: self.root(gw).join(layout::openvpn_config(&self.dev(k))),
            pid_file: self.dir.join(format!("{name}.pid")),
            log: self.dir.join(format!("{name}.log")),
        }
    }

    /// Starts every tunnel of every pair, TLS servers (gateway B) first so
    /// that no client's first handshake packet finds a closed port, and
    /// waits until all are connected.
    fn start_tunnels(&mut self) {
        let gateways = self.gateways();
        for side in [Side::B, Side::A] {
            for &gw in gateways.iter().filter(|g| g.side == side) {
                for k in 0..self.options.tunnels {
                    self.start_openvpn(gw, k);
                }
            }
        }
        for &gw in &gateways {
            for k in 0..self.options.tunnels {
                self.wait_connected(gw, k, Duration::from_secs(20));
            }
        }
    }

    /// Starts gateway `gw`'s OpenVPN for tunnel `k` with the lab's options.
    ///
    /// # Panics
    /// If OpenVPN cannot start.
    pub fn start_openvpn(&mut self, gw: impl Into<Gw>, k: usize) {
        let gw = gw.into();
        let openvpn = self.openvpn(gw, k);
        let mut extra = vec!["--keepalive", "1", "5", "--verb", "3"];
        let shaper = self.shaper(gw, k).map(|rate| rate.to_string());
        if let Some(rate) = &shaper {
            extra.extend(["--shaper", rate]);
        }
        self.start_tracked(&openvpn, &extra);
        if let Some(percent) = self.options.cpu_quota_percent
            && (gw.side == Side::A || !self.options.cpu_quota_a_only)
        {
            let group = openvpn::cpu_group(&format!("{}-{}{k}", self.tag, gw.tag()));
            self.teardown.cgroup(&group);
            let pid = openvpn.pid().expect("OpenVPN PID");
            openvpn::cap_cpu(&group, pid, percent);
        }
    }

    /// OpenVPN `--shaper` of gateway `gw`'s tunnel `k` (bytes/s), if any:
    /// gateway A's, and gateway B's with `shaper_both`.
    #[must_use]
    pub fn shaper(&self, gw: impl Into<Gw>, k: usize) -> Option<u32> {
        let shaper = &self.options.shaper;
        (gw.into().side == Side::A || self.options.shaper_both)
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

    /// Kills gateway `gw`'s OpenVPN for tunnel `k` (by the PID it wrote);
    /// returns that PID.
    pub fn kill_openvpn(&self, gw: impl Into<Gw>, k: usize) -> Option<i32> {
        self.openvpn(gw, k).kill()
    }

    /// Waits until OpenVPN `gw`/`k` has completed its initialisation.
    ///
    /// # Panics
    /// If it does not within `timeout`.
    pub fn wait_connected(&self, gw: impl Into<Gw>, k: usize, timeout: Duration) {
        self.openvpn(gw, k).wait_connected(timeout);
    }

    /// The gateway's ovpn-lb configuration: the generated one with the lab's
    /// options on top.
    #[must_use]
    pub fn loader_config(&self, gw: impl Into<Gw>) -> file::File {
        let gw = gw.into();
        let side = gw.side;
        let mut c = generate::loader_config(&self.generated().pairs[gw.pair].plan, side);
        c.spray = if self.options.peer == Peer::PlainRoutes {
            file::Spray::Flow
        } else {
            self.options.spray
        };
        c.up_delay_ms = self.options.up_delay_ms;
        if let Some(max) = self.options.path_delay_max_ms {
            c.path_delay_max_ms = max;
        }
        // On a slow machine the far gateway answers late: probes wait as long.
        c.probe_interval_ms *= u64::from(crate::slowdown());
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
    pub fn config_text(&self, gw: impl Into<Gw>) -> String {
        let gw = gw.into();
        let toml = self
            .loader_config(gw)
            .to_toml()
            .expect("a lab configuration is valid TOML");
        format!(
            "# ovpn-lb on lab {}: generated, with the lab's options on top.\n{toml}",
            gw.name()
        )
    }

    /// Where gateway `gw`'s `ovpn-lb.toml` is installed.
    #[must_use]
    pub fn config_path(&self, gw: impl Into<Gw>) -> PathBuf {
        self.root(gw).join(layout::LOADER_CONFIG)
    }

    /// Where gateway `gw`'s loader pins and keeps its state.
    #[must_use]
    pub fn layout(&self, gw: impl Into<Gw>) -> Layout {
        layout_in(&self.dir, gw.into())
    }

    /// The loader of gateway `gw`, as the lab runs it.
    #[must_use]
    pub fn loader(&self, gw: impl Into<Gw>) -> loader::Site {
        Self::loader_at(&self.dir, &self.tag, &self.bin, gw)
    }

    /// The loader of gateway `gw` of a lab built in `dir` under `tag`,
    /// for a process that did not build it (`cargo xtask lab status`).
    #[must_use]
    pub fn loader_at(dir: &Path, tag: &str, bin: &Path, gw: impl Into<Gw>) -> loader::Site {
        let gw = gw.into();
        loader::Site {
            ns: format!("{tag}-g{}", gw.tag()),
            bin: bin.to_path_buf(),
            layout: layout_in(dir, gw),
        }
    }

    fn loader_pid_file(&self, gw: Gw) -> PathBuf {
        self.dir.join(format!("ovpn-lb-{}.pid", gw.tag()))
    }

    /// The loader's log (every run on `gw` appends to it).
    #[must_use]
    pub fn loader_log(&self, gw: impl Into<Gw>) -> PathBuf {
        self.dir.join(format!("ovpn-lb-{}.log", gw.into().tag()))
    }

    /// Writes the configuration and starts `ovpn-lb run` on `gw`; waits
    /// until it runs.
    ///
    /// # Panics
    /// If it does not start.
    pub fn start_loader(&mut self, gw: impl Into<Gw>) {
        let gw = gw.into();
        let path = self.config_path(gw);
        fs::write(&path, self.config_text(gw))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        self.start_loader_with(gw, &path);
    }

    /// Starts `ovpn-lb run --config CONFIG` on `gw`, tracked by its PID.
    ///
    /// # Panics
    /// If it does not start.
    pub fn start_loader_with(&mut self, gw: impl Into<Gw>, config: &Path) {
        let gw = gw.into();
        let pid_file = self.loader_pid_file(gw);
        self.teardown.pid_file(&pid_file);
        let loader = self
            .loader(gw)
            .start(config, &[], &self.loader_log(gw), false);
        let pid = loader.release();
        fs::write(&pid_file, pid.to_string())
            .unwrap_or_else(|e| panic!("writing {}: {e}", pid_file.display()));
    }

    /// Kills the loader on `gw` with SIGKILL (the datapath stays).
    pub fn kill_loader(&self, gw: impl Into<Gw>) {
        self.signal_loader(gw, libc::SIGKILL);
    }

    /// Sends `signal` to the loader on `gw` and forgets it; returns its PID.
    pub fn signal_loader(&self, gw: impl Into<Gw>, signal: i32) -> Option<i32> {
        let gw = gw.into();
        let pid = pid_in(&self.loader_pid_file(gw))?;
        process::signal(pid, signal);
        let _ = fs::remove_file(self.loader_pid_file(gw));
        Some(pid)
    }

    /// Per-tunnel counters of gateway `gw`, from its pinned maps.
    ///
    /// # Panics
    /// If the maps cannot be read.
    #[must_use]
    pub fn tunnel_stats(&self, gw: impl Into<Gw>) -> Vec<TunnelStats> {
        self.counters(gw).tunnels
    }

    /// Per-tunnel and per-reason counters of gateway `gw`, from its pinned
    /// maps (reasons indexed by `Reason as usize`).
    ///
    /// # Panics
    /// If the maps cannot be read.
    #[must_use]
    pub fn counters(&self, gw: impl Into<Gw>) -> Counters {
        let n = u32::try_from(self.options.tunnels).unwrap();
        Counters::read(&self.layout(gw), n).expect("pinned counters")
    }

    /// Per tunnel, the times gateway `gw`'s loader has taken it out of
    /// the rotation, for any cause (its state file).
    ///
    /// # Panics
    /// If the state cannot be read.
    #[must_use]
    pub fn departures(&self, gw: impl Into<Gw>) -> Vec<u64> {
        let state = State::read(&self.layout(gw)).expect("the loader's state");
        state
            .tunnels
            .iter()
            .map(|t| t.departures.values().sum())
            .collect()
    }

    /// Waits until gateway `gw`'s loader has every tunnel in its rotation.
    ///
    /// # Panics
    /// If that takes longer than `timeout` (slowed), with [`Lab::diagnose`].
    pub fn wait_all_up(&self, gw: impl Into<Gw>, timeout: Duration) {
        let gw = gw.into();
        let tunnels = || {
            State::read(&self.layout(gw))
                .expect("the loader's state")
                .tunnels
        };
        let all_up = crate::process::wait_until(timeout, Duration::from_millis(50), || {
            tunnels().iter().all(|t| t.state == "up")
        });
        assert!(
            all_up,
            "{} kept tunnels out for {timeout:?} (slowed): {:?}\n{}",
            gw.name(),
            tunnels()
                .iter()
                .map(|t| format!("{}={}", t.device, t.state))
                .collect::<Vec<_>>(),
            self.diagnose()
        );
    }

    /// What to print when a check fails: loader logs, counters, routes.
    #[must_use]
    pub fn diagnose(&self) -> String {
        let mut out = String::new();
        if self.options.routing() == Some(HaKind::Bgp) {
            for side in Side::BOTH {
                let frr = self.router_frr(side);
                let _ = writeln!(
                    out,
                    "--- router {side:?}:\n{}\n{}",
                    frr.vtysh("show bgp summary"),
                    self.exec(&self.router(side), &["ip", "route"])
                );
            }
        }
        for gw in self.gateways() {
            let side = gw;
            let gw = self.gw(side);
            let log = fs::read_to_string(self.loader_log(side)).unwrap_or_default();
            let _ = writeln!(out, "--- {} loader log:\n{log}", side.name());
            if self.options.routing().is_some() {
                let health = self.root(side).join(layout::HEALTH);
                let _ = writeln!(
                    out,
                    "health file {}: {:?}",
                    health.display(),
                    fs::read_to_string(&health).unwrap_or_default()
                );
            }
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

fn layout_in(dir: &Path, gw: Gw) -> Layout {
    Layout {
        pin_root: dir.join("bpf").join(gw.tag()),
        run_dir: dir.join(format!("run-{}", gw.tag())),
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
