//! `ovpn-lb doctor`: checks a gateway and says, for each problem, how to fix
//! it. For people (a list) and scripts (`--json`, and the exit code: 0 when
//! nothing is wrong, 1 when something is, 2 when the configuration itself
//! does not validate).

use std::{net::IpAddr, path::Path, time::Duration};

use anyhow::Result;
use serde::Serialize;

use ovpn_lb_common::{
    maps::{Spray, programs},
    queue::RingHooks,
};

use crate::{
    config::{self, Config, ManagementTarget, Net},
    facts::Facts,
    netlink::{Forwarding, Netlink},
    pins::Layout,
    status::State,
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

fn sysctl(path: &str) -> Option<u32> {
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
    spray(&mut f, &config, layout);
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

/// Packet spray places packets well only with its ring accounting running
/// and the LAN handing it single segments.
fn spray(f: &mut Findings, config: &Config, layout: &Layout) {
    if config.spray != Spray::Packet {
        return;
    }
    let lan = &config.lan.interface;
    if State::read(layout).is_ok_and(|s| s.loader_alive()) {
        // The set whose links are all pinned is the one running.
        let running = RingHooks::ALL.into_iter().find(|&h| {
            programs::rings(h)
                .iter()
                .all(|t| layout.tracing_link(t.name).exists())
        });
        let xdp = config.hook == config::Hook::Xdp;
        match running {
            Some(h) if !xdp || h.sees_xdp() => f.ok(
                "spray",
                format!("packet spray sees every tunnel's ring (hooks: {})", h.name()),
            ),
            Some(h) => f.add(
                "spray",
                Severity::Warning,
                format!("packet spray under the XDP hook is round robin: XDP frames enter the TAP devices' rings by tun_xdp_xmit, which only the fexit hooks see, and {} runs here", h.name()),
                "hook = \"tc\", or a kernel that traces tun_xdp_xmit (fexit: CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS, tun built in or module BTF)",
            ),
            None => f.add(
                "spray",
                Severity::Warning,
                "packet spray runs as round robin: the tunnels' rings cannot be accounted on this kernel",
                "the loader's log says why (a kernel without BTF, or /proc/kallsyms hidden from it)",
            ),
        }
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
            "no more tunnels than cores; or try spray = \"round-robin\" and compare (the README's benchmarks show both)",
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
