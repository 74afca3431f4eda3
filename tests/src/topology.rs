//! The pieces every test topology is built from: veth links between
//! namespaces, a LAN host behind its gateway, and a gateway's forwarding
//! settings.

use crate::netns::{exec, ip};

/// What a gateway needs to forward between a LAN and tunnels: forwarding on,
/// and reverse-path filtering off (restored sources arrive on every tunnel,
/// and test gateways have no default route for a loose check to find).
pub const ROUTER_SYSCTLS: &[&str] = &[
    "net.ipv4.ip_forward=1",
    "net.ipv6.conf.all.forwarding=1",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
];

/// One end of a veth pair.
#[derive(Clone, Copy, Debug, Default)]
pub struct End<'a> {
    pub ns: &'a str,
    pub dev: &'a str,
    /// Addresses with their lengths, e.g. `192.168.10.1/24`, `fd00:a::1/64`
    /// (IPv6 ones without duplicate address detection).
    pub addrs: &'a [&'a str],
    pub mac: Option<&'a str>,
    pub mtu: Option<u32>,
}

impl<'a> End<'a> {
    #[must_use]
    pub fn new(ns: &'a str, dev: &'a str, addrs: &'a [&'a str]) -> Self {
        Self {
            ns,
            dev,
            addrs,
            ..Self::default()
        }
    }
}

/// A veth pair from `a` to `b`, addressed and up.
///
/// # Panics
/// If `ip` refuses any step.
pub fn veth(a: &End, b: &End) {
    let mut args = vec!["link", "add", a.dev];
    if let Some(mac) = a.mac {
        args.extend(["address", mac]);
    }
    args.extend(["type", "veth", "peer", "name", b.dev]);
    if let Some(mac) = b.mac {
        args.extend(["address", mac]);
    }
    args.extend(["netns", b.ns]);
    ip(a.ns, &args);
    for end in [a, b] {
        for addr in end.addrs {
            let mut args = vec!["addr", "add", addr, "dev", end.dev];
            if addr.contains(':') {
                args.push("nodad");
            }
            ip(end.ns, &args);
        }
        let mtu = end.mtu.map(|m| m.to_string());
        let mut args = vec!["link", "set", end.dev];
        if let Some(mtu) = &mtu {
            args.extend(["mtu", mtu]);
        }
        args.push("up");
        ip(end.ns, &args);
    }
}

/// One family of a LAN: the host's address with its length, and the
/// gateway's address (same length), e.g. `("192.168.10.5/24", "192.168.10.1")`.
pub type LanFamily<'a> = (&'a str, &'a str);

/// A LAN host on a veth behind its gateway, whose addresses it routes by
/// default through.
///
/// # Panics
/// If `ip` refuses any step.
pub fn host_behind(host: (&str, &str), gateway: (&str, &str), families: &[LanFamily]) {
    let len = |cidr: &str| cidr.split_once('/').map_or("", |(_, l)| l).to_owned();
    let gw_addrs: Vec<String> = families
        .iter()
        .map(|(host_cidr, gw)| format!("{gw}/{}", len(host_cidr)))
        .collect();
    let gw_addrs: Vec<&str> = gw_addrs.iter().map(String::as_str).collect();
    let host_addrs: Vec<&str> = families.iter().map(|(h, _)| *h).collect();
    veth(
        &End::new(host.0, host.1, &host_addrs),
        &End::new(gateway.0, gateway.1, &gw_addrs),
    );
    for (_, gw) in families {
        let family = if gw.contains(':') { "-6" } else { "-4" };
        ip(host.0, &[family, "route", "add", "default", "via", gw]);
    }
}

/// Turns `ns` into a router ([`ROUTER_SYSCTLS`]), plus `extra` settings.
///
/// # Panics
/// If `sysctl` refuses a setting.
pub fn router(ns: &str, extra: &[&str]) {
    let mut args = vec!["sysctl", "-q", "-w"];
    args.extend_from_slice(ROUTER_SYSCTLS);
    args.extend_from_slice(extra);
    exec(ns, &args);
}

/// Whether a LAN host's veth hands its gateway segments, as an Ethernet NIC
/// puts them on the wire, or GSO super-packets, as a veth does by default.
///
/// `true`: TSO and GSO off on the host's device (the stack cuts segments
/// before they leave) and GRO off on the gateway's (so nothing glues them
/// back together on arrival); `false`: TSO and GSO back on, the veth default.
///
/// # Panics
/// If `ethtool` refuses.
pub fn wire_segments(host: (&str, &str), gateway: (&str, &str), on: bool) {
    let offload = if on { "off" } else { "on" };
    exec(
        host.0,
        &["ethtool", "-K", host.1, "tso", offload, "gso", offload],
    );
    if on {
        exec(gateway.0, &["ethtool", "-K", gateway.1, "gro", "off"]);
    }
}

/// A bridge `name` in `ns`, with `addrs`, up.
///
/// # Panics
/// If `ip` refuses any step.
pub fn bridge(ns: &str, name: &str, addrs: &[&str]) {
    ip(ns, &["link", "add", name, "type", "bridge"]);
    // A bridge whose address nobody set takes its lowest port's, and a new
    // one when that port goes: neighbours still sending to the old address
    // lose packets until they resolve it again (a gateway pulled off the
    // segment cost the other pair's streams a ping). A router's interface
    // keeps its address, so this one is set, to the random one it has.
    let mac = link_address(ns, name);
    ip(ns, &["link", "set", name, "address", &mac]);
    for addr in addrs {
        let mut args = vec!["addr", "add", addr, "dev", name];
        if addr.contains(':') {
            args.push("nodad");
        }
        ip(ns, &args);
    }
    ip(ns, &["link", "set", name, "up"]);
}

/// Device `dev` of `ns` becomes a port of bridge `bridge` there.
///
/// # Panics
/// If `ip` refuses.
pub fn plug(ns: &str, dev: &str, bridge: &str) {
    ip(ns, &["link", "set", dev, "master", bridge]);
}

/// The link-layer address of device `dev` in `ns`, as `ip` writes it.
///
/// # Panics
/// If `ip` refuses, or shows no address.
#[must_use]
pub fn link_address(ns: &str, dev: &str) -> String {
    let out = ip(ns, &["-br", "link", "show", "dev", dev]);
    out.split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no address in `ip -br link show dev {dev}`: {out}"))
        .to_owned()
}
