//! Gateway pairs: two pairs of 2 real OpenVPN tunnels each between the lab's
//! sites, FRR on every gateway and on each site's router (ECMP over the
//! pairs that announce), or keepalived on the gateways (VRRP). Every file
//! comes from `ovpn-lb generate --pairs 2`. Each fault runs once here;
//! `cargo xtask bench --scale-out` runs each five times for the
//! distributions.

use std::{path::Path, time::Duration};

use ovpn_lb::generate::{self, Request, ha::HaKind, layout};
use ovpn_lb_tests::{
    failover::{self, Fault, Outcome, Rejoin, Trial, next_hops, route_pairs},
    frr, keepalived,
    lab::{Gw, Lab, Options, Side},
    netns::Netns,
    root_alone, topology,
};

fn lab(ha: HaKind) -> Lab {
    Lab::for_test(
        if ha == HaKind::Bgp { "bgp" } else { "vrrp" },
        Options {
            tunnels: 2,
            pairs: 2,
            ha: Some(ha),
            ..Options::default()
        },
    )
}

/// The first pair's gateway on site A.
const A1: Gw = Gw {
    pair: 0,
    side: Side::A,
};

/// Whether gateway `g`'s marker routes are in its kernel.
fn markers(lab: &Lab, g: Gw) -> usize {
    let ns = lab.gw(g);
    ["-4", "-6"]
        .iter()
        .map(|f| {
            lab.ip(&ns, &[f, "route", "show", "proto", "76"])
                .lines()
                .count()
        })
        .sum()
}

fn check(ok: bool, what: &str, lab: &Lab) {
    assert!(ok, "{what}\n{}", lab.diagnose());
}

/// Tries in all of a fault whose tries the machine disturbs.
const TRIES: usize = 3;

/// `fault` injected, then put right: the first try the machine left alone
/// (no withdrawal on the other pair and no BFD session down that the fault
/// does not cause: see `failover::bystander_events`; two loaded cores can
/// starve a gateway's OpenVPN, bfdd or loader past the 0.3 s that BFD and
/// the probes allow), else the last. `during` says what is wrong while the fault lasts. Under
/// VRRP one try: the address stays where a fault moved it, so a second try
/// would start elsewhere.
fn undisturbed(
    lab: &mut Lab,
    fault: Fault,
    trial: &Trial,
    during: impl Fn(&Lab) -> Option<String>,
) -> (Outcome, Rejoin) {
    let tries = if lab.options.routing() == Some(HaKind::Bgp) {
        TRIES
    } else {
        1
    };
    for i in 1..=tries {
        let out = failover::inject(lab, fault, trial);
        eprintln!("{}", out.summary());
        let wrong = during(lab);
        let back = failover::restore(lab, fault, trial);
        eprintln!("  put right: {}", back.summary());
        if out.disturbed + back.disturbed == 0 || i == tries {
            if let Some(wrong) = wrong {
                check(false, &wrong, lab);
            }
            return (out, back);
        }
        eprintln!("  try {i} of {tries} void: disturbed by the machine; again");
        let pairs = failover::all_pairs(lab);
        for side in Side::BOTH {
            let _ = failover::wait_route(
                lab,
                side,
                &pairs,
                std::time::Instant::now(),
                Duration::from_secs(20),
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    unreachable!("the last try returns")
}

/// Up (both routers 2-way ECMP for both families within 15 s), then each
/// graceful and ungraceful event on gateway A1 and its pair, put right in
/// turn, and last A1 gone for good.
#[test]
fn two_pairs_behind_bgp_routers_share_the_load_and_survive_each_fault() {
    let Some(_serial) = root_alone() else { return };
    let mut lab = lab(HaKind::Bgp);
    up(&lab);
    let trial = Trial::default();
    drains(&mut lab, &trial);
    restarts(&mut lab, &trial);
    lan_down(&mut lab, &trial);
    pair_fails(&mut lab, &trial);
    gateway_gone(&mut lab, &trial);
}

/// Both routers have 2-way ECMP for both families within 15 s of FRR's
/// start on every gateway and router (the lab starts the instances one
/// after another; how long that took is printed beside).
fn up(lab: &Lab) {
    let first = lab.routing_started.expect("FRR started");
    let started = lab.routing_all_started.expect("FRR started");
    for side in Side::BOTH {
        let left = Duration::from_secs(15).saturating_sub(started.elapsed());
        let up = failover::wait_route(lab, side, &[0, 1], started, left);
        check(
            up.is_some_and(|d| d <= Duration::from_secs(15)),
            &format!("router {side}: no 2-way ECMP within 15 s"),
            lab,
        );
        let six = process_wait(|| next_hops(lab, side, true).len() == 2);
        check(six, &format!("router {side}: IPv6 not 2-way"), lab);
        eprintln!(
            "router {side}: 2-way ECMP {:?} after FRR started everywhere ({:?} to start it)",
            up.unwrap(),
            started - first
        );
    }
}

/// Graceful drains: nothing lost, transfers intact, back with nothing lost.
fn drains(lab: &mut Lab, trial: &Trial) {
    for fault in [Fault::Maintenance(A1), Fault::Sigterm(A1)] {
        let (out, back) = undisturbed(lab, fault, trial, |_| None);
        check(
            out.lost() == 0,
            &format!("a drain lost pings: {}", out.details()),
            lab,
        );
        // A1 withdraws, and B1 with it: A1's probes say it drains.
        check(
            out.left.iter().all(Option::is_some),
            &format!("a router kept pair 1: {}", out.details()),
            lab,
        );
        check(out.transfers.iter().all(|t| t.1), &out.summary(), lab);
        check(
            back.back.iter().all(Option::is_some),
            "the pair did not come back",
            lab,
        );
        check(
            back.lost() == 0,
            &format!("the rejoin lost pings: {}", back.summary()),
            lab,
        );
    }
}

/// A loader killed outright: the datapath forwards, the announcement stays.
/// bgpd killed: the router drops A1 at once (the session closes), nothing
/// is lost; back within 10 s of bgpd's restart.
fn restarts(lab: &mut Lab, trial: &Trial) {
    let (out, _) = undisturbed(lab, Fault::KillLoader(A1), trial, |lab| {
        if markers(lab, A1) != 2 {
            return Some("the marker routes left with the loader".to_owned());
        }
        Side::BOTH
            .iter()
            .any(|&side| route_pairs(lab, side) != [0, 1])
            .then(|| "the announcement changed".to_owned())
    });
    check(out.lost() == 0, &out.summary(), lab);
    let (out, back) = undisturbed(lab, Fault::KillBgpd(A1), trial, |_| None);
    check(out.lost() == 0, &out.summary(), lab);
    check(
        back.back[0].is_some_and(|d| d <= Duration::from_secs(10)),
        &format!("not announced again within 10 s: {:?}", back.back),
        lab,
    );
    check(
        back.lost() == 0,
        &format!("bgpd's return lost pings: {}", back.summary()),
        lab,
    );
}

/// A1's LAN link down: router A drops A1 by BFD (the 0.4 s: BFD's
/// 0.3 s, and here the fault's own command and the 10 ms polling of the
/// router's routes on top, 412 ms seen once: 0.5 s), router B drops B1
/// within 0.5 s (A1's probes say its LAN is down, and B1 withdraws);
/// nothing lost elsewhere, transfers intact, back with nothing lost once
/// the link is up.
fn lan_down(lab: &mut Lab, trial: &Trial) {
    let (out, back) = undisturbed(lab, Fault::LanDown(A1), trial, |_| None);
    for (side, left, bound) in [(Side::A, out.left[0], 500), (Side::B, out.left[1], 500)] {
        check(
            left.is_some_and(|d| d <= Duration::from_millis(bound)),
            &format!(
                "router {side} kept pair 1 past {bound} ms: {}",
                out.details()
            ),
            lab,
        );
    }
    check(out.worst_elsewhere() == 0, &out.details(), lab);
    check(out.transfers.iter().all(|t| t.1), &out.summary(), lab);
    check(
        back.back.iter().all(Option::is_some),
        "pair 1 did not come back with the LAN",
        lab,
    );
    check(
        back.lost() == 0,
        &format!("the rejoin lost pings: {}", back.summary()),
        lab,
    );
}

/// Every OpenVPN of pair 1 killed on A1: both routers drop pair 1 within
/// 1 s; streams elsewhere lose nothing, those on pair 1 at most 50; the
/// pair rejoins with nothing lost.
fn pair_fails(lab: &mut Lab, trial: &Trial) {
    let (out, back) = undisturbed(lab, Fault::KillOpenVpn(A1), trial, |_| None);
    for (side, left) in Side::BOTH.iter().zip(out.left) {
        check(
            left.is_some_and(|d| d <= Duration::from_secs(1)),
            &format!("router {side} kept pair 1: {}", out.summary()),
            lab,
        );
    }
    check(out.worst_elsewhere() == 0, &out.details(), lab);
    check(out.worst_on_pair() <= 50, &out.summary(), lab);
    check(out.transfers.iter().all(|t| t.1), &out.summary(), lab);
    check(
        out.transfers.iter().any(|t| t.0) || out.streams.iter().any(|s| s.on_pair),
        "nothing crossed pair 1 before the fault: the test saw nothing",
        lab,
    );
    check(
        back.back.iter().all(Option::is_some),
        "pair 1 did not rejoin",
        lab,
    );
    check(
        back.lost() == 0,
        &format!("the rejoin lost pings: {}", back.summary()),
        lab,
    );
}

/// A1 gone: at most 0.6 s lost, no stale route after 1 s.
fn gateway_gone(lab: &mut Lab, trial: &Trial) {
    let out = failover::inject(lab, Fault::GatewayGone(A1), trial);
    eprintln!("{}", out.summary());
    check(
        out.loss_time() <= Duration::from_millis(600),
        &out.summary(),
        lab,
    );
    check(
        out.left
            .iter()
            .all(|l| l.is_some_and(|d| d <= Duration::from_secs(1))),
        &format!("a stale route after 1 s: {}", out.summary()),
        lab,
    );
    check(out.worst_elsewhere() == 0, &out.details(), lab);
    check(out.transfers.iter().all(|t| t.1), &out.summary(), lab);
}

/// A site's segment (the router's bridge) keeps its address whichever
/// gateway leaves it: a bridge left to pick its own takes its lowest port's
/// and changes when that port goes, and the pair that stayed then sends to
/// an address nobody has until it asks again (a ping lost on its streams).
#[test]
fn a_segment_keeps_its_address_when_a_gateway_leaves() {
    let Some(_serial) = root_alone() else { return };
    let router = Netns::new("seg");
    let gateways = [Netns::new("seg"), Netns::new("seg")];
    topology::bridge(router.name(), "gws", &[]);
    for (i, gw) in gateways.iter().enumerate() {
        let port = format!("to-g{i}");
        topology::veth(
            &topology::End::new(router.name(), &port, &[]),
            &topology::End::new(gw.name(), "lan", &[]),
        );
        topology::plug(router.name(), &port, "gws");
    }
    let address = || topology::link_address(router.name(), "gws");
    let before = address();
    for i in 0..gateways.len() {
        router.ip(&["link", "del", &format!("to-g{i}")]);
        assert_eq!(address(), before, "after to-g{i} left");
    }
}

/// Polls for up to 5 s.
fn process_wait(done: impl FnMut() -> bool) -> bool {
    ovpn_lb_tests::process::wait_until(Duration::from_secs(5), Duration::from_millis(50), done)
}

/// VRRP: the site's virtual address moves off a gateway whose pair fails
/// (at most 1.2 s lost) and off one that drains (nothing lost).
#[test]
fn two_pairs_under_vrrp_hand_the_address_over() {
    let Some(_serial) = root_alone() else { return };
    let mut lab = lab(HaKind::Vrrp);
    for g in lab.gateways() {
        keepalived::check_config(&lab.gw(g), &lab.keepalived(g).config)
            .unwrap_or_else(|e| panic!("keepalived -t on {}: {e}", g.name()));
    }
    let trial = Trial::default();
    for side in Side::BOTH {
        check(
            route_pairs(&lab, side) == [0],
            "pair 1 holds the addresses",
            &lab,
        );
    }
    // Pair 1's OpenVPN dies on A1: A1 withdraws at once, B1 once its probes
    // go unanswered; both addresses move to pair 2.
    let (out, back) = undisturbed(&mut lab, Fault::KillOpenVpn(A1), &trial, |_| None);
    check(
        out.left.iter().all(Option::is_some),
        &format!("an address stayed on pair 1: {}", out.summary()),
        &lab,
    );
    check(
        out.loss_time() <= Duration::from_millis(1200),
        &format!("more than 1.2 s lost: {}", out.summary()),
        &lab,
    );
    check(out.transfers.iter().all(|t| t.1), &out.summary(), &lab);
    check(
        back.back[0].is_some(),
        "gateway A1 did not become healthy again",
        &lab,
    );
    check(back.lost() == 0, &back.summary(), &lab);
    // The address holder A2 drains: it goes back to A1, nothing lost.
    let a2 = Gw::new(1, Side::A);
    let (out, _) = undisturbed(&mut lab, Fault::Maintenance(a2), &trial, |_| None);
    check(
        out.left[0].is_some(),
        &format!("A2 kept the address: {}", out.summary()),
        &lab,
    );
    check(
        out.lost() == 0,
        &format!("a drain lost pings: {}", out.summary()),
        &lab,
    );
    check(out.transfers.iter().all(|t| t.1), &out.summary(), &lab);
}

/// What the lab runs passes FRR's own parser; so do the routers' parts.
#[test]
fn generated_frr_configurations_pass_frrs_own_check() {
    if !Path::new("/usr/bin/vtysh").exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "vtysh is missing: cargo xtask setup installs frr"
        );
        eprintln!("SKIPPED: no vtysh (cargo xtask setup installs frr)");
        return;
    }
    let mut r = Request::new(
        ["192.0.2.1", "198.51.100.1"],
        ["lan", "eth1"],
        [
            &["10.1.0.0/24", "fd00:1::/64"],
            &["10.2.0.0/24", "fd00:2::/64"],
        ],
    );
    r.pairs = 3;
    r.tunnels = 2;
    r.wan = [
        vec!["192.0.2.1".into(), "192.0.2.2".into(), "192.0.2.3".into()],
        vec![
            "198.51.100.1".into(),
            "198.51.100.2".into(),
            "198.51.100.3".into(),
        ],
    ];
    r.routing.router = [
        vec!["10.1.255.1".into(), "fd00:1:ff::1".into()],
        vec!["10.2.255.1".into(), "fd00:2:ff::1".into()],
    ];
    r.routing.gateways = [1, 2].map(|site| {
        (2..5)
            .map(|h| format!("10.{site}.255.{h},fd00:{site}:ff::{h}"))
            .collect()
    });
    let g = generate::generate(&r).unwrap();
    let dir = std::env::temp_dir().join(format!("ovpnlb-frr-check-{}", std::process::id()));
    for files in g.directories() {
        let root = dir.join(&files.name);
        files.write_under(&root).unwrap();
        let conf_dir = if files.name.starts_with("site-") {
            // A router's configuration: a hostname, then the part as written.
            let text = std::fs::read_to_string(root.join(layout::ROUTER_FRR)).unwrap();
            let etc = root.join("etc");
            std::fs::create_dir_all(&etc).unwrap();
            std::fs::write(etc.join("frr.conf"), format!("hostname r\n{text}")).unwrap();
            etc
        } else {
            root.join("etc/frr")
        };
        frr::check_config(&conf_dir).unwrap_or_else(|e| panic!("{}: {e}", files.name));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
