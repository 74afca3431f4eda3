//! Validation: what a configuration file means on this machine. Every
//! problem becomes one line naming the field and the fix; all are reported
//! at once.

use std::{collections::HashSet, net::IpAddr, net::SocketAddr, path::PathBuf, time::Duration};

use ovpn_lb_common::{MAX_TUNNELS, Prefix4, Prefix6};

use super::{
    AnnounceSpec, Config, ConfigErrors, KernelRouteSpec, Lan, Management, ManagementTarget, Net,
    Probing, Spray, TunnelKind, TunnelSpec, Wan, Warning,
    file::{self, DEFAULT_METRICS_LISTEN, File},
    hook::{self, Requested},
};
use crate::{
    facts::Facts,
    netlink::{LinkKind, netdev},
};

/// Route protocol numbers that the kernel or a routing daemon owns: the
/// kernel's own (0 to 4), zebra's and its daemons' (11, 186 to 197), BIRD's,
/// keepalived's, babel's and Open/R's.
fn claimed_protocol(n: u8) -> Option<&'static str> {
    match n {
        0..=4 => Some("the kernel"),
        11 | 186..=197 => Some("FRR"),
        12 => Some("BIRD"),
        18 => Some("keepalived"),
        42 => Some("babel"),
        99 => Some("Open/R"),
        _ => None,
    }
}

/// What the tun driver's TAP devices can do with XDP; assumed for a TAP
/// device that does not exist yet.
const TAP_XDP_FEATURES: u64 = netdev::BASIC | netdev::REDIRECT | netdev::NDO_XMIT;

/// Checks `file` against the machine.
///
/// # Errors
/// Every problem found, one line each.
pub fn validate(file: File, facts: &Facts) -> Result<(Config, Vec<Warning>), ConfigErrors> {
    Validator {
        facts,
        errors: Vec::new(),
        warnings: Vec::new(),
        prefixes: Vec::new(),
    }
    .run(file)
}

struct Validator<'a> {
    facts: &'a Facts,
    errors: Vec<String>,
    warnings: Vec<Warning>,
    /// Every prefix seen, with the field that named it, for the overlap check.
    prefixes: Vec<(String, Net)>,
}

impl Validator<'_> {
    fn nets(&mut self, field: &str, texts: &[String]) -> Vec<Net> {
        let mut out = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            let name = format!("{field}[{i}]");
            match Net::parse(&name, t) {
                Ok(net) => {
                    self.prefixes.push((name, net));
                    out.push(net);
                }
                Err(e) => self.errors.push(e),
            }
        }
        out
    }

    fn run(mut self, file: File) -> Result<(Config, Vec<Warning>), ConfigErrors> {
        let lan_link = self.facts.link(&file.lan.interface).cloned();
        if lan_link.is_none() {
            self.errors.push(format!(
                "lan.interface = \"{}\": no such network interface; check `ip link`",
                file.lan.interface
            ));
        }
        let (lan_v4, lan_v6) = self.lan_prefixes(&file.lan.prefixes);
        let remote = self.nets("remote_prefixes", &file.remote_prefixes);
        if file.remote_prefixes.is_empty() {
            self.errors.push(
                "remote_prefixes is empty: list the networks reached through the tunnels"
                    .to_owned(),
            );
        }
        self.no_loopback(&remote);
        let exclude = self.exclusions(&file.exclude, &remote);
        let tunnels = self.tunnels(&file, lan_v4, lan_v6, &remote);
        let wan = self.wan(file.wan.as_ref(), &file.lan.interface, &tunnels);
        self.overlaps();
        if let Some(lan) = &lan_link {
            self.lan_mtu(&file.lan.interface, lan.mtu, &tunnels);
        }
        let requested = self.requested_hook(file.hook.as_deref(), file.mode.as_deref());
        let hook = requested.and_then(|r| self.hook(r, &file.lan.interface, &tunnels));
        if file.spray == file::Spray::Packet
            && hook.as_ref().is_some_and(|h| h.hook == super::Hook::Tc)
        {
            self.rings(&tunnels);
        }
        let metrics_listen = if let Ok(a) = file.metrics.listen.parse::<SocketAddr>() {
            Some(a)
        } else {
            self.errors.push(format!(
                "metrics.listen = \"{}\" is not an address:port, e.g. \"{DEFAULT_METRICS_LISTEN}\"",
                file.metrics.listen
            ));
            None
        };
        let kernel_route = self.kernel_route(file.kernel_route);
        let probe = self.probe(file.probe_interval_ms, file.probe_misses);
        if file.path_delay_max_ms > file::PATH_DELAY_MAX_LIMIT_MS {
            self.errors.push(format!(
                "path_delay_max_ms = {} is over {}: a path that much longer is no path to spray over",
                file.path_delay_max_ms,
                file::PATH_DELAY_MAX_LIMIT_MS
            ));
        }
        let announce = file
            .announce
            .as_ref()
            .map(|a| self.announce(a, tunnels.len(), kernel_route.table));
        if !self.errors.is_empty() {
            return Err(ConfigErrors(self.errors));
        }
        let hook = hook.expect("no errors");
        let config = Config {
            lan: Lan {
                interface: file.lan.interface,
                v4: lan_v4,
                v6: lan_v6,
            },
            wan,
            remote,
            exclude,
            spray: match file.spray {
                file::Spray::Packet => Spray::Packet,
                file::Spray::RoundRobin => Spray::RoundRobin,
                file::Spray::Flow => Spray::Flow,
            },
            hook: hook.hook,
            hook_reason: hook.reason,
            up_delay: Duration::from_millis(file.up_delay_ms),
            probe,
            path_delay_max: Duration::from_millis(file.path_delay_max_ms),
            metrics_listen: metrics_listen.expect("no errors"),
            kernel_route,
            announce,
            tunnels,
        };
        Ok((config, self.warnings))
    }

    fn lan_prefixes(&mut self, texts: &[String]) -> (Option<Prefix4>, Option<Prefix6>) {
        let (mut v4, mut v6) = (None, None);
        if texts.is_empty() {
            self.errors
                .push("lan.prefixes is empty: give the LAN's IPv4 and/or IPv6 prefix".to_owned());
        }
        for (i, net) in self.nets("lan.prefixes", texts).into_iter().enumerate() {
            match net {
                Net::V4(p) if v4.is_none() => v4 = Some(p),
                Net::V6(p) if v6.is_none() => v6 = Some(p),
                _ => self.errors.push(format!(
                    "lan.prefixes[{i}] = \"{net}\": only one LAN prefix per address family is supported"
                )),
            }
        }
        (v4, v6)
    }

    /// The WAN interfaces to guard: named ones must be neither the LAN nor a
    /// tunnel; one missing is guarded once it appears.
    fn wan(&mut self, wan: Option<&file::Wan>, lan: &str, tunnels: &[TunnelSpec]) -> Wan {
        let Some(wan) = wan else {
            return Wan::DefaultRoute;
        };
        if wan.interfaces.is_empty() {
            self.errors.push(
                "wan.interfaces is empty: name the interfaces the tunnels' UDP leaves by, or leave [wan] out to guard the default route's".to_owned(),
            );
        }
        let mut seen = HashSet::new();
        for (i, name) in wan.interfaces.iter().enumerate() {
            let field = format!("wan.interfaces[{i}] = \"{name}\"");
            if !seen.insert(name.as_str()) {
                self.errors.push(format!("{field} is listed twice"));
            } else if name == lan {
                self.errors.push(format!(
                    "{field} is the LAN interface: the WAN is where the tunnels' UDP leaves"
                ));
            } else if tunnels.iter().any(|t| t.device == *name) {
                self.errors.push(format!(
                    "{field} is a tunnel device: the WAN is where the tunnels' UDP leaves, not a tunnel"
                ));
            } else if self.facts.link(name).is_none() {
                self.warnings.push(Warning(format!(
                    "{field} does not exist (yet): it is guarded once it appears"
                )));
            }
        }
        Wan::Named(wan.interfaces.clone())
    }

    /// Loopback destinations are how probes are told from traffic, and no
    /// kernel forwards them anyway.
    fn no_loopback(&mut self, remote: &[Net]) {
        let loopback = [
            Net::V4(Prefix4::new([127, 0, 0, 0], 8)),
            Net::V6(Prefix6::new(std::net::Ipv6Addr::LOCALHOST.octets(), 128)),
        ];
        for (i, net) in remote.iter().enumerate() {
            if loopback.iter().any(|l| l.overlaps(net)) {
                self.errors.push(format!(
                    "remote_prefixes[{i}] = \"{net}\" covers loopback addresses, which are never forwarded"
                ));
            }
        }
    }

    fn exclusions(&mut self, texts: &[String], remote: &[Net]) -> Vec<Net> {
        let nets = self.nets("exclude", texts);
        // Exclusions sit inside remote prefixes by design: keep them out of the
        // overlap check.
        self.prefixes
            .retain(|(field, _)| !field.starts_with("exclude"));
        for (i, net) in nets.iter().enumerate() {
            if !remote
                .iter()
                .any(|r| r.overlaps(net) && r.prefix_len() <= net.prefix_len())
            {
                self.errors.push(format!(
                    "exclude[{i}] = \"{net}\" is not inside any remote prefix: exclusions carve holes in remote_prefixes"
                ));
            }
        }
        nets
    }

    fn tunnels(
        &mut self,
        file: &File,
        lan_v4: Option<Prefix4>,
        lan_v6: Option<Prefix6>,
        remote: &[Net],
    ) -> Vec<TunnelSpec> {
        if file.tunnels.is_empty() {
            self.errors
                .push("no [[tunnel]] sections: configure at least one tunnel".to_owned());
        }
        if file.tunnels.len() > MAX_TUNNELS {
            self.errors.push(format!(
                "{} tunnels configured: the datapath supports at most {MAX_TUNNELS}",
                file.tunnels.len()
            ));
        }
        let mut devices = HashSet::new();
        let mut out = Vec::new();
        for (k, t) in file.tunnels.iter().enumerate() {
            let field = format!("tunnel[{k}]");
            let kind = match t.kind {
                file::Kind::Tun => TunnelKind::Tun,
                file::Kind::Tap => TunnelKind::Tap,
            };
            if !devices.insert(t.device.as_str()) {
                self.errors.push(format!(
                    "{field}.device = \"{}\" is configured twice: each tunnel needs its own device",
                    t.device
                ));
            }
            if t.device == file.lan.interface {
                self.errors.push(format!(
                    "{field}.device = \"{}\" is the LAN interface: a tunnel must be the OpenVPN tun device",
                    t.device
                ));
            } else {
                self.device(&field, &t.device, kind);
            }
            if t.weight == 0 {
                self.errors.push(format!(
                    "{field}.weight = 0: weights start at 1 (remove the tunnel to disable it)"
                ));
            }
            let management = self.management(&field, t);
            let next_hop = self.next_hop(&field, kind, t.next_hop.as_deref());
            let mut tunnel = TunnelSpec {
                device: t.device.clone(),
                kind,
                next_hop,
                weight: t.weight,
                management,
                xlat_v4: None,
                xlat_v6: None,
                peer_v4: None,
                peer_v6: None,
                probing: Probing::Off,
            };
            self.translations(&field, t, lan_v4, lan_v6, remote, &mut tunnel);
            tunnel.probing = self.probing(&field, t, &tunnel, file.probe_interval_ms);
            out.push(tunnel);
        }
        self.tunnel_mtus(&out);
        out
    }

    /// A missing device is not an error: OpenVPN may start after ovpn-lb.
    /// One that exists must be of the configured kind.
    fn device(&mut self, field: &str, device: &str, kind: TunnelKind) {
        match (self.facts.link(device).map(|l| l.kind), kind) {
            (None, _) => self.warnings.push(Warning(format!(
                "{field}.device = \"{device}\" does not exist (yet): the tunnel stays out of the rotation until its OpenVPN creates it"
            ))),
            (Some(LinkKind::L3PointToPoint), TunnelKind::Tun)
            | (Some(LinkKind::Ethernet), TunnelKind::Tap) => {}
            (Some(found), TunnelKind::Tun) => self.errors.push(format!(
                "{field}.device = \"{device}\" is not a layer-3 point-to-point device ({found}): use the tun device OpenVPN creates with `dev tun`, or set kind = \"tap\" for a TAP device"
            )),
            (Some(found), TunnelKind::Tap) => self.errors.push(format!(
                "{field}.device = \"{device}\" is not an Ethernet (TAP) device ({found}): kind = \"tap\" needs the device OpenVPN creates with `dev tap`"
            )),
        }
    }

    /// Packet spray under tc places packets by each tunnel's ring, which its
    /// accounting follows only on single-queue tun and TAP devices of the
    /// tun driver: another device would look idle for ever and take every
    /// packet. One that does not exist yet is checked when it appears.
    fn rings(&mut self, tunnels: &[TunnelSpec]) {
        for (k, t) in tunnels.iter().enumerate() {
            let why = self
                .facts
                .link(&t.device)
                .and_then(|l| l.driver.why_no_ring());
            if let Some(why) = why {
                self.errors.push(format!(
                    "tunnel[{k}].device = \"{}\" is {why}: spray = \"packet\" cannot see its queue; use the device OpenVPN makes without offload, or spray = \"round-robin\"",
                    t.device
                ));
            }
        }
    }

    fn management(&mut self, field: &str, t: &file::Tunnel) -> Option<Management> {
        let password_file = t.management_password_file.as_ref().map(PathBuf::from);
        if let Some(p) = &password_file {
            if t.management.is_none() {
                self.errors.push(format!(
                    "{field}.management_password_file is set without management: give the management address too"
                ));
            } else if std::fs::metadata(p).is_err() {
                self.errors.push(format!(
                    "{field}.management_password_file = \"{}\": cannot read it; it must hold the password on its first line",
                    p.display()
                ));
            }
        }
        let text = t.management.as_ref()?;
        let target = if text.starts_with('/') {
            ManagementTarget::Unix(PathBuf::from(text))
        } else if let Ok(a) = text.parse::<SocketAddr>() {
            ManagementTarget::Tcp(a)
        } else {
            self.errors.push(format!(
                "{field}.management = \"{text}\" is not an address:port (OpenVPN's `management 127.0.0.1 7505`) or an absolute unix socket path (`management /run/openvpn/tun0.sock unix`)"
            ));
            return None;
        };
        Some(Management {
            target,
            password_file,
        })
    }

    fn tunnel_mtus(&mut self, tunnels: &[TunnelSpec]) {
        let mtus: Vec<(&str, u32)> = tunnels
            .iter()
            .filter_map(|t| Some((t.device.as_str(), self.facts.link(&t.device)?.mtu)))
            .collect();
        if let Some((_, first)) = mtus.first()
            && mtus.iter().any(|(_, m)| m != first)
        {
            let smallest = mtus.iter().min_by_key(|(_, m)| *m).expect("not empty");
            let list: Vec<String> = mtus.iter().map(|(d, m)| format!("{d} {m}")).collect();
            self.warnings.push(Warning(format!(
                "tunnel MTUs differ ({}): packets are sprayed over all of them, so the path MTU is the smallest, {} on {}",
                list.join(", "),
                smallest.1,
                smallest.0
            )));
        }
    }

    /// Packets above the tunnel MTU take the kernel's slower path (ICMP or
    /// fragmentation): worth a warning with the usual fix.
    fn lan_mtu(&mut self, lan: &str, lan_mtu: u32, tunnels: &[TunnelSpec]) {
        let Some((device, mtu)) = tunnels
            .iter()
            .filter_map(|t| Some((t.device.as_str(), self.facts.link(&t.device)?.mtu)))
            .min_by_key(|(_, m)| *m)
        else {
            return;
        };
        if lan_mtu > mtu {
            self.warnings.push(Warning(format!(
                "{lan}'s MTU {lan_mtu} exceeds the smallest tunnel MTU ({mtu} on {device}): larger packets get ICMP \"fragmentation needed\" or are fragmented by the kernel; clamp TCP's MSS to the tunnel (e.g. nftables `tcp flags syn tcp option maxseg size set rt mtu` on forwarded traffic) or raise the tunnels' MTU"
            )));
        }
    }

    fn next_hop(&mut self, field: &str, kind: TunnelKind, text: Option<&str>) -> Option<IpAddr> {
        match (kind, text) {
            (TunnelKind::Tun, None) => None,
            (TunnelKind::Tun, Some(t)) => {
                self.errors.push(format!(
                    "{field}.next_hop = \"{t}\": a tun tunnel has no next hop (it carries bare IP); remove it, or set kind = \"tap\""
                ));
                None
            }
            (TunnelKind::Tap, None) => {
                self.errors.push(format!(
                    "{field}.next_hop is missing: a TAP tunnel needs the far end's address on the TAP link (its OpenVPN --ifconfig address), e.g. next_hop = \"10.99.0.2\""
                ));
                None
            }
            (TunnelKind::Tap, Some(t)) => {
                let parsed = t.parse::<IpAddr>().ok();
                if parsed.is_none() {
                    self.errors.push(format!(
                        "{field}.next_hop = \"{t}\" is not an IPv4 or IPv6 address"
                    ));
                }
                parsed
            }
        }
    }

    /// `hook`, or its old name `mode` with a warning.
    fn requested_hook(&mut self, hook: Option<&str>, mode: Option<&str>) -> Option<Requested> {
        let (field, text) = match (hook, mode) {
            (Some(h), None) => ("hook", h),
            (None, None) => ("hook", "auto"),
            (Some(_), Some(_)) => {
                self.errors.push(
                    "both hook and mode are set: mode is the old name of hook; keep hook only"
                        .to_owned(),
                );
                return None;
            }
            (None, Some(m @ ("packet" | "flow"))) => {
                self.errors.push(format!(
                    "mode = \"{m}\": the spray mode is spray = \"{m}\" (the hook is hook = \"auto\", \"tc\" or \"xdp\")"
                ));
                return None;
            }
            (None, Some(m)) => {
                self.warnings.push(Warning(format!(
                    "mode = \"{m}\" is deprecated: the hook setting is now called hook = \"{m}\""
                )));
                ("mode", m)
            }
        };
        match text {
            "auto" => Some(Requested::Auto),
            "tc" => Some(Requested::Tc),
            "xdp" => Some(Requested::Xdp),
            other => {
                self.errors.push(format!(
                    "{field} = \"{other}\": use \"auto\" (native XDP where it works, tc elsewhere), \"tc\" or \"xdp\""
                ));
                None
            }
        }
    }

    /// The hook, from the request and what the drivers can do.
    fn hook(
        &mut self,
        requested: Requested,
        lan: &str,
        tunnels: &[TunnelSpec],
    ) -> Option<hook::Choice> {
        let devices: Vec<hook::TunnelDevice> = tunnels
            .iter()
            .map(|t| hook::TunnelDevice {
                name: t.device.clone(),
                kind: t.kind,
                xdp_features: match (self.facts.link(&t.device), t.kind) {
                    (None, TunnelKind::Tap) => Some(TAP_XDP_FEATURES),
                    _ => self.facts.xdp_features(&t.device),
                },
            })
            .collect();
        match hook::choose(requested, lan, self.facts.xdp_features(lan), &devices) {
            Ok(choice) => Some(choice),
            Err(e) => {
                self.errors.push(e);
                None
            }
        }
    }

    fn probe(&mut self, interval_ms: u64, misses: u32) -> Option<crate::probe::Settings> {
        if interval_ms == 0 {
            return None;
        }
        if !(10..=10_000).contains(&interval_ms) {
            self.errors.push(format!(
                "probe_interval_ms = {interval_ms}: use 10 to 10000 ms, or 0 to turn probes off"
            ));
        }
        if !(1..=100).contains(&misses) {
            self.errors.push(format!(
                "probe_misses = {misses}: use 1 to 100 (missed answers in a row before a tunnel leaves)"
            ));
        }
        Some(crate::probe::Settings {
            interval: Duration::from_millis(interval_ms),
            misses,
        })
    }

    /// In-band probes where the far end runs ovpn-lb (it translates, so it
    /// restores: it reflects probes too); ICMP echo where a target is given.
    fn probing(
        &mut self,
        field: &str,
        t: &file::Tunnel,
        tunnel: &TunnelSpec,
        interval_ms: u64,
    ) -> Probing {
        let far_runs_ovpn_lb = tunnel.peer_v4.is_some() || tunnel.peer_v6.is_some();
        match (&t.probe_target, far_runs_ovpn_lb) {
            _ if interval_ms == 0 => Probing::Off,
            (None, true) => Probing::Reflected,
            (None, false) => Probing::Off,
            (Some(target), true) => {
                self.errors.push(format!(
                    "{field}.probe_target = \"{target}\": this tunnel has peer_translate, so its far end runs ovpn-lb and answers in-band probes; remove probe_target"
                ));
                Probing::Off
            }
            (Some(target), false) => {
                if let Ok(addr) = target.parse::<IpAddr>() {
                    Probing::Echo(addr)
                } else {
                    self.errors.push(format!(
                        "{field}.probe_target = \"{target}\" is not an IPv4 or IPv6 address (the tunnel's far end, e.g. its OpenVPN --ifconfig address)"
                    ));
                    Probing::Off
                }
            }
        }
    }

    fn kernel_route(&mut self, k: file::KernelRoute) -> KernelRouteSpec {
        // 253..=255 are the kernel's default, main and local tables.
        if k.table == 0 || (253..=255).contains(&k.table) {
            self.errors.push(format!(
                "kernel_route.table = {}: pick a table of ovpn-lb's own (not 0, 253, 254 or 255), e.g. {}",
                k.table,
                file::DEFAULT_KERNEL_TABLE
            ));
        }
        // Our rules take priority - 1 to priority + 1, all before `main` (32766).
        if k.priority < 2 || k.priority > 32_764 {
            self.errors.push(format!(
                "kernel_route.priority = {}: ovpn-lb's rules must come before the main table's (32766); pick 2 to 32764, e.g. {}",
                k.priority,
                file::DEFAULT_KERNEL_PRIORITY
            ));
        }
        KernelRouteSpec {
            table: k.table,
            priority: k.priority,
        }
    }

    /// `[announce]`: a protocol number no routing daemon claims (zebra
    /// would take the markers for its own and delete them), a table other
    /// than ovpn-lb's kernel path (a marker there would shadow its route).
    fn announce(&mut self, a: &file::Announce, tunnels: usize, kernel_table: u32) -> AnnounceSpec {
        if a.min_tunnels == 0 || a.min_tunnels as usize > tunnels.max(1) {
            self.errors.push(format!(
                "announce.min_tunnels = {}: give 1 to {} (the tunnels configured)",
                a.min_tunnels,
                tunnels.max(1)
            ));
        }
        if a.table == 0 || a.table == 255 || a.table == kernel_table {
            self.errors.push(format!(
                "announce.table = {}: the marker routes need a table that is not 0, local (255) or kernel_route.table; main ({}) is the usual one",
                a.table,
                file::DEFAULT_ANNOUNCE_TABLE
            ));
        }
        if let Some(owner) = claimed_protocol(a.protocol) {
            self.errors.push(format!(
                "announce.protocol = {}: that number is {owner}'s; pick one of ovpn-lb's own, e.g. {}",
                a.protocol,
                file::DEFAULT_ANNOUNCE_PROTOCOL
            ));
        }
        if a.drain_ms > 600_000 {
            self.errors.push(format!(
                "announce.drain_ms = {}: give at most 600000 (ten minutes)",
                a.drain_ms
            ));
        }
        for (field, text) in [
            ("announce.maintenance_file", Some(&a.maintenance_file)),
            ("announce.health_file", a.health_file.as_ref()),
        ] {
            if let Some(text) = text
                && !std::path::Path::new(text).is_absolute()
            {
                self.errors
                    .push(format!("{field} = \"{text}\": give an absolute path"));
            }
        }
        AnnounceSpec {
            min_tunnels: a.min_tunnels as usize,
            drain: Duration::from_millis(a.drain_ms),
            maintenance_file: PathBuf::from(&a.maintenance_file),
            health_file: a.health_file.as_ref().map(PathBuf::from),
            table: a.table,
            protocol: a.protocol,
            metric: a.metric,
        }
    }

    /// Our and the peer's translation prefixes of one tunnel.
    fn translations(
        &mut self,
        field: &str,
        t: &file::Tunnel,
        lan_v4: Option<Prefix4>,
        lan_v6: Option<Prefix6>,
        remote: &[Net],
        tunnel: &mut TunnelSpec,
    ) {
        for (i, net) in self
            .nets(&format!("{field}.translate"), &t.translate)
            .into_iter()
            .enumerate()
        {
            let f = format!("{field}.translate[{i}]");
            match net {
                Net::V4(p) => match lan_v4 {
                    Some(lan) if lan.prefix_len() == p.prefix_len() && tunnel.xlat_v4.is_none() => tunnel.xlat_v4 = Some(p),
                    Some(lan) if lan.prefix_len() != p.prefix_len() => self.errors.push(format!(
                        "{f} = \"{net}\" is /{} but the LAN prefix is /{}: a translation prefix must have the LAN prefix's length",
                        p.prefix_len(),
                        lan.prefix_len()
                    )),
                    Some(_) => self.errors.push(format!("{f} = \"{net}\": this tunnel already has an IPv4 translation prefix")),
                    None => self.errors.push(format!("{f} = \"{net}\": the LAN has no IPv4 prefix to translate")),
                },
                Net::V6(p) => match lan_v6 {
                    Some(lan) if lan.prefix_len() == p.prefix_len() && tunnel.xlat_v6.is_none() => tunnel.xlat_v6 = Some(p),
                    Some(lan) if lan.prefix_len() != p.prefix_len() => self.errors.push(format!(
                        "{f} = \"{net}\" is /{} but the LAN prefix is /{}: a translation prefix must have the LAN prefix's length",
                        p.prefix_len(),
                        lan.prefix_len()
                    )),
                    Some(_) => self.errors.push(format!("{f} = \"{net}\": this tunnel already has an IPv6 translation prefix")),
                    None => self.errors.push(format!("{f} = \"{net}\": the LAN has no IPv6 prefix to translate")),
                },
            }
        }
        if lan_v4.is_some()
            && tunnel.xlat_v4.is_none()
            && !t.translate.iter().any(|s| s.contains('.'))
        {
            self.errors.push(format!(
                "{field}.translate has no IPv4 prefix: the LAN's IPv4 prefix needs one per tunnel"
            ));
        }
        if lan_v6.is_some()
            && tunnel.xlat_v6.is_none()
            && !t.translate.iter().any(|s| s.contains(':'))
        {
            self.errors.push(format!(
                "{field}.translate has no IPv6 prefix: the LAN's IPv6 prefix needs one per tunnel"
            ));
        }
        for (i, net) in self
            .nets(&format!("{field}.peer_translate"), &t.peer_translate)
            .into_iter()
            .enumerate()
        {
            let f = format!("{field}.peer_translate[{i}]");
            // The peer's translated sources are restored into the remote
            // prefix of the same family and length: the peer's LAN.
            let targets: Vec<&Net> = remote
                .iter()
                .filter(|r| {
                    std::mem::discriminant(*r) == std::mem::discriminant(&net)
                        && r.prefix_len() == net.prefix_len()
                })
                .collect();
            match (targets.as_slice(), net) {
                ([Net::V4(real)], Net::V4(p)) => tunnel.peer_v4 = Some((p, *real)),
                ([Net::V6(real)], Net::V6(p)) => tunnel.peer_v6 = Some((p, *real)),
                ([], _) => self.errors.push(format!(
                    "{f} = \"{net}\": no remote prefix of length /{} to restore the peer's addresses into; list the peer's LAN in remote_prefixes",
                    net.prefix_len()
                )),
                _ => self.errors.push(format!(
                    "{f} = \"{net}\": several remote prefixes have length /{}, so the peer's LAN is ambiguous",
                    net.prefix_len()
                )),
            }
        }
    }

    fn overlaps(&mut self) {
        for (i, (fa, a)) in self.prefixes.iter().enumerate() {
            for (fb, b) in &self.prefixes[i + 1..] {
                if a.overlaps(b) {
                    let what = if a == b { "duplicates" } else { "overlaps" };
                    self.errors.push(format!(
                        "{fb} = \"{b}\" {what} {fa} = \"{a}\": LAN, remote and translation prefixes must be disjoint"
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::fmt::Write as _;

    use super::*;
    use crate::{
        config::{Hook, parse},
        netlink::{Driver, LinkFacts},
    };

    const ALL_XDP: u64 = netdev::BASIC | netdev::REDIRECT | netdev::NDO_XMIT;

    fn link(name: &str, ifindex: u32, kind: LinkKind, mtu: u32) -> LinkFacts {
        LinkFacts {
            ifindex,
            name: name.to_owned(),
            kind,
            mtu,
            mac: [2, 0, 0, 0, 0, u8::try_from(ifindex).unwrap()],
            up: true,
            xdp_prog_id: 0,
            // The made-up tunnels are the tun driver's.
            driver: if name.starts_with("tun") || name.starts_with("tap") {
                Driver::Tun { multi_queue: false }
            } else {
                Driver::Unknown
            },
        }
    }

    /// A made-up machine: LAN eth1, tun0..tun2 (tun2 with MTU 1400), tap0.
    pub(crate) fn fake() -> Facts {
        let links = vec![
            link("eth1", 2, LinkKind::Ethernet, 1500),
            link("tun0", 3, LinkKind::L3PointToPoint, 1500),
            link("tun1", 4, LinkKind::L3PointToPoint, 1500),
            link("tun2", 5, LinkKind::L3PointToPoint, 1400),
            link("tap0", 6, LinkKind::Ethernet, 1500),
        ];
        let xdp_features = links.iter().map(|l| (l.ifindex, ALL_XDP)).collect();
        Facts {
            links,
            xdp_features,
        }
    }

    pub(crate) const GOOD: &str = r#"
remote_prefixes = ["10.20.30.0/24", "fd00:20::/64"]
exclude = ["10.20.30.1/32"]
spray = "flow"
up_delay_ms = 500

[lan]
interface = "eth1"
prefixes = ["192.168.10.0/24", "fd00:10::/64"]

[[tunnel]]
device = "tun0"
translate = ["100.64.0.0/24", "fd00:64::/64"]
peer_translate = ["100.65.0.0/24", "fd00:65::/64"]
management = "127.0.0.1:7505"

[[tunnel]]
device = "tun1"
translate = ["100.64.1.0/24", "fd00:64:1::/64"]
weight = 3
"#;

    fn errors(text: &str) -> Vec<String> {
        match parse(text, &fake()) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.0,
        }
    }

    fn expect_error(text: &str, needle: &str) {
        let errs = errors(text);
        assert!(
            errs.iter().any(|e| e.contains(needle)),
            "no error containing {needle:?} in {errs:#?}"
        );
    }

    #[test]
    fn announce_is_checked() {
        let (c, _) = parse(&format!("{GOOD}\n[announce]\n"), &fake()).unwrap();
        let a = c.announce.unwrap();
        assert_eq!((a.min_tunnels, a.table, a.protocol), (1, 254, 76));
        assert_eq!(a.drain, Duration::from_secs(2));
        assert_eq!(a.health_file, None);
        let announce = |body: &str| format!("{GOOD}\n[announce]\n{body}\n");
        expect_error(
            &announce("min_tunnels = 3"),
            "announce.min_tunnels = 3: give 1 to 2",
        );
        expect_error(&announce("min_tunnels = 0"), "announce.min_tunnels = 0");
        expect_error(
            &announce("protocol = 186"),
            "announce.protocol = 186: that number is FRR's",
        );
        expect_error(&announce("protocol = 2"), "the kernel's");
        expect_error(&announce("table = 7600"), "announce.table = 7600");
        expect_error(&announce("table = 255"), "announce.table = 255");
        expect_error(
            &announce("maintenance_file = \"maintenance\""),
            "announce.maintenance_file = \"maintenance\": give an absolute path",
        );
        expect_error(&announce("health_file = \"h\""), "announce.health_file");
        expect_error(&announce("drain_ms = 9000000"), "announce.drain_ms");
        expect_error(&announce("min = 1"), "unknown field `min`");
    }

    #[test]
    fn good_config_parses() {
        let (c, warnings) = parse(GOOD, &fake()).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(c.spray, Spray::Flow);
        assert_eq!(c.up_delay, Duration::from_millis(500));
        assert_eq!(c.metrics_listen.to_string(), DEFAULT_METRICS_LISTEN);
        assert_eq!(c.tunnels.len(), 2);
        assert_eq!(c.tunnels[1].weight, 3);
        assert_eq!(
            c.tunnels[0].peer_v4,
            Some((
                Prefix4::new([100, 65, 0, 0], 24),
                Prefix4::new([10, 20, 30, 0], 24)
            ))
        );
        assert_eq!(c.exclude, vec![Net::V4(Prefix4::new([10, 20, 30, 1], 32))]);
    }

    #[test]
    fn path_delay_max_defaults_to_0_and_is_bounded() {
        let (c, _) = parse(GOOD, &fake()).unwrap();
        assert_eq!(c.path_delay_max, Duration::ZERO);
        let with = |v: &str| {
            GOOD.replace(
                "up_delay_ms = 500",
                &format!("up_delay_ms = 500\npath_delay_max_ms = {v}"),
            )
        };
        let (c, _) = parse(&with("30"), &fake()).unwrap();
        assert_eq!(c.path_delay_max, Duration::from_millis(30));
        expect_error(&with("1001"), "path_delay_max_ms = 1001 is over 1000");
    }

    #[test]
    fn toml_syntax_error_names_the_line() {
        let errs = errors("remote_prefixes = [\"10.0.0.0/8\"\n[lan]\ninterface = \"eth1\"\n");
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("TOML syntax error at line 2"),
            "{errs:?}"
        );
    }

    #[test]
    fn unknown_field_is_refused() {
        expect_error(
            &GOOD.replace("spray = ", "sprays = "),
            "unknown field `sprays`",
        );
    }

    #[test]
    fn unknown_interface() {
        expect_error(
            &GOOD.replace("\"eth1\"", "\"eth9\""),
            "lan.interface = \"eth9\": no such network interface",
        );
    }

    #[test]
    fn a_missing_tunnel_device_is_a_warning() {
        let (c, warnings) = parse(&GOOD.replace("\"tun1\"", "\"tun9\""), &fake()).unwrap();
        assert_eq!(c.tunnels[1].device, "tun9");
        assert!(
            warnings.iter().any(|w| w
                .0
                .contains("tunnel[1].device = \"tun9\" does not exist (yet)")),
            "{warnings:?}"
        );
        let (tap, _) = parse(&TAP_TUNNELS.replace("\"tap0\"", "\"tap9\""), &fake()).unwrap();
        assert_eq!(tap.hook, Hook::Xdp, "a TAP device yet to come takes XDP");
    }

    #[test]
    fn tunnel_must_be_layer3_point_to_point() {
        expect_error(
            &GOOD.replace("\"tun1\"", "\"tap0\""),
            "tunnel[1].device = \"tap0\" is not a layer-3 point-to-point device",
        );
    }

    const TAP_TUNNELS: &str = r#"
remote_prefixes = ["10.20.30.0/24"]
hook = "xdp"

[lan]
interface = "eth1"
prefixes = ["192.168.10.0/24"]

[[tunnel]]
device = "tap0"
kind = "tap"
next_hop = "10.99.0.2"
translate = ["100.64.0.0/24"]
"#;

    #[test]
    fn tap_tunnels_take_xdp_and_carry_their_framing() {
        let (c, _) = parse(TAP_TUNNELS, &fake()).unwrap();
        assert_eq!(c.hook, Hook::Xdp);
        assert_eq!(c.tunnels[0].kind, TunnelKind::Tap);
        let (auto, _) = parse(&TAP_TUNNELS.replace("\"xdp\"", "\"auto\""), &fake()).unwrap();
        assert_eq!(auto.hook, Hook::Xdp, "{}", auto.hook_reason);
        let (tc, _) = parse(
            &GOOD.replace("spray = \"flow\"", "hook = \"auto\""),
            &fake(),
        )
        .unwrap();
        assert_eq!(tc.hook, Hook::Tc);
        assert!(
            tc.hook_reason.contains("tun0 is a tun device"),
            "{}",
            tc.hook_reason
        );
    }

    #[test]
    fn tap_and_tun_are_checked_against_the_device() {
        for (text, needle) in [
            (
                TAP_TUNNELS.replace("\"tap0\"", "\"tun0\""),
                "tunnel[0].device = \"tun0\" is not an Ethernet (TAP) device",
            ),
            (
                TAP_TUNNELS.replace("next_hop = \"10.99.0.2\"\n", ""),
                "tunnel[0].next_hop is missing",
            ),
            (
                TAP_TUNNELS.replace("10.99.0.2", "10.99.0"),
                "tunnel[0].next_hop = \"10.99.0\" is not an IPv4 or IPv6 address",
            ),
            (
                GOOD.replace("weight = 3", "weight = 3\nnext_hop = \"10.99.0.2\""),
                "tunnel[1].next_hop = \"10.99.0.2\": a tun tunnel has no next hop",
            ),
        ] {
            expect_error(&text, needle);
        }
    }

    #[test]
    fn xdp_with_tun_tunnels_is_refused_with_the_reason() {
        for (text, needle) in [
            (
                GOOD.replace("spray = \"flow\"", "hook = \"xdp\""),
                "hook = \"xdp\": tun0 is a tun device: Linux refuses native XDP",
            ),
            (
                GOOD.replace("spray = \"flow\"", "mode = \"flow\""),
                "mode = \"flow\": the spray mode is spray = \"flow\"",
            ),
        ] {
            expect_error(&text, needle);
        }
    }

    #[test]
    fn packet_spray_refuses_devices_whose_ring_it_cannot_follow() {
        let text = GOOD.replace("spray = \"flow\"", "spray = \"packet\"");
        assert!(parse(&text, &fake()).is_ok(), "{:?}", errors(&text));
        for (driver, says) in [
            (
                Driver::Other("ovpn-dco".into()),
                "OpenVPN data-channel offload device (ovpn-dco), with no tun ring; add `disable-dco`",
            ),
            (
                Driver::Tun { multi_queue: true },
                "a multi-queue tun device",
            ),
            (
                Driver::Other("wireguard".into()),
                "a wireguard device, not one of the tun driver",
            ),
        ] {
            let mut facts = fake();
            facts.links[1].driver = driver.clone();
            let e = match parse(&text, &facts) {
                Ok(_) => panic!("{driver:?} accepted"),
                Err(e) => e.0,
            };
            assert!(
                e.iter()
                    .any(|e| e.starts_with("tunnel[0].device = \"tun0\" is ")
                        && e.contains(says)
                        && e.contains("spray = \"round-robin\"")),
                "{e:?}"
            );
            // Round robin does not read the rings.
            let rr = text.replace("spray = \"packet\"", "spray = \"round-robin\"");
            assert!(parse(&rr, &facts).is_ok(), "{driver:?} under round robin");
        }
    }

    #[test]
    fn mode_is_the_deprecated_name_of_hook() {
        let (c, warnings) =
            parse(&GOOD.replace("spray = \"flow\"", "mode = \"tc\""), &fake()).unwrap();
        assert_eq!(c.hook, Hook::Tc);
        assert!(
            warnings
                .iter()
                .any(|w| w.0.contains("mode = \"tc\" is deprecated")),
            "{warnings:?}"
        );
        expect_error(
            &GOOD.replace("spray = \"flow\"", "mode = \"tc\"\nhook = \"tc\""),
            "both hook and mode are set",
        );
    }

    #[test]
    fn management_takes_tcp_or_a_unix_socket_and_a_password_file() {
        let (c, _) = parse(
            &GOOD.replace("127.0.0.1:7505", "/run/openvpn/tun0.sock"),
            &fake(),
        )
        .unwrap();
        assert_eq!(
            c.tunnels[0].management.as_ref().unwrap().target,
            ManagementTarget::Unix("/run/openvpn/tun0.sock".into())
        );
        expect_error(
            &GOOD.replace(
                "management = \"127.0.0.1:7505\"",
                "management = \"127.0.0.1:7505\"\nmanagement_password_file = \"/no/such/file\"",
            ),
            "tunnel[0].management_password_file = \"/no/such/file\": cannot read it",
        );
    }

    #[test]
    fn lan_mtu_above_the_tunnels_warns_with_mss_clamping() {
        let (_, warnings) = parse(&GOOD.replace("\"tun1\"", "\"tun2\""), &fake()).unwrap();
        assert!(
            warnings.iter().any(|w| w
                .0
                .contains("eth1's MTU 1500 exceeds the smallest tunnel MTU (1400 on tun2)")
                && w.0.contains("MSS")),
            "{warnings:?}"
        );
    }

    #[test]
    fn kernel_route_table_and_priority_are_checked() {
        expect_error(
            &format!("{GOOD}\n[kernel_route]\ntable = 254\n").replace("[[tunnel]]", "[[tunnel]]"),
            "kernel_route.table = 254",
        );
    }

    #[test]
    fn loopback_cannot_be_remote() {
        expect_error(
            &GOOD
                .replace("10.20.30.0/24\", \"fd00", "127.0.0.0/8\", \"fd00")
                .replace("10.20.30.1/32", "127.0.0.1/32"),
            "covers loopback addresses",
        );
    }

    #[test]
    fn lan_interface_as_tunnel() {
        expect_error(
            &GOOD.replace("\"tun1\"", "\"eth1\""),
            "tunnel[1].device = \"eth1\" is the LAN interface",
        );
    }

    #[test]
    fn translation_prefix_length_must_match() {
        expect_error(
            &GOOD.replace("100.64.1.0/24", "100.64.1.0/25"),
            "tunnel[1].translate[0] = \"100.64.1.0/25\" is /25 but the LAN prefix is /24",
        );
    }

    #[test]
    fn duplicate_and_overlapping() {
        for (text, needle) in [
            (
                GOOD.replace("\"tun1\"", "\"tun0\""),
                "tunnel[1].device = \"tun0\" is configured twice",
            ),
            (
                GOOD.replace("100.64.1.0/24", "100.64.0.0/24"),
                "duplicates tunnel[0].translate[0]",
            ),
        ] {
            expect_error(&text, needle);
        }
        expect_error(&GOOD.replace("10.20.30.0/24", "192.168.0.0/16"), "overlaps");
    }

    #[test]
    fn tunnel_count_limits() {
        let none = GOOD.split("[[tunnel]]").next().unwrap();
        expect_error(none, "no [[tunnel]] sections");
        let mut many = none.to_owned();
        for k in 0..65 {
            let _ = write!(
                many,
                "[[tunnel]]\ndevice = \"t{k}\"\ntranslate = [\"100.{}.{}.0/24\", \"fd00:64:{k:x}::/64\"]\n",
                64 + k / 200,
                k % 200
            );
        }
        expect_error(
            &many,
            "65 tunnels configured: the datapath supports at most 64",
        );
    }

    #[test]
    fn malformed_addresses() {
        for (text, needle) in [
            (
                GOOD.replace("10.20.30.0/24", "10.20.300.0/24"),
                "remote_prefixes[0] = \"10.20.300.0/24\": \"10.20.300.0\" is not an IPv4 or IPv6 address",
            ),
            (
                GOOD.replace("10.20.30.0/24", "10.20.30.0"),
                "is not a prefix",
            ),
            (
                GOOD.replace("10.20.30.0/24", "10.20.30.0/33"),
                "the length must be a number from 0 to 32",
            ),
            (
                GOOD.replace("192.168.10.0/24", "192.168.10.1/24"),
                "has host bits set: did you mean \"192.168.10.0/24\"?",
            ),
            (
                GOOD.replace("127.0.0.1:7505", "localhost"),
                "tunnel[0].management = \"localhost\" is not an address:port",
            ),
        ] {
            expect_error(&text, needle);
        }
    }

    #[test]
    fn differing_mtus_warn() {
        let (_, warnings) = parse(&GOOD.replace("\"tun1\"", "\"tun2\""), &fake()).unwrap();
        assert!(
            warnings
                .iter()
                .any(|w| w.0.contains("the path MTU is the smallest, 1400 on tun2")),
            "{warnings:?}"
        );
    }

    #[test]
    fn exclusions_must_be_inside_remote_prefixes() {
        expect_error(
            &GOOD.replace("10.20.30.1/32", "10.99.0.1/32"),
            "exclude[0] = \"10.99.0.1/32\" is not inside any remote prefix",
        );
    }

    #[test]
    fn the_wan_is_named_or_the_default_routes() {
        let (c, _) = parse(GOOD, &fake()).unwrap();
        assert_eq!(c.wan, Wan::DefaultRoute);
        let named = |list: &str| {
            GOOD.replacen(
                "[[tunnel]]",
                &format!("[wan]\ninterfaces = {list}\n\n[[tunnel]]"),
                1,
            )
        };
        let (c, warnings) = parse(&named("[\"eth0\"]"), &fake()).unwrap();
        assert_eq!(c.wan, Wan::Named(vec!["eth0".into()]));
        assert!(
            warnings.iter().any(|w| w
                .0
                .contains("wan.interfaces[0] = \"eth0\" does not exist (yet)")),
            "{warnings:?}"
        );
        for (list, needle) in [
            ("[]", "wan.interfaces is empty"),
            (
                "[\"eth1\"]",
                "wan.interfaces[0] = \"eth1\" is the LAN interface",
            ),
            (
                "[\"tun1\"]",
                "wan.interfaces[0] = \"tun1\" is a tunnel device",
            ),
            (
                "[\"tap0\", \"tap0\"]",
                "wan.interfaces[1] = \"tap0\" is listed twice",
            ),
        ] {
            expect_error(&named(list), needle);
        }
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let bad = GOOD
            .replace("\"eth1\"", "\"eth9\"")
            .replace("weight = 3", "weight = 0");
        assert_eq!(errors(&bad).len(), 2);
    }
}
