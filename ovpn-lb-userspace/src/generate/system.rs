//! The gateway's system files: the sysctl drop-in, the systemd unit of
//! ovpn-lb, and the README that says where everything goes.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use super::{
    ha::HaKind,
    layout,
    openvpn::SOCKET_BUFFER,
    plan::{DEFAULT_BINARY, Plan, Side},
    unit::Unit,
};
use crate::config::Net;

/// Forwarding on; reverse-path filtering loose, because restored sources
/// arrive on every tunnel; socket buffers large enough for OpenVPN's.
#[must_use]
pub fn sysctl(plan: &Plan, side: Side) -> String {
    let v6 = plan.site(side).lan.iter().any(|n| matches!(n, Net::V6(_)));
    let mut t = format!(
        "# ovpn-lb gateway {side}: written by `ovpn-lb generate`. Apply with `sysctl --system`.\n\
         # Forward between the LAN and the tunnels.\n\
         net.ipv4.ip_forward = 1\n"
    );
    if v6 {
        t.push_str("net.ipv6.conf.all.forwarding = 1\n");
        // Forwarding makes every interface ignore router advertisements: a
        // WAN whose address or default route comes from them (SLAAC) would
        // lose both once they expire.
        t.push_str(
            "# With forwarding on, the kernel ignores router advertisements unless\n\
             # accept_ra = 2: a WAN that takes its IPv6 address or default route from\n\
             # them (SLAAC) needs it.\n",
        );
        match &plan.site(side).wan_interface {
            Some(wan) => {
                let _ = writeln!(t, "net.ipv6.conf.{wan}.accept_ra = 2");
            }
            None => t.push_str(
                "# net.ipv6.conf.<WAN>.accept_ra = 2  (generate --wan-interface-a/-b writes it here)\n",
            ),
        }
    }
    let _ = write!(
        t,
        "# Loose reverse-path filtering: a restored source arrives on every tunnel,\n\
         # so strict filtering (1) would drop it; loose (2) needs a route back\n\
         # (ovpn-lb's own table has one through a tunnel).\n\
         net.ipv4.conf.all.rp_filter = 2\n\
         net.ipv4.conf.default.rp_filter = 2\n\
         # Let OpenVPN's sndbuf/rcvbuf ({SOCKET_BUFFER} bytes) take effect.\n\
         net.core.rmem_max = {SOCKET_BUFFER}\n\
         net.core.wmem_max = {SOCKET_BUFFER}\n"
    );
    t
}

/// Debian's unit for tunnel `device`.
#[must_use]
pub fn openvpn_unit(device: &str) -> String {
    format!("openvpn@{device}.service")
}

/// This site's `ovpn-lb.service`: the packaged unit's text with the site's
/// root, binary and tunnels.
#[must_use]
pub fn unit(plan: &Plan, side: Side) -> String {
    let gateway = plan.site(side);
    let tunnels: Vec<String> = plan
        .tunnels
        .iter()
        .map(|t| openvpn_unit(&t.device))
        .collect();
    let origin = format!("ovpn-lb on gateway {side}: written by `ovpn-lb generate`.");
    let description = format!(
        "ovpn-lb: the LAN sprayed over {} OpenVPN tunnels",
        plan.tunnels.len()
    );
    Unit {
        origin: &origin,
        description: &description,
        tunnels: &tunnels,
        binary: &plan.binary,
        config: &gateway.installed(layout::LOADER_CONFIG),
        openvpn_run_dir: &gateway.installed(layout::RUN_DIR),
    }
    .render()
}

/// Where each file goes and what to run, for the operator.
#[must_use]
pub fn readme(plan: &Plan, side: Side) -> String {
    let me = plan.site(side);
    let peer = plan.site(side.other());
    let n = plan.tunnels.len();
    let first = plan.tunnels.first().map_or(0, |t| t.port);
    let last = plan.tunnels.last().map_or(0, |t| t.port);
    let name = plan.gateway_name(side);
    let mut t = format!(
        "ovpn-lb {name} ({}), LAN {} on {}\n\
         {n} OpenVPN {} tunnels to gateway {} ({}), UDP ports {first}-{last}.\n\
         Written by `ovpn-lb generate`. This directory mirrors the gateway's file\n\
         system from / on: copy etc/ onto the gateway's /etc, keeping the modes\n\
         (the key stays 0600), e.g.\n\
         \n    rsync -rlp etc/ root@{}:/etc/\n\n\
         What goes where:\n",
        me.wan,
        lan_list(&me.lan),
        me.lan_interface,
        plan.kind.name(),
        side.other(),
        peer.wan,
        me.wan,
    );
    let mut items: Vec<(PathBuf, String)> = plan
        .tunnels
        .iter()
        .map(|tunnel| {
            let what = format!(
                "tunnel {}, UDP port {} ({})",
                tunnel.index,
                tunnel.port,
                openvpn_unit(&tunnel.device)
            );
            (layout::openvpn_config(&tunnel.device), what)
        })
        .collect();
    let mut files = vec![
        (
            layout::certificate(&name),
            "this gateway's certificate (self-signed)",
        ),
        (
            layout::private_key(&name),
            "its private key: keep it mode 0600",
        ),
        (
            layout::PASSWORD.into(),
            "management password, read by OpenVPN and ovpn-lb (0600)",
        ),
        (layout::LOADER_CONFIG.into(), "ovpn-lb's configuration"),
        (
            layout::SYSCTL.into(),
            "forwarding, loose rp_filter, socket buffers",
        ),
        (layout::UNIT.into(), "runs ovpn-lb after the tunnels"),
    ];
    if !plan.management_password {
        files.retain(|(path, _)| path != Path::new(layout::PASSWORD));
    }
    files.extend(ha_files(plan));
    items.extend(
        files
            .into_iter()
            .map(|(path, what)| (path, what.to_owned())),
    );
    for (path, what) in items {
        let _ = writeln!(t, "  /{:<36} {what}", path.display().to_string());
    }
    let config = me.installed(layout::LOADER_CONFIG);
    let config = config.display();
    // The package installs the binary where the unit expects it by default.
    let install = if plan.binary == Path::new(DEFAULT_BINARY) {
        format!(
            "apt-get install ./ovpn-lb_{}-1_*.deb openvpn   # the package from `cargo xtask deb`",
            env!("CARGO_PKG_VERSION")
        )
    } else {
        format!(
            "apt-get install openvpn\n    install -m 0755 ovpn-lb {}",
            plan.binary.display()
        )
    };
    let _ = write!(
        t,
        "\nThen, as root (Debian 12 or later, Linux 6.1 or later):\n\
         \n    {install}\n\
         \x20   sysctl --system\n\
         \x20   systemctl daemon-reload\n\
         \x20   systemctl enable --now ovpn-lb.service     # starts openvpn@{first_dev}.. too\n\
         \x20   {bin} check --config {config}\n\
         \x20   {bin} doctor --config {config}\n\
         \x20   {bin} status\n\
         \nThe WAN must let UDP ports {first}-{last} through from {}. The tunnels come up\n\
         once both gateways run; `ovpn-lb status` then shows every tunnel up.\n",
        peer.wan,
        bin = plan.binary.display(),
        first_dev = plan.tunnels.first().map_or("", |t| t.device.as_str()),
    );
    t.push_str(&pair_note(plan, side));
    t
}

/// The FRR or keepalived files of a gateway of several pairs.
fn ha_files(plan: &Plan) -> Vec<(PathBuf, &'static str)> {
    match plan.ha.as_ref().map(|h| h.kind) {
        Some(HaKind::Bgp) => vec![
            (
                layout::FRR_CONF.into(),
                "FRR: eBGP with BFD to the site router",
            ),
            (layout::FRR_DAEMONS.into(), "FRR: bgpd, bfdd, staticd"),
        ],
        Some(HaKind::Vrrp) => vec![(
            layout::KEEPALIVED_CONF.into(),
            "keepalived: the site's virtual address",
        )],
        None => Vec::new(),
    }
}

/// With several pairs: what this gateway's pair does, and how to drain it.
fn pair_note(plan: &Plan, side: Side) -> String {
    let me = plan.site(side);
    let mut t = String::new();
    if let Some(ha) = &plan.ha {
        let maintenance = me.installed(layout::MAINTENANCE);
        let _ = write!(
            t,
            "\nThis is pair {} of {}. {}\n\
             `{bin} status` shows whether this gateway announces and why; while\n\
             {} exists it withdraws (drain it for maintenance: touch the file, wait\n\
             until `{bin} status --check` exits 1 and the traffic has moved, then work).\n",
            plan.pair + 1,
            plan.pairs,
            match ha.kind {
                HaKind::Bgp =>
                    "It announces the far site's prefixes to the site router over eBGP\n\
                     (FRR) while healthy:\n\
                     \n    apt-get install frr\n    systemctl restart frr\n    vtysh -c 'show bgp summary'\n",
                HaKind::Vrrp =>
                    "It shares the site's virtual address with the other pairs' gateways\n\
                     (keepalived) while healthy:\n\
                     \n    apt-get install keepalived\n    systemctl restart keepalived\n",
            },
            maintenance.display(),
            bin = plan.binary.display(),
        );
    }
    t
}

fn lan_list(lan: &[Net]) -> String {
    lan.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" and ")
}
