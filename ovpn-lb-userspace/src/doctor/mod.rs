//! `ovpn-lb doctor`: checks a gateway and says, for each problem, how to fix
//! it. For people (a list) and scripts (`--json`, and the exit code: 0 when
//! nothing is wrong, 1 when something is, 2 when the configuration itself
//! does not validate).

use std::{net::IpAddr, path::Path, time::Duration};

use anyhow::Result;
use aya::programs::TcAttachType;
use serde::Serialize;

use ovpn_lb_common::{
    maps::{Spray, guard},
    queue::{RingHooks, unpack},
};

use crate::{
    config::{self, Config, ManagementTarget, Net, guarded_prefixes},
    datapath::attach,
    facts::Facts,
    netlink::{Forwarding, LinkFacts, Netlink},
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
    lan_program(&mut f, &config, &facts, layout);
    let wan = wan_devices(&config, &facts, &netlink).await;
    wan_guard(&mut f, &config, &facts, layout, &wan);
    wan_addresses(&mut f, &config, &netlink, &wan).await;
    kernel_path(&mut f, &config, &facts, &netlink, &wan).await;
    management(&mut f, &config, layout).await;
    probes(&mut f, layout);
    spray(&mut f, &config, layout).await;
    kernel(&mut f, layout);
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

/// One host address inside `net`.
fn host_in(net: &Net) -> Option<IpAddr> {
    lan_host(*net, &[])
}

/// An address outside every prefix of the configuration, standing for a
/// sender on the WAN (documentation ranges).
fn outsider(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1u16])
    } else {
        IpAddr::from([198, 51, 100, 1])
    }
}

/// Whoever may send LAN-related traffic the kernel routes.
enum Sender {
    /// A host on the LAN (handed over by the LAN program, or excluded).
    Lan(u32),
    /// The gateway itself: its own packets, and ICMP errors about restored
    /// packets (a far traceroute's TTL expiring here, a LAN host down, a
    /// packet too big for the LAN).
    Gateway,
    /// Something arriving on another interface (the WAN).
    Interface(String, u32),
}

/// Everything LAN-related the kernel routes must go into a tunnel or be
/// refused, whoever sends it: anything else leaves in the clear. Each
/// route is asked of the kernel (`ip route get`): from the LAN to the remote
/// prefixes, the exclusions and the peer's translations; from the gateway
/// itself to those and to our translations; and from each WAN interface
/// to all of them.
async fn kernel_path(
    f: &mut Findings,
    config: &Config,
    facts: &Facts,
    netlink: &Netlink,
    wan: &[LinkFacts],
) {
    let Some(lan) = facts.link(&config.lan.interface) else {
        return;
    };
    let ours = netlink.addresses(lan.ifindex).await.unwrap_or_default();
    let tunnels: Vec<u32> = config
        .tunnels
        .iter()
        .filter_map(|t| facts.link(&t.device).map(|l| l.ifindex))
        .collect();
    let destinations = destinations(config);
    let mut senders = vec![Sender::Lan(lan.ifindex), Sender::Gateway];
    senders.extend(
        wan.iter()
            .map(|l| Sender::Interface(l.name.clone(), l.ifindex)),
    );
    for sender in senders {
        let mut asked = Vec::new();
        let mut leaks: Vec<(String, String)> = Vec::new();
        for (what, dst, kind) in &destinations {
            let from = match &sender {
                // LAN hosts send to our translations only by mistake: the
                // main table refuses those, checked for the gateway.
                Sender::Lan(_) if *kind == guard::OURS_TRANSLATED => continue,
                Sender::Lan(iif) => {
                    let lan_net = if dst.is_ipv4() {
                        config.lan.v4.map(Net::V4)
                    } else {
                        config.lan.v6.map(Net::V6)
                    };
                    let Some(src) = lan_net.and_then(|n| lan_host(n, &ours)) else {
                        continue;
                    };
                    Some((src, *iif))
                }
                Sender::Gateway => None,
                Sender::Interface(_, iif) => Some((outsider(dst.is_ipv6()), *iif)),
            };
            asked.push((what.clone(), *kind));
            match netlink.route_lookup(*dst, from).await {
                Ok(Forwarding::Device(i)) if !tunnels.contains(&i) => {
                    let dev = facts
                        .links
                        .iter()
                        .find(|l| l.ifindex == i)
                        .map_or_else(|| format!("ifindex {i}"), |l| l.name.clone());
                    leaks.push((what.clone(), dev));
                }
                Ok(_) => {}
                Err(e) => f.add(
                    "kernel_path",
                    Severity::Warning,
                    format!("could not ask the kernel how it routes {what}: {e}"),
                    "",
                ),
            }
        }
        if !asked.is_empty() {
            route_finding(f, &sender, &asked, leaks, config.kernel_route.priority);
        }
    }
}

/// One host of every prefix the kernel must never route outside a tunnel,
/// with what it stands for and its `guard::*` kind: the remote prefixes,
/// exclusions, both sides' translations (of the families the LAN has).
fn destinations(config: &Config) -> Vec<(String, IpAddr, u32)> {
    let served = |net: &Net| match net {
        Net::V4(_) => config.lan.v4.is_some(),
        Net::V6(_) => config.lan.v6.is_some(),
    };
    let mut out = Vec::new();
    for (net, kind) in guarded_prefixes(config, &config.tunnels) {
        if kind == guard::LAN || !served(&net) {
            continue;
        }
        if let Some(dst) = host_in(&net) {
            out.push((net.to_string(), dst, kind));
        }
    }
    for net in config.exclude.iter().filter(|n| served(n)) {
        if let Some(dst) = host_in(net) {
            out.push((format!("{net} (excluded)"), dst, guard::REMOTE));
        }
    }
    out
}

/// What one sender's routes came to: all into a tunnel or refused, or
/// which leave by which device.
fn route_finding(
    f: &mut Findings,
    sender: &Sender,
    asked: &[(String, u32)],
    leaks: Vec<(String, String)>,
    priority: u32,
) {
    let who = match sender {
        Sender::Lan(_) => {
            "LAN traffic that the kernel forwards (over the tunnel MTU, TTL expiring, excluded)"
                .to_owned()
        }
        Sender::Gateway => {
            "the gateway's own traffic (ICMP errors about restored packets included)".to_owned()
        }
        Sender::Interface(name, _) => format!("traffic arriving on {name}"),
    };
    if leaks.is_empty() {
        // The far side by name, the translation prefixes by number.
        let mut parts: Vec<String> = asked
            .iter()
            .filter(|(_, k)| *k == guard::REMOTE)
            .map(|(what, _)| what.clone())
            .collect();
        for (kind, whose) in [
            (guard::OURS_TRANSLATED, "our"),
            (guard::PEER_TRANSLATED, "the peer's"),
        ] {
            let n = asked.iter().filter(|(_, k)| *k == kind).count();
            if n > 0 {
                parts.push(format!("{whose} {n} translation prefixes"));
            }
        }
        let list = match parts.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
            _ => parts.join(""),
        };
        f.ok(
            "kernel_path",
            format!("{who} for {list} goes into a tunnel or is refused"),
        );
        return;
    }
    let mut by_device: Vec<(String, Vec<String>)> = Vec::new();
    for (what, dev) in leaks {
        match by_device.iter_mut().find(|(d, _)| *d == dev) {
            Some((_, list)) => list.push(what),
            None => by_device.push((dev, vec![what])),
        }
    }
    let places: Vec<String> = by_device
        .iter()
        .map(|(dev, list)| format!("for {} leaves by {dev}", list.join(", ")))
        .collect();
    f.add(
        "kernel_path",
        Severity::Problem,
        format!("{who} {}, outside the tunnels: in the clear", places.join("; ")),
        format!(
            "ovpn-lb run installs policy rules at priority {priority} and {} (into a tunnel or refused) and unreachable routes in the main table (`ip route show proto 79`): without it running, start it; with it running, a rule of a lower priority in `ip rule`, or a more specific route in the main table, sends this traffic out: remove it",
            priority + 1
        ),
    );
}

/// The WAN devices as the loader guards them: named, or the default
/// routes' (not the LAN or a tunnel).
async fn wan_devices(config: &Config, facts: &Facts, netlink: &Netlink) -> Vec<LinkFacts> {
    match &config.wan {
        config::Wan::Named(names) => names
            .iter()
            .filter_map(|n| facts.link(n).cloned())
            .collect(),
        config::Wan::DefaultRoute => {
            let devices = netlink.default_route_devices().await.unwrap_or_default();
            facts
                .links
                .iter()
                .filter(|l| {
                    devices.contains(&l.ifindex)
                        && l.name != config.lan.interface
                        && !config.tunnels.iter().any(|t| t.device == l.name)
                })
                .cloned()
                .collect()
        }
    }
}

/// The hook the loader attached tc programs through (as its state says;
/// else as it would choose now).
fn tc_hook(layout: &Layout) -> attach::TcHook {
    match State::read(layout).ok().and_then(|s| s.kernel) {
        Some(k) if k.tc_hook == attach::TcHook::Legacy.name() => attach::TcHook::Legacy,
        Some(_) => attach::TcHook::Tcx,
        None => attach::TcHook::detect().0,
    }
}

/// Program ids attached at `iface`'s tc hook `direction`: tcx links, or
/// legacy filters where the loader used them.
fn tc_ids(layout: &Layout, iface: &str, direction: TcAttachType) -> Vec<u32> {
    attach::tc_programs(tc_hook(layout), iface, direction)
        .map(|progs| progs.into_iter().map(|(id, _)| id).collect())
        .unwrap_or_default()
}

/// The LAN program is attached to the LAN device as it is now (a device
/// recreated while no loader ran has none).
fn lan_program(f: &mut Findings, config: &Config, facts: &Facts, layout: &Layout) {
    if State::read(layout).is_err() {
        return; // Never run here: the loader check says so.
    }
    let name = &config.lan.interface;
    let Some(lan) = facts.link(name) else {
        f.add(
            "lan",
            Severity::Problem,
            format!("{name} does not exist: nothing is sprayed"),
            format!("bring {name} back; the running loader attaches to it as it appears"),
        );
        return;
    };
    let attached = match config.hook {
        config::Hook::Tc => attach::pinned_program(&layout.link(name))
            .is_some_and(|ours| tc_ids(layout, name, TcAttachType::Ingress).contains(&ours)),
        config::Hook::Xdp => attach::pinned_program(&layout.xdp_link(name))
            .is_some_and(|ours| lan.xdp_prog_id == ours),
    };
    if attached {
        f.ok("lan", format!("{name}: the LAN program is attached"));
    } else {
        f.add(
            "lan",
            Severity::Problem,
            format!("{name}: the LAN program is not attached (the device was recreated while no loader ran?): remote-bound traffic takes the kernel's path, through one tunnel"),
            "restart ovpn-lb (systemctl restart ovpn-lb): it attaches to the LAN device and follows it",
        );
    }
}

/// Each WAN device has the guard that keeps LAN traffic off it.
fn wan_guard(f: &mut Findings, config: &Config, facts: &Facts, layout: &Layout, wan: &[LinkFacts]) {
    if State::read(layout).is_err() {
        return;
    }
    if let config::Wan::Named(names) = &config.wan {
        for n in names.iter().filter(|n| facts.link(n).is_none()) {
            f.add(
                "wan",
                Severity::Warning,
                format!("wan.interfaces names {n}, which does not exist"),
                "check wan.interfaces against `ip link`",
            );
        }
    }
    if wan.is_empty() {
        f.add(
            "wan",
            Severity::Warning,
            "no WAN device known: nothing guards the WAN against LAN traffic a route sends there in the clear",
            "set wan.interfaces = [\"<the interface the tunnels' UDP leaves by>\"], or give the gateway its default route",
        );
        return;
    }
    for l in wan {
        let guarded = attach::pinned_program(&layout.egress_link(&l.name))
            .is_some_and(|ours| tc_ids(layout, &l.name, TcAttachType::Egress).contains(&ours));
        if guarded {
            f.ok(
                "wan",
                format!(
                    "{}: guarded: nothing of the LAN leaves it in the clear",
                    l.name
                ),
            );
        } else {
            f.add(
                "wan",
                Severity::Problem,
                format!("{}: the WAN guard is not attached: LAN traffic a route sends there leaves in the clear", l.name),
                "restart ovpn-lb (systemctl restart ovpn-lb): it guards each WAN device as it appears",
            );
        }
    }
}

/// No WAN address of ours lies in a remote or translation prefix: the
/// tunnels' own UDP would be refused by ovpn-lb's routes and dropped by the
/// WAN guard. (The far gateway's address must not either, as under plain
/// OpenVPN, whose routes into a tunnel must not cover its peer; doctor
/// cannot see it before OpenVPN connects.)
async fn wan_addresses(f: &mut Findings, config: &Config, netlink: &Netlink, wan: &[LinkFacts]) {
    let guarded: Vec<(Net, u32)> = guarded_prefixes(config, &config.tunnels)
        .into_iter()
        .filter(|(_, kind)| *kind != guard::LAN)
        .collect();
    for l in wan {
        for a in netlink.addresses(l.ifindex).await.unwrap_or_default() {
            let host = match a {
                IpAddr::V4(v4) => Net::parse("", &format!("{v4}/32")),
                IpAddr::V6(v6) => Net::parse("", &format!("{v6}/128")),
            };
            let Ok(host) = host else { continue };
            if let Some((net, _)) = guarded.iter().find(|(n, _)| n.overlaps(&host)) {
                f.add(
                    "wan",
                    Severity::Problem,
                    format!(
                        "{}: its address {a} lies in {net}, a remote or translation prefix: ovpn-lb's routes refuse the tunnels' own UDP to and from it, and the WAN guard drops it",
                        l.name
                    ),
                    "narrow remote_prefixes, or pick translation prefixes that cover no WAN address (nor the far gateway's)",
                );
            }
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
    if let Ok(state) = State::read(layout) {
        probe_findings(f, &state);
    }
}

fn probe_findings(f: &mut Findings, state: &State) {
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
            // No round trip to speak of: none has been measured.
            (Some(p), _) if p.answered == 0 => f.add(
                "probes",
                Severity::Warning,
                format!("{}: none of its {} probes has been answered yet", t.device, p.sent),
                "if it stays so, the far gateway does not answer: check that it runs ovpn-lb with this tunnel's prefixes swapped, and the tunnel's path",
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
    let packets = |c: u64| unpack(c).packets;
    let queued = packets(a.enq.queued) != packets(b.enq.queued);
    (sprayed || queued).then_some(packets(a.deq.read) != packets(b.deq.read))
}

/// The ring accounting is running (one set of hooks has all its links
/// pinned) and counts: the tunnels that had traffic in the last
/// [`RING_WATCH`] had reads counted.
async fn rings_count(f: &mut Findings, layout: &Layout, state: &State) {
    let running = RingHooks::ALL.into_iter().find(|&h| {
        h.programs()
            .iter()
            .all(|t| layout.tracing_link(t.name).exists())
    });
    let Some(running) = running else {
        f.add(
            "spray",
            Severity::Warning,
            "packet spray runs as round robin: the tunnels' rings cannot be accounted on this kernel",
            "the loader's log says why (a kernel without BTF, or /proc/kallsyms hidden from it)",
        );
        return;
    };
    let hooks = running.name();
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
                "packet spray's ring accounting (hooks: {hooks}) counted no read on {} in the last {} s, though packets went in: its figures are wrong, and packet spray misplaces packets",
                uncounted.join(", "),
                RING_WATCH.as_secs()
            ),
            "restart the loader (systemctl restart ovpn-lb) and look at its log; if it persists, spray = \"round-robin\"",
        );
    } else if counted.is_empty() {
        f.add(
            "spray",
            Severity::Warning,
            format!("no tunnel carried anything in the last {} s: whether packet spray's ring accounting (hooks: {hooks}) counts is unknown", RING_WATCH.as_secs()),
            "run doctor again with traffic (or with probes on)",
        );
    } else {
        f.ok(
            "spray",
            format!(
                "packet spray sees every tunnel's ring (hooks: {hooks}): reads counted on {}",
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
            "packet spray under the XDP hook is round robin: the XDP LAN program has no room on its stack for the comparison",
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

/// The kernel's fallbacks, as the loader found them (or as they would be:
/// tc's hook and the checksum retry are found without loading anything).
fn kernel(f: &mut Findings, layout: &Layout) {
    let report = State::read(layout)
        .ok()
        .and_then(|s| s.kernel)
        .unwrap_or_else(|| {
            let (hook, why) = crate::datapath::attach::TcHook::detect();
            crate::datapath::kernel::Report::new(hook, &why, None)
        });
    if report.fallbacks.is_empty() {
        f.ok(
            "kernel",
            format!(
                "Linux {}: tc programs attach through {}, no fallback in force",
                report.release, report.tc_hook
            ),
        );
    }
    for fallback in &report.fallbacks {
        let message = format!("Linux {}: {}", report.release, fallback.what);
        if fallback.name == "round_robin" {
            // Works, but not as well: packet spray is the default for a reason.
            f.add(
                "kernel",
                Severity::Warning,
                message,
                "Linux 6.3 or later with BTF, run as root (see the log for the reason)",
            );
        } else {
            // Same packets, another way of getting there.
            f.ok("kernel", message);
        }
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
    fn a_tunnel_never_answered_has_no_round_trip() {
        use crate::status::{ProbeState, TunnelState};
        let tunnel = |device: &str, answered: u64, rtt: f64| TunnelState {
            device: device.into(),
            state: "up".into(),
            probe: Some(ProbeState {
                rtt_smoothed_ms: rtt,
                sent: 12,
                answered,
                ..ProbeState::default()
            }),
            ..TunnelState::default()
        };
        let state = State {
            tunnels: vec![tunnel("tun0", 0, 0.0), tunnel("tun1", 12, 0.4)],
            ..State::default()
        };
        let mut f = Findings::default();
        probe_findings(&mut f, &state);
        assert_eq!(f.0.len(), 2);
        assert_eq!(f.0[0].severity, Severity::Warning, "{:?}", f.0[0]);
        assert_eq!(
            f.0[0].message,
            "tun0: none of its 12 probes has been answered yet"
        );
        assert_eq!(f.0[1].severity, Severity::Ok);
        assert_eq!(f.0[1].message, "tun1: probes answered, round trip 0.4 ms");
    }

    #[test]
    fn ring_reads_count_only_when_packets_went_in() {
        use ovpn_lb_common::{
            TunnelStats,
            queue::{Dequeued, Enqueued, TunnelQueue, count},
        };
        let counters = |tx: u64, enq: u64, deq: u64| Counters {
            tunnels: vec![TunnelStats {
                tx_packets: tx,
                ..TunnelStats::default()
            }],
            reasons: Vec::new(),
            queues: vec![TunnelQueue {
                enq: Enqueued {
                    queued: count(100) * enq,
                    ..Enqueued::default()
                },
                deq: Dequeued {
                    read: count(100) * deq,
                    ..Dequeued::default()
                },
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
