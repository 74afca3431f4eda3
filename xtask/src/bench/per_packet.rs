//! ns/packet of each datapath path through `BPF_PROG_TEST_RUN`, against an
//! empty tc program (the floor), and how that scales with tunnels and flows.
//!
//! Each measurement is many single runs (`repeat` = 1): the kernel rebuilds the
//! skb for every call, so a rewriting path sees a fresh packet each time
//! (with `repeat` > 1 it would rewrite its own output and fall onto another
//! path). The kernel times the program run itself, not the syscall.

use std::{fmt::Write as _, path::Path, time::Instant};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    programs::{
        Program, ProgramError, SchedClassifier, TestRun as _, TestRunOptions, TestRunResult, Xdp,
    },
};
use ovpn_lb::datapath::Datapath;
use ovpn_lb_common::{
    Prefix4, Prefix6, TunnelConfig,
    maps::{Spray, framing, programs, route},
    queue::{Rings, count},
    schedule,
};
use ovpn_lb_tests::{
    fixture::{LAN_DEVICE, site, tap_mac, tap_peer_mac, tunnel},
    netns::{self, Netns},
    packets::{GATEWAY_MAC, L4, V4, V6, eth4, eth6, with_partial_checksum},
    process,
};

use super::{median, spread};

/// Tun devices made for the scaling runs.
const MAX_DEVICES: usize = 64;
/// Single runs per path per round.
const RUNS: u32 = 20_000;

struct Bench {
    datapath: Datapath,
    floor: Ebpf,
    ifindex: Vec<u32>,
    /// The LAN device (the gateway's MAC), so tc sees LAN frames as for this host.
    lan_ifindex: u32,
}

/// A program under either hook.
#[derive(Clone, Copy)]
enum Prog<'a> {
    Tc(&'a SchedClassifier),
    Xdp(&'a Xdp),
}

impl Prog<'_> {
    fn test_run(self, frame: &[u8], out: &mut [u8], ifindex: u32) -> Result<TestRunResult> {
        let ctx = match self {
            Prog::Tc(_) => {
                let mut c = vec![0u8; 192];
                c[40..44].copy_from_slice(&ifindex.to_ne_bytes());
                c
            }
            // struct xdp_md: data, data_end, data_meta, ingress_ifindex, ...
            Prog::Xdp(_) => [0, u32::try_from(frame.len())?, 0, ifindex.max(1), 0, 0]
                .iter()
                .flat_map(|f| f.to_ne_bytes())
                .collect(),
        };
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        };
        match self {
            Prog::Tc(p) => p.test_run(opts),
            Prog::Xdp(p) => p.test_run(opts),
        }
        .map_err(|e| anyhow!("BPF_PROG_TEST_RUN: {e:?}"))
    }
}

fn run_ns(prog: Prog, frames: &[Vec<u8>], ifindex: u32) -> Result<f64> {
    let mut out = vec![0u8; 4096];
    let mut total = 0u128;
    for i in 0..RUNS as usize {
        let r = prog.test_run(&frames[i % frames.len()], &mut out, ifindex)?;
        total += r.duration.as_nanos();
    }
    #[expect(clippy::cast_precision_loss, reason = "nanosecond averages")]
    Ok(total as f64 / f64::from(RUNS))
}

impl Bench {
    fn new(floor_object: &Path) -> Result<Self> {
        let mut datapath = Datapath::load()?;
        let index = |name: &str| {
            let name = std::ffi::CString::new(name).expect("no NUL");
            unsafe { libc::if_nametoindex(name.as_ptr()) }
        };
        let ifindex: Vec<u32> = (0..MAX_DEVICES)
            .map(|k| netns::ifindex(&format!("ovb{k}")))
            .collect();
        let lan_ifindex = index(LAN_DEVICE);
        datapath.set_remote_v4(Prefix4::new([10, 20, 0, 0], 16), route::SPRAY)?;
        datapath.set_remote_v6(
            Prefix6::new([0xfd, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 48),
            route::SPRAY,
        )?;
        for (k, &ifx) in ifindex.iter().enumerate() {
            let id = u32::try_from(k)?;
            // The MTU as the loader writes it (tun devices start at 1500).
            let t = TunnelConfig {
                mtu: 1500,
                ..tunnel(id, ifx)
            };
            datapath.set_tunnel(id, &t, None)?;
            datapath.set_our_xlat_v4(t.xlat_v4, id)?;
        }
        let mut floor = Ebpf::load_file(floor_object).context("loading the floor program")?;
        for name in ["bench_floor", "bench_floor_clock"] {
            let prog: &mut SchedClassifier = floor
                .program_mut(name)
                .ok_or_else(|| anyhow!("no {name}"))?
                .try_into()?;
            prog.load()?;
        }
        let prog: &mut Xdp = floor
            .program_mut("bench_floor_xdp")
            .ok_or_else(|| anyhow!("no bench_floor_xdp"))?
            .try_into()?;
        prog.load()?;
        Ok(Self {
            datapath,
            floor,
            ifindex,
            lan_ifindex,
        })
    }

    /// Spray setting, the first `tunnels` in the schedule, with `framing`.
    fn configure(&mut self, tunnels: usize, spray: Spray, framing_kind: u32) -> Result<()> {
        self.datapath.set_site(&site(spray))?;
        for k in 0..tunnels.max(1) {
            let id = u32::try_from(k)?;
            let mut t = TunnelConfig {
                mtu: 1500,
                ..tunnel(id, self.ifindex[k])
            };
            if framing_kind == framing::TAP {
                t.framing = framing::TAP;
                t.mac = tap_mac(id);
                t.peer_mac = tap_peer_mac(id);
            }
            self.datapath.set_tunnel(id, &t, None)?;
        }
        self.datapath
            .publish_schedule(&schedule::build(&vec![1; tunnels]).map_err(|e| anyhow!("{e:?}"))?)?;
        if spray == Spray::Packet {
            self.fill_rings(tunnels)?;
        }
        Ok(())
    }

    /// Rings as the accounting leaves them under load, so that packet spray
    /// prices every tunnel in full: some backlog, a measured drain rate, a
    /// reader reading (never taken for stopped).
    fn fill_rings(&mut self, tunnels: usize) -> Result<()> {
        let mut rings = Rings::default();
        for (k, q) in rings.tunnels.iter_mut().enumerate().take(tunnels) {
            let id = u64::try_from(k)?;
            q.deq.read = 1000 * count(1500);
            q.enq.queued = q.deq.read + (id % 5 + 1) * count(1500);
            q.deq.queued_at_read = q.enq.queued;
            q.deq.cost_ps = 1000 + id * 10;
            q.deq.stalled_after_ns = u64::MAX;
        }
        self.datapath.set_rings(&rings)
    }

    /// An empty program of the floor object: `bench_floor` (tc) or
    /// `bench_floor_xdp`.
    fn floor_program<'a, P>(&'a self, name: &str) -> Result<&'a P>
    where
        &'a P: TryFrom<&'a Program, Error = ProgramError>,
    {
        let program = self
            .floor
            .program(name)
            .ok_or_else(|| anyhow!("no {name}"))?;
        Ok(program.try_into()?)
    }

    fn prog(&mut self, name: &str) -> Result<Prog<'_>> {
        if programs::XDP.contains(&name) {
            Ok(Prog::Xdp(self.datapath.xdp_program(name)?))
        } else {
            Ok(Prog::Tc(self.datapath.program(name)?))
        }
    }

    fn info(&mut self, name: &str) -> Result<(u32, u32)> {
        let i = match self.prog(name)? {
            Prog::Tc(p) => p.info()?,
            Prog::Xdp(p) => p.info()?,
        };
        Ok((i.size_translated().unwrap_or(0) / 8, i.size_jitted()))
    }
}

fn tcp4(sport: u16) -> Vec<u8> {
    eth4(
        &V4::new(
            "192.168.10.5",
            "10.20.30.7",
            L4::Tcp {
                sport,
                dport: 443,
                payload: vec![0; 64],
            },
        )
        .datagram(),
    )
}

/// A measured path: how to set the datapath up, which program, which packets.
struct Path_ {
    name: &'static str,
    program: &'static str,
    tunnels: usize,
    spray: Spray,
    frames: Vec<Vec<u8>>,
    /// Tunnel device whose ifindex the packet arrives on (tunnel ingress).
    arrives_on: Option<usize>,
    /// `framing::TUN` or `framing::TAP` for the scheduled tunnels.
    framing: u32,
}

fn tcp4_with(ttl: u8, payload: usize) -> Vec<u8> {
    let l4 = L4::Tcp {
        sport: 40000,
        dport: 443,
        payload: vec![0; payload],
    };
    eth4(
        &V4::new("192.168.10.5", "10.20.30.7", l4)
            .with_hops(ttl)
            .datagram(),
    )
}

fn path(
    name: &'static str,
    program: &'static str,
    tunnels: usize,
    spray: Spray,
    frames: Vec<Vec<u8>>,
) -> Path_ {
    Path_ {
        name,
        program,
        tunnels,
        spray,
        frames,
        arrives_on: None,
        framing: framing::TUN,
    }
}

/// The same path onto TAP tunnels.
fn on_tap(p: Path_) -> Path_ {
    Path_ {
        framing: framing::TAP,
        ..p
    }
}

/// tc on tun, tc on TAP, XDP on TAP: the choice `mode` makes.
fn hook_paths() -> Vec<Path_> {
    let restore = eth4(
        &V4::new(
            "100.65.1.7",
            "192.168.10.5",
            L4::Tcp {
                sport: 443,
                dport: 40000,
                payload: vec![0; 64],
            },
        )
        .datagram(),
    );
    let offloaded = eth4(&with_partial_checksum(
        &V4::new(
            "192.168.10.5",
            "10.20.30.7",
            L4::Tcp {
                sport: 40000,
                dport: 443,
                payload: vec![0; 1400],
            },
        )
        .datagram(),
    ));
    let (lan, lan_xdp) = (programs::LAN_INGRESS, programs::LAN_INGRESS_XDP);
    vec![
        path(
            "spray, tc on tun",
            lan,
            4,
            Spray::RoundRobin,
            vec![tcp4(40000)],
        ),
        on_tap(path(
            "spray, tc on TAP",
            lan,
            4,
            Spray::RoundRobin,
            vec![tcp4(40000)],
        )),
        on_tap(path(
            "spray, XDP on TAP",
            lan_xdp,
            4,
            Spray::RoundRobin,
            vec![tcp4(40000)],
        )),
        on_tap(path(
            "spray, XDP on TAP, 1400 B offloaded checksum completed",
            lan_xdp,
            4,
            Spray::RoundRobin,
            vec![offloaded],
        )),
        Path_ {
            arrives_on: Some(1),
            ..on_tap(path(
                "restore, tc on TAP",
                programs::TUNNEL_INGRESS_ETH,
                4,
                Spray::RoundRobin,
                vec![restore.clone()],
            ))
        },
        Path_ {
            arrives_on: Some(1),
            ..on_tap(path(
                "restore, XDP on TAP (to the kernel)",
                programs::TUNNEL_INGRESS_XDP,
                4,
                Spray::RoundRobin,
                vec![restore],
            ))
        },
    ]
}

#[expect(clippy::too_many_lines, reason = "one table of paths")]
fn paths() -> (Vec<Path_>, Vec<Path_>) {
    let l4 = |sport, dport| L4::Tcp {
        sport,
        dport,
        payload: vec![0; 64],
    };
    let tcp6 = eth6(&V6::new("fd00:10::5", "fd00:20:0:30::7", l4(40000, 443)).datagram());
    let restore = eth4(&V4::new("100.65.1.7", "192.168.10.5", l4(443, 40000)).datagram());
    let other = eth4(&V4::new("192.168.10.5", "10.99.0.7", l4(40000, 443)).datagram());
    let sprayed = eth4(&V4::new("100.64.1.5", "10.20.30.7", l4(40000, 443)).datagram());
    let lan = programs::LAN_INGRESS;
    let main = vec![
        path(
            "IPv4 TCP spray",
            lan,
            4,
            Spray::RoundRobin,
            vec![tcp4(40000)],
        ),
        path("IPv6 TCP spray", lan, 4, Spray::RoundRobin, vec![tcp6]),
        path(
            "packet spray (earliest departure, IPv4 TCP)",
            lan,
            4,
            Spray::Packet,
            vec![tcp4(40000)],
        ),
        path(
            "flow mode (IPv4 TCP)",
            lan,
            4,
            Spray::Flow,
            vec![tcp4(40000)],
        ),
        Path_ {
            arrives_on: Some(1),
            ..path(
                "restore on tunnel ingress",
                programs::TUNNEL_INGRESS_ETH,
                4,
                Spray::RoundRobin,
                vec![restore],
            )
        },
        // Tunnel egress sees every sprayed packet again: what that costs.
        Path_ {
            arrives_on: Some(1),
            ..path(
                "egress, sprayed packet passing",
                programs::TUNNEL_EGRESS_ETH,
                4,
                Spray::RoundRobin,
                vec![sprayed],
            )
        },
        Path_ {
            arrives_on: Some(1),
            ..path(
                "egress, LAN-sourced packet translated",
                programs::TUNNEL_EGRESS_ETH,
                4,
                Spray::RoundRobin,
                vec![tcp4(40000)],
            )
        },
        path(
            "pass-through (not remote)",
            lan,
            4,
            Spray::RoundRobin,
            vec![other],
        ),
        // Where the spray path's time goes: each row stops one stage later.
        path(
            "stage: parse + classify (TTL 1, passed)",
            lan,
            4,
            Spray::RoundRobin,
            vec![tcp4_with(1, 64)],
        ),
        path(
            "stage: + schedule (no tunnel, dropped)",
            lan,
            0,
            Spray::RoundRobin,
            vec![tcp4(40000)],
        ),
        path(
            "stage: + MTU check (over MTU, passed)",
            lan,
            4,
            Spray::RoundRobin,
            vec![tcp4_with(64, 1500)],
        ),
    ];
    // 100,000 distinct 5-tuples: 50,000 source ports on each of two hosts.
    let many: Vec<Vec<u8>> = (0..100_000u32)
        .map(|i| {
            let host = format!("192.168.10.{}", 5 + i / 50_000);
            let sport = u16::try_from(1024 + i % 50_000).unwrap_or(0);
            eth4(&V4::new(&host, "10.20.30.7", l4(sport, 443)).datagram())
        })
        .collect();
    let scaling = vec![
        path(
            "spray, 1 tunnel",
            lan,
            1,
            Spray::RoundRobin,
            vec![tcp4(40000)],
        ),
        path(
            "spray, 4 tunnels",
            lan,
            4,
            Spray::RoundRobin,
            vec![tcp4(40000)],
        ),
        path(
            "spray, 16 tunnels",
            lan,
            16,
            Spray::RoundRobin,
            vec![tcp4(40000)],
        ),
        path(
            "spray, 64 tunnels",
            lan,
            64,
            Spray::RoundRobin,
            vec![tcp4(40000)],
        ),
        path("flow mode, 1 flow", lan, 4, Spray::Flow, vec![tcp4(40000)]),
        path("flow mode, 100,000 flows", lan, 4, Spray::Flow, many),
        // Every tunnel compared up to eight; two and the last pick above.
        path(
            "packet spray, 1 tunnel",
            lan,
            1,
            Spray::Packet,
            vec![tcp4(40000)],
        ),
        path(
            "packet spray, 4 tunnels",
            lan,
            4,
            Spray::Packet,
            vec![tcp4(40000)],
        ),
        path(
            "packet spray, 8 tunnels",
            lan,
            8,
            Spray::Packet,
            vec![tcp4(40000)],
        ),
        path(
            "packet spray, 16 tunnels",
            lan,
            16,
            Spray::Packet,
            vec![tcp4(40000)],
        ),
        path(
            "packet spray, 64 tunnels",
            lan,
            64,
            Spray::Packet,
            vec![tcp4(40000)],
        ),
    ];
    (main, scaling)
}

/// Median ns/packet of each path and of the floor, per round.
fn measure(
    bench: &mut Bench,
    paths: &[Path_],
    rounds: usize,
    label: &str,
) -> Result<(Vec<Vec<f64>>, Vec<f64>)> {
    let (per_path, floors) = measure_with_floors(bench, paths, rounds, label)?;
    Ok((per_path, floors.into_iter().map(|f| f.0).collect()))
}

/// ns/packet per path, one sample per round.
type Samples = Vec<Vec<f64>>;

/// As [`measure`], with both floors per round: (tc, XDP).
fn measure_with_floors(
    bench: &mut Bench,
    paths: &[Path_],
    rounds: usize,
    label: &str,
) -> Result<(Samples, Vec<(f64, f64)>)> {
    let mut per_path = vec![Vec::new(); paths.len()];
    let mut floor = Vec::new();
    for round in 0..rounds {
        let f = run_ns(
            Prog::Tc(bench.floor_program::<SchedClassifier>("bench_floor")?),
            &[tcp4(40000)],
            0,
        )?;
        let fx = run_ns(
            Prog::Xdp(bench.floor_program::<Xdp>("bench_floor_xdp")?),
            &[tcp4(40000)],
            0,
        )?;
        floor.push((f, fx));
        for (i, p) in paths.iter().enumerate() {
            bench.configure(p.tunnels, p.spray, p.framing)?;
            // LAN frames arrive on the LAN device (tc marks them for this
            // host by its MAC); XDP LAN runs use loopback's receive queue.
            let ifindex = match p.arrives_on {
                Some(k) => bench.ifindex[k],
                None if programs::XDP.contains(&p.program) => 1,
                None => bench.lan_ifindex,
            };
            let ns = run_ns(bench.prog(p.program)?, &p.frames, ifindex)?;
            per_path[i].push(ns);
        }
        println!(
            "bench: {label} round {}/{rounds}: floors tc {f:.1} ns, XDP {fx:.1} ns",
            round + 1
        );
    }
    Ok((per_path, floor))
}

/// The floor with a clock read and the floor itself, interleaved over
/// `rounds`: (median, median) ns/packet.
fn clock_read(bench: &mut Bench, rounds: usize) -> Result<(f64, f64)> {
    let (mut clock, mut floor) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for (name, out) in [
            ("bench_floor_clock", &mut clock),
            ("bench_floor", &mut floor),
        ] {
            let prog = Prog::Tc(bench.floor_program::<SchedClassifier>(name)?);
            out.push(run_ns(prog, &[tcp4(40000)], 0)?);
        }
    }
    Ok((median(clock), median(floor)))
}

fn info(bench: &mut Bench, program: &str) -> Result<(u32, u32)> {
    bench.info(program)
}

/// Runs both tables; returns Markdown and (path, ratio) pairs for the plot.
pub fn run(floor_object: &Path, rounds: usize) -> Result<(String, Vec<(String, f64)>)> {
    let started = Instant::now();
    let ns = Netns::new("bench");
    for k in 0..MAX_DEVICES {
        ns.ip(&["tuntap", "add", "dev", &format!("ovb{k}"), "mode", "tun"]);
    }
    ns.ip(&["tuntap", "add", "dev", LAN_DEVICE, "mode", "tap"]);
    let mac = GATEWAY_MAC.map(|b| format!("{b:02x}")).join(":");
    ns.ip(&["link", "set", LAN_DEVICE, "address", &mac]);
    let floor_object = floor_object.to_path_buf();
    ns.enter(move || -> Result<(String, Vec<(String, f64)>)> {
        let _ = process::pin_thread(0);
        let mut bench = Bench::new(&floor_object)?;
        let (main, scaling) = paths();
        let (main_ns, floor_main) = measure(&mut bench, &main, rounds, "per-packet")?;
        let (scale_ns, floor_scale) = measure(&mut bench, &scaling, rounds, "scaling")?;
        let floor = median(floor_main.iter().chain(&floor_scale).copied().collect());
        let floor_info = {
            let i = bench.floor_program::<SchedClassifier>("bench_floor")?.info()?;
            (i.size_translated().unwrap_or(0) / 8, i.size_jitted())
        };
        let clock = clock_read(&mut bench, rounds)?;
        let mut md = String::new();
        let mut plot = Vec::new();
        let _ = writeln!(md, "Per packet through `BPF_PROG_TEST_RUN` (tc), {RUNS} single runs per path per round, {rounds} rounds interleaved, median (min-max). Floor: an empty tc program, {floor:.1} ns ({} insns, {} B jited).\n", floor_info.0, floor_info.1);
        let _ = writeln!(md, "| path | ns/packet | above floor | program / floor | program | xlated insns | jited bytes |");
        let _ = writeln!(md, "| --- | ---: | ---: | ---: | --- | ---: | ---: |");
        for (p, samples) in main.iter().zip(&main_ns) {
            let (lo, hi) = spread(samples);
            let m = median(samples.clone());
            let ratios: Vec<f64> = samples.iter().zip(&floor_main).map(|(s, f)| s / f).collect();
            let (insns, jited) = info(&mut bench, p.program)?;
            let _ = writeln!(md, "| {} | {m:.1} ({lo:.1}-{hi:.1}) | {:.1} | {:.2} | `{}` | {insns} | {jited} |", p.name, m - floor, median(ratios.clone()), p.program);
            plot.push((p.name.to_owned(), median(ratios)));
        }
        let _ = writeln!(md, "\nFloor + clock read (the empty tc program with one `bpf_ktime_get_ns`, same method, interleaved with the floor): {:.1} ns, {:+.1} ns above the floor.", clock.0, clock.0 - clock.1);
        let _ = writeln!(md, "\nScaling (same method): the work per packet should not grow with tunnels or flows.\n");
        let _ = writeln!(md, "| case | ns/packet | above floor | vs the first row of its group |");
        let _ = writeln!(md, "| --- | ---: | ---: | ---: |");
        // A group is the rows whose names agree up to the comma.
        let group = |name: &str| name.split(',').next().unwrap_or(name).to_owned();
        for (p, samples) in scaling.iter().zip(&scale_ns) {
            let m = median(samples.clone());
            let first = scaling.iter().position(|q| group(q.name) == group(p.name)).unwrap_or(0);
            let base = median(scale_ns[first].clone());
            let _ = writeln!(md, "| {} | {m:.1} | {:.1} | {:+.1} % |", p.name, m - floor, 100.0 * (m / base - 1.0));
        }
        let hooks = hook_paths();
        let (hook_ns, hook_floors) = measure_with_floors(&mut bench, &hooks, rounds, "hooks")?;
        let tc_floor = median(hook_floors.iter().map(|f| f.0).collect());
        let xdp_floor = median(hook_floors.iter().map(|f| f.1).collect());
        let _ = writeln!(md, "\nBy hook (same method; each program against the empty program of its own hook: tc {tc_floor:.1} ns, XDP {xdp_floor:.1} ns). `BPF_PROG_TEST_RUN` times the program only: what XDP saves by not building a socket buffer shows in the forwarding rate, not here.\n");
        let _ = writeln!(md, "| path | ns/packet | above its floor | program / floor | program | xlated insns | jited bytes |");
        let _ = writeln!(md, "| --- | ---: | ---: | ---: | --- | ---: | ---: |");
        for (p, samples) in hooks.iter().zip(&hook_ns) {
            let xdp = programs::XDP.contains(&p.program);
            let floors: Vec<f64> = hook_floors.iter().map(|f| if xdp { f.1 } else { f.0 }).collect();
            let m = median(samples.clone());
            let (lo, hi) = spread(samples);
            let ratio = median(samples.iter().zip(&floors).map(|(s, f)| s / f).collect());
            let (insns, jited) = info(&mut bench, p.program)?;
            let _ = writeln!(md, "| {} | {m:.1} ({lo:.1}-{hi:.1}) | {:.1} | {ratio:.2} | `{}` | {insns} | {jited} |", p.name, m - median(floors), p.program);
        }
        let _ = writeln!(md, "\nPer-packet part: {:.0} s.", started.elapsed().as_secs_f64());
        Ok((md, plot))
    })
}
