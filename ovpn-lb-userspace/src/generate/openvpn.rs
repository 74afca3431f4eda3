//! One tunnel's OpenVPN configuration on one gateway: a point-to-point
//! UDP tunnel authenticated by TLS with `peer-fingerprint` (gateway A the
//! TLS client, gateway B the TLS server), its management interface on a
//! unix socket that only root may use.

use std::fmt::Write as _;

use super::{
    layout,
    plan::{Plan, Side, TunnelPlan},
};
use crate::config::TunnelKind;

/// Socket buffers asked of the kernel; `net.core.rmem_max`/`wmem_max` in
/// the sysctl drop-in let them take effect.
pub const SOCKET_BUFFER: u32 = 4 << 20;
/// Packets the tunnel device queues before OpenVPN reads them (Linux's own
/// default for tun devices is 500).
const TXQUEUELEN: u32 = 1000;
/// `keepalive`: ping every 10 s, restart after 60 s without an answer.
const KEEPALIVE: (u32, u32) = (10, 60);

/// The configuration of `tunnel` on gateway `side`, which accepts only the
/// peer certificate with `peer_fingerprint`.
#[must_use]
pub fn config(plan: &Plan, tunnel: &TunnelPlan, side: Side, peer_fingerprint: &str) -> String {
    let (me, peer) = (plan.site(side), plan.site(side.other()));
    let dev = &tunnel.device;
    let mut t = String::new();
    let mut line = |text: String| {
        t.push_str(&text);
        t.push('\n');
    };
    line(format!(
        "# ovpn-lb tunnel {} of {}, gateway {side} ({}) to gateway {} ({}).",
        tunnel.index,
        plan.tunnels.len(),
        me.wan,
        side.other(),
        peer.wan
    ));
    line(format!(
        "# Written by `ovpn-lb generate`. Debian runs it as openvpn@{dev}.service, which"
    ));
    line("# also gives it its PID and status files (--writepid, --status).".to_owned());
    line(format!("dev {dev}"));
    line(format!("dev-type {}", plan.kind.name()));
    line("proto udp".to_owned());
    if me.wan.parse::<std::net::IpAddr>().is_ok() {
        line(format!("local {}", me.wan));
    }
    line(format!("port {}", tunnel.port));
    line(format!("remote {} {}", peer.wan, tunnel.port));
    line(link(plan, tunnel, side).trim_end().to_owned());
    line(
        "# TLS without a CA: each gateway has its own self-signed certificate and accepts"
            .to_owned(),
    );
    line("# only the other's, by its SHA-256 fingerprint.".to_owned());
    match side {
        Side::A => line("tls-client".to_owned()),
        Side::B => {
            line("tls-server".to_owned());
            line("dh none".to_owned());
        }
    }
    let name = plan.gateway_name(side);
    line(format!(
        "cert {}",
        me.installed(layout::certificate(&name)).display()
    ));
    line(format!(
        "key {}",
        me.installed(layout::private_key(&name)).display()
    ));
    line(format!("peer-fingerprint {peer_fingerprint}"));
    line(format!("keepalive {} {}", KEEPALIVE.0, KEEPALIVE.1));
    line(format!("sndbuf {SOCKET_BUFFER}"));
    line(format!("rcvbuf {SOCKET_BUFFER}"));
    line(format!("txqueuelen {TXQUEUELEN}"));
    line(
        "# A tun device of the tun driver, whose queue packet spray can see: data-channel"
            .to_owned(),
    );
    line("# offload (DCO) would hand the packets to the kernel's ovpn device instead.".to_owned());
    line("disable-dco".to_owned());
    if let Some(mtu) = plan.tun_mtu {
        line(
            "# Jumbo tunnel: fewer, larger packets through the single-threaded OpenVPN; the"
                .to_owned(),
        );
        line("# kernel fragments the UDP datagrams on the WAN. MSS left to the hosts.".to_owned());
        line(format!("tun-mtu {mtu}"));
        line("mssfix 0".to_owned());
    }
    line(
        "# ovpn-lb follows the tunnel's state here. A unix socket: only root may connect."
            .to_owned(),
    );
    let mut management = format!(
        "management {} unix",
        me.installed(layout::management_socket(dev)).display()
    );
    if plan.management_password {
        let _ = write!(management, " {}", me.installed(layout::PASSWORD).display());
    }
    line(management);
    line("management-client-user root".to_owned());
    line("verb 3".to_owned());
    t
}

/// The tunnel link's addresses: point to point on tun, a small Ethernet
/// segment (with IPv6 for IPv6 LANs) on TAP.
fn link(plan: &Plan, tunnel: &TunnelPlan, side: Side) -> String {
    let mut t = String::new();
    let mut line = |text: String| {
        t.push_str(&text);
        t.push('\n');
    };
    let (local, remote) = (tunnel.link_address(side), tunnel.link_address(side.other()));
    match plan.kind {
        TunnelKind::Tun => {
            line("# The tunnel link: point to point.".to_owned());
            line(format!("ifconfig {local} {remote}"));
        }
        TunnelKind::Tap => {
            line(format!(
                "# The tunnel link, an Ethernet segment: ovpn-lb on gateway {} sends to {local}'s MAC.",
                side.other()
            ));
            line(format!("ifconfig {local} 255.255.255.252"));
            if let (Some(local6), Some(remote6), Some(net6)) = (
                tunnel.link_address_v6(side),
                tunnel.link_address_v6(side.other()),
                tunnel.link_v6,
            ) {
                line(format!(
                    "ifconfig-ipv6 {local6}/{} {remote6}",
                    net6.prefix_len()
                ));
            }
        }
    }
    t
}
