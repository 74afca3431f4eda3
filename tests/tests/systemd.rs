//! The package as an operator runs it: two gateways, each a booted Debian 12
//! under systemd (a `systemd-nspawn` machine joined to a lab gateway's
//! namespace), with `cargo xtask deb`'s package and Debian's `openvpn`
//! installed by apt, the generator's files copied onto `/etc` as the docs
//! say, and `systemctl enable --now openvpn@tunK ovpn-lb`. Then, through the
//! whole life of the package:
//!
//! - every tunnel up on both sides, with probe round trips in `status`, and
//!   `doctor` finding no problem; the unit's `systemd-analyze security`;
//! - one TCP flow over every tunnel, its SHA-256 intact;
//! - `systemctl restart ovpn-lb` loses no ping at 100 a second; `systemctl
//!   stop` keeps forwarding; a `kill -9` of the loader is restarted;
//! - `dpkg -i` of the next revision, a build whose map layout differs,
//!   leaves at most 1 s without replies, and its loader replaced the maps;
//! - `apt-get remove` says what it detached and leaves no pin, link, rule
//!   or route; `apt-get purge` takes `/etc/ovpn-lb` only where the
//!   operator left nothing of theirs in it.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use ovpn_lb::{pins::Layout, status::Counters};
use ovpn_lb_tests::{
    lab::{HOST_A, HOST_B, LAN_DEV, Lab, Options, Side, WAN, growth},
    loader::loader_bin,
    machine::{self, Boot, Machine, SHARE},
    ping::ping_background,
    process::{run, wait_until},
    root_alone,
    traffic::tcp_transfer,
};

const TUNNELS: usize = 2;
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// ovpn-lb's policy rules: the default `kernel_route.priority` and the two
/// beside it.
const RULE_PRIORITIES: [&str; 3] = ["7599:", "7600:", "7601:"];
const TABLE: &str = "7600";

/// The one package of `dir` (`cargo xtask test` writes them).
fn package_in(dir: &Path, revision: u32) -> PathBuf {
    let prefix = format!("ovpn-lb_{VERSION}-{revision}_");
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
                && p.extension().is_some_and(|e| e == "deb")
        })
        .unwrap_or_else(|| {
            panic!(
                "no {prefix}*.deb in {}: `cargo xtask test` builds it",
                dir.display()
            )
        })
}

/// The directory the machines see at [`SHARE`]: both packages, and both
/// gateways' files as `ovpn-lb generate` writes them.
fn share(lab: &Lab) -> PathBuf {
    let share = lab.dir.join("share");
    fs::create_dir_all(share.join("upgrade")).unwrap();
    let debian = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    fs::copy(package_in(&debian, 1), share.join("ovpn-lb.deb")).unwrap();
    fs::copy(
        package_in(&debian.join("upgrade"), 2),
        share.join("upgrade/ovpn-lb.deb"),
    )
    .unwrap();
    let out = run(
        &loader_bin().to_string_lossy(),
        &[
            "generate",
            "--wan-a",
            WAN[0],
            "--wan-b",
            WAN[1],
            "--lan-a",
            "192.168.10.0/24,fd00:a::/64",
            "--lan-b",
            "192.168.20.0/24,fd00:b::/64",
            "--lan-interface-a",
            LAN_DEV,
            "--lan-interface-b",
            LAN_DEV,
            "--tunnels",
            &TUNNELS.to_string(),
            "--out",
            &share.join("generated").to_string_lossy(),
        ],
    );
    eprintln!("{out}");
    share
}

/// Boots gateway `side` as a machine in its lab namespace, pins on a
/// directory of the lab's bpffs.
fn boot(lab: &mut Lab, side: Side, share: &Path) -> Machine {
    let name = format!("gw-{}", side.letter());
    let bpffs = bpffs(lab, side);
    fs::create_dir_all(&bpffs).unwrap();
    let pid_file = lab.dir.join(format!("nspawn-{}.pid", side.letter()));
    lab.track(&pid_file);
    Machine::boot(&Boot {
        name: &name,
        netns: &lab.gw(side),
        image: &machine::image(),
        bpffs: &bpffs,
        share,
        log: &lab.dir.join(format!("console-{}.log", side.letter())),
        pid_file: &pid_file,
    })
}

/// The host directory that is gateway `side`'s `/sys/fs/bpf`.
fn bpffs(lab: &Lab, side: Side) -> PathBuf {
    lab.dir
        .join("bpf")
        .join(format!("machine-{}", side.letter()))
}

/// Gateway `side`'s pins as the host sees them.
fn layout(lab: &Lab, side: Side) -> Layout {
    Layout {
        pin_root: bpffs(lab, side).join("ovpn-lb"),
        run_dir: PathBuf::from("/nonexistent"),
    }
}

/// The package and OpenVPN by apt (offline: the root's apt cache holds
/// OpenVPN), the generated files onto `/etc`, then the README's commands.
fn install(m: &Machine, side: Side) {
    m.must(&format!(
        "apt-get install -y -q {SHARE}/ovpn-lb.deb openvpn"
    ));
    m.must(&format!(
        "cp -a {SHARE}/generated/{}/etc/. /etc/",
        side.name()
    ));
    // net.core.* belong to the host, not to the machine's namespace.
    let _ = m.sh("sysctl --system");
    m.must("systemctl daemon-reload");
    let tunnels: Vec<String> = (0..TUNNELS).map(|k| format!("openvpn@tun{k}")).collect();
    m.must(&format!(
        "systemctl enable --now {} ovpn-lb",
        tunnels.join(" ")
    ));
}

/// `ovpn-lb status --json` inside.
fn status(m: &Machine) -> serde_json::Value {
    let (said, _) = m.sh("ovpn-lb status --json --interval 0.2");
    serde_json::from_str(&said).unwrap_or(serde_json::Value::Null)
}

/// Every tunnel up, OpenVPN connected, and probes answered with a round trip.
fn wait_all_up(m: &Machine) {
    let mut last = serde_json::Value::Null;
    let up = wait_until(Duration::from_mins(1), Duration::from_millis(500), || {
        last = status(m);
        last["tunnels"].as_array().is_some_and(|tunnels| {
            tunnels.len() == TUNNELS
                && tunnels.iter().all(|t| {
                    t["state"] == "up"
                        && t["openvpn"] == "CONNECTED"
                        && t["probe"]["answered"].as_u64().unwrap_or(0) > 0
                        && t["probe"]["rtt_smoothed_ms"].as_f64().unwrap_or(0.0) > 0.0
                })
        })
    });
    assert!(
        up,
        "{}: {last:#}\n{}",
        m.name,
        m.sh("journalctl -u ovpn-lb --no-pager | tail -40").0
    );
}

/// Pings host B from host A, 100 a second for `seconds`, while `during`
/// runs; returns the longest run of echoes without a reply.
fn silence_during(lab: &Lab, seconds: u32, during: impl FnOnce()) -> u32 {
    let pings = ping_background(&lab.host(Side::A), HOST_B, seconds * 100, "0.01");
    std::thread::sleep(Duration::from_millis(500));
    during();
    pings.longest_silence()
}

/// The loader's main PID under systemd (0: not running).
fn main_pid(m: &Machine) -> u32 {
    m.property("ovpn-lb", "MainPID").parse().unwrap_or(0)
}

/// ovpn-lb's rules, table routes and tcx/XDP programs in gateway `side`'s
/// namespace, as `ip` and `bpftool` list them; empty when none is left.
fn leftovers(lab: &Lab, side: Side) -> Vec<String> {
    let gw = lab.gw(side);
    let mut left = Vec::new();
    for family in ["-4", "-6"] {
        let rules = lab.ip(&gw, &[family, "rule"]);
        left.extend(
            rules
                .lines()
                .filter(|l| RULE_PRIORITIES.iter().any(|p| l.starts_with(p)))
                .map(|l| format!("rule {l}")),
        );
        let routes = lab.ip(&gw, &[family, "route", "show", "table", TABLE]);
        left.extend(routes.lines().map(|l| format!("route {l}")));
    }
    let programs = lab.exec(&gw, &["bpftool", "net", "show"]);
    left.extend(
        programs
            .lines()
            .filter(|l| l.contains("lan_ingress") || l.contains("tunnel_"))
            .map(|l| format!("program {l}")),
    );
    let pins = walk(&bpffs(lab, side));
    left.extend(pins.into_iter().map(|p| format!("pin {}", p.display())));
    left
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.push(path.clone());
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn the_package_under_systemd_from_install_through_upgrade_to_removal() {
    let Some(_alone) = root_alone() else { return };
    let image = machine::image();
    assert!(
        image.join("etc/ovpn-lb-test-root").exists(),
        "no containers' root at {}: `cargo xtask test` makes it (as root)",
        image.display()
    );
    let dir = std::env::temp_dir().join(format!("ovpnlb-systemd-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let mut lab = Lab::sites(
        &dir,
        &format!("sd{}", std::process::id() % 10_000),
        &loader_bin(),
        Options {
            tunnels: TUNNELS,
            ..Options::default()
        },
    );
    let share = share(&lab);
    // A real gateway's default route, which loose reverse-path filtering
    // needs for restored sources.
    for side in Side::BOTH {
        lab.ip(
            &lab.gw(side),
            &["route", "add", "default", "via", WAN[side.other().index()]],
        );
    }
    let a = boot(&mut lab, Side::A, &share);
    let b = boot(&mut lab, Side::B, &share);
    // The TLS server first.
    install(&b, Side::B);
    install(&a, Side::A);
    for m in [&a, &b] {
        healthy(m);
    }
    let security = a.must("systemd-analyze security --no-pager ovpn-lb.service");
    let exposure = security
        .lines()
        .find_map(|l| l.strip_prefix("→ Overall exposure level for ovpn-lb.service: "))
        .unwrap_or_else(|| panic!("no exposure level in:\n{security}"));
    eprintln!("systemd-analyze security ovpn-lb.service: {exposure}");
    one_flow_over_every_tunnel(&lab);
    restart_stop_and_kill(&lab, &a);
    upgrade(&lab, &a);
    remove_and_purge(&lab, &a, &b);
}

/// Every tunnel up with probe round trips, and doctor content.
fn healthy(m: &Machine) {
    wait_all_up(m);
    eprintln!("{}", m.must("ovpn-lb status"));
    let (said, code) = m.sh("ovpn-lb doctor");
    eprintln!("{}# ovpn-lb doctor\n{said}", m.name);
    assert_eq!(code, Some(0), "{}: doctor:\n{said}", m.name);
    assert!(said.contains("reads counted on tun0, tun1"), "{said}");
}

fn one_flow_over_every_tunnel(lab: &Lab) {
    let tunnels = u32::try_from(TUNNELS).unwrap();
    let before = Counters::read(&layout(lab, Side::A), tunnels).unwrap();
    let listen = SocketAddr::new(HOST_B.parse().unwrap(), 5001);
    let t = tcp_transfer(
        &lab.host(Side::A),
        &lab.host(Side::B),
        listen,
        16 << 20,
        || {},
    );
    t.assert_intact(16 << 20, HOST_A);
    let after = Counters::read(&layout(lab, Side::A), tunnels).unwrap();
    let carried = growth(&before.tunnels, &after.tunnels, |t| t.tx_packets);
    let total: u64 = carried.iter().sum();
    assert!(
        total > 300 && carried.iter().all(|&c| c * 20 >= total),
        "every tunnel carries part of the one connection: {carried:?}"
    );
}

/// A restart replaces the running loader without a lost ping; a stop
/// leaves the datapath forwarding on its last schedule; a `kill -9` is
/// restarted by systemd.
fn restart_stop_and_kill(lab: &Lab, a: &Machine) {
    let pid = main_pid(a);
    let silence = silence_during(lab, 3, || {
        a.must("systemctl restart ovpn-lb");
    });
    assert_eq!(silence, 0, "pings lost across `systemctl restart`");
    assert_ne!(main_pid(a), pid, "a new loader runs");

    a.must("systemctl stop ovpn-lb");
    let silence = silence_during(lab, 2, || {});
    assert_eq!(silence, 0, "pings lost while the loader is stopped");
    a.must("systemctl start ovpn-lb");
    wait_all_up(a);

    let pid = main_pid(a);
    assert_ne!(pid, 0);
    a.must(&format!("kill -9 {pid}"));
    let mut now = 0;
    let restarted = wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
        now = main_pid(a);
        now != 0 && now != pid && a.property("ovpn-lb", "ActiveState") == "active"
    });
    assert!(restarted, "after kill -9 of {pid}: MainPID {now}");
    wait_all_up(a);
}

/// An upgrade to a build of another map layout: the postinst restarts the
/// loader, which replaces the maps, within a second of silence.
fn upgrade(lab: &Lab, a: &Machine) {
    let mut said = String::new();
    let silence = silence_during(lab, 6, || {
        said = a.must(&format!("dpkg -i {SHARE}/upgrade/ovpn-lb.deb"));
    });
    assert!(said.contains("restarting ovpn-lb.service"), "{said}");
    assert!(
        silence <= 100,
        "{silence} pings (10 ms apart) unanswered across the upgrade"
    );
    // The new loader may still be starting (reading the kernel's BTF takes
    // seconds on a loaded machine) when the ping window ends.
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let journal = a.must("journalctl -u ovpn-lb --no-pager");
        if journal.contains("of another build's layout") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new loader did not replace the maps within 60 s:\n{journal}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    wait_all_up(a);
    eprintln!("upgrade: longest silence {silence} pings of 10 ms");
}

/// Removal takes the datapath with the binary, and says so; purge takes
/// `/etc/ovpn-lb` only where the operator left nothing of theirs.
fn remove_and_purge(lab: &Lab, a: &Machine, b: &Machine) {
    for (m, side) in [(a, Side::A), (b, Side::B)] {
        let said = m.must("apt-get remove -y -q ovpn-lb");
        assert!(
            said.contains("ovpn-lb:   removed link") && said.contains("ovpn-lb:   removed rule"),
            "{said}"
        );
        let left = leftovers(lab, side);
        assert!(left.is_empty(), "{}: left behind: {left:#?}", m.name);
        assert_ne!(m.property("ovpn-lb", "ActiveState"), "active", "{}", m.name);
    }
    a.must("apt-get purge -y -q ovpn-lb");
    assert!(a.path("/etc/ovpn-lb/ovpn-lb.toml").exists());
    assert!(!a.path("/etc/ovpn-lb/ovpn-lb.example.toml").exists());
    b.must("rm /etc/ovpn-lb/ovpn-lb.toml && apt-get purge -y -q ovpn-lb");
    assert!(
        !b.path("/etc/ovpn-lb").exists(),
        "{}",
        b.sh("ls -la /etc/ovpn-lb").0
    );
}
