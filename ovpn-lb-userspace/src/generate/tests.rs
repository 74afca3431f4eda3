//! The generator's pure parts: addressing, the checks on the answers, and
//! the files read back (the TOML through the loader's own parser).

use std::{collections::HashMap, net::IpAddr};

use super::*;
use crate::{
    config::{self, Spray},
    facts::Facts,
    generate::ha::HaKind,
    netlink::{Driver, LinkFacts, LinkKind, netdev},
};

fn request() -> Request {
    Request::new(
        ["192.0.2.1", "gw-b.example.net"],
        ["eth1", "lan0"],
        [
            &["192.168.10.0/24", "fd00:a::/64"],
            &["fd00:b::/64", "192.168.20.0/24"],
        ],
    )
}

fn errors(r: &Request) -> Vec<String> {
    r.plan()
        .err()
        .unwrap_or_else(|| panic!("accepted: {r:?}"))
        .0
}

/// Each of `lines` is a whole line of `text`.
fn assert_lines(text: &str, lines: &[&str]) {
    for line in lines {
        assert!(text.lines().any(|l| l == *line), "no {line:?} in\n{text}");
    }
}

fn expect_error(r: &Request, needle: &str) {
    let errs = errors(r);
    assert!(
        errs.iter().any(|e| e.contains(needle)),
        "no error containing {needle:?} in {errs:#?}"
    );
}

fn nets(list: &[Net]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

#[test]
fn the_default_plan_numbers_tunnels_links_and_translations() {
    let plan = request().plan().unwrap();
    assert_eq!(plan.tunnels.len(), 4);
    let t = &plan.tunnels[3];
    assert_eq!((t.device.as_str(), t.port), ("tun3", 1197));
    assert_eq!(t.link_v4.to_string(), "10.99.3.0/30");
    assert_eq!(t.link_address(Side::A).to_string(), "10.99.3.1");
    assert_eq!(t.link_address(Side::B).to_string(), "10.99.3.2");
    assert_eq!(t.link_v6, None, "tun links need no IPv6 addresses");
    assert_eq!(nets(&t.translate[0]), ["100.64.3.0/24", "fd64:0:0:3::/64"]);
    assert_eq!(nets(&t.translate[1]), ["100.65.3.0/24", "fd65:0:0:3::/64"]);
    assert_eq!(
        nets(&plan.site(Side::B).lan),
        ["192.168.20.0/24", "fd00:b::/64"],
        "IPv4 first"
    );
}

#[test]
fn translation_prefixes_take_each_lans_length() {
    let mut r = request();
    r.lan = [vec!["10.1.0.0/20".into()], vec!["10.2.0.0/26".into()]];
    r.tunnels = 16;
    let plan = r.plan().unwrap();
    let last = &plan.tunnels[15];
    assert_eq!(nets(&last.translate[0]), ["100.64.240.0/20"]);
    assert_eq!(nets(&last.translate[1]), ["100.65.3.192/26"]);
    // A /16 LAN does not fit 4 times in 100.64.0.0/16: the message says what would.
    r.lan[0] = vec!["10.1.0.0/16".into()];
    r.tunnels = 4;
    expect_error(
        &r,
        "--translate-pool-v4 100.64.0.0/15: gateway A gets half of it (100.64.0.0/16), room for 1 prefix(es) of /16 (its LAN's length) but 4 tunnels need 4; give a /13 or shorter",
    );
    r.translate_pool_v4 = "100.64.0.0/13".into();
    let plan = r.plan().unwrap();
    assert_eq!(nets(&plan.tunnels[3].translate[0]), ["100.67.0.0/16"]);
    assert_eq!(nets(&plan.tunnels[3].translate[1]), ["100.68.0.192/26"]);
}

#[test]
fn tap_links_get_ipv6_and_links_follow_the_link_network() {
    let mut r = request();
    r.kind = TunnelKind::Tap;
    r.link_v4 = "172.31.0.0/24".into();
    let plan = r.plan().unwrap();
    let t = &plan.tunnels[2];
    assert_eq!(t.device, "tap2");
    assert_eq!(
        t.link_v4.to_string(),
        "172.31.0.8/30",
        "a /24 cut into /30s"
    );
    assert_eq!(
        t.link_address_v6(Side::B).unwrap().to_string(),
        "fd99:0:0:2::2"
    );
    r.link_v4 = "172.31.0.0/29".into();
    expect_error(
        &r,
        "--link-v4 172.31.0.0/29: 4 tunnels need a /30 each; use a /28 or shorter",
    );
}

#[test]
fn bad_answers_are_refused_one_line_each() {
    let mut r = request();
    r.tunnels = 0;
    expect_error(&r, "--tunnels 0: give 1 to 64 tunnels");
    r.tunnels = 65;
    expect_error(&r, "--tunnels 65: give 1 to 64 tunnels");
    let mut r = request();
    r.first_port = 65_534;
    expect_error(
        &r,
        "--port 65534: 4 tunnels use ports 65534..=65537, past 65535",
    );
    let mut r = request();
    r.lan[1] = vec!["192.168.10.128/25".into(), "fd00:b::/64".into()];
    expect_error(
        &r,
        "--lan-b 192.168.10.128/25 overlaps --lan-a 192.168.10.0/24",
    );
    let mut r = request();
    r.lan[0] = vec!["192.168.10.1/24".into(), "fd00:a::/64".into()];
    expect_error(&r, "--lan-a = \"192.168.10.1/24\" has host bits set");
    let mut r = request();
    r.lan[0] = vec!["192.168.10.0/24".into()];
    expect_error(
        &r,
        "gateway B's LAN has an IPv6 prefix and gateway A's has none",
    );
    let mut r = request();
    r.lan[0].push("10.0.0.0/8".into());
    expect_error(
        &r,
        "--lan-a 10.0.0.0/8: only one LAN prefix per address family",
    );
    let mut r = request();
    r.wan[1] = vec!["gw_b!".into()];
    expect_error(
        &r,
        "--wan-b \"gw_b!\" is neither an IP address nor a host name",
    );
    r.wan[1] = vec!["300.1.2.3".into()];
    expect_error(&r, "--wan-b \"300.1.2.3\" is neither");
    let mut r = request();
    r.wan[1] = vec!["192.0.2.1".into()];
    expect_error(&r, "--wan-a and --wan-b are both \"192.0.2.1\"");
    let mut r = request();
    r.lan_interface[0] = "a-very-long-interface".into();
    expect_error(
        &r,
        "--lan-interface-a \"a-very-long-interface\" is not an interface name",
    );
    let mut r = request();
    r.translate_pool_v4 = "192.168.0.0/16".into();
    expect_error(
        &r,
        "--translate-pool-v4 192.168.0.0/16 overlaps --lan-a 192.168.10.0/24",
    );
    let mut r = request();
    r.tun_mtu = Some(1000);
    expect_error(&r, "--tun-mtu 1000: give 1280 to 65535 (IPv6 needs 1280)");
    // Every problem at once.
    let mut r = request();
    r.tunnels = 0;
    r.wan[0] = vec![String::new()];
    assert!(errors(&r).len() >= 2);
}

/// A machine with gateway `side`'s LAN interface and tunnel devices.
fn facts(plan: &Plan, side: Side, kind: LinkKind) -> Facts {
    let mut links = vec![LinkFacts {
        ifindex: 2,
        name: plan.site(side).lan_interface.clone(),
        kind: LinkKind::Ethernet,
        mtu: 1500,
        mac: [2, 0, 0, 0, 0, 2],
        up: true,
        xdp_prog_id: 0,
        driver: Driver::Unknown,
    }];
    for (i, t) in plan.tunnels.iter().enumerate() {
        let ifindex = 10 + u32::try_from(i).unwrap();
        links.push(LinkFacts {
            ifindex,
            name: t.device.clone(),
            kind,
            mtu: plan.tun_mtu.unwrap_or(1500),
            mac: [0; 6],
            up: true,
            xdp_prog_id: 0,
            driver: Driver::Tun { multi_queue: false },
        });
    }
    let xdp_features: HashMap<u32, u64> = links
        .iter()
        .map(|l| {
            (
                l.ifindex,
                netdev::BASIC | netdev::REDIRECT | netdev::NDO_XMIT,
            )
        })
        .collect();
    Facts {
        links,
        xdp_features,
    }
}

fn text(g: &Generated, side: Side, path: impl AsRef<Path>) -> &str {
    &g.gateway(side)
        .file(path.as_ref())
        .unwrap_or_else(|| panic!("no {}", path.as_ref().display()))
        .contents
}

#[test]
fn each_ovpn_lb_toml_passes_the_loaders_own_checks_and_matches_the_other() {
    let g = generate(&request()).unwrap();
    let mut parsed = Vec::new();
    for side in Side::BOTH {
        let toml = text(&g, side, layout::LOADER_CONFIG);
        let (c, warnings) = config::parse(toml, &facts(g.plan(), side, LinkKind::L3PointToPoint))
            .unwrap_or_else(|e| panic!("gateway {side}:\n{e}\n{toml}"));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.spray, Spray::Packet);
        assert_eq!(c.tunnels.len(), 4);
        assert!(c.tunnels.iter().all(|t| t.management.is_some()));
        parsed.push(c);
    }
    let (a, b) = (&parsed[0], &parsed[1]);
    assert_eq!(a.lan.interface, "eth1");
    assert_eq!(b.lan.interface, "lan0");
    for (ta, tb) in a.tunnels.iter().zip(&b.tunnels) {
        // What A translates into, B restores from, into A's LAN; and back.
        assert_eq!(tb.peer_v4.map(|p| p.0), ta.xlat_v4);
        assert_eq!(tb.peer_v4.map(|p| p.1), a.lan.v4);
        assert_eq!(ta.peer_v6.map(|p| p.0), tb.xlat_v6);
        assert_eq!(ta.peer_v6.map(|p| p.1), b.lan.v6);
        assert_eq!(
            ta.management.as_ref().unwrap().target.to_string(),
            format!("/run/openvpn/{}.sock", ta.device)
        );
    }
}

#[test]
fn tap_tunnels_name_the_far_end_as_next_hop() {
    let mut r = request();
    r.kind = TunnelKind::Tap;
    r.tun_mtu = Some(9000);
    let g = generate(&r).unwrap();
    let toml = text(&g, Side::B, layout::LOADER_CONFIG);
    let (c, _) = config::parse(toml, &facts(g.plan(), Side::B, LinkKind::Ethernet))
        .unwrap_or_else(|e| panic!("{e}\n{toml}"));
    assert_eq!(c.tunnels[1].kind, TunnelKind::Tap);
    assert_eq!(
        c.tunnels[1].next_hop,
        Some("10.99.1.1".parse::<IpAddr>().unwrap())
    );
    assert_lines(
        text(&g, Side::B, layout::openvpn_config("tap1")),
        &[
            "dev tap1",
            "dev-type tap",
            "ifconfig 10.99.1.2 255.255.255.252",
            "ifconfig-ipv6 fd99:0:0:1::2/64 fd99:0:0:1::1",
            "tun-mtu 9000",
            "mssfix 0",
        ],
    );
}

#[test]
fn openvpn_configs_pin_the_other_gateways_certificate() {
    let g = generate(&request()).unwrap();
    assert_ne!(g.pairs[0].fingerprints[0], g.pairs[0].fingerprints[1]);
    for side in Side::BOTH {
        for t in &g.plan().tunnels {
            let conf = text(&g, side, layout::openvpn_config(&t.device));
            let has = |line: &str| conf.lines().any(|l| l == line);
            let peer_port = format!("{} {}", g.plan().site(side.other()).wan, t.port);
            let name = side.name();
            for line in [
                format!("dev {}", t.device),
                "dev-type tun".to_owned(),
                "proto udp".to_owned(),
                format!("port {}", t.port),
                format!("remote {peer_port}"),
                format!(
                    "ifconfig {} {}",
                    t.link_address(side),
                    t.link_address(side.other())
                ),
                format!("cert /etc/openvpn/ovpn-lb/{name}.crt"),
                format!("key /etc/openvpn/ovpn-lb/{name}.key"),
                format!(
                    "peer-fingerprint {}",
                    g.pairs[0].fingerprints[side.other().index()]
                ),
                format!("management /run/openvpn/{}.sock unix", t.device),
                "management-client-user root".to_owned(),
                "keepalive 10 60".to_owned(),
                "sndbuf 4194304".to_owned(),
                "rcvbuf 4194304".to_owned(),
                "txqueuelen 1000".to_owned(),
                "disable-dco".to_owned(),
            ] {
                assert!(
                    has(&line),
                    "gateway {side} {}: no {line:?} in\n{conf}",
                    t.device
                );
            }
            let role = match side {
                Side::A => has("tls-client") && !has("dh none"),
                Side::B => has("tls-server") && has("dh none"),
            };
            assert!(
                role,
                "gateway {side}: A is the TLS client, B the server:\n{conf}"
            );
            assert_eq!(
                has("local 192.0.2.1"),
                side == Side::A,
                "only an address is bound"
            );
            assert!(!conf.contains("secret"), "no static keys");
        }
        let key = g
            .gateway(side)
            .file(layout::private_key(&side.name()))
            .unwrap();
        assert_eq!(key.mode, 0o600);
    }
}

#[test]
fn roots_and_the_management_password_follow_into_every_file() {
    let mut r = request();
    r.root = [vec!["/srv/a".into()], vec!["/srv/b".into()]];
    r.management_password = true;
    let g = generate(&r).unwrap();
    let conf = text(&g, Side::B, layout::openvpn_config("tun0"));
    assert!(conf.contains(
        "management /srv/b/run/openvpn/tun0.sock unix /srv/b/etc/openvpn/ovpn-lb/management.pw\n"
    ));
    assert!(conf.contains("cert /srv/b/etc/openvpn/ovpn-lb/gateway-b.crt\n"));
    let toml = text(&g, Side::B, layout::LOADER_CONFIG);
    assert!(
        toml.contains("management_password_file = \"/srv/b/etc/openvpn/ovpn-lb/management.pw\"")
    );
    let pw = g.gateway(Side::B).file(layout::PASSWORD).unwrap();
    assert_eq!((pw.mode, pw.contents.len()), (0o600, 49));
    assert_lines(
        text(&g, Side::A, layout::UNIT),
        &[
            "ExecStart=/usr/sbin/ovpn-lb run --config /srv/a/etc/ovpn-lb/ovpn-lb.toml",
            "Wants=network-online.target openvpn@tun0.service openvpn@tun1.service openvpn@tun2.service openvpn@tun3.service",
            "Restart=on-failure",
            "CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_NET_RAW CAP_SYSLOG",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET",
            "ReadWritePaths=/sys/fs/bpf -/srv/a/run/openvpn",
        ],
    );
    assert_lines(
        text(&g, Side::A, layout::SYSCTL),
        &[
            "net.ipv4.ip_forward = 1",
            "net.ipv6.conf.all.forwarding = 1",
            "net.ipv4.conf.all.rp_filter = 2",
            "net.ipv4.conf.default.rp_filter = 2",
        ],
    );
    assert!(text(&g, Side::A, layout::README).contains("/etc/openvpn/tun3.conf"));
}

#[test]
fn the_output_directory_is_never_overwritten_without_force() {
    let out = std::env::temp_dir().join(format!("ovpnlb-generate-{}", std::process::id()));
    let _ = fs::remove_dir_all(&out);
    let g = generate(&request()).unwrap();
    let written = write(&g, &out, false).unwrap();
    assert_eq!(written.len(), 2 * (1 + 4 + 2 + 3));
    assert!(
        written.iter().all(|p| p.starts_with(&out)),
        "nothing outside --out"
    );
    let err = write(&g, &out, false).unwrap_err().to_string();
    assert!(err.contains("exists and is not empty"), "{err}");
    fs::write(out.join("gateway-a/stale"), "x").unwrap();
    fs::write(out.join("keep"), "x").unwrap();
    write(&g, &out, true).unwrap();
    assert!(
        !out.join("gateway-a/stale").exists(),
        "--force replaces the gateway directories"
    );
    assert!(out.join("keep").exists(), "and nothing else");
    fs::remove_dir_all(&out).unwrap();
}

/// Someone who can write into the output directory planted links where the
/// files go: nothing is written through them, and the modes are the
/// generator's whatever the umask.
#[test]
fn writing_follows_no_link_and_ignores_the_umask() {
    use std::os::unix::fs::{PermissionsExt as _, symlink};
    let base = std::env::temp_dir().join(format!("ovpnlb-links-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    fs::create_dir_all(base.join("elsewhere")).unwrap();
    let victim = base.join("victim");
    fs::write(&victim, "keep").unwrap();
    let g = generate(&request()).unwrap();
    let gateway = g.gateway(Side::A);

    // A link where a file goes is replaced, not written through.
    let root = base.join("root");
    fs::create_dir_all(&root).unwrap();
    symlink(&victim, root.join(layout::README)).unwrap();
    // SAFETY: umask(2) cannot fail; the old mask is put back below.
    let old = unsafe { libc::umask(0o077) };
    let written = gateway.write_under(&root);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    written.unwrap();
    assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
    let readme = fs::symlink_metadata(root.join(layout::README)).unwrap();
    assert!(readme.is_file(), "the link was replaced by the file");
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&root.join("etc/ovpn-lb")), 0o755, "umask 077 ignored");
    assert_eq!(mode(&root.join(layout::LOADER_CONFIG)), 0o644);
    assert_eq!(mode(&root.join(layout::private_key("gateway-a"))), 0o600);

    // A link where a directory goes is refused, and nothing lands behind it.
    let root = base.join("root2");
    fs::create_dir_all(&root).unwrap();
    symlink(base.join("elsewhere"), root.join("etc")).unwrap();
    let err = format!("{:#}", gateway.write_under(&root).unwrap_err());
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(fs::read_dir(base.join("elsewhere")).unwrap().count(), 0);

    // `--force` over a gateway directory that is a link removes the link.
    let out = base.join("out");
    fs::create_dir_all(&out).unwrap();
    symlink(base.join("elsewhere"), out.join("gateway-a")).unwrap();
    write(&g, &out, true).unwrap();
    assert!(
        fs::symlink_metadata(out.join("gateway-a"))
            .unwrap()
            .is_dir()
    );
    assert_eq!(fs::read_dir(base.join("elsewhere")).unwrap().count(), 0);
    fs::remove_dir_all(&base).unwrap();
}

#[test]
fn the_packaged_unit_runs_the_packaged_binary_on_the_default_configuration() {
    assert_eq!(
        Path::new("/").join(layout::LOADER_CONFIG),
        Path::new(crate::cli::DEFAULT_CONFIG),
        "a site's ovpn-lb.toml is where the CLI looks by default"
    );
    assert_lines(
        &unit::packaged(),
        &[
            "ExecStartPre=/usr/sbin/ovpn-lb check --config /etc/ovpn-lb/ovpn-lb.toml",
            "ExecStart=/usr/sbin/ovpn-lb run --config /etc/ovpn-lb/ovpn-lb.toml",
            "Wants=network-online.target",
            "ReadWritePaths=/sys/fs/bpf -/run/openvpn",
        ],
    );
}

#[test]
fn a_site_unit_differs_from_the_packaged_one_only_where_it_names_the_site() {
    let g = generate(&request()).unwrap();
    let site = text(&g, Side::A, layout::UNIT);
    let packaged = unit::packaged();
    let differing: Vec<(&str, &str)> = site
        .lines()
        .filter(|l| !l.starts_with('#'))
        .zip(packaged.lines().filter(|l| !l.starts_with('#')))
        .filter(|(s, p)| s != p)
        .collect();
    let keys: Vec<&str> = differing
        .iter()
        .map(|(s, _)| s.split('=').next().unwrap_or(s))
        .collect();
    assert_eq!(keys, ["Description", "Wants", "After"], "{differing:#?}");
    assert_eq!(
        site.lines().filter(|l| !l.starts_with('#')).count(),
        packaged.lines().filter(|l| !l.starts_with('#')).count()
    );
}

/// Two pairs behind a router per site, both families.
fn pairs_request(ha: HaKind) -> Request {
    let mut r = request();
    r.pairs = 2;
    r.tunnels = 2;
    r.wan = [
        vec!["192.0.2.1".into(), "192.0.2.2".into()],
        vec!["198.51.100.1".into(), "198.51.100.2".into()],
    ];
    r.routing.ha = Some(ha);
    match ha {
        HaKind::Bgp => {
            r.routing.router = [
                vec!["10.1.255.1".into(), "fd00:1:ff::1".into()],
                vec!["10.2.255.1".into(), "fd00:2:ff::1".into()],
            ];
            r.routing.gateways = [
                vec![
                    "10.1.255.2,fd00:1:ff::2".into(),
                    "10.1.255.3,fd00:1:ff::3".into(),
                ],
                vec![
                    "10.2.255.2,fd00:2:ff::2".into(),
                    "10.2.255.3,fd00:2:ff::3".into(),
                ],
            ];
        }
        HaKind::Vrrp => {
            r.routing.vip = [
                vec!["192.168.10.1".into(), "fd00:a::1".into()],
                vec!["192.168.20.1".into(), "fd00:b::1".into()],
            ];
            r.routing.gateways = [
                vec![
                    "192.168.10.2,fd00:a::2".into(),
                    "192.168.10.3,fd00:a::3".into(),
                ],
                vec![
                    "192.168.20.2,fd00:b::2".into(),
                    "192.168.20.3,fd00:b::3".into(),
                ],
            ];
        }
    }
    r
}

#[test]
fn pairs_take_consecutive_slices_and_the_first_pair_is_a_lone_pairs() {
    let plans = pairs_request(HaKind::Bgp).plans().unwrap();
    assert_eq!(plans.len(), 2);
    let mut lone = request();
    lone.tunnels = 2;
    let lone = lone.plan().unwrap();
    assert_eq!(
        plans[0].tunnels, lone.tunnels,
        "pair 1 is what one pair was"
    );
    let t = &plans[1].tunnels[1];
    assert_eq!((t.device.as_str(), t.port), ("tun1", 1197), "slot 3");
    assert_eq!(t.link_v4.to_string(), "10.99.3.0/30");
    assert_eq!(nets(&t.translate[0]), ["100.64.3.0/24", "fd64:0:0:3::/64"]);
    assert_eq!(nets(&t.translate[1]), ["100.65.3.0/24", "fd65:0:0:3::/64"]);
    assert_eq!(plans[1].gateway_name(Side::A), "gateway-a2");
    assert_eq!(plans[0].gateway_name(Side::B), "gateway-b");
    assert_eq!(plans[1].site(Side::B).wan, "198.51.100.2");
}

#[test]
fn every_gateway_of_a_pairs_site_announces_and_its_toml_passes_the_loaders_checks() {
    let mut r = pairs_request(HaKind::Bgp);
    r.root = [
        vec!["/srv/a1".into(), "/srv/a2".into()],
        vec!["/srv/b".into()],
    ];
    let g = generate(&r).unwrap();
    let names: Vec<&str> = g.directories().map(|d| d.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "gateway-a",
            "gateway-b",
            "gateway-a2",
            "gateway-b2",
            "site-a",
            "site-b"
        ]
    );
    let pair = &g.pairs[1];
    let toml = &pair
        .gateway(Side::A)
        .file(layout::LOADER_CONFIG)
        .unwrap()
        .contents;
    let (c, _) = config::parse(toml, &facts(&pair.plan, Side::A, LinkKind::L3PointToPoint))
        .unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let a = c.announce.expect("[announce]");
    assert_eq!(a.min_tunnels, 1);
    assert_eq!(
        a.maintenance_file,
        Path::new("/srv/a2/etc/ovpn-lb/maintenance")
    );
    assert_eq!(
        a.health_file.as_deref(),
        Some(Path::new("/srv/a2/run/ovpn-lb/health"))
    );
    assert_eq!(
        Net::V4(c.tunnels[0].xlat_v4.unwrap()).to_string(),
        "100.64.2.0/24"
    );
    assert_eq!(
        Net::V4(c.tunnels[0].peer_v4.unwrap().0).to_string(),
        "100.65.2.0/24"
    );
    let conf = &pair
        .gateway(Side::A)
        .file(layout::openvpn_config("tun0"))
        .unwrap()
        .contents;
    assert!(
        conf.contains("cert /srv/a2/etc/openvpn/ovpn-lb/gateway-a2.crt\n"),
        "{conf}"
    );
    assert!(conf.contains("remote 198.51.100.2 1196\n"), "{conf}");
    // A lone pair announces nothing.
    let lone = generate(&request()).unwrap();
    assert!(!text(&lone, Side::A, layout::LOADER_CONFIG).contains("[announce]"));
    assert!(lone.gateway(Side::A).file(layout::FRR_CONF).is_none());
    assert!(lone.sites.is_empty());
}

#[test]
fn frr_speaks_ebgp_with_bfd_and_announces_only_the_remote_prefixes() {
    let g = generate(&pairs_request(HaKind::Bgp)).unwrap();
    let frr = &g.pairs[1]
        .gateway(Side::A)
        .file(layout::FRR_CONF)
        .unwrap()
        .contents;
    assert_lines(
        frr,
        &[
            "hostname gateway-a2",
            "ip route 192.168.10.0/24 10.1.255.1",
            "ipv6 route fd00:a::/64 fd00:1:ff::1",
            "ip prefix-list OVPNLB-REMOTE seq 5 permit 192.168.20.0/24",
            "ipv6 prefix-list OVPNLB-REMOTE6 seq 10 permit fd00:b::/64",
            "route-map OVPNLB-MARKERS permit 10",
            "route-map OVPNLB-OUT permit 20",
            " match ip address prefix-list OVPNLB-REMOTE",
            " match ipv6 address prefix-list OVPNLB-REMOTE6",
            " match metric 16777214",
            " set metric 0",
            "route-map OVPNLB-IN deny 10",
            "router bgp 64513",
            " bgp router-id 10.1.255.3",
            " bgp graceful-restart-disable",
            " neighbor 10.1.255.1 remote-as 64512",
            " neighbor 10.1.255.1 bfd profile ovpnlb",
            " neighbor fd00:1:ff::1 remote-as 64512",
            " address-family ipv6 unicast",
            "  redistribute kernel route-map OVPNLB-MARKERS",
            "  neighbor fd00:1:ff::1 activate",
            "  neighbor fd00:1:ff::1 route-map OVPNLB-OUT out",
            "  neighbor 10.1.255.1 route-map OVPNLB-IN in",
            " profile ovpnlb",
            "  detect-multiplier 3",
            "  receive-interval 100",
            "  transmit-interval 100",
        ],
    );
    assert!(
        !frr.contains("192.168.10.0/24 permit"),
        "our own LAN is never announced"
    );
    let daemons = &g.pairs[0]
        .gateway(Side::B)
        .file(layout::FRR_DAEMONS)
        .unwrap()
        .contents;
    assert_lines(daemons, &["bgpd=yes", "bfdd=yes"]);
    let site = g.sites.iter().find(|s| s.name == "site-b").unwrap();
    let router = &site.file(layout::ROUTER_FRR).unwrap().contents;
    assert_lines(
        router,
        &[
            "router bgp 64512",
            " bgp router-id 10.2.255.1",
            " neighbor 10.2.255.2 remote-as 64513",
            " neighbor 10.2.255.3 remote-as 64513",
            " neighbor fd00:2:ff::3 bfd profile ovpnlb",
            "  maximum-paths 16",
            "  neighbor 10.2.255.3 route-map OVPNLB-FROM-GATEWAYS in",
            "  neighbor fd00:2:ff::2 route-map OVPNLB-TO-GATEWAYS out",
            "ip prefix-list OVPNLB-REMOTE seq 5 permit 192.168.10.0/24",
            "route-map OVPNLB-TO-GATEWAYS deny 10",
        ],
    );
    assert_lines(
        &site.file(layout::ROUTER_SYSCTL).unwrap().contents,
        &[
            "net.ipv4.fib_multipath_hash_policy = 1",
            "net.ipv6.fib_multipath_hash_policy = 1",
            "net.ipv4.fib_multipath_use_neigh = 1",
        ],
    );
}

#[test]
fn vrrp_shares_the_lans_next_hop_and_tracks_the_health_file() {
    let mut r = pairs_request(HaKind::Vrrp);
    r.root = [vec!["/srv/a1".into(), "/srv/a2".into()], vec!["/".into()]];
    let g = generate(&r).unwrap();
    assert!(g.sites.is_empty(), "no router");
    let conf = |pair: usize, side| {
        g.pairs[pair]
            .gateway(side)
            .file(layout::KEEPALIVED_CONF)
            .unwrap()
            .contents
            .clone()
    };
    let a2 = conf(1, Side::A);
    assert_lines(
        &a2,
        &[
            "    router_id gateway-a2",
            "    file \"/srv/a2/run/ovpn-lb/health\"",
            "    weight 0",
            "    interface eth1",
            "    virtual_router_id 76",
            "    priority 190",
            "    advert_int 0.1",
            "    unicast_src_ip 192.168.10.3",
            "        192.168.10.2",
            "        192.168.10.1/24 dev eth1",
            "        fd00:a::1/64 dev eth1",
            "        ovpnlb_health",
            "    script \"/usr/sbin/ovpn-lb status --check\"",
        ],
    );
    assert!(conf(0, Side::A).contains("    priority 200\n"));
    assert!(conf(0, Side::B).contains("        192.168.20.3\n"));
    assert!(g.pairs[0].gateway(Side::A).file(layout::FRR_CONF).is_none());
}

#[test]
fn routing_answers_that_cannot_work_are_refused() {
    let mut r = pairs_request(HaKind::Bgp);
    r.routing.gateways[0].pop();
    expect_error(&r, "--gateway-a: 1 given for 2 pair(s)");
    let mut r = pairs_request(HaKind::Bgp);
    r.routing.router[1].clear();
    expect_error(&r, "--router-b is missing");
    let mut r = pairs_request(HaKind::Bgp);
    r.routing.router[0] = vec!["10.1.255.1".into()];
    expect_error(&r, "--router-a \"10.1.255.1\": give an IPv6 address too");
    let mut r = pairs_request(HaKind::Bgp);
    r.routing.router_asn[0] = 64_513;
    expect_error(&r, "--asn-a and --router-asn-a are both 64513");
    let mut r = pairs_request(HaKind::Bgp);
    r.routing.gateways[1][1] = "10.2.255.2,fd00:2:ff::9".into();
    expect_error(&r, "--gateway-b 10.2.255.2 is given twice");
    let mut r = pairs_request(HaKind::Vrrp);
    r.routing.vip[0] = vec!["10.9.9.9".into(), "fd00:a::1".into()];
    expect_error(
        &r,
        "10.9.9.9 (--vip-a or --gateway-a) is outside site A's LAN",
    );
    let mut r = pairs_request(HaKind::Bgp);
    r.wan[0].pop();
    expect_error(&r, "--wan-a: 1 given for 2 pairs");
    let mut r = pairs_request(HaKind::Bgp);
    r.wan[1][1] = "192.0.2.1".into();
    expect_error(&r, "--wan \"192.0.2.1\" is given to two pairs");
    let mut r = pairs_request(HaKind::Bgp);
    r.pairs = 17;
    expect_error(&r, "--pairs 17: give 1 to 16 pairs");
    // Two pairs of 40 tunnels need 80 ports from 65500.
    let mut r = pairs_request(HaKind::Bgp);
    r.tunnels = 40;
    r.first_port = 65_500;
    expect_error(&r, "--port 65500: 80 tunnels use ports 65500..=65579");
    // Several pairs without --ha are BGP pairs.
    let mut r = pairs_request(HaKind::Bgp);
    r.routing.ha = None;
    assert_eq!(r.plans().unwrap()[0].ha.as_ref().unwrap().kind, HaKind::Bgp);
}
