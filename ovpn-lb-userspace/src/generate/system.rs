//! The gateway's system files: the sysctl drop-in, the systemd unit of
//! ovpn-lb, and the README that says where everything goes.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use super::{
    layout,
    openvpn::SOCKET_BUFFER,
    plan::{Plan, Side},
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
    }
    let _ = write!(
        t,
        "# Loose reverse-path filtering: a restored source arrives on every tunnel,\n\
         # so strict filtering (1) would drop it; loose (2) needs a route back (the\n\
         # default route is enough).\n\
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

/// `ovpn-lb.service`: after the tunnels (it pulls them in), restarted on
/// failure, with only the capabilities and paths loading BPF needs.
#[must_use]
pub fn unit(plan: &Plan, side: Side) -> String {
    let gateway = plan.site(side);
    let config = gateway.installed(layout::LOADER_CONFIG);
    let config = config.display();
    // OpenVPN's management sockets: connecting needs write access.
    let sockets = gateway.installed(layout::RUN_DIR);
    let sockets = sockets.display();
    let tunnels: Vec<String> = plan
        .tunnels
        .iter()
        .map(|t| openvpn_unit(&t.device))
        .collect();
    let tunnels = tunnels.join(" ");
    let bin = plan.binary.display();
    format!(
        "# ovpn-lb on gateway {side}: written by `ovpn-lb generate`.\n\
         [Unit]\n\
         Description=ovpn-lb: the LAN sprayed over {n} OpenVPN tunnels\n\
         Wants=network-online.target {tunnels}\n\
         After=network-online.target {tunnels}\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStartPre={bin} check --config {config}\n\
         ExecStart={bin} run --config {config}\n\
         # A stop leaves the datapath attached with its last schedule, so a restart\n\
         # drops nothing; `ovpn-lb detach` removes it.\n\
         Restart=on-failure\n\
         RestartSec=2s\n\
         # Loading and attaching BPF programs, pinning on bpffs, netlink: nothing more.\n\
         CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_SYS_ADMIN\n\
         NoNewPrivileges=yes\n\
         ProtectSystem=strict\n\
         ReadWritePaths=/sys/fs/bpf -{sockets}\n\
         RuntimeDirectory=ovpn-lb\n\
         RuntimeDirectoryPreserve=yes\n\
         ProtectHome=yes\n\
         PrivateTmp=yes\n\
         PrivateDevices=yes\n\
         ProtectKernelModules=yes\n\
         ProtectControlGroups=yes\n\
         ProtectClock=yes\n\
         ProtectHostname=yes\n\
         RestrictNamespaces=yes\n\
         RestrictRealtime=yes\n\
         RestrictSUIDSGID=yes\n\
         LockPersonality=yes\n\
         MemoryDenyWriteExecute=yes\n\
         SystemCallArchitectures=native\n\
         RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK\n\
         UMask=0077\n\
         LimitMEMLOCK=infinity\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        n = plan.tunnels.len(),
    )
}

/// Where each file goes and what to run, for the operator.
#[must_use]
pub fn readme(plan: &Plan, side: Side) -> String {
    let me = plan.site(side);
    let peer = plan.site(side.other());
    let n = plan.tunnels.len();
    let first = plan.tunnels.first().map_or(0, |t| t.port);
    let last = plan.tunnels.last().map_or(0, |t| t.port);
    let name = side.name();
    let mut t = format!(
        "ovpn-lb gateway {side} ({}), LAN {} on {}\n\
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
    let _ = write!(
        t,
        "\nThen, as root (Debian 12 or later, Linux 6.6 or later):\n\
         \n    apt-get install openvpn\n\
         \x20   install -m 0755 ovpn-lb {bin}\n\
         \x20   sysctl --system\n\
         \x20   systemctl daemon-reload\n\
         \x20   systemctl enable --now ovpn-lb.service     # starts openvpn@{first_dev}.. too\n\
         \x20   {bin} check --config {config}\n\
         \x20   {bin} status\n\
         \nThe WAN must let UDP ports {first}-{last} through from {}. The tunnels come up\n\
         once both gateways run; `ovpn-lb status` then shows every tunnel up.\n",
        peer.wan,
        bin = plan.binary.display(),
        first_dev = plan.tunnels.first().map_or("", |t| t.device.as_str()),
    );
    t
}

fn lan_list(lan: &[Net]) -> String {
    lan.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" and ")
}
