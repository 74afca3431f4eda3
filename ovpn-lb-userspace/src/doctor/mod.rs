//! `ovpn-lb doctor`: checks a gateway and says, for each problem, how to fix
//! it. For people (a list) and scripts (`--json`, and the exit code: 0 when
//! nothing is wrong, 1 when something is, 2 when the configuration itself
//! does not validate).

use std::{net::IpAddr, path::Path, time::Duration};

use anyhow::Result;
use serde::Serialize;

use ovpn_lb_common::maps::{Spray, programs};

use crate::{
    config::{self, Config, ManagementTarget, Net},
    facts::Facts,
    netlink::{Forwarding, Netlink},
    pins::Layout,
    status::{Counters, State},
};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    /// Works, but not as well as it could.
    Warning,
    /// Traffic is lost, misrouted or at risk.
    Problem,
}

/// One check's result.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub severity: Severity,
    pub message: String,
    /// What to do; empty when all is well.
    pub fix: String,
}

mod announce;

#[derive(Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn ok(&mut self, check: &'static str, message: impl Into<String>) {
        self.add(check, Severity::Ok, message, "");
    }

    fn add(
        &mut self,
        check: &'static str,
        severity: Severity,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.0.push(Finding {
            check,
            severity,
            message: message.into(),
            fix: fix.into(),
        });
    }
}

/// The report: findings, worst first within each check's order.
#[derive(Debug, Serialize)]
pub struct Report {
    pub config: String,
    pub findings: Vec<Finding>,
}

impl Report {
    /// 0: nothing wrong; 1: a problem; warnings alone keep 0.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        u8::from(
            self.findings
                .iter()
                .any(|f| f.severity == Severity::Problem),
        )
    }

    /// As a list for people.
    #[must_use]
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for f in &self.findings {
            let mark = match f.severity {
                Severity::Ok => "ok     ",
                Severity::Warning => "WARNING",
                Severity::Problem => "PROBLEM",
            };
            let _ = writeln!(out, "{mark} {:<12} {}", f.check, f.message);
            if !f.fix.is_empty() {
                let _ = writeln!(out, "        {:<12} fix: {}", "", f.fix);
            }
        }
        let problems = self
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Problem)
            .count();
        let warnings = self
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
            .count();
        let _ = writeln!(
            out,
            "{}",
            match (problems, warnings) {
                (0, 0) => "all is well".to_owned(),
                (0, w) => format!("no problems, {w} warning(s)"),
                (p, w) => format!("{p} problem(s), {w} warning(s)"),
            }
        );
        out
    }
}

pub(crate) fn sysctl(path: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A host address inside the LAN prefix that is not one of `ours`: the
/// source of the route lookups.
fn lan_host(net: Net, ours: &[IpAddr]) -> Option<IpAddr> {
    (1u32..64).find_map(|i| {
        let a = match net {
            Net::V4(p) => IpAddr::from((u32::from_be_bytes(p.octets()) + i).to_be_bytes()),
            Net::V6(p) => {
                IpAddr::from((u128::from_be_bytes(p.octets()) + u128::from(i)).to_be_bytes())
            }
        };
        (!ours.contains(&a)).then_some(a)
    })
}

/// Checks this gateway against `config_path`.
///
/// # Errors
/// If netlink cannot be opened; a configuration that does not validate is an
/// error of its own (`ConfigErrors`), for exit code 2.
pub async fn check(config_path: &Path, layout: &Layout) -> Result<Report> {
    let netlink = Netlink::requests_only()?;
    let facts = Facts::gather(&netlink).await?;
    let (config, warnings) = config::load(config_path, &facts)?;
    let mut f = Findings::default();
    f.ok("config", format!("{} is valid", config_path.display()));
    for w in warnings {
        f.add("config", Severity::Warning, w.0, "");
    }
    loader(&mut f, layout);
    forwarding(&mut f, &config);
    rp_filter(&mut f, &config, &facts);
    devices(&mut f, &config, &facts);
    kernel_path(&mut f, &config, &facts, &netlink).await;
    management(&mut f, &config, layout).await;
    probes(&mut f, layout);
    spray(&mut f, &config, layout).await;
    if let Some(spec) = &config.announce {
        announce::markers(&mut f, &config, spec, layout, &netlink).await;
        announce::reader(&mut f, &config);
        announce::multipath(&mut f, &netlink).await;
    }
    Ok(Report {
        config: config_path.display().to_string(),
        findings: f.0,
    })
}

fn loader(f: &mut Findings, layout: &Layout) {
    match State::read(layout) {
        Ok(s) if s.loader_alive() => {
            f.ok("loader", format!("ovpn-lb run is running (pid {})", s.pid));
        }
        Ok(s) => f.add(
            "loader",
            Severity::Problem,
            match &s.exit_error {
                Some(e) => format!("ovpn-lb run exited on an error: {e}; the datapath keeps its last schedule and nobody follows tunnel health"),
                None => "ovpn-lb run is not running; the datapath keeps its last schedule and nobody follows tunnel health".to_owned(),
            },
            "systemctl restart ovpn-lb (or `ovpn-lb run --config FILE`); `journalctl -u ovpn-lb` tells why it stopped",
        ),
        Err(_) => f.add(
            "loader",
            Severity::Problem,
            "ovpn-lb run has not run here (no state file): nothing is sprayed",
            "systemctl enable --now ovpn-lb (or `ovpn-lb run --config FILE`)",
        ),
    }
}

fn forwarding(f: &mut Findings, config: &Config) {
    for (on, path, name) in [
        (
            config.lan.v4.is_some(),
            "net/ipv4/ip_forward",
            "net.ipv4.ip_forward",
        ),
        (
            config.lan.v6.is_some(),
            "net/ipv6/conf/all/forwarding",
            "net.ipv6.conf.all.forwarding",
        ),
    ] {
        if !on {
            continue;
        }
        if sysctl(path) == Some(1) {
            f.ok("forwarding", format!("{name} = 1"));
        } else {
            f.add(
                "forwarding",
                Severity::Problem,
                format!("{name} is off: the gateway forwards nothing the kernel routes (restored replies included)"),
                format!("sysctl -w {name}=1, and in /etc/sysctl.d/ to keep it"),
            );
        }
    }
}

/// Restored packets arrive on every tunnel with sources that route through
/// another: strict reverse-path filtering drops them.
fn rp_filter(f: &mut Findings, config: &Config, facts: &Facts) {
    if config.lan.v4.is_none() {
        return;
    }
    let all = sysctl("net/ipv4/conf/all/rp_filter").unwrap_or(0);
    let mut strict = Vec::new();
    for t in &config.tunnels {
        if facts.link(&t.device).is_none() {
            continue;
        }
        let dev = sysctl(&format!("net/ipv4/conf/{}/rp_filter", t.device)).unwrap_or(0);
        // The kernel applies the larger of the two.
        if all.max(dev) == 1 {
            strict.push(t.device.clone());
        }
    }
    if strict.is_empty() {
        f.ok("rp_filter", "no tunnel has strict reverse-path filtering");
    } else {
        f.add(
            "rp_filter",
            Severity::Problem,
            format!("strict reverse-path filtering on {}: restored packets arriving there are dropped", strict.join(", ")),
            "sysctl -w net.ipv4.conf.all.rp_filter=2 and net.ipv4.conf.<tunnel>.rp_filter=2 (loose), in /etc/sysctl.d/ to keep it",
        );
    }
}

fn devices(f: &mut Findings, config: &Config, facts: &Facts) {
    let mut mtus = Vec::new();
    for t in &config.tunnels {
        match facts.link(&t.device) {
            None => f.add(
                "tunnel",
                Severity::Problem,
                format!(
                    "{} does not exist: its OpenVPN is not running (or names its device otherwise)",
                    t.device
                ),
                format!(
                    "start it (systemctl start openvpn@{}), and check its `dev` option",
                    t.device
                ),
            ),
            Some(l) if !l.up => f.add(
                "tunnel",
                Severity::Problem,
                format!(
                    "{} is down or has no carrier: OpenVPN has not connected",
                    t.device
                ),
                format!("look at its log (journalctl -u openvpn@{})", t.device),
            ),
            Some(l) => mtus.push((t.device.as_str(), l.mtu)),
        }
    }
    if let Some(&(dev, smallest)) = mtus.iter().min_by_key(|(_, m)| *m) {
        if mtus.iter().any(|&(_, m)| m != smallest) {
            let list: Vec<String> = mtus.iter().map(|(d, m)| format!("{d} {m}")).collect();
            f.add(
                "mtu",
                Severity::Warning,
                format!(
                    "tunnel MTUs differ ({}): the path MTU is the smallest, {smallest} on {dev}",
                    list.join(", ")
                ),
                "give every tunnel the same tun-mtu in its OpenVPN configuration",
            );
        }
        if let Some(lan) = facts.link(&config.lan.interface)
            && lan.mtu > smallest
        {
            f.add(
                "mtu",
                Severity::Warning,
                format!("{} has MTU {} but the tunnels {smallest}: larger packets take the kernel's path (ICMP or fragmentation)", lan.name, lan.mtu),
                "clamp TCP's MSS on forwarded traffic (nftables: tcp flags syn tcp option maxseg size set rt mtu), or raise the tunnels' tun-mtu",
            );
        } else {
            f.ok(
                "mtu",
                format!("the LAN's MTU fits the tunnels' ({smallest})"),
            );
        }
    }
}

/// Remote-bound LAN traffic the kernel forwards must leave by a tunnel, or
/// be refused: anything else leaves in the clear.
async fn kernel_path(f: &mut Findings, config: &Config, facts: &Facts, netlink: &Netlink) {
    let Some(lan) = facts.link(&config.lan.interface) else {
        return;
    };
    let ours = netlink.addresses(lan.ifindex).await.unwrap_or_default();
    let tunnels: Vec<u32> = config
        .tunnels
        .iter()
        .filter_map(|t| facts.link(&t.device).map(|l| l.ifindex))
        .collect();
    for remote in &config.remote {
        let lan_net = match remote {
            Net::V4(_) => config.lan.v4.map(Net::V4),
            Net::V6(_) => config.lan.v6.map(Net::V6),
        };
        let (Some(lan_net), Some(dst)) = (lan_net, lan_host(*remote, &[])) else {
            continue;
        };
        let Some(src) = lan_host(lan_net, &ours) else {
            continue;
        };
        match netlink.route_lookup(dst, src, lan.ifindex).await {
            Ok(Forwarding::Device(i)) if tunnels.contains(&i) => f.ok(
                "kernel_path",
                format!("LAN traffic for {remote} that the kernel forwards goes into a tunnel"),
            ),
            Ok(Forwarding::Refused) => f.ok(
                "kernel_path",
                format!("LAN traffic for {remote} that the kernel forwards is refused (no tunnel up, or forwarding off), never sent in the clear"),
            ),
            Ok(Forwarding::Device(i)) => {
                let dev = facts
                    .links
                    .iter()
                    .find(|l| l.ifindex == i)
                    .map_or_else(|| format!("ifindex {i}"), |l| l.name.clone());
                f.add(
                    "kernel_path",
                    Severity::Problem,
                    format!("LAN traffic for {remote} that the kernel forwards (over the tunnel MTU, TTL expiring) leaves by {dev}, outside the tunnels: in the clear"),
                    "run ovpn-lb (its policy rules send such traffic into a tunnel or refuse it); `ip rule` should list its rules at kernel_route.priority",
                );
            }
            Ok(Forwarding::Local) => {}
            Err(e) => f.add(
                "kernel_path",
                Severity::Warning,
                format!("could not ask the kernel how it routes {remote}: {e}"),
                "",
            ),
        }
    }
}

/// The running loader's state, if a loader is running.
fn running_loader(layout: &Layout) -> Option<State> {
    State::read(layout).ok().filter(State::loader_alive)
}

/// OpenVPN's management interfaces. OpenVPN serves one client at a time,
/// and a running loader is that client: then its view is the answer, and
/// only without a loader does doctor connect itself. A unix socket's mode
/// is not judged: OpenVPN makes it world-writable and checks who connects
/// itself (`management-client-user`, as `ovpn-lb generate` writes it).
async fn management(f: &mut Findings, config: &Config, layout: &Layout) {
    let loader = running_loader(layout);
    for t in &config.tunnels {
        let Some(m) = &t.management else { continue };
        let seen_by_loader = loader
            .as_ref()
            .and_then(|s| s.tunnels.iter().find(|s| s.device == t.device))
            .and_then(|s| s.openvpn.clone());
        match seen_by_loader.as_deref() {
            Some("CONNECTED") => f.ok(
                "management",
                format!(
                    "{}: OpenVPN reports CONNECTED to the loader at {}",
                    t.device, m.target
                ),
            ),
            Some("unreachable") => unreachable(f, &t.device, &m.target),
            Some(other) => f.add(
                "management",
                Severity::Problem,
                format!(
                    "{}: OpenVPN reports {other}, not CONNECTED: the tunnel is out of the rotation",
                    t.device
                ),
                format!(
                    "look at its log (journalctl -u openvpn@{}) and at the far gateway's",
                    t.device
                ),
            ),
            None if connects(&m.target).await => f.ok(
                "management",
                format!(
                    "{}: OpenVPN's management interface answers at {}",
                    t.device, m.target
                ),
            ),
            None => unreachable(f, &t.device, &m.target),
        }
    }
}

async fn connects(target: &ManagementTarget) -> bool {
    let timeout = Duration::from_secs(1);
    match target {
        ManagementTarget::Tcp(a) => {
            tokio::time::timeout(timeout, tokio::net::TcpStream::connect(a))
                .await
                .is_ok_and(|r| r.is_ok())
        }
        ManagementTarget::Unix(p) => {
            tokio::time::timeout(timeout, tokio::net::UnixStream::connect(p))
                .await
                .is_ok_and(|r| r.is_ok())
        }
    }
}

fn unreachable(f: &mut Findings, device: &str, target: &impl std::fmt::Display) {
    f.add(
        "management",
        Severity::Problem,
        format!(
            "{device}: nothing answers at {target}: OpenVPN is not running, or listens elsewhere"
        ),
        format!("check the `management` line of {device}'s OpenVPN configuration"),
    );
}

/// What the running loader says of the probes.
fn probes(f: &mut Findings, layout: &Layout) {
    let Ok(state) = State::read(layout) else {
        return;
    };
    for t in &state.tunnels {
        match (&t.probe, t.cause.as_deref()) {
            (Some(p), Some("probe")) if p.answered == 0 || p.loss >= 1.0 => f.add(
                "probes",
                Severity::Problem,
                format!("{}: the far gateway does not answer probes; the tunnel is out of the rotation", t.device),
                "run ovpn-lb on the far gateway too, with this tunnel's prefixes swapped (its translate = our peer_translate); or, for a plain OpenVPN far end, remove peer_translate and set probe_target",
            ),
            (Some(_), Some("probe")) => f.add(
                "probes",
                Severity::Problem,
                format!("{}: out of the rotation: its probes are lost, or the far gateway cannot use it", t.device),
                "look at the far gateway's `ovpn-lb status`, and at the tunnel's path",
            ),
            (Some(p), _) => f.ok(
                "probes",
                format!("{}: probes answered, round trip {:.1} ms", t.device, p.rtt_smoothed_ms),
            ),
            (None, _) => {}
        }
    }
}

/// How long doctor watches the rings: the probes alone put a few packets
/// through every tunnel in that time.
const RING_WATCH: Duration = Duration::from_secs(1);

/// Whether tunnel `k`'s ring accounting counted reads between two readings
/// of the counters: `None` when nothing went into the tunnel meanwhile (no
/// evidence either way), `Some(false)` when packets went in (sprayed, or
/// queued) and no read came out.
fn ring_reads_counted(before: &Counters, after: &Counters, k: usize) -> Option<bool> {
    let (b, a) = (before.queues.get(k)?, after.queues.get(k)?);
    let sprayed = after.tunnels.get(k)?.tx_packets > before.tunnels.get(k)?.tx_packets;
    let queued = a.enq_packets > b.enq_packets;
    (sprayed || queued).then_some(a.deq_packets > b.deq_packets)
}

/// The ring accounting is running (its links are pinned) and counts: the
/// tunnels that had traffic in the last [`RING_WATCH`] had reads counted.
async fn rings_count(f: &mut Findings, layout: &Layout, state: &State) {
    let accounted = programs::TRACING
        .iter()
        .all(|&(name, _)| layout.tracing_link(name).exists());
    if !accounted {
        f.add(
            "spray",
            Severity::Warning,
            "packet spray runs as round robin: the tunnels' rings cannot be accounted on this kernel",
            "the loader's log says why (a kernel without BTF, or /proc/kallsyms hidden from it)",
        );
        return;
    }
    let n = u32::try_from(state.tunnels.len()).unwrap_or(0);
    let Ok(before) = Counters::read(layout, n) else {
        return;
    };
    tokio::time::sleep(RING_WATCH).await;
    let Ok(after) = Counters::read(layout, n) else {
        return;
    };
    let (mut counted, mut uncounted) = (Vec::new(), Vec::new());
    for (k, t) in state.tunnels.iter().enumerate() {
        match ring_reads_counted(&before, &after, k) {
            Some(true) => counted.push(t.device.as_str()),
            Some(false) => uncounted.push(t.device.as_str()),
            None => {}
        }
    }
    if !uncounted.is_empty() {
        f.add(
            "spray",
            Severity::Problem,
            format!(
                "packet spray's ring accounting counted no read on {} in the last {} s, though packets went in: its figures are wrong, and packet spray misplaces packets",
                uncounted.join(", "),
                RING_WATCH.as_secs()
            ),
            "restart the loader (systemctl restart ovpn-lb) and look at its log; if it persists, spray = \"round-robin\"",
        );
    } else if counted.is_empty() {
        f.add(
            "spray",
            Severity::Warning,
            format!("no tunnel carried anything in the last {} s: whether packet spray's ring accounting counts is unknown", RING_WATCH.as_secs()),
            "run doctor again with traffic (or with probes on)",
        );
    } else {
        f.ok(
            "spray",
            format!(
                "packet spray sees every tunnel's ring: reads counted on {}",
                counted.join(", ")
            ),
        );
    }
}

/// Packet spray places packets well only with its ring accounting running
/// and counting, and the LAN handing it single segments.
async fn spray(f: &mut Findings, config: &Config, layout: &Layout) {
    if config.spray != Spray::Packet {
        return;
    }
    let lan = &config.lan.interface;
    if config.hook == config::Hook::Xdp {
        f.add(
            "spray",
            Severity::Warning,
            "packet spray under the XDP hook is round robin: XDP frames pass the TAP devices' rings, where the accounting cannot see them",
            "hook = \"tc\" to place each packet by the tunnels' queues",
        );
    } else if let Some(state) = running_loader(layout) {
        rings_count(f, layout, &state).await;
    }
    if crate::facts::gro_enabled(lan).unwrap_or(false) {
        f.add(
            "spray",
            Severity::Warning,
            format!("{lan} merges received TCP segments (GRO): packet spray places each merged packet whole, which reorders"),
            format!("ethtool -K {lan} gro off (and in the interface's configuration, to keep it)"),
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    if config.tunnels.len() > cores {
        f.add(
            "spray",
            Severity::Warning,
            format!(
                "{} tunnels share {cores} CPU cores: OpenVPN processes that wait for a core drain their queues in bursts, which packet spray cannot foresee",
                config.tunnels.len()
            ),
            "no more tunnels than cores; or try spray = \"round-robin\" and compare (docs/benchmarks.md shows both)",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovpn_lb_common::Prefix4;

    #[test]
    fn the_route_source_avoids_our_own_addresses() {
        let net = Net::V4(Prefix4::new([192, 168, 10, 0], 24));
        let ours = ["192.168.10.1".parse().unwrap()];
        assert_eq!(lan_host(net, &ours), Some("192.168.10.2".parse().unwrap()));
        assert_eq!(lan_host(net, &[]), Some("192.168.10.1".parse().unwrap()));
    }

    #[test]
    fn ring_reads_count_only_when_packets_went_in() {
        use ovpn_lb_common::{TunnelStats, queue::TunnelQueue};
        let counters = |tx: u64, enq: u64, deq: u64| Counters {
            tunnels: vec![TunnelStats {
                tx_packets: tx,
                ..TunnelStats::default()
            }],
            reasons: Vec::new(),
            queues: vec![TunnelQueue {
                enq_packets: enq,
                deq_packets: deq,
                ..TunnelQueue::default()
            }],
        };
        let before = counters(10, 12, 12);
        assert_eq!(ring_reads_counted(&before, &counters(10, 12, 12), 0), None);
        assert_eq!(
            ring_reads_counted(&before, &counters(20, 22, 22), 0),
            Some(true)
        );
        // Sprayed, but neither queue nor read counted; or queued, never read.
        assert_eq!(
            ring_reads_counted(&before, &counters(20, 12, 12), 0),
            Some(false)
        );
        assert_eq!(
            ring_reads_counted(&before, &counters(10, 15, 12), 0),
            Some(false)
        );
        assert_eq!(ring_reads_counted(&before, &counters(10, 12, 12), 1), None);
    }

    #[test]
    fn exit_code_counts_problems_not_warnings() {
        let mut f = Findings::default();
        f.ok("a", "fine");
        f.add("b", Severity::Warning, "meh", "do x");
        let r = Report {
            config: String::new(),
            findings: f.0.clone(),
        };
        assert_eq!(r.exit_code(), 0);
        assert!(r.render().contains("no problems, 1 warning(s)"));
        f.add("c", Severity::Problem, "bad", "do y");
        let r = Report {
            config: String::new(),
            findings: f.0,
        };
        assert_eq!(r.exit_code(), 1);
        assert!(r.render().contains("PROBLEM c"), "{}", r.render());
    }
}
