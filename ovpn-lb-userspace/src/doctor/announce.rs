//! Doctor's checks of `[announce]`: the marker routes against the loader's
//! verdict; something that reads the announcement (bgpd redistributing the
//! marker routes to an established peer, BIRD, or keepalived tracking the
//! health file); and the multipath sysctls where this machine itself
//! spreads traffic over several next hops.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use super::{Findings, Severity, running_loader, sysctl};
use crate::{
    announce::kernel::{health_file, markers as wanted_markers},
    config::{AnnounceSpec, Config, Net},
    netlink::Netlink,
    pins::Layout,
    status::State,
};

/// The marker routes must say what the loader decided: all of them while it
/// announces, none while it does not; none without a loader.
pub(super) async fn markers(
    f: &mut Findings,
    config: &Config,
    spec: &AnnounceSpec,
    layout: &Layout,
    netlink: &Netlink,
) {
    let present = match netlink.marker_routes(spec.table, spec.protocol).await {
        Ok(p) => p,
        Err(e) => {
            f.add(
                "announce",
                Severity::Warning,
                format!("could not list the marker routes: {e}"),
                "",
            );
            return;
        }
    };
    let all = wanted_markers(spec, &config.remote);
    let listed = |routes: &[crate::netlink::MarkerRoute]| {
        routes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let where_ = format!(
        "table {}, proto {}, metric {}",
        spec.table, spec.protocol, spec.metric
    );
    let Some(state) = running_loader(layout) else {
        if present.is_empty() {
            f.ok(
                "announce",
                "no loader runs and no marker route announces this gateway",
            );
        } else {
            f.add(
                "announce",
                Severity::Problem,
                format!(
                    "marker routes ({}) announce this gateway, but no loader follows its health",
                    listed(&present)
                ),
                "start ovpn-lb (systemctl start ovpn-lb), or `ovpn-lb detach`, which removes them",
            );
        }
        return;
    };
    let Some(a) = &state.announce else {
        return;
    };
    let wanted: &[_] = if a.announced { &all } else { &[] };
    let missing: Vec<_> = wanted
        .iter()
        .filter(|r| !present.contains(r))
        .copied()
        .collect();
    let extra: Vec<_> = present
        .iter()
        .filter(|r| !wanted.contains(r))
        .copied()
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        f.add(
            "announce",
            Severity::Problem,
            format!(
                "the marker routes disagree with the loader ({}): missing {}, extra {}",
                a.explanation,
                if missing.is_empty() { "none".to_owned() } else { listed(&missing) },
                if extra.is_empty() { "none".to_owned() } else { listed(&extra) }
            ),
            "something else edits these routes (same table and protocol number?); the loader writes them again within 30 s, or at once on a restart",
        );
    } else if a.announced {
        f.ok(
            "announce",
            format!(
                "{}; marker routes for {} ({where_})",
                a.explanation,
                listed(&present)
            ),
        );
    } else {
        f.add(
            "announce",
            Severity::Warning,
            format!("this gateway is {}", a.explanation),
            withdrawn_fix(&state),
        );
    }
    health(f, spec, layout, a.announced);
}

/// The health file must say what the loader decided.
fn health(f: &mut Findings, spec: &AnnounceSpec, layout: &Layout, announced: bool) {
    let health = health_file(spec, &layout.run_dir);
    let reads = fs::read_to_string(&health).unwrap_or_default();
    let says = if announced { "0" } else { "1" };
    if reads.trim() != says {
        f.add(
            "announce",
            Severity::Problem,
            format!(
                "the health file {} says {:?}, not {says:?} as the loader decided",
                health.display(),
                reads.trim()
            ),
            "check that nothing else writes it, and that the loader can (its log says)",
        );
    }
}

/// What to do about a withdrawal, by its first reason.
fn withdrawn_fix(state: &State) -> String {
    use crate::announce::Block;
    let Some(a) = &state.announce else {
        return String::new();
    };
    match a.reasons.first() {
        Some(Block::Maintenance) => format!(
            "remove {} to announce again",
            a.maintenance_file.display()
        ),
        Some(Block::TooFewTunnels) => {
            "bring tunnels back (see the tunnel, management and probes checks), or lower announce.min_tunnels".to_owned()
        }
        Some(Block::LanDown) => format!("bring {} up", state.lan_interface),
        Some(Block::FarDraining | Block::FarLanDown) => {
            "look at the far gateway of this pair (`ovpn-lb status` there)".to_owned()
        }
        Some(Block::Stopping) | None => String::new(),
    }
}

/// A process of this network namespace: its PID and command line.
struct Daemon {
    pid: u32,
    args: Vec<String>,
}

/// Running processes named `name` in this network namespace.
fn daemons_here(name: &str) -> Vec<Daemon> {
    let ours = fs::read_link("/proc/self/ns/net").ok();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
                && fs::read_link(format!("/proc/{pid}/ns/net")).ok() == ours
        })
        .map(|pid| Daemon {
            pid,
            args: fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .split('\0')
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect(),
        })
        .collect()
}

/// The value after `flag` (or `flag=value`) on a command line.
fn arg_value(args: &[String], flags: &[&str]) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        flags.iter().find_map(|flag| {
            if a == flag {
                args.get(i + 1).cloned()
            } else {
                a.strip_prefix(&format!("{flag}=")).map(str::to_owned)
            }
        })
    })
}

/// Something must read the announcement: bgpd (redistributing the marker
/// routes, to an established peer), BIRD, or keepalived (the health file).
pub(super) fn reader(f: &mut Findings, config: &Config) {
    let Some(spec) = &config.announce else {
        return;
    };
    if let Some(bgpd) = daemons_here("bgpd").first() {
        frr(f, config, spec, bgpd);
    } else if let Some(bird) = daemons_here("bird").first() {
        f.add(
            "announce",
            Severity::Warning,
            format!(
                "BIRD runs (pid {}); doctor cannot read its export: it must learn the marker routes (protocol kernel, `learn`, table {}) and export only the remote prefixes",
                bird.pid, spec.table
            ),
            "birdc show route export <protocol>: the remote prefixes should be listed",
        );
    } else if let Some(k) = daemons_here("keepalived").first() {
        keepalived(f, spec, k);
    } else {
        f.add(
            "announce",
            Severity::Problem,
            "no BGP daemon (bgpd, bird) or keepalived runs here: nothing carries the announcement to the site",
            "start FRR (systemctl enable --now frr) with the frr.conf `ovpn-lb generate --pairs` wrote, or keepalived with its keepalived.conf (--ha vrrp)",
        );
    }
}

/// vtysh for the bgpd `d` runs as: its socket directory or path space.
fn vtysh(d: &Daemon, command: &str) -> Option<String> {
    let mut c = Command::new("vtysh");
    if let Some(dir) = arg_value(&d.args, &["--vty_socket"]) {
        c.args(["--vty_socket", &dir]);
    } else if let Some(ns) = arg_value(&d.args, &["-N", "--pathspace"]) {
        c.args(["-N", &ns]);
    }
    let out = c.args(["-c", command]).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The address families under which `running` (FRR's running
/// configuration) redistributes the routes of `table`.
fn redistributed(running: &str, table: u32) -> (bool, bool) {
    let wanted = if table == 254 {
        "redistribute kernel".to_owned()
    } else {
        format!("redistribute table {table}")
    };
    let (mut v4, mut v6, mut family) = (false, false, None);
    for line in running.lines().map(str::trim) {
        if let Some(af) = line.strip_prefix("address-family ") {
            family = Some(af.starts_with("ipv6"));
        } else if line == "exit-address-family" {
            family = None;
        } else if line == wanted || line.starts_with(&format!("{wanted} ")) {
            match family {
                Some(true) => v6 = true,
                Some(false) => v4 = true,
                None => {}
            }
        }
    }
    (v4, v6)
}

fn frr(f: &mut Findings, config: &Config, spec: &AnnounceSpec, bgpd: &Daemon) {
    let Some(running) = vtysh(bgpd, "show running-config") else {
        f.add(
            "announce",
            Severity::Warning,
            format!("bgpd runs (pid {}) but vtysh cannot reach it", bgpd.pid),
            "run doctor as root, with FRR's vtysh installed",
        );
        return;
    };
    let (v4, v6) = redistributed(&running, spec.table);
    let source = if spec.table == 254 {
        "redistribute kernel route-map OVPNLB-MARKERS".to_owned()
    } else {
        format!(
            "ip import-table {0}, redistribute table {0} route-map ...",
            spec.table
        )
    };
    for net in &config.remote {
        let (is_v6, family) = match net {
            Net::V4(_) => (false, "ipv4"),
            Net::V6(_) => (true, "ipv6"),
        };
        if !(if is_v6 { v6 } else { v4 }) {
            f.add(
                "announce",
                Severity::Problem,
                format!(
                    "bgpd (pid {}) does not redistribute the marker routes for {family}: {net} is never announced",
                    bgpd.pid
                ),
                format!("in router bgp, address-family {family} unicast: {source} (ovpn-lb generate --pairs writes it)"),
            );
            continue;
        }
        let shown = vtysh(bgpd, &format!("show bgp {family} unicast {net} json"))
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        let paths = shown
            .as_ref()
            .and_then(|v| v["paths"].as_array())
            .map_or(0, Vec::len);
        let peers = shown
            .as_ref()
            .and_then(|v| v["advertisedTo"].as_object())
            .map_or(0, serde_json::Map::len);
        match (paths, peers) {
            (0, _) => f.add(
                "announce",
                Severity::Warning,
                format!("bgpd redistributes {family} kernel routes but has no path for {net} (withdrawn, or its route-map refuses it)"),
                "vtysh -c 'show bgp ... {net}'; the route-map must permit the remote prefixes",
            ),
            (_, 0) => f.add(
                "announce",
                Severity::Problem,
                format!("bgpd has {net} but advertises it to no peer: no session with the site router is established"),
                "vtysh -c 'show bgp summary'; check the neighbor addresses, AS numbers and the WAN-side firewall (TCP 179, BFD UDP 3784)",
            ),
            (_, n) => f.ok(
                "announce",
                format!("bgpd (pid {}) advertises {net} to {n} peer(s)", bgpd.pid),
            ),
        }
    }
}

fn keepalived(f: &mut Findings, spec: &AnnounceSpec, k: &Daemon) {
    let config = arg_value(&k.args, &["-f", "--use-file"]).map_or_else(
        || PathBuf::from("/etc/keepalived/keepalived.conf"),
        PathBuf::from,
    );
    let text = fs::read_to_string(&config).unwrap_or_default();
    let health = spec
        .health_file
        .clone()
        .unwrap_or_else(|| Path::new(crate::pins::DEFAULT_RUN_DIR).join("health"));
    if text.contains(&health.display().to_string()) || text.contains("status --check") {
        f.ok(
            "announce",
            format!(
                "keepalived (pid {}) tracks this gateway's health ({})",
                k.pid,
                config.display()
            ),
        );
    } else {
        f.add(
            "announce",
            Severity::Problem,
            format!(
                "keepalived (pid {}) runs, but {} tracks neither {} nor `ovpn-lb status --check`",
                k.pid,
                config.display(),
                health.display()
            ),
            "track_file the health file (ovpn-lb generate --ha vrrp writes keepalived.conf)",
        );
    }
}

/// Spreading flows over next hops by their ports, not their addresses
/// alone, needs the L4 hash: where this machine holds a multipath route
/// (it is the site router too), check it.
pub(super) async fn multipath(f: &mut Findings, netlink: &Netlink) {
    let families = netlink.multipath_families().await.unwrap_or_default();
    if families == (false, false) {
        f.ok(
            "multipath",
            "no multipath route here: the site router spreads flows over the pairs (its snippet sets the L4 hash)",
        );
        return;
    }
    for (has, path, name) in [
        (
            families.0,
            "net/ipv4/fib_multipath_hash_policy",
            "net.ipv4.fib_multipath_hash_policy",
        ),
        (
            families.1,
            "net/ipv6/fib_multipath_hash_policy",
            "net.ipv6.fib_multipath_hash_policy",
        ),
    ] {
        if !has {
            continue;
        }
        if sysctl(path) == Some(1) {
            f.ok(
                "multipath",
                format!("{name} = 1 (flows spread by their ports)"),
            );
        } else {
            f.add(
                "multipath",
                Severity::Warning,
                format!("{name} is not 1: this machine spreads flows over its multipath routes by addresses alone, so few hosts use few pairs"),
                format!("sysctl -w {name}=1, and in /etc/sysctl.d/ to keep it"),
            );
        }
    }
    if sysctl("net/ipv4/fib_multipath_use_neigh") != Some(1) {
        f.add(
            "multipath",
            Severity::Warning,
            "net.ipv4.fib_multipath_use_neigh is not 1: a next hop whose neighbour entry failed keeps its share until BGP or BFD removes it",
            "sysctl -w net.ipv4.fib_multipath_use_neigh=1, and in /etc/sysctl.d/ to keep it",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redistribution_is_read_per_address_family() {
        let running = "router bgp 64513\n bgp router-id 10.1.255.2\n !\n address-family ipv4 unicast\n  redistribute kernel route-map OVPNLB-OUT\n exit-address-family\n !\n address-family ipv6 unicast\n  neighbor fd00:1:ff::1 activate\n exit-address-family\nexit\n";
        assert_eq!(redistributed(running, 254), (true, false));
        assert_eq!(redistributed(running, 100), (false, false));
        let table = running.replace("redistribute kernel", "redistribute table 100");
        assert_eq!(redistributed(&table, 100), (true, false));
    }

    #[test]
    fn command_line_values() {
        let args: Vec<String> = [
            "/usr/lib/frr/bgpd",
            "-d",
            "-N",
            "lab",
            "--vty_socket=/x/run",
        ]
        .map(str::to_owned)
        .to_vec();
        assert_eq!(arg_value(&args, &["-N"]).as_deref(), Some("lab"));
        assert_eq!(
            arg_value(&args, &["--vty_socket"]).as_deref(),
            Some("/x/run")
        );
        assert_eq!(arg_value(&args, &["-f"]), None);
    }
}
