//! In-band probes in the built-in lab, with real OpenVPN: a failure only one
//! gateway can see (its OpenVPN process killed) and a silent path failure
//! (the tunnel's UDP dropped on the WAN) take the tunnel out of both
//! gateways' rotations within the detection time; probe-shaped packets from
//! a LAN go nowhere; under load each tunnel reports its own round trip.

use std::{
    net::SocketAddr,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData};
use ovpn_lb_common::{
    Reason, Schedule,
    maps::names,
    probe::{self, Payload},
};
use ovpn_lb_tests::{
    lab::{HOST_A, HOST_B, Lab, Options, Side},
    lag::Lag,
    loader::loader_bin,
    netns::enter_named,
    ping::ping_background,
    process::wait_gone,
    root_alone, topology,
    traffic::{Capture, tcp_transfer},
};

fn lab(options: Options) -> Lab {
    Lab::for_test("op", options)
}

/// Tunnels in gateway `side`'s live schedule, from its pinned maps.
fn rotation(lab: &Lab, side: Side) -> Vec<usize> {
    let maps = lab.layout(side).maps();
    let open = |name: &str| {
        Map::from_map_data(MapData::from_pin(maps.join(name)).expect("pinned map")).unwrap()
    };
    let active: Array<_, u32> = open(names::ACTIVE_SCHED).try_into().unwrap();
    let schedules: Array<_, Schedule> = open(names::SCHEDULES).try_into().unwrap();
    let s = schedules.get(&active.get(&0, 0).unwrap(), 0).unwrap();
    let mut ids: Vec<usize> = s.slots[..s.len as usize]
        .iter()
        .map(|&k| usize::from(k))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Waits until `pred` holds for `side`'s rotation; the time it took.
fn wait_rotation(
    lab: &Lab,
    side: Side,
    start: Instant,
    timeout: Duration,
    pred: impl Fn(&[usize]) -> bool,
) -> Duration {
    loop {
        if pred(&rotation(lab, side)) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "gateway {side:?}: rotation {:?} after {timeout:?}\n{}",
            rotation(lab, side),
            lab.diagnose()
        );
        thread::sleep(Duration::from_micros(500));
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() - 1) * p / 100]
}

/// The detection time of the lab's probes (100 ms rounds, 3 missed) with
/// the round that notices.
const DETECTION: Duration = Duration::from_millis(300);

/// Every try of `took` within [`DETECTION`] once the machine's own
/// scheduling lag during that try (`late`, see [`Lag`]) is taken off: a
/// loaded machine delays the loader's rounds as it delays the test. Both
/// distributions are said.
fn within_detection_time(what: &str, took: &[Duration], late: &[Duration]) {
    let net: Vec<Duration> = took
        .iter()
        .zip(late)
        .map(|(t, l)| t.saturating_sub(*l))
        .collect();
    let (mut raw, mut lag, mut sorted) = (took.to_vec(), late.to_vec(), net.clone());
    eprintln!(
        "{what}, {} tries: {}; the machine's scheduling lag meanwhile: {}",
        took.len(),
        distribution(&mut raw),
        distribution(&mut lag)
    );
    assert!(
        sorted.iter().all(|t| *t <= DETECTION),
        "{what}: {took:?} less the lag {late:?} exceeds {DETECTION:?} ({})",
        distribution(&mut sorted)
    );
}

/// Waits until both gateways have every tunnel of `all` in rotation again.
fn rejoined(lab: &Lab, all: &[usize], timeout: Duration) {
    for side in [Side::A, Side::B] {
        wait_rotation(lab, side, Instant::now(), timeout, |r| r == all);
    }
}

/// `took`, sorted, as its distribution in words.
fn distribution(took: &mut [Duration]) -> String {
    took.sort_unstable();
    format!(
        "min {:?}, median {:?}, p90 {:?}, max {:?}",
        took[0],
        percentile(took, 50),
        percentile(took, 90),
        took[took.len() - 1]
    )
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

#[test]
fn a_one_sided_failure_leaves_the_far_rotation_within_the_detection_time() {
    let Some(_alone) = root_alone() else { return };
    let mut lab = lab(Options::default());
    let all = [0, 1, 2, 3];
    wait_rotation(&lab, Side::B, Instant::now(), Duration::from_secs(5), |r| {
        r == all
    });

    let (lag, mut took, mut late) = (Lag::watch(), Vec::new(), Vec::new());
    for round in 0..10 {
        let k = round % 4;
        thread::sleep(Duration::from_millis(200 + (37 * round as u64) % 100));
        let _ = lag.take();
        let start = Instant::now();
        let pid = lab.kill_openvpn(Side::A, k).expect("OpenVPN runs");
        let left = wait_rotation(&lab, Side::B, start, Duration::from_secs(2), |r| {
            !r.contains(&k)
        });
        late.push(lag.take());
        took.push(left);
        wait_gone(pid);
        lab.start_openvpn(Side::A, k);
        lab.wait_connected(Side::A, k, Duration::from_secs(20));
        rejoined(&lab, &all, Duration::from_secs(15));
    }
    within_detection_time("OpenVPN killed on A -> out of B's rotation", &took, &late);

    // Across one more such failure: pings from B lose little, and a TCP
    // transfer completes intact.
    let pings = ping_background(&lab.host(Side::B), HOST_A, 300, "0.01");
    let (ha, hb) = (lab.host(Side::A), lab.host(Side::B));
    let t = tcp_transfer(&hb, &ha, addr(HOST_A, 5101), 20 << 20, || {
        thread::sleep(Duration::from_millis(400));
        wait_gone(lab.kill_openvpn(Side::A, 2).expect("OpenVPN runs"));
    });
    assert_eq!(
        t.received_sha256, t.sent_sha256,
        "transfer across the failure"
    );
    let (sent, received) = pings.wait();
    eprintln!(
        "pings B -> A at 100/s across the failure: {} of {sent} lost",
        sent - received
    );
    assert!(sent - received <= 30, "{} pings lost", sent - received);
    lab.start_openvpn(Side::A, 2);
    lab.wait_connected(Side::A, 2, Duration::from_secs(20));
    rejoined(&lab, &all, Duration::from_secs(15));
}

/// nftables on gateway A's WAN dropping tunnel `k`'s UDP both ways.
fn drop_tunnel_udp(lab: &Lab, k: usize, drop: bool) {
    let port = 1194 + k;
    let script = if drop {
        format!(
            "table inet probetest {{\n\
             chain i {{ type filter hook input priority -10; udp dport {port} drop; }}\n\
             chain o {{ type filter hook output priority -10; udp dport {port} drop; }}\n\
             }}\n"
        )
    } else {
        "delete table inet probetest\n".to_owned()
    };
    let mut nft = Command::new("ip")
        .args(["netns", "exec", &lab.gw(Side::A), "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut nft.stdin.take().unwrap(), script.as_bytes()).unwrap();
    assert!(nft.wait().unwrap().success(), "nft: {script}");
}

#[test]
fn a_silent_path_failure_leaves_both_rotations_and_comes_back() {
    let Some(_alone) = root_alone() else { return };
    let lab = lab(Options::default());
    let all = [0, 1, 2, 3];
    wait_rotation(&lab, Side::B, Instant::now(), Duration::from_secs(5), |r| {
        r == all
    });
    let (lag, mut took, mut late) = (Lag::watch(), Vec::new(), Vec::new());
    let mut nft_took = Vec::new();
    for round in 0..10 {
        let k = round % 4;
        // At a different moment of the probe cycle each time.
        thread::sleep(Duration::from_millis(200 + (37 * round as u64) % 100));
        // The rule takes effect while nft runs: time from when it returns
        // (how long nft itself took is reported beside).
        let _ = lag.take();
        let asked = Instant::now();
        drop_tunnel_udp(&lab, k, true);
        let start = Instant::now();
        nft_took.push(start - asked);
        let a = wait_rotation(&lab, Side::A, start, Duration::from_secs(2), |r| {
            !r.contains(&k)
        });
        let b = wait_rotation(&lab, Side::B, start, Duration::from_secs(2), |r| {
            !r.contains(&k)
        });
        late.push(lag.take());
        took.push(a.max(b));
        drop_tunnel_udp(&lab, k, false);
        rejoined(&lab, &all, Duration::from_secs(10));
    }
    eprintln!(
        "(nft itself took up to {:?})",
        nft_took.iter().max().unwrap()
    );
    within_detection_time(
        "tunnel UDP dropped on the WAN -> out of both rotations",
        &took,
        &late,
    );
}

/// Sends `datagram` (IPv4) out of device `dev` in namespace `ns`, raw: to
/// `mac` on an Ethernet device, bare into a tun device.
fn send_ip(ns: &str, dev: &str, mac: Option<[u8; 6]>, datagram: &[u8]) {
    let dev = dev.to_owned();
    enter_named(ns, || {
        // SAFETY: plain socket calls on a descriptor closed below; the
        // address struct is zeroed and filled field by field.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, 0);
            assert!(fd >= 0, "{}", std::io::Error::last_os_error());
            let name = std::ffi::CString::new(dev).unwrap();
            let mut to: libc::sockaddr_ll = std::mem::zeroed();
            to.sll_family = u16::try_from(libc::AF_PACKET).unwrap();
            to.sll_protocol = 0x0800u16.to_be();
            to.sll_ifindex = i32::try_from(libc::if_nametoindex(name.as_ptr())).unwrap();
            if let Some(mac) = mac {
                to.sll_halen = 6;
                to.sll_addr[..6].copy_from_slice(&mac);
            }
            let sent = libc::sendto(
                fd,
                datagram.as_ptr().cast(),
                datagram.len(),
                0,
                (&raw const to).cast(),
                u32::try_from(size_of::<libc::sockaddr_ll>()).unwrap(),
            );
            assert!(sent > 0, "{}", std::io::Error::last_os_error());
            libc::close(fd);
        }
    });
}

/// Probe-shaped packets from host A, as a probe and as an answer, for every
/// tunnel id: dropped and counted at gateway A, never seen by gateway B.
fn forged_probes_go_nowhere(lab: &Lab) {
    let ga = lab.gw(Side::A);
    // They carry sequence number 7 and send time 1 (the loaders' own carry
    // a clock reading); gateway B's capture looks for them on arrival from
    // its tunnels, where any that got sprayed would come out.
    let before = [lab.counters(Side::A), lab.counters(Side::B)];
    let captures: Vec<Capture> = (0..4)
        .map(|k| {
            let dev = lab.dev(k);
            Capture::start(
                &lab.gw(Side::B),
                &dev,
                &lab.dir.join(format!("gb-{dev}.pcap")),
            )
        })
        .collect();
    let gw_mac = mac_of(&ga, "lan");
    for k in 0..4u16 {
        let mut forged = Payload::probe(k, 7, 1, u64::MAX, 0);
        send_ip(
            &lab.host(Side::A),
            "lan",
            Some(gw_mac),
            &probe::datagram(&forged),
        );
        forged.kind = probe::ANSWER;
        send_ip(
            &lab.host(Side::A),
            "lan",
            Some(gw_mac),
            &probe::datagram(&forged),
        );
    }
    thread::sleep(Duration::from_millis(300));
    let after = [lab.counters(Side::A), lab.counters(Side::B)];
    let delta = |s: usize, r: Reason| {
        after[s].reasons[r as usize].packets - before[s].reasons[r as usize].packets
    };
    assert_eq!(delta(0, Reason::ProbeFromLan), 8, "{}", lab.diagnose());
    // Nothing went into a tunnel (probes the loader sends are not counted
    // as sprayed), so nothing reached gateway B to be reflected or refused.
    let sprayed: u64 = (0..4)
        .map(|k| after[0].tunnels[k].tx_packets - before[0].tunnels[k].tx_packets)
        .sum();
    assert_eq!(sprayed, 0);
    assert_eq!(
        delta(1, Reason::BadProbe) + delta(1, Reason::ProbeMisrouted),
        0
    );
    // The control: one such probe (sequence number 99) written straight
    // into gateway A's tun0 crosses, and B's capture sees it (arriving, and
    // going back as B's answer).
    let control = Payload::probe(0, 99, 1, u64::MAX, 0);
    send_ip(&ga, "tun0", None, &probe::datagram(&control));
    thread::sleep(Duration::from_millis(300));
    let captures: Vec<_> = captures.into_iter().map(Capture::stop).collect();
    let seen = |seq: u32| -> Vec<String> {
        captures
            .iter()
            .flat_map(|c| {
                c.read(&format!(
                    "udp dst port {} and udp[16:4] = {seq} and udp[24:4] = 0 and udp[28:4] = 1",
                    probe::PORT
                ))
            })
            .collect()
    };
    assert!(!seen(99).is_empty(), "the capture misses what it looks for");
    let forged = seen(7);
    assert!(
        forged.is_empty(),
        "probe-shaped packets from the LAN crossed to gateway B: {forged:?}"
    );
}

fn mac_of(ns: &str, dev: &str) -> [u8; 6] {
    let bytes: Vec<u8> = topology::link_address(ns, dev)
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

#[test]
fn probes_cannot_be_forged_from_a_lan_and_tunnels_report_their_own_rtt() {
    let Some(_alone) = root_alone() else { return };
    let lab = lab(Options {
        cpu_quota_percent: Some(15),
        ..Options::default()
    });
    forged_probes_go_nowhere(&lab);
    let ga = lab.gw(Side::A);

    // Under load through CPU-capped OpenVPN processes, each tunnel reports
    // its own round trip.
    let (ha, hb) = (lab.host(Side::A), lab.host(Side::B));
    let mut rtts = Vec::new();
    let t = tcp_transfer(&ha, &hb, addr(HOST_B, 5102), 40 << 20, || {
        thread::sleep(Duration::from_secs(2));
        let layout = lab.layout(Side::A);
        let out = Command::new("ip")
            .args(["netns", "exec", &ga])
            .arg(loader_bin())
            .arg("--pin-root")
            .arg(&layout.pin_root)
            .arg("--run-dir")
            .arg(&layout.run_dir)
            .args(["status", "--json", "--interval", "0.2"])
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        eprintln!(
            "status under load:\n{}",
            serde_json::to_string_pretty(&report["tunnels"]).unwrap()
        );
        for t in report["tunnels"].as_array().unwrap() {
            rtts.push(t["probe"]["rtt_smoothed_ms"].as_f64().unwrap());
        }
    });
    assert_eq!(t.received_sha256, t.sent_sha256);
    assert_eq!(rtts.len(), 4);
    assert!(rtts.iter().all(|&r| r > 0.0), "{rtts:?}");
    let (lo, hi) = rtts
        .iter()
        .fold((f64::MAX, 0.0f64), |(l, h), &r| (l.min(r), h.max(r)));
    assert!(
        hi > lo * 1.05,
        "under load the tunnels' round trips differ: {rtts:?}"
    );
}

#[test]
fn probe_overhead_on_an_idle_wan() {
    let Some(_alone) = root_alone() else { return };
    let lab = lab(Options::default());
    // WAN bytes per second with probes at the default interval, idle hosts.
    let wan_bytes = || {
        let out = Command::new("ip")
            .args(["-n", &lab.gw(Side::A), "-s", "-j", "link", "show", "wan"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["stats64"]["tx"]["bytes"].as_u64().unwrap()
    };
    let (b0, t0, c0) = (wan_bytes(), Instant::now(), lab.counters(Side::A));
    thread::sleep(Duration::from_secs(5));
    #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
    let rate = (wan_bytes() - b0) as f64 / t0.elapsed().as_secs_f64();
    let c = lab.counters(Side::A);
    let grown = |r: Reason| c.reasons[r as usize].packets - c0.reasons[r as usize].packets;
    let (answered, reflected) = (grown(Reason::ProbeAnswered), grown(Reason::ProbeReflected));
    eprintln!(
        "gateway A's WAN, idle, 4 tunnels, probes every 100 ms: {rate:.0} B/s sent ({:.0} B/s per tunnel, OpenVPN's own pings included); in 5 s probes answered {answered}, reflected {reflected}",
        rate / 4.0,
    );
    // The bound means something only while probes flow: 10 a second per
    // tunnel each way, 200 in 5 s; most of them.
    assert!(
        answered >= 160 && reflected >= 160,
        "probes answered {answered}, reflected {reflected}"
    );
    assert!(rate / 4.0 < 5_000.0, "{rate} B/s");
}

/// Gateway B with `probe_interval_ms = 0` (documented: probes off on one
/// side) still answers gateway A's probes, and now says what it can use:
/// gateway A keeps every tunnel, and its pings all cross.
#[test]
fn one_side_without_probes_takes_no_tunnel_out() {
    let Some(_alone) = root_alone() else { return };
    let mut lab = lab(Options::default());
    let all = [0, 1, 2, 3];
    wait_rotation(&lab, Side::A, Instant::now(), Duration::from_secs(5), |r| {
        r == all
    });
    let mut quiet = lab.loader_config(Side::B);
    quiet.probe_interval_ms = 0;
    let path = lab.dir.join("gateway-b-no-probes.toml");
    std::fs::write(&path, quiet.to_toml().unwrap()).unwrap();
    lab.start_loader_with(Side::B, &path);
    let before = lab.departures(Side::A);
    let pings = ping_background(&lab.host(Side::A), HOST_B, 300, "0.01");
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        assert_eq!(
            rotation(&lab, Side::A),
            all,
            "gateway A lost a tunnel\n{}",
            lab.diagnose()
        );
        thread::sleep(Duration::from_millis(5));
    }
    let (sent, received) = pings.wait();
    eprintln!("gateway B without probes: A -> B pings {received} of {sent}");
    assert_eq!(received, sent);
    assert_eq!(lab.departures(Side::A), before);
}
