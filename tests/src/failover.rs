//! Gateway pairs under faults, in a lab with several pairs: which pairs
//! each site router's ECMP route uses, ping streams and TCP transfers
//! classified by the pair they crossed (counters in the routers' bridges),
//! the faults themselves and putting them right. The scale-out tests run
//! each fault once; `cargo xtask bench --scale-out` five times.

use std::{
    fmt::Write as _,
    fs,
    net::{IpAddr, SocketAddr},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use ovpn_lb::generate::ha::HaKind;

use crate::{
    lab::{Gw, LAN_DEV, Lab, Side, host_addresses},
    netns,
    ping::{Pings, ping_background_from},
    process::wait_until,
    traffic::{self, Transfer},
};

/// The far LAN of site `side`'s router, per family (the lab's LANs).
fn far_prefix(side: Side, v6: bool) -> &'static str {
    match (side, v6) {
        (Side::A, false) => "192.168.20.0/24",
        (Side::A, true) => "fd00:b::/64",
        (Side::B, false) => "192.168.10.0/24",
        (Side::B, true) => "fd00:a::/64",
    }
}

/// The next hops of site `side`'s router toward the far LAN.
#[must_use]
pub fn next_hops(lab: &Lab, side: Side, v6: bool) -> Vec<IpAddr> {
    let family = if v6 { "-6" } else { "-4" };
    let out = netns::command(&lab.router(side), "ip")
        .args(["-j", family, "route", "show", far_prefix(side, v6)])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let routes: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let mut hops = Vec::new();
    for r in routes.as_array().into_iter().flatten() {
        let nexthops = r["nexthops"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| vec![r.clone()]);
        hops.extend(
            nexthops
                .iter()
                .filter_map(|h| h["gateway"].as_str()?.parse::<IpAddr>().ok()),
        );
    }
    hops
}

/// The pairs that carry site `side`'s traffic to the far LAN, ascending:
/// those its router's IPv4 route uses (BGP), or the one whose gateway
/// holds the virtual address (VRRP).
#[must_use]
pub fn route_pairs(lab: &Lab, side: Side) -> Vec<usize> {
    if lab.options.routing() == Some(HaKind::Vrrp) {
        return vip_holders(lab, side);
    }
    let mut pairs: Vec<usize> = next_hops(lab, side, false)
        .iter()
        .filter_map(|a| match a {
            IpAddr::V4(a) => usize::from(a.octets()[3]).checked_sub(2),
            IpAddr::V6(_) => None,
        })
        .collect();
    pairs.sort_unstable();
    pairs
}

/// The pairs whose site-`side` gateway holds the virtual address (.1).
#[must_use]
pub fn vip_holders(lab: &Lab, side: Side) -> Vec<usize> {
    let vip = host_addresses(side)[0]
        .0
        .rsplit_once('.')
        .map(|(net, _)| format!("{net}.1/"));
    (0..lab.options.pairs.max(1))
        .filter(|&p| {
            let ns = lab.gw(Gw::new(p, side));
            let out = netns::command(&ns, "ip")
                .args(["-4", "-o", "addr", "show", "dev", LAN_DEV])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            vip.as_deref().is_some_and(|v| out.contains(v))
        })
        .collect()
}

/// Polls (every 10 ms) until site `side`'s router routes the far LAN
/// through exactly `pairs`; how long that took from `since`.
#[must_use]
pub fn wait_route(
    lab: &Lab,
    side: Side,
    pairs: &[usize],
    since: Instant,
    timeout: Duration,
) -> Option<Duration> {
    wait_until(timeout, Duration::from_millis(10), || {
        route_pairs(lab, side) == pairs
    })
    .then(|| since.elapsed())
}

/// Every pair the lab has.
#[must_use]
pub fn all_pairs(lab: &Lab) -> Vec<usize> {
    (0..lab.options.pairs.max(1)).collect()
}

/// One flow between the sites: host A's address and host B's.
pub type Flow = (IpAddr, IpAddr);

/// Counters in both routers' bridges (or switches) of the packets each
/// flow sends through each pair's gateway: A to B in site A's, B to A in
/// site B's. Removed on drop.
pub struct Crossings {
    routers: [String; 2],
    flows: Vec<Flow>,
    pairs: usize,
}

const TABLE: &str = "ovpnlb_flows";

impl Crossings {
    /// Starts counting `flows`.
    ///
    /// # Panics
    /// If nftables refuses the rules.
    #[must_use]
    pub fn install(lab: &Lab, flows: &[Flow]) -> Self {
        let pairs = lab.options.pairs.max(1);
        for side in Side::BOTH {
            let mut rules = String::new();
            for (i, (a, b)) in flows.iter().enumerate() {
                let (src, dst) = if side == Side::A { (a, b) } else { (b, a) };
                let family = if src.is_ipv4() { "ip" } else { "ip6" };
                for p in 0..pairs {
                    let port = format!("to-g{}", Gw::new(p, side).tag());
                    let _ = writeln!(
                        rules,
                        "    {family} saddr {src} {family} daddr {dst} oifname \"{port}\" counter comment \"f{i}p{p}\""
                    );
                }
            }
            // Routed frames leave the bridge by its output hook, switched
            // ones (VRRP) by its forward hook.
            let text = format!(
                "table bridge {TABLE} {{\n  chain routed {{\n    type filter hook output priority 0;\n{rules}  }}\n  chain switched {{\n    type filter hook forward priority 0;\n{rules}  }}\n}}\n"
            );
            let path = lab.dir.join(format!("flows-{}.nft", side.letter()));
            fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            netns::exec(
                &lab.router(side),
                &["nft", "-f", &path.display().to_string()],
            );
        }
        Self {
            routers: Side::BOTH.map(|s| lab.router(s)),
            flows: flows.to_vec(),
            pairs,
        }
    }

    /// Per flow, per pair: the packets counted so far (both directions).
    ///
    /// # Panics
    /// If the counters cannot be read.
    #[must_use]
    pub fn read(&self) -> Vec<Vec<u64>> {
        let mut counts = vec![vec![0; self.pairs]; self.flows.len()];
        for router in &self.routers {
            let out = netns::exec(router, &["nft", "-j", "list", "table", "bridge", TABLE]);
            let v: serde_json::Value = serde_json::from_str(&out).expect("nft -j");
            for item in v["nftables"].as_array().into_iter().flatten() {
                let rule = &item["rule"];
                let Some(comment) = rule["comment"].as_str() else {
                    continue;
                };
                let Some((f, p)) = comment
                    .strip_prefix('f')
                    .and_then(|c| c.split_once('p'))
                    .and_then(|(f, p)| Some((f.parse::<usize>().ok()?, p.parse::<usize>().ok()?)))
                else {
                    continue;
                };
                let packets = rule["expr"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find_map(|e| e["counter"]["packets"].as_u64())
                    .unwrap_or(0);
                if let Some(c) = counts.get_mut(f).and_then(|c| c.get_mut(p)) {
                    *c += packets;
                }
            }
        }
        counts
    }
}

impl Drop for Crossings {
    fn drop(&mut self) {
        for router in &self.routers {
            let _ = netns::command(router, "nft")
                .args(["delete", "table", "bridge", TABLE])
                .output();
        }
    }
}

/// Ping streams at 100 per second, one per host-A address, to host B.
pub struct Streams {
    pub flows: Vec<Flow>,
    pings: Vec<Pings>,
}

/// One stream's count: (sent, answered, the sequence numbers never
/// answered, from 0).
pub type Count = (u32, u32, Vec<u32>);

/// `lost` as ranges of consecutive sequence numbers: "12-19 40".
fn ranges(lost: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < lost.len() {
        let mut j = i;
        while j + 1 < lost.len() && lost[j + 1] == lost[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            lost[i].to_string()
        } else {
            format!("{}-{}", lost[i], lost[j])
        });
        i = j + 1;
    }
    out.join(" ")
}

/// The interval of a stream's pings: 100 per second.
pub const PING_INTERVAL: Duration = Duration::from_millis(10);

impl Streams {
    /// Starts `count` pings from every host-A address to host B's first.
    #[must_use]
    pub fn start(lab: &Lab, count: u32) -> Self {
        let target = host_addresses(Side::B)[0].0.clone();
        let mut flows = Vec::new();
        let mut pings = Vec::new();
        for (src, _) in host_addresses(Side::A) {
            let src: IpAddr = src.parse().expect("an address");
            flows.push((src, target.parse().expect("an address")));
            pings.push(ping_background_from(
                &lab.host(Side::A),
                Some(src),
                &target,
                count,
                "0.01",
            ));
        }
        Self { flows, pings }
    }

    /// Waits for every stream (replies up to `ping::GRACE` late count) and
    /// counts it.
    #[must_use]
    pub fn finish(self) -> Vec<Count> {
        self.pings
            .into_iter()
            .map(|p| {
                let answered = p.answered();
                let lost: Vec<u32> = answered
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| !**a)
                    .filter_map(|(i, _)| u32::try_from(i).ok())
                    .collect();
                let sent = u32::try_from(answered.len()).unwrap_or(u32::MAX);
                (sent, sent - u32::try_from(lost.len()).unwrap_or(0), lost)
            })
            .collect()
    }
}

/// TCP transfers from host A to host B's addresses (one each but the
/// first), SHA-256 checked, running on threads.
pub struct Transfers {
    pub flows: Vec<Flow>,
    threads: Vec<thread::JoinHandle<Transfer>>,
}

impl Transfers {
    /// Starts one transfer of `bytes` at `rate` bytes/s to each of host
    /// B's addresses but the first (ports 5601 on).
    #[must_use]
    pub fn start(lab: &Lab, bytes: usize, rate: u64) -> Self {
        let from = host_addresses(Side::A)[0].0.parse().expect("an address");
        let mut flows = Vec::new();
        let mut threads = Vec::new();
        for (i, (to, _)) in host_addresses(Side::B).into_iter().enumerate().skip(1) {
            let to: IpAddr = to.parse().expect("an address");
            flows.push((from, to));
            let listen = SocketAddr::new(to, 5600 + u16::try_from(i).unwrap_or(0));
            let (a, b) = (lab.host(Side::A), lab.host(Side::B));
            threads.push(thread::spawn(move || {
                traffic::tcp_transfer_at(&a, &b, listen, bytes, Some(rate), || {})
            }));
        }
        // Every connection is up before anything else happens.
        thread::sleep(Duration::from_millis(200));
        Self { flows, threads }
    }

    /// Waits for every transfer: whether it arrived whole and unchanged.
    #[must_use]
    pub fn finish(self, bytes: usize) -> Vec<bool> {
        self.threads
            .into_iter()
            .map(|t| {
                t.join()
                    .is_ok_and(|r| r.received_bytes == bytes && r.received_sha256 == r.sent_sha256)
            })
            .collect()
    }
}

/// `ip -ts monitor route nexthop` on both routers (BGP), for a failure's
/// message; killed (by PID) when stopped or dropped.
struct RouteMonitors(Vec<(String, Child)>);

impl RouteMonitors {
    fn start(lab: &Lab) -> Self {
        if lab.options.routing() != Some(HaKind::Bgp) {
            return Self(Vec::new());
        }
        Self(
            Side::BOTH
                .iter()
                .filter_map(|&side| {
                    let child = netns::command(&lab.router(side), "ip")
                        .args(["-ts", "monitor", "route", "nexthop"])
                        .stdout(Stdio::piped())
                        .stderr(Stdio::null())
                        .spawn()
                        .ok()?;
                    Some((format!("router {side}"), child))
                })
                .collect(),
        )
    }

    fn stop(mut self) -> String {
        let mut out = String::new();
        for (name, mut child) in self.0.drain(..) {
            let _ = child.kill();
            let text = child
                .wait_with_output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let _ = write!(out, "--- {name}'s routes meanwhile:\n{text}");
        }
        out
    }
}

impl Drop for RouteMonitors {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What is done to a gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Every OpenVPN of its pair killed on it.
    KillOpenVpn(Gw),
    /// Its LAN link set down.
    LanDown(Gw),
    /// Its links deleted and its processes killed: it is gone for good.
    GatewayGone(Gw),
    /// Its maintenance file created (a graceful drain).
    Maintenance(Gw),
    /// Its loader stopped with SIGTERM (a graceful drain).
    Sigterm(Gw),
    /// Its loader killed with SIGKILL (the datapath stays, announcing).
    KillLoader(Gw),
    /// Its bgpd killed.
    KillBgpd(Gw),
}

impl Fault {
    #[must_use]
    pub fn gateway(self) -> Gw {
        match self {
            Fault::KillOpenVpn(g)
            | Fault::LanDown(g)
            | Fault::GatewayGone(g)
            | Fault::Maintenance(g)
            | Fault::Sigterm(g)
            | Fault::KillLoader(g)
            | Fault::KillBgpd(g) => g,
        }
    }

    /// For reports.
    #[must_use]
    pub fn describe(self) -> String {
        let g = self.gateway().name();
        match self {
            Fault::KillOpenVpn(_) => format!("every OpenVPN of its pair killed on {g}"),
            Fault::LanDown(_) => format!("{g}'s LAN link down"),
            Fault::GatewayGone(_) => format!("{g} gone (links deleted, processes killed)"),
            Fault::Maintenance(_) => format!("{g}'s maintenance file created"),
            Fault::Sigterm(_) => format!("{g}'s loader stopped (SIGTERM)"),
            Fault::KillLoader(_) => format!("{g}'s loader killed (SIGKILL)"),
            Fault::KillBgpd(_) => format!("{g}'s bgpd killed"),
        }
    }

    /// Whether the fault takes the pair out of the routers' routes.
    #[must_use]
    pub fn withdraws(self) -> bool {
        !matches!(self, Fault::KillLoader(_))
    }
}

/// One ping stream's fate.
#[derive(Clone, Debug)]
pub struct StreamOutcome {
    /// It crossed the faulty pair (either way) before the fault.
    pub on_pair: bool,
    pub sent: u32,
    pub received: u32,
    /// The sequence numbers never answered (one sent every 10 ms from 0
    /// on, the fault coming after about 1 s).
    pub lost_seqs: Vec<u32>,
}

impl StreamOutcome {
    #[must_use]
    pub fn lost(&self) -> u32 {
        self.sent - self.received
    }
}

/// What a fault did.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub fault: Fault,
    /// Per site (A, B): from the fault until its router's route left the
    /// faulty pair (under VRRP: until the virtual address moved to another
    /// pair's gateway); `None` if it did not within the watch.
    pub left: [Option<Duration>; 2],
    pub streams: Vec<StreamOutcome>,
    /// Per TCP transfer: (crossed the faulty pair before the fault, intact).
    pub transfers: Vec<(bool, bool)>,
    /// What both routers' kernels said about routes and next hops
    /// meanwhile (`ip -ts monitor`), for a failure's message.
    pub route_log: String,
    /// Events meanwhile that the fault does not cause (see
    /// [`bystander_events`]): nonzero, the try says nothing of the fault.
    pub disturbed: u64,
}

impl Outcome {
    /// The most pings a stream on the faulty pair lost.
    #[must_use]
    pub fn worst_on_pair(&self) -> u32 {
        self.streams
            .iter()
            .filter(|s| s.on_pair)
            .map(StreamOutcome::lost)
            .max()
            .unwrap_or(0)
    }

    /// The most pings a stream on another pair lost.
    #[must_use]
    pub fn worst_elsewhere(&self) -> u32 {
        self.streams
            .iter()
            .filter(|s| !s.on_pair)
            .map(StreamOutcome::lost)
            .max()
            .unwrap_or(0)
    }

    /// Every ping lost.
    #[must_use]
    pub fn lost(&self) -> u32 {
        self.streams.iter().map(StreamOutcome::lost).sum()
    }

    /// The longest loss of any stream, at 100 pings per second.
    #[must_use]
    pub fn loss_time(&self) -> Duration {
        PING_INTERVAL
            * self
                .streams
                .iter()
                .map(StreamOutcome::lost)
                .max()
                .unwrap_or(0)
    }

    /// The summary and the routers' route log, for a failure.
    #[must_use]
    pub fn details(&self) -> String {
        format!("{}\n{}", self.summary(), self.route_log)
    }

    /// One line for a report or a failure.
    #[must_use]
    pub fn summary(&self) -> String {
        let ms = |d: Option<Duration>| {
            d.map_or_else(|| "-".to_owned(), |d| format!("{} ms", d.as_millis()))
        };
        let streams: Vec<String> = self
            .streams
            .iter()
            .map(|s| {
                let which = if s.lost_seqs.is_empty() {
                    String::new()
                } else {
                    format!(" (seq {})", ranges(&s.lost_seqs))
                };
                format!(
                    "{}{}/{}{which}",
                    if s.on_pair { "*" } else { "" },
                    s.sent - s.received,
                    s.sent
                )
            })
            .collect();
        let transfers: Vec<String> = self
            .transfers
            .iter()
            .map(|(on, ok)| {
                format!(
                    "{}{}",
                    if *on { "*" } else { "" },
                    if *ok { "ok" } else { "BROKEN" }
                )
            })
            .collect();
        format!(
            "{}: router A left the pair after {}, router B after {}; pings lost per stream (* on the pair) {}; transfers {}{}",
            self.fault.describe(),
            ms(self.left[0]),
            ms(self.left[1]),
            streams.join(" "),
            transfers.join(" "),
            disturbed(self.disturbed)
        )
    }
}

/// A summary's note of events on the other pairs.
fn disturbed(events: u64) -> String {
    if events == 0 {
        String::new()
    } else {
        format!(
            "; DISTURBED: {events} withdrawal(s) or BFD session(s) down that the fault does not cause"
        )
    }
}

/// How a trial runs.
#[derive(Clone, Copy, Debug)]
pub struct Trial {
    /// Pings per stream (at 100 per second); the fault comes after 1 s.
    pub pings: u32,
    /// Bytes per TCP transfer (0: none).
    pub transfer_bytes: usize,
    /// Each transfer's rate, bytes/s: application-limited, so that what
    /// the pings lose is the fault's doing, not the transfers' queues.
    pub transfer_rate: u64,
    /// How long the routers are watched for leaving the pair.
    pub watch: Duration,
}

impl Default for Trial {
    fn default() -> Self {
        Self {
            pings: 500,
            transfer_bytes: 6 << 20,
            transfer_rate: 2 << 20,
            watch: Duration::from_secs(3),
        }
    }
}

/// Events so far that `fault` does not cause: announcement transitions of
/// the other pairs' gateways, and BFD sessions going down on the routers
/// (BGP), but the faulty gateway's when the fault takes its session down.
/// A machine too loaded to run a gateway's OpenVPN, bfdd or loader in time
/// (BFD and the probes allow 0.3 s of silence) causes them, and the routes
/// move for that; a try with one says nothing of the fault.
#[must_use]
pub fn bystander_events(lab: &Lab, fault: Fault) -> u64 {
    let faulty = fault.gateway();
    let transitions: u64 = lab
        .gateways()
        .into_iter()
        .filter(|g| g.pair != faulty.pair)
        .filter_map(|g| {
            ovpn_lb::status::State::read(&lab.layout(g))
                .ok()?
                .announce
                .map(|a| a.transitions)
        })
        .sum();
    if lab.options.routing() != Some(HaKind::Bgp) {
        return transitions;
    }
    // The faulty gateway is .{2+pair} (IPv4) and ::{2+pair} on its site's
    // segment.
    let ends_session = matches!(
        fault,
        Fault::LanDown(_) | Fault::KillBgpd(_) | Fault::GatewayGone(_)
    );
    let host = 2 + faulty.pair;
    let (v4, v6) = (format!(".{host}"), format!("::{host:x}"));
    let down = lab.bfd_session_downs(|side, peer| {
        ends_session && side == faulty.side && (peer.ends_with(&v4) || peer.ends_with(&v6))
    });
    transitions + down
}

/// Injects `fault` while ping streams and TCP transfers run; measures.
///
/// # Panics
/// If the lab does not do what the fault asks.
pub fn inject(lab: &mut Lab, fault: Fault, trial: &Trial) -> Outcome {
    let streams = Streams::start(lab, trial.pings);
    let mut flows = streams.flows.clone();
    thread::sleep(Duration::from_millis(800));
    let transfers = (trial.transfer_bytes > 0)
        .then(|| Transfers::start(lab, trial.transfer_bytes, trial.transfer_rate));
    if let Some(t) = &transfers {
        flows.extend(&t.flows);
    }
    let crossings = Crossings::install(lab, &flows);
    let monitors = RouteMonitors::start(lab);
    thread::sleep(Duration::from_millis(200));
    let before = crossings.read();
    let pair = fault.gateway().pair;
    let remaining: Vec<usize> = all_pairs(lab).into_iter().filter(|&p| p != pair).collect();
    let bystanders = bystander_events(lab, fault);
    let at = Instant::now();
    apply(lab, fault);
    let left = if fault.withdraws() {
        let lab_ref: &Lab = lab;
        thread::scope(|s| {
            let watches = Side::BOTH.map(|side| {
                let remaining = &remaining;
                s.spawn(move || wait_route(lab_ref, side, remaining, at, trial.watch))
            });
            watches.map(|w| w.join().expect("watch"))
        })
    } else {
        [None, None]
    };
    let sent = streams.finish();
    let n = sent.len();
    let intact = transfers
        .map(|t| t.finish(trial.transfer_bytes))
        .unwrap_or_default();
    let crossed = |i: usize| before[i][pair] > 0;
    Outcome {
        route_log: monitors.stop(),
        disturbed: bystander_events(lab, fault) - bystanders,
        fault,
        left,
        streams: sent
            .into_iter()
            .enumerate()
            .map(|(i, (sent, received, lost_seqs))| StreamOutcome {
                on_pair: crossed(i),
                sent,
                received,
                lost_seqs,
            })
            .collect(),
        transfers: intact
            .into_iter()
            .enumerate()
            .map(|(i, ok)| (crossed(n + i), ok))
            .collect(),
    }
}

/// Does it.
fn apply(lab: &mut Lab, fault: Fault) {
    match fault {
        Fault::KillOpenVpn(g) => {
            for k in 0..lab.options.tunnels {
                lab.kill_openvpn(g, k);
            }
        }
        Fault::LanDown(g) => {
            lab.ip(&lab.gw(g), &["link", "set", LAN_DEV, "down"]);
        }
        Fault::GatewayGone(g) => gone(lab, g),
        Fault::Maintenance(g) => {
            let path = maintenance_file(lab, g);
            fs::write(&path, "").unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        Fault::Sigterm(g) => {
            lab.signal_loader(g, libc::SIGTERM);
        }
        Fault::KillLoader(g) => lab.kill_loader(g),
        Fault::KillBgpd(g) => {
            lab.frr(g).kill("bgpd");
        }
    }
}

/// Gateway `g`'s maintenance file (`announce.maintenance_file`).
#[must_use]
pub fn maintenance_file(lab: &Lab, g: Gw) -> std::path::PathBuf {
    lab.root(g).join(ovpn_lb::generate::layout::MAINTENANCE)
}

/// Everything of gateway `g` vanishes at once: its LAN and WAN links are
/// deleted (the far end of each veth goes with it), then its processes
/// are killed.
fn gone(lab: &mut Lab, g: Gw) {
    let ns = lab.gw(g);
    for dev in [LAN_DEV, "wan"] {
        lab.ip(&ns, &["link", "del", dev]);
    }
    lab.kill_loader(g);
    for k in 0..lab.options.tunnels {
        lab.kill_openvpn(g, k);
    }
    match lab.options.routing() {
        Some(HaKind::Bgp) => lab.frr(g).stop(),
        Some(HaKind::Vrrp) => lab.keepalived(g).kill(),
        None => {}
    }
}

/// A pair coming back.
#[derive(Clone, Debug)]
pub struct Rejoin {
    /// Per site (A, B): from putting the fault right until its router
    /// routes through every pair again; `None` if not within 20 s. Under
    /// VRRP (the address stays where it went), the first entry is until
    /// the gateway's health file says it is healthy again.
    pub back: [Option<Duration>; 2],
    /// Per ping stream meanwhile.
    pub streams: Vec<Count>,
    /// Events meanwhile that the fault does not cause (see
    /// [`bystander_events`]).
    pub disturbed: u64,
}

impl Rejoin {
    /// Every ping lost.
    #[must_use]
    pub fn lost(&self) -> u32 {
        self.streams.iter().map(|(s, r, _)| s - r).sum()
    }

    /// One line for a report or a failure.
    #[must_use]
    pub fn summary(&self) -> String {
        let streams: Vec<String> = self
            .streams
            .iter()
            .map(|(s, r, lost)| {
                if lost.is_empty() {
                    format!("0/{s}")
                } else {
                    format!("{}/{s} (seq {})", s - r, ranges(lost))
                }
            })
            .collect();
        format!(
            "back after {:?}; pings lost {}{}",
            self.back,
            streams.join(" "),
            disturbed(self.disturbed)
        )
    }
}

/// Puts `fault` right (a gone gateway cannot be: build a new lab), with
/// ping streams running, until both routers route through every pair.
///
/// # Panics
/// For a gone gateway, or if the lab does not come back.
pub fn restore(lab: &mut Lab, fault: Fault, trial: &Trial) -> Rejoin {
    let streams = Streams::start(lab, trial.pings);
    let g = fault.gateway();
    let bystanders = bystander_events(lab, fault);
    thread::sleep(Duration::from_millis(500));
    let at = Instant::now();
    match fault {
        Fault::KillOpenVpn(_) => {
            for k in 0..lab.options.tunnels {
                lab.start_openvpn(g, k);
            }
        }
        Fault::LanDown(_) => {
            lab.ip(&lab.gw(g), &["link", "set", LAN_DEV, "up"]);
        }
        Fault::GatewayGone(_) => panic!("a gone gateway does not come back: build a new lab"),
        Fault::Maintenance(_) => {
            let _ = fs::remove_file(maintenance_file(lab, g));
        }
        // A loader still draining hands over to the new one at once.
        Fault::Sigterm(_) | Fault::KillLoader(_) => lab.start_loader(g),
        Fault::KillBgpd(_) => lab.frr(g).restart("bgpd"),
    }
    let back = if lab.options.routing() == Some(HaKind::Vrrp) {
        // The address stays where it went (no preemption): back is healthy again.
        let health = lab.root(g).join(ovpn_lb::generate::layout::HEALTH);
        let healthy = wait_until(Duration::from_secs(20), Duration::from_millis(10), || {
            fs::read_to_string(&health).is_ok_and(|t| t.trim() == "0")
        });
        [healthy.then(|| at.elapsed()), None]
    } else {
        let pairs = all_pairs(lab);
        [Side::A, Side::B].map(|side| wait_route(lab, side, &pairs, at, Duration::from_secs(20)))
    };
    let streams = streams.finish();
    Rejoin {
        back,
        streams,
        disturbed: bystander_events(lab, fault) - bystanders,
    }
}
