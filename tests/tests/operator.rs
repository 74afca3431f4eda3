//! The operator's path, end to end: `ovpn-lb generate` for two sites; the
//! files placed as an operator would, each gateway's tree under a root of
//! its own in the lab directory (standing in for its `/`); the sysctl
//! drop-in applied; OpenVPN started the way Debian's `openvpn@.service`
//! starts it; ovpn-lb run from the generated `ovpn-lb.toml`. Then `ovpn-lb
//! check` passes, every tunnel's management interface (a unix socket with a
//! password) reports CONNECTED, and one TCP flow is sprayed over every
//! tunnel with its SHA-256 intact.

use std::{net::SocketAddr, process::Command, time::Duration};

use ovpn_lb::generate::layout;
use ovpn_lb_tests::{
    lab::{HOST_A, HOST_B, LAN_DEV, Lab, Options, Side, WAN, WAN_DEV, growth},
    loader::loader_bin,
    process::{all_output, run, wait_until},
    root_alone,
    traffic::tcp_transfer,
};

const TUNNELS: usize = 4;

/// `ovpn-lb generate` as an operator runs it, into `out`.
fn generate(lab: &Lab, out: &std::path::Path) {
    let roots = Side::BOTH.map(|side| lab.root(side).display().to_string());
    let generated = Command::new(loader_bin())
        .args(["generate", "--wan-a", WAN[0], "--wan-b", WAN[1]])
        .args(["--lan-a", "192.168.10.0/24,fd00:a::/64"])
        .args(["--lan-b", "192.168.20.0/24,fd00:b::/64"])
        .args(["--lan-interface-a", LAN_DEV, "--lan-interface-b", LAN_DEV])
        .args(["--wan-interface-a", WAN_DEV, "--wan-interface-b", WAN_DEV])
        .args(["--tunnels", &TUNNELS.to_string(), "--management-password"])
        .args(["--root-a", &roots[0], "--root-b", &roots[1]])
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    let said = all_output(&generated);
    assert!(generated.status.success(), "ovpn-lb generate:\n{said}");
    assert!(
        said.contains("4 tun tunnels between gateway A (172.30.0.1) and gateway B (172.30.0.2)"),
        "{said}"
    );
}

/// Copies gateway `side`'s files onto its root, applies the sysctl drop-in
/// and gives it the default route out of its WAN a real gateway has (loose
/// reverse-path filtering needs a route back to a restored source).
fn install(lab: &Lab, side: Side, out: &std::path::Path) {
    let from = out.join(side.name()).join("etc");
    std::fs::create_dir_all(lab.root(side)).unwrap();
    run(
        "cp",
        &[
            "-a",
            &from.to_string_lossy(),
            &lab.root(side).to_string_lossy(),
        ],
    );
    lab.make_run_dir(side);
    let gw = lab.gw(side);
    // net.core.* are the host's, not the namespace's: -e leaves them alone.
    let sysctl = lab.root(side).join(layout::SYSCTL);
    lab.exec(
        &gw,
        &["sysctl", "-q", "-e", "-p", &sysctl.to_string_lossy()],
    );
    let rp_filter = lab.exec(&gw, &["sysctl", "-n", "net.ipv4.conf.all.rp_filter"]);
    assert_eq!(
        rp_filter.trim(),
        "2",
        "the drop-in sets loose reverse-path filtering"
    );
    let accept_ra = lab.exec(&gw, &["sysctl", "-n", "net.ipv6.conf.wan.accept_ra"]);
    assert_eq!(
        accept_ra.trim(),
        "2",
        "with IPv6 forwarding on, the WAN still takes router advertisements"
    );
    lab.ip(
        &gw,
        &["route", "add", "default", "via", WAN[side.other().index()]],
    );
}

/// OpenVPN for every tunnel of `side`, as `openvpn@tunK.service` runs it
/// (`--cd /etc/openvpn --config tunK.conf`, status and PID under /run).
fn start_tunnels(lab: &mut Lab, side: Side) {
    for k in 0..TUNNELS {
        let openvpn = lab.openvpn(side, k);
        let dev = lab.dev(k);
        let etc = lab.root(side).join(layout::OPENVPN_DIR);
        let status = lab
            .root(side)
            .join(layout::RUN_DIR)
            .join(format!("{dev}.status"));
        lab.start_tracked(
            &openvpn,
            &[
                "--cd",
                &etc.to_string_lossy(),
                "--status",
                &status.to_string_lossy(),
                "10",
            ],
        );
    }
}

/// `ovpn-lb COMMAND --config <side's generated ovpn-lb.toml>` on `side`:
/// its exit status and everything it printed (also shown in the test log).
fn on_config(lab: &Lab, side: Side, command: &str) -> (std::process::ExitStatus, String) {
    let config = lab.config_path(side);
    let out = lab
        .loader(side)
        .ovpn_lb(&[command, "--config", &config.to_string_lossy()]);
    let said = all_output(&out);
    eprintln!("gateway {side}: ovpn-lb {command}:\n{said}");
    (out.status, said)
}

/// Every tunnel up in the rotation and CONNECTED over its management socket.
fn wait_all_connected(lab: &Lab, side: Side) {
    let mut last = serde_json::Value::Null;
    let up = wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
        last = lab.loader(side).status("0.1");
        last["tunnels"].as_array().is_some_and(|tunnels| {
            tunnels.len() == TUNNELS
                && tunnels
                    .iter()
                    .all(|t| t["state"] == "up" && t["openvpn"] == "CONNECTED")
        })
    });
    assert!(up, "gateway {side}: {last:#}\n{}", lab.diagnose());
}

#[test]
fn generated_files_installed_as_an_operator_would_carry_one_flow_over_every_tunnel() {
    let Some(_alone) = root_alone() else { return };
    let dir = std::env::temp_dir().join(format!("ovpnlb-operator-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut lab = Lab::sites(
        &dir,
        &format!("oo{}", std::process::id() % 10_000),
        &loader_bin(),
        Options {
            tunnels: TUNNELS,
            ..Options::default()
        },
    );
    let out = dir.join("generated");
    generate(&lab, &out);
    for side in Side::BOTH {
        install(&lab, side, &out);
    }
    // The TLS servers first, as in the lab.
    for side in [Side::B, Side::A] {
        start_tunnels(&mut lab, side);
    }
    for side in Side::BOTH {
        for k in 0..TUNNELS {
            lab.wait_connected(side, k, Duration::from_secs(20));
        }
    }
    for side in Side::BOTH {
        let (check, said) = on_config(&lab, side, "check");
        assert!(check.success(), "ovpn-lb check on {side}:\n{said}");
        assert!(said.contains("valid; LAN lan, 4 tunnels"), "{said}");
        assert!(!said.contains("warning"), "{said}");
        lab.start_loader_with(side, &lab.config_path(side));
    }
    for side in Side::BOTH {
        wait_all_connected(&lab, side);
    }
    // The newcomer's last step: doctor finds no problem (warnings, such as
    // more tunnels than this machine's cores, leave the exit code 0).
    for side in Side::BOTH {
        let (doctor, said) = on_config(&lab, side, "doctor");
        assert_eq!(doctor.code(), Some(0), "doctor on {side}:\n{said}");
        assert!(said.contains("probes"), "{said}");
        assert!(
            said.contains("ok      wan          wan: guarded"),
            "the generated wan.interfaces is guarded:\n{said}"
        );
    }

    let before = lab.tunnel_stats(Side::A);
    let listen = SocketAddr::new(HOST_B.parse().unwrap(), 5001);
    let t = tcp_transfer(
        &lab.host(Side::A),
        &lab.host(Side::B),
        listen,
        16 << 20,
        || {},
    );
    t.assert_intact(16 << 20, HOST_A);
    let after = lab.tunnel_stats(Side::A);
    // Packet spray places by the rings: shares differ, but none is idle.
    let carried = growth(&before, &after, |t| t.tx_packets);
    let total: u64 = carried.iter().sum();
    assert!(
        total > 300 && carried.iter().all(|&c| c * 20 >= total),
        "every tunnel carries part of the one connection: {carried:?}\n{}",
        lab.diagnose()
    );
}
