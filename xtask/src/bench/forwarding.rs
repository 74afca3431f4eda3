//! Forwarding rate: packets/s and CPU time per forwarded packet through a
//! veth/namespace topology, for the kernel's own ways of spreading a LAN over
//! N devices and for ovpn-lb, as ratios to plain routing to one device.
//!
//! ```text
//!  generator netns                         gateway netns
//!  trafgen ─ gen0 ══════ veth ══════ lan0 ─ variant ─┬─> dev0 ─ reader thread
//!                                                    ├─> dev1 ─ reader thread
//!                                                    └─> devN-1 (tun or tap, opened by
//!                                                        this process, sampled by readers)
//! ```
//!
//! **Traffic.** trafgen (netsniff-ng) sends 1024 distinct UDP flows (source
//! host, source and destination ports and destination vary) from the LAN
//! prefix to the remote prefix, in four mixes: IPv4 and IPv6, 64-byte and
//! 1400-byte frames (the size handed to the veth, no FCS). It runs one worker,
//! which trafgen itself pins to CPU 0, with blocking sends (`-t 0ns`, its
//! "slow path"): its zero-copy ring needs a socket send buffer it can only get
//! by raising `net.core.wmem_max`, which is read-only inside a network
//! namespace, and a full buffer makes the ring path give up.
//!
//! **Where the work runs, and how it is timed.** Everything a packet costs
//! runs on CPU 0 inside trafgen's `sendto`: the veth hands the packet to CPU
//! 0's backlog and the softirq that drains it (receive, the variant, transmit
//! into the device) runs when the send re-enables bottom halves, or in
//! `ksoftirqd/0` when it is deferred. CPU 0 is therefore saturated the whole
//! window, never idle, with no inter-CPU wake-ups, and its work is charged to
//! two tasks whose run time the scheduler keeps to the nanosecond
//! (`/proc/PID/schedstat`): trafgen's worker and `ksoftirqd/0`. CPU time per
//! packet = their run time over the window / packets, unaffected by other
//! processes sharing the CPU (they lower packets/s, not that). The generator's
//! own share is measured by a calibration row that drops every packet at
//! `lan0` ingress (nftables netdev `drop`); gateway CPU per packet = a
//! variant's figure minus that row's, in the same round and mix.
//!
//! Why not the gateway on its own CPU (RPS) and `/proc/stat` busy time: tried
//! first. trafgen's blocking path tops out near 600 kpps here, below what the
//! faster variants forward, so the gateway CPU idles between packets and pays
//! an IPI and an idle exit per batch, more the faster the variant (runs were
//! bimodal); and this kernel has no `CONFIG_IRQ_TIME_ACCOUNTING` and stops the
//! tick when idle, so `/proc/stat` misses softirq bursts between idle periods.
//!
//! **What is counted.** Forwarded = `tx_packets + tx_dropped` summed over the N
//! devices (`/proc/net/dev` inside the gateway namespace). A packet handed to a
//! device whose queue is full is dropped there, after the gateway did all its
//! work for it. The readers (on CPU 1) take only a sample (up to 64 packets
//! every 20 ms per device, never waiting on the device, so no wake-ups are
//! charged to CPU 0) and check each: it must carry the source the variant
//! should produce on that device (translated into 100.64.k.0/24 /
//! `fd64:0:0:k::/64` on device k, or the LAN source for plain routing) and a
//! TTL/hop limit decremented to 63. Draining every packet would move freeing
//! the packets to CPU 1 for the variants with more devices.
//!
//! Every round runs every variant once (rotating which goes first) and, for
//! each variant, every mix; figures are medians over rounds of each round's
//! ratio to plain routing in the same round, with the spread (min-max). Each
//! variant runs in namespaces built for it and removed after it. With one
//! gateway namespace for all, plain routing cost 10-15 % more in the rounds
//! after the other variants had run there than in the first; a likely cause is
//! that once policy rules have existed in a namespace, its route lookups take
//! the rules path for good (`fib_has_custom_rules` is never cleared).

use std::{
    fmt::Write as _,
    fs::{self, File},
    io::Read as _,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, ensure};
use ovpn_lb::{
    generate::{LanSection, LoaderConfig, TunnelSection},
    pins::Layout,
};
use ovpn_lb_tests::{
    loader::{self, Loader},
    netns,
    teardown::Teardown,
    topology::{self, End},
};

use super::{machine_line, median, spread};

/// CPU that trafgen's one worker runs on (trafgen pins worker i to CPU i), and
/// with it all the gateway's work.
const GEN_CPU: usize = 0;
/// CPU for the readers and this process's sampling.
const AUX_CPU: usize = 1;
/// Packets each reader takes per device and turn, and how often.
const READ_BATCH: usize = 64;
const READ_EVERY: Duration = Duration::from_millis(20);
/// Distinct 5-tuples in every traffic mix.
const FLOWS: usize = 1024;
/// Warm-up before each window: trafgen compiles its packets and ramps up.
const WARM_UP: Duration = Duration::from_millis(700);
/// An upper bound on trafgen's rate, for its `-n` packet count: it then ends
/// by itself even if this process dies before it stops it.
const RATE_CEILING_PPS: u64 = 3_000_000;

const LAN_DEV: &str = "lan0";
const GEN_DEV: &str = "gen0";
const GEN_MAC: &str = "02:0f:00:00:00:01";
const LAN_MAC: &str = "02:0f:00:00:00:02";
const LAN_V4: &str = "10.10.0.0/24";
const LAN_V6: &str = "fd10:a::/64";
const REMOTE_V4: &str = "10.20.0.0/16";
const REMOTE_V6: &str = "fd20::/48";
/// First routing table and rule priority of the fwmark variant.
const TABLE_BASE: usize = 100;
const RULE_PREF_BASE: usize = 1000;

/// What the N target devices are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// Layer 3 (`IFF_TUN`), like an OpenVPN `dev tun`.
    Tun,
    /// Ethernet (`IFF_TAP`), like an OpenVPN `dev tap`.
    Tap,
}

impl DeviceKind {
    fn name(self) -> &'static str {
        match self {
            Self::Tun => "tun",
            Self::Tap => "tap",
        }
    }

    fn device(self, k: usize) -> String {
        format!("{}{k}", self.name())
    }

    /// Where the IP header starts in what a reader gets.
    fn ip_offset(self) -> usize {
        match self {
            Self::Tun => 0,
            Self::Tap => 14,
        }
    }
}

/// How a variant gets packets from `lan0` to the devices.
pub enum Setup {
    /// Calibration: nftables netdev ingress drops everything on `lan0`, so
    /// what is left is the generator's and the veth's cost.
    IngressDrop,
    /// The kernel routes the remote prefixes to device 0.
    PlainRouting,
    /// nftables prerouting: `numgen inc mod N` picks k, stateless
    /// `ip saddr set` translates into k's prefix and sets fwmark k+1; one
    /// `ip rule` per mark looks up a table whose default route is device k.
    NftNumgen,
    /// nftables netdev ingress on `lan0`: `numgen inc mod N`, the same
    /// stateless translation, `fwd ip to <next hop> device "devK"`.
    NftNetdevFwd,
    /// `ovpn-lb run` with this configuration (see [`ovpn_lb_config`]).
    OvpnLb { config: Box<LoaderConfig> },
}

impl Setup {
    /// Whether packets leave with their source translated into the device's prefix.
    fn translates(&self) -> bool {
        !matches!(self, Self::PlainRouting | Self::IngressDrop)
    }
}

/// One way of forwarding, measured against the first variant of the list.
pub struct Variant {
    /// Row name in the table.
    pub name: String,
    /// Label in the plot.
    pub short: String,
    pub device: DeviceKind,
    pub setup: Setup,
}

/// The variants: the calibration row first, then the baseline (plain
/// routing); to add one, push it here with its device kind and
/// configuration. The XDP variant puts `lan0` (a veth) into NAPI mode; that
/// still runs on CPU 0 inside trafgen's send, so the accounting holds, but a
/// veth hands its XDP program socket buffers converted to XDP frames (a copy
/// when the skb's head cannot be reused), which a NIC driver would not: on
/// veth, native XDP saves no receive work.
pub fn variants(n: usize) -> Vec<Variant> {
    let variant = |name: String, short: &str, device, setup| Variant {
        name,
        short: short.to_owned(),
        device,
        setup,
    };
    let ovpn_lb = |device, hook| Setup::OvpnLb {
        config: Box::new(ovpn_lb_config(device, hook, n)),
    };
    let (tun, tap) = (DeviceKind::Tun, DeviceKind::Tap);
    vec![
        variant(
            "(calibration) generator only: drop at lan0 ingress".into(),
            "drop",
            tun,
            Setup::IngressDrop,
        ),
        variant(
            "plain routing to 1 tun".into(),
            "plain routing",
            tun,
            Setup::PlainRouting,
        ),
        variant(
            format!("nftables numgen + saddr + fwmark rules, {n} tun"),
            "nft numgen+fwmark",
            tun,
            Setup::NftNumgen,
        ),
        variant(
            format!("nftables netdev ingress fwd, {n} tun"),
            "nft netdev fwd",
            tun,
            Setup::NftNetdevFwd,
        ),
        variant(
            format!("ovpn-lb tc, {n} tun"),
            "ovpn-lb tc",
            tun,
            ovpn_lb(tun, "tc"),
        ),
        variant(
            format!("ovpn-lb tc, {n} tap"),
            "ovpn-lb tc tap",
            tap,
            ovpn_lb(tap, "tc"),
        ),
        variant(
            format!("ovpn-lb native XDP, {n} tap"),
            "ovpn-lb XDP tap",
            tap,
            ovpn_lb(tap, "xdp"),
        ),
    ]
}

/// The ovpn-lb configuration for the topology's `lan0` and devices, with
/// the hook ("tc", "xdp"); TAP tunnels name the next hop the topology gives
/// a permanent neighbour entry.
pub fn ovpn_lb_config(kind: DeviceKind, hook: &str, n: usize) -> LoaderConfig {
    LoaderConfig {
        remote_prefixes: vec![REMOTE_V4.into(), REMOTE_V6.into()],
        up_delay_ms: Some(0),
        spray: Some("packet".into()),
        hook: Some(hook.into()),
        lan: LanSection {
            interface: LAN_DEV.into(),
            prefixes: vec![LAN_V4.into(), LAN_V6.into()],
        },
        tunnels: (0..n)
            .map(|k| TunnelSection {
                device: kind.device(k),
                kind: (kind == DeviceKind::Tap).then(|| "tap".into()),
                next_hop: (kind == DeviceKind::Tap).then(|| next_hops(k)[0].clone()),
                translate: xlat(k).to_vec(),
                ..TunnelSection::default()
            })
            .collect(),
        ..LoaderConfig::default()
    }
}

/// Device k's translation prefixes: IPv4, IPv6.
fn xlat(k: usize) -> [String; 2] {
    [format!("100.64.{k}.0/24"), format!("fd64:0:0:{k:x}::/64")]
}

/// The next hops behind device k (on-link; permanent neighbours on TAP):
/// IPv4, IPv6.
fn next_hops(k: usize) -> [String; 2] {
    [format!("10.255.{k}.1"), format!("fd99::{k:x}:1")]
}

/// One traffic mix.
#[derive(Clone, Copy)]
struct Mix {
    v6: bool,
    /// Bytes handed to the veth (Ethernet header included, no FCS).
    frame: usize,
}

impl Mix {
    fn label(self) -> String {
        format!("IPv{} {} B", if self.v6 { 6 } else { 4 }, self.frame)
    }

    fn file(self) -> String {
        format!("v{}-{}.cfg", if self.v6 { 6 } else { 4 }, self.frame)
    }
}

const MIXES: [Mix; 4] = [
    Mix {
        v6: false,
        frame: 64,
    },
    Mix {
        v6: false,
        frame: 1400,
    },
    Mix {
        v6: true,
        frame: 64,
    },
    Mix {
        v6: true,
        frame: 1400,
    },
];

/// trafgen's packet configuration: `FLOWS` precomputed UDP packets sent round
/// robin (trafgen fills in lengths and checksums when it compiles them, so
/// sending costs no per-packet computation).
fn trafgen_config(mix: Mix) -> String {
    let mut t = String::new();
    let (l3, pad) = if mix.v6 {
        ("ipv6", mix.frame - 14 - 40 - 8)
    } else {
        ("ipv4", mix.frame - 14 - 20 - 8)
    };
    for i in 0..FLOWS {
        let host = 1 + i % 250;
        let (net, dst) = (i / 250, 1 + i % 250);
        let (src, dst, ttl) = if mix.v6 {
            (
                format!("fd10:a::{host:x}"),
                format!("fd20::{net:x}:{dst:x}"),
                "hoplimit",
            )
        } else {
            (
                format!("10.10.0.{host}"),
                format!("10.20.{net}.{dst}"),
                "ttl",
            )
        };
        let sport = 1024 + (i * 61) % 60000;
        let dport = 5001 + i % 7;
        let _ = writeln!(
            t,
            "{{ eth(da={LAN_MAC}, sa={GEN_MAC}), {l3}(sa={src}, da={dst}, {ttl}=64), udp(sp={sport}, dp={dport}), fill(0x00, {pad}) }}"
        );
    }
    t
}

/// Keeps the calling thread on `cpu`.
fn pin_thread(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and
    // sched_setaffinity only read and write that local set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
    }
}

/// Opens tun/tap device `name` in the calling thread's namespace; it lives as
/// long as the file.
fn open_device(kind: DeviceKind, name: &str) -> Result<File> {
    ovpn_lb_tests::tun::open_device(name, kind == DeviceKind::Tap)
        .with_context(|| format!("opening {} device {name}", kind.name()))
}

/// What each reader counts.
#[derive(Default)]
struct ReaderCounts {
    drained: AtomicU64,
    /// Drained packets without the expected source prefix or TTL.
    wrong: AtomicU64,
    /// The first of them, in hex, for the warning.
    first_wrong: Mutex<Option<String>>,
}

const EXPECT_LAN_SOURCE: u8 = 0;
const EXPECT_TRANSLATED: u8 = 1;
/// The calibration row: nothing should reach the devices.
const EXPECT_NOTHING: u8 = 2;

/// Whether a packet read from device `k` looks forwarded as it should.
fn looks_right(ip: &[u8], k: usize, expect: u8) -> bool {
    let Ok(k) = u8::try_from(k) else { return false };
    if expect == EXPECT_NOTHING {
        return false;
    }
    match ip.first().map(|b| b >> 4) {
        Some(4) if ip.len() >= 20 => {
            let want: [u8; 3] = if expect == EXPECT_TRANSLATED {
                [100, 64, k]
            } else {
                [10, 10, 0]
            };
            ip[8] == 63 && ip[12..15] == want
        }
        Some(6) if ip.len() >= 40 => {
            let want: [u8; 8] = if expect == EXPECT_TRANSLATED {
                [0xfd, 0x64, 0, 0, 0, 0, 0, k]
            } else {
                [0xfd, 0x10, 0, 0x0a, 0, 0, 0, 0]
            };
            ip[7] == 63 && ip[8..16] == want
        }
        _ => false,
    }
}

fn is_multicast(ip: &[u8]) -> bool {
    match ip.first().map(|b| b >> 4) {
        Some(4) => ip.get(16).is_some_and(|b| b >> 4 == 0xe),
        Some(6) => ip.get(24) == Some(&0xff),
        _ => false,
    }
}

/// Takes up to `READ_BATCH` packets every `READ_EVERY` and checks them; the
/// device is non-blocking and nobody waits on it, so the gateway never has a
/// reader to wake. `expect` holds a generation number above its low byte: when
/// it changes (a new variant), what is queued from the last one is dropped
/// unchecked.
fn reader_loop(
    file: &mut File,
    kind: DeviceKind,
    k: usize,
    stop: &AtomicBool,
    expect: &AtomicU32,
    counts: &ReaderCounts,
) {
    let mut buf = vec![0u8; 65536];
    let mut generation = 0;
    while !stop.load(Ordering::Relaxed) {
        thread::sleep(READ_EVERY);
        let e = expect.load(Ordering::Relaxed);
        if e >> 8 != generation {
            generation = e >> 8;
            while file.read(&mut buf).is_ok() {}
            continue;
        }
        for _ in 0..READ_BATCH {
            let Ok(n) = file.read(&mut buf) else { break };
            let ip = buf.get(kind.ip_offset()..n).unwrap_or_default();
            if is_multicast(ip) {
                // The kernel's own (an MLD report when a device comes up).
                continue;
            }
            counts.drained.fetch_add(1, Ordering::Relaxed);
            #[expect(clippy::cast_possible_truncation, reason = "the low byte")]
            if !looks_right(ip, k, e as u8) {
                counts.wrong.fetch_add(1, Ordering::Relaxed);
                let mut first = counts
                    .first_wrong
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if first.is_none() {
                    let hex = buf[..n.min(64)].iter().fold(String::new(), |mut h, b| {
                        let _ = write!(h, "{b:02x}");
                        h
                    });
                    *first = Some(format!("{} bytes on {}: {hex}", n, kind.device(k)));
                }
            }
        }
    }
}

/// Counters of one moment.
struct Sample {
    at: Instant,
    /// Per device: `tx_packets + tx_dropped`.
    devices: Vec<u64>,
    lan_rx: u64,
    /// Run time of trafgen's worker and `ksoftirqd/0`, ns.
    runtime_ns: u64,
    drained: u64,
    wrong: u64,
}

/// One measurement window's outcome.
#[derive(Clone, Copy, Debug, Default)]
struct Window {
    /// Forwarded packets/s (for the calibration row: received on `lan0`).
    pps: f64,
    /// Packets/s received on `lan0`.
    offered: f64,
    /// CPU time of generator and gateway per packet, ns.
    ns_per_packet: f64,
    /// Share of the window trafgen's worker and `ksoftirqd/0` ran: under 1
    /// when something else took CPU 0.
    share: f64,
    /// Smallest device's share of the forwarded packets.
    min_share: f64,
    drained: u64,
    wrong: u64,
}

fn window(before: &Sample, after: &Sample, forwards: bool) -> Window {
    #[expect(clippy::cast_precision_loss, reason = "counters far below 2^52")]
    let f = |x: u64| x as f64;
    let per_device: Vec<u64> = after
        .devices
        .iter()
        .zip(&before.devices)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let forwarded: u64 = per_device.iter().sum();
    let received = after.lan_rx.saturating_sub(before.lan_rx);
    let packets = if forwards { forwarded } else { received };
    let secs = after.at.duration_since(before.at).as_secs_f64();
    let runtime = after.runtime_ns.saturating_sub(before.runtime_ns);
    Window {
        pps: f(packets) / secs,
        offered: f(received) / secs,
        ns_per_packet: f(runtime) / f(packets.max(1)),
        share: f(runtime) / 1e9 / secs,
        min_share: f(per_device.iter().copied().min().unwrap_or(0)) / f(forwarded.max(1)),
        drained: after.drained - before.drained,
        wrong: after.wrong - before.wrong,
    }
}

/// Run time of a task so far, ns (`/proc/PID/schedstat`, first field).
fn runtime_ns(pid: u32) -> Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .with_context(|| format!("reading /proc/{pid}/schedstat"))?;
    text.split_whitespace()
        .next()
        .and_then(|x| x.parse().ok())
        .ok_or_else(|| anyhow!("bad /proc/{pid}/schedstat: {text}"))
}

/// Processes whose parent is `parent`, and the one named `comm` (by scanning /proc).
fn find_pids(parent: Option<u32>, comm: Option<&str>) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // pid (comm) state ppid ...
            let Some((head, tail)) = stat.rsplit_once(')') else {
                return false;
            };
            let name = head.split_once('(').map_or("", |(_, n)| n);
            let ppid = tail.split_whitespace().nth(1).and_then(|x| x.parse().ok());
            parent.is_none_or(|p| ppid == Some(p)) && comm.is_none_or(|c| c == name)
        })
        .collect()
}

/// `/proc/net/dev` of the calling thread's namespace: name -> (`rx_packets`,
/// `tx_packets + tx_dropped`).
fn net_dev() -> Result<Vec<(String, u64, u64)>> {
    let text = fs::read_to_string("/proc/thread-self/net/dev")?;
    Ok(text
        .lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let v: Vec<u64> = rest
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            (v.len() >= 12).then(|| (name.trim().to_owned(), v[1], v[9] + v[11]))
        })
        .collect())
}

/// A running trafgen, in its own process group; the group is killed on drop.
struct Trafgen {
    child: Child,
    log: PathBuf,
}

impl Trafgen {
    fn start(topo: &Topology, mix: Mix, count: u64) -> Result<Self> {
        let log = topo.dir.join("trafgen.log");
        let child = netns::command(&topo.gen_ns, "trafgen")
            .arg("--in")
            .arg(topo.dir.join(mix.file()))
            .args(["--out", GEN_DEV, "--cpus", "1", "--gap", "0ns"])
            .args(["--num", &count.to_string(), "--notouch-irq"])
            .stdin(Stdio::null())
            .stdout(File::create(&log)?)
            .stderr(File::create(topo.dir.join("trafgen.err"))?)
            // Its own group: trafgen forks its worker, and only a signal to
            // the whole group reaches both.
            .process_group(0)
            .spawn()
            .context("starting trafgen")?;
        Ok(Self { child, log })
    }

    fn pgid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).unwrap_or(0)
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn output(&self) -> String {
        let err = fs::read_to_string(self.log.with_extension("err")).unwrap_or_default();
        let out = fs::read_to_string(&self.log).unwrap_or_default();
        format!("{}{}", err.trim(), out.trim())
    }

    /// SIGINT to the group, then SIGKILL to whatever is left after a grace.
    fn stop(&mut self) {
        let pgid = self.pgid();
        if pgid <= 0 {
            return;
        }
        // SAFETY: killpg(2) touches no memory; the group is trafgen's own.
        unsafe { libc::killpg(pgid, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.running() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        // Also reaches a worker that outlived its parent (the group id stays
        // reserved while any member lives, so it cannot name anyone else).
        // SAFETY: as above.
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Trafgen {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The generator and gateway namespaces, the veth, the N devices and their
/// readers, a work directory with a private bpffs mount. Everything is made
/// after its record exists, so drop tears down exactly what was made.
pub struct Topology {
    kind: DeviceKind,
    n: usize,
    gen_ns: String,
    gw_ns: String,
    dir: PathBuf,
    teardown: Teardown,
    stop: Arc<AtomicBool>,
    expect: Arc<AtomicU32>,
    counts: Arc<Vec<ReaderCounts>>,
    readers: Vec<JoinHandle<()>>,
}

impl Topology {
    /// Builds topology number `seq` of this process.
    fn new(kind: DeviceKind, n: usize, seq: usize) -> Result<Self> {
        let tag = format!("ofwd-{}-{seq}", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        ensure!(
            !dir.exists(),
            "{} exists: left over from a run with this PID?",
            dir.display()
        );
        let mut topo = Self {
            kind,
            n,
            gen_ns: format!("{tag}-gen"),
            gw_ns: format!("{tag}-gw"),
            dir: dir.clone(),
            teardown: Teardown::default(),
            stop: Arc::new(AtomicBool::new(false)),
            expect: Arc::new(AtomicU32::new(u32::from(EXPECT_LAN_SOURCE))),
            counts: Arc::new((0..n).map(|_| ReaderCounts::default()).collect()),
            readers: Vec::new(),
        };
        // A private bpffs for the loader's pins: nothing under /sys/fs/bpf.
        topo.teardown.bpffs(&dir.join("bpf"));
        topo.build()?;
        Ok(topo)
    }

    /// `ip -n <gateway> ARGS`.
    fn gw(&self, args: &[&str]) {
        netns::ip(&self.gw_ns, args);
    }

    fn device(&self, k: usize) -> String {
        self.kind.device(k)
    }

    fn build(&mut self) -> Result<()> {
        let (gen_ns, gw_ns) = (self.gen_ns.clone(), self.gw_ns.clone());
        self.teardown.namespace(&gen_ns);
        self.teardown.namespace(&gw_ns);
        topology::veth(
            &End {
                mac: Some(GEN_MAC),
                ..End::new(&gen_ns, GEN_DEV, &["10.10.0.1/24"])
            },
            &End {
                mac: Some(LAN_MAC),
                ..End::new(&gw_ns, LAN_DEV, &["10.10.0.254/24", "fd10:a::fe/64"])
            },
        );
        topology::router(
            &gw_ns,
            &[
                "net.ipv6.conf.all.accept_ra=0",
                "net.ipv6.conf.default.accept_ra=0",
            ],
        );
        self.start_readers()?;
        self.build_devices();
        for mix in MIXES {
            fs::write(self.dir.join(mix.file()), trafgen_config(mix))?;
        }
        Ok(())
    }

    /// Brings the devices up with their next hops, the fwmark tables and the
    /// plain route.
    fn build_devices(&self) {
        for k in 0..self.n {
            let dev = self.device(k);
            // No link-local address and no multicast: no MLD reports or
            // router solicitations of the kernel's own in the counts.
            self.gw(&[
                "link",
                "set",
                &dev,
                "addrgenmode",
                "none",
                "multicast",
                "off",
            ]);
            self.gw(&["link", "set", &dev, "up"]);
            if self.kind == DeviceKind::Tap {
                let mac = format!("02:0f:00:00:01:{k:02x}");
                for hop in next_hops(k) {
                    self.gw(&[
                        "neigh",
                        "replace",
                        &hop,
                        "lladdr",
                        &mac,
                        "dev",
                        &dev,
                        "nud",
                        "permanent",
                    ]);
                }
            }
            // Tables for the fwmark variant; unused until its rules exist.
            let table = (TABLE_BASE + 1 + k).to_string();
            for (family, hop) in ["-4", "-6"].into_iter().zip(next_hops(k)) {
                self.gw(&[
                    family, "route", "add", "default", "via", &hop, "dev", &dev, "onlink", "table",
                    &table,
                ]);
            }
        }
        // Plain routing: the remote prefixes through device 0.
        let dev0 = self.device(0);
        for ((family, remote), hop) in [("-4", REMOTE_V4), ("-6", REMOTE_V6)]
            .into_iter()
            .zip(next_hops(0))
        {
            self.gw(&[
                family, "route", "add", remote, "via", &hop, "dev", &dev0, "onlink",
            ]);
        }
    }

    /// Opens the N devices, each on its own thread in the gateway namespace,
    /// which then samples what arrives, on `AUX_CPU`.
    fn start_readers(&mut self) -> Result<()> {
        for k in 0..self.n {
            let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
            let (ns, kind, name) = (self.gw_ns.clone(), self.kind, self.device(k));
            let (stop, expect, counts) =
                (self.stop.clone(), self.expect.clone(), self.counts.clone());
            self.readers.push(thread::spawn(move || {
                netns::join(&ns);
                let opened = open_device(kind, &name);
                let mut file = match opened {
                    Ok(f) => {
                        let _ = ready_tx.send(Ok(()));
                        f
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                pin_thread(AUX_CPU);
                // SAFETY: fcntl(2) on the descriptor this thread owns.
                unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
                reader_loop(&mut file, kind, k, &stop, &expect, &counts[k]);
            }));
            ready_rx
                .recv()
                .map_err(|_| anyhow!("reader thread {k} ended"))??;
        }
        Ok(())
    }

    /// The first wrong packet a reader saw since the last call.
    fn take_first_wrong(&self) -> String {
        self.counts
            .iter()
            .find_map(|c| {
                c.first_wrong
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take()
            })
            .unwrap_or_default()
    }

    /// Device counters, and the run time of `tasks`.
    fn sample(&self, tasks: &[u32]) -> Result<Sample> {
        let devices: Vec<String> = (0..self.n).map(|k| self.device(k)).collect();
        let (dev, runtime_ns, at) = netns::enter_named(&self.gw_ns, || -> Result<_> {
            pin_thread(AUX_CPU);
            let at = Instant::now();
            let mut runtime = 0;
            for &pid in tasks {
                runtime += runtime_ns(pid)?;
            }
            Ok((net_dev()?, runtime, at))
        })?;
        let find = |name: &str| dev.iter().find(|(n, _, _)| n == name);
        let devices = devices
            .iter()
            .map(|d| find(d).map(|e| e.2).ok_or_else(|| anyhow!("{d} is gone")))
            .collect::<Result<Vec<u64>>>()?;
        let lan_rx = find(LAN_DEV).map_or(0, |e| e.1);
        let (mut drained, mut wrong) = (0, 0);
        for c in self.counts.iter() {
            drained += c.drained.load(Ordering::Relaxed);
            wrong += c.wrong.load(Ordering::Relaxed);
        }
        Ok(Sample {
            at,
            devices,
            lan_rx,
            runtime_ns,
            drained,
            wrong,
        })
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        self.teardown.tear_down();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A variant set up on a topology; taken down on drop.
enum Active<'a> {
    Nothing,
    Nft {
        topo: &'a Topology,
        tables: Vec<&'static str>,
        rules: bool,
    },
    Loader {
        site: loader::Site,
        loader: Option<Loader>,
        _topo: &'a Topology,
    },
}

fn nft_numgen(n: usize) -> String {
    let mut t = String::new();
    for v6 in [false, true] {
        let (family, match_, set) = if v6 {
            (
                "ip6",
                format!("ip6 saddr {LAN_V6} ip6 daddr {REMOTE_V6}"),
                "ip6 saddr set ip6 saddr & ::ffff:ffff:ffff:ffff |",
            )
        } else {
            (
                "ip",
                format!("ip saddr {LAN_V4} ip daddr {REMOTE_V4}"),
                "ip saddr set ip saddr & 0.0.0.255 |",
            )
        };
        let _ = writeln!(
            t,
            "table {family} ofwd_numgen {{\n  chain pre {{\n    type filter hook prerouting priority mangle; policy accept;\n    iifname \"{LAN_DEV}\" {match_} numgen inc mod {n} vmap {{ {} }}\n  }}",
            vmap(n)
        );
        for k in 0..n {
            let prefix = &xlat(k)[usize::from(v6)];
            let base = prefix.split('/').next().unwrap_or_default();
            let _ = writeln!(
                t,
                "  chain t{k} {{\n    meta mark set {} {set} {base}\n  }}",
                k + 1
            );
        }
        let _ = writeln!(t, "}}");
    }
    t
}

fn vmap(n: usize) -> String {
    (0..n)
        .map(|k| format!("{k} : jump t{k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `fwd to "devK"` would be shorter, but it transmits the frame as received,
/// Ethernet header included, which on a tun device lands inside the IP packet
/// (checked: tcpdump on the tun shows the MAC addresses). `fwd ip to` goes
/// through the neighbour layer like a routed packet and decrements the TTL.
fn nft_netdev_fwd(kind: DeviceKind, n: usize) -> String {
    let mut t = format!(
        "table netdev ofwd_fwd {{\n  chain ingress {{\n    type filter hook ingress device \"{LAN_DEV}\" priority 0; policy accept;\n    ip saddr {LAN_V4} ip daddr {REMOTE_V4} numgen inc mod {n} vmap {{ {} }}\n    ip6 saddr {LAN_V6} ip6 daddr {REMOTE_V6} numgen inc mod {n} vmap {{ {} }}\n  }}\n",
        vmap(n),
        vmap(n).replace(" t", " s")
    );
    for k in 0..n {
        let dev = kind.device(k);
        let [b4, b6] = xlat(k);
        let [hop4, hop6] = next_hops(k);
        let (b4, b6) = (
            b4.split('/').next().unwrap_or_default(),
            b6.split('/').next().unwrap_or_default(),
        );
        let _ = writeln!(
            t,
            "  chain t{k} {{\n    ip saddr set ip saddr & 0.0.0.255 | {b4} fwd ip to {hop4} device \"{dev}\"\n  }}\n  chain s{k} {{\n    ip6 saddr set ip6 saddr & ::ffff:ffff:ffff:ffff | {b6} fwd ip6 to {hop6} device \"{dev}\"\n  }}"
        );
    }
    t.push_str("}\n");
    t
}

impl<'a> Active<'a> {
    fn up(topo: &'a Topology, variant: &Variant, bin: &Path) -> Result<Self> {
        let expect = match variant.setup {
            Setup::IngressDrop => EXPECT_NOTHING,
            _ if variant.setup.translates() => EXPECT_TRANSLATED,
            _ => EXPECT_LAN_SOURCE,
        };
        let generation = (topo.expect.load(Ordering::Relaxed) >> 8) + 1;
        topo.expect
            .store(generation << 8 | u32::from(expect), Ordering::Relaxed);
        // Let every reader drop what the last variant left queued.
        thread::sleep(READ_EVERY * 3);
        match &variant.setup {
            Setup::PlainRouting => Ok(Self::Nothing),
            Setup::IngressDrop => {
                let active = Self::Nft {
                    topo,
                    tables: vec!["netdev ofwd_drop"],
                    rules: false,
                };
                load_nft(
                    topo,
                    &format!(
                        "table netdev ofwd_drop {{\n  chain ingress {{\n    type filter hook ingress device \"{LAN_DEV}\" priority 0; policy drop;\n  }}\n}}\n"
                    ),
                )?;
                Ok(active)
            }
            Setup::NftNumgen => {
                let active = Self::Nft {
                    topo,
                    tables: vec!["ip ofwd_numgen", "ip6 ofwd_numgen"],
                    rules: true,
                };
                for k in 0..topo.n {
                    let (mark, table, pref) = (
                        (k + 1).to_string(),
                        (TABLE_BASE + 1 + k).to_string(),
                        (RULE_PREF_BASE + k).to_string(),
                    );
                    for family in ["-4", "-6"] {
                        topo.gw(&[
                            family, "rule", "add", "pref", &pref, "fwmark", &mark, "table", &table,
                        ]);
                    }
                }
                load_nft(topo, &nft_numgen(topo.n))?;
                Ok(active)
            }
            Setup::NftNetdevFwd => {
                let active = Self::Nft {
                    topo,
                    tables: vec!["netdev ofwd_fwd"],
                    rules: false,
                };
                load_nft(topo, &nft_netdev_fwd(topo.kind, topo.n))?;
                Ok(active)
            }
            Setup::OvpnLb { config } => Self::loader(topo, config, bin),
        }
    }

    fn loader(topo: &'a Topology, config: &LoaderConfig, bin: &Path) -> Result<Self> {
        let config_path = topo.dir.join("ovpn-lb.toml");
        fs::write(&config_path, config.to_toml()?)?;
        let site = loader::Site {
            ns: topo.gw_ns.clone(),
            bin: bin.to_path_buf(),
            layout: Layout {
                pin_root: topo.dir.join("bpf/ovpn-lb"),
                run_dir: topo.dir.join("run"),
            },
        };
        // Its own process group: Ctrl-C reaches the benchmark, which tears down.
        let loader = site.start(&config_path, &[], &topo.dir.join("ovpn-lb.log"), true);
        Ok(Self::Loader {
            site,
            loader: Some(loader),
            _topo: topo,
        })
    }
}

fn load_nft(topo: &Topology, ruleset: &str) -> Result<()> {
    let file = topo.dir.join("ruleset.nft");
    fs::write(&file, ruleset)?;
    netns::exec(&topo.gw_ns, &["nft", "-f", &file.to_string_lossy()]);
    Ok(())
}

/// Runs `program ARGS` in the gateway namespace, ignoring failure: for
/// taking a variant down, where something may already be gone.
fn undo(topo: &Topology, program: &str, args: &[&str]) {
    let _ = netns::command(&topo.gw_ns, program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        match self {
            Self::Nothing => {}
            Self::Nft {
                topo,
                tables,
                rules,
            } => {
                for t in tables.iter() {
                    let mut args = vec!["delete", "table"];
                    args.extend(t.split(' '));
                    undo(topo, "nft", &args);
                }
                if *rules {
                    for k in 0..topo.n {
                        let pref = (RULE_PREF_BASE + k).to_string();
                        for family in ["-4", "-6"] {
                            undo(topo, "ip", &[family, "rule", "del", "pref", &pref]);
                        }
                    }
                }
            }
            Self::Loader { site, loader, .. } => {
                if let Some(loader) = loader.take() {
                    loader.terminate(Duration::from_secs(5));
                }
                let out = site.ovpn_lb(&["detach"]);
                if !out.status.success() {
                    eprintln!(
                        "warning: ovpn-lb detach in {}: {}",
                        site.ns,
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
    }
}

/// Options of the forwarding part.
pub struct Options {
    pub tunnels: usize,
    pub rounds: usize,
    pub seconds: f64,
    /// The `ovpn-lb` binary.
    pub bin: PathBuf,
    /// Set by SIGINT/SIGTERM: stop between windows and tear down.
    pub interrupted: Arc<AtomicBool>,
}

/// A ratio to plain routing over rounds: (median, min, max).
pub type Ratio = (f64, f64, f64);

/// One variant's ratios, per mix.
pub struct SummaryRow {
    /// Label in the plot.
    pub label: String,
    /// Forwarded packets/s.
    pub pps: Vec<Ratio>,
    /// Gateway CPU time per forwarded packet.
    pub cpu: Vec<Ratio>,
}

/// Ratios to plain routing, per variant and mix.
pub struct Summary {
    pub mixes: Vec<String>,
    pub rows: Vec<SummaryRow>,
}

fn sleep_checked(d: Duration, interrupted: &AtomicBool) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        ensure!(!interrupted.load(Ordering::Relaxed), "interrupted");
        thread::sleep(Duration::from_millis(20).min(end - Instant::now()));
    }
    Ok(())
}

fn measure(
    topo: &Topology,
    variant: &Variant,
    mix: Mix,
    opts: &Options,
    ksoftirqd: u32,
) -> Result<Window> {
    let secs = WARM_UP.as_secs_f64() + opts.seconds + 10.0;
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a positive packet count well within u64"
    )]
    let count = (RATE_CEILING_PPS as f64 * secs) as u64;
    let mut generator = Trafgen::start(topo, mix, count)?;
    sleep_checked(WARM_UP, &opts.interrupted)?;
    ensure!(
        generator.running(),
        "trafgen ended early:\n{}",
        generator.output()
    );
    let mut tasks = find_pids(Some(generator.child.id()), None);
    ensure!(
        !tasks.is_empty(),
        "trafgen has no worker process:\n{}",
        generator.output()
    );
    tasks.push(ksoftirqd);
    let before = topo.sample(&tasks)?;
    sleep_checked(Duration::from_secs_f64(opts.seconds), &opts.interrupted)?;
    let after = topo.sample(&tasks)?;
    ensure!(
        generator.running(),
        "trafgen ended during the window:\n{}",
        generator.output()
    );
    generator.stop();
    Ok(window(
        &before,
        &after,
        !matches!(variant.setup, Setup::IngressDrop),
    ))
}

type Results = Vec<Vec<Vec<Window>>>;

/// Runs the forwarding part; returns the Markdown and the plot's ratios.
pub fn run(opts: &Options) -> Result<(String, Summary)> {
    let started = Instant::now();
    let cpus = thread::available_parallelism().map_or(1, std::num::NonZero::get);
    ensure!(
        cpus > AUX_CPU,
        "the forwarding benchmark needs CPUs {GEN_CPU} and {AUX_CPU}"
    );
    let ksoftirqd = *find_pids(None, Some(&format!("ksoftirqd/{GEN_CPU}")))
        .first()
        .ok_or_else(|| anyhow!("no ksoftirqd/{GEN_CPU}"))?;
    let variants = variants(opts.tunnels);
    println!(
        "forwarding: {} variants x {} traffic mixes x {} rounds, {:.1} s windows; trafgen and the gateway on CPU {GEN_CPU}, readers on CPU {AUX_CPU}; each variant in fresh namespaces ofwd-{}-<n>-{{gen,gw}}",
        variants.len(),
        MIXES.len(),
        opts.rounds,
        opts.seconds,
        std::process::id()
    );
    let mut results: Results = vec![vec![Vec::new(); MIXES.len()]; variants.len()];
    let mut seq = 0;
    for round in 0..opts.rounds {
        for i in 0..variants.len() {
            let vi = (i + round) % variants.len();
            let variant = &variants[vi];
            // Fresh namespaces for every variant: nothing one leaves behind
            // (policy rules, nftables state, neighbours) can change another's
            // figures.
            seq += 1;
            let topo = &Topology::new(variant.device, opts.tunnels, seq)
                .with_context(|| format!("building the topology for {}", variant.name))?;
            let active = Active::up(topo, variant, &opts.bin)
                .with_context(|| format!("setting up {}", variant.name))?;
            for (mi, mix) in MIXES.iter().enumerate() {
                let w = measure(topo, variant, *mix, opts, ksoftirqd)
                    .with_context(|| format!("{}, {}", variant.name, mix.label()))?;
                println!(
                    "forwarding: round {}/{} {:<50} {:<11} {:>4.0} kpps, {:>5.0} ns/packet (CPU {GEN_CPU} {:>3.0}% ours), {:.3} of received, smallest device share {:.2}, sampled {} ({} wrong)",
                    round + 1,
                    opts.rounds,
                    variant.name,
                    mix.label(),
                    w.pps / 1e3,
                    w.ns_per_packet,
                    w.share * 100.0,
                    w.pps / w.offered.max(1.0),
                    w.min_share,
                    w.drained,
                    w.wrong
                );
                if w.wrong > 0 {
                    eprintln!(
                        "warning: {} sampled packets did not look as {} should forward them; the first: {}",
                        w.wrong,
                        variant.name,
                        topo.take_first_wrong()
                    );
                }
                results[vi][mi].push(w);
            }
            drop(active);
        }
    }
    Ok(table(&variants, &results, opts, started))
}

/// Per round: (median, min, max) of `f(round)`.
fn over_rounds(n: usize, f: impl Fn(usize) -> f64) -> Ratio {
    let r: Vec<f64> = (0..n).map(f).collect();
    let (lo, hi) = spread(&r);
    (median(r), lo, hi)
}

/// Indices of the calibration row and of the baseline.
fn calibration_and_base(variants: &[Variant]) -> (usize, usize) {
    let cal = variants
        .iter()
        .position(|v| matches!(v.setup, Setup::IngressDrop))
        .expect("a calibration row");
    let base = variants
        .iter()
        .position(|v| matches!(v.setup, Setup::PlainRouting))
        .expect("a plain routing row");
    (cal, base)
}

/// Gateway CPU per packet of variant `v` in round `r`: its figure minus the
/// calibration row's.
fn gateway_ns(results: &Results, cal: usize, v: usize, m: usize, r: usize) -> f64 {
    results[v][m][r].ns_per_packet - results[cal][m][r].ns_per_packet
}

/// A table header: the variant, then one column per mix.
fn header(md: &mut String) {
    let _ = write!(md, "| variant |");
    for m in MIXES {
        let _ = write!(md, " {} |", m.label());
    }
    let _ = write!(md, "\n| --- |");
    for _ in MIXES {
        let _ = write!(md, " ---: |");
    }
    md.push('\n');
}

fn fmt_ratio(r: Ratio) -> String {
    format!("{:.2} ({:.2}-{:.2})", r.0, r.1, r.2)
}

fn table(
    variants: &[Variant],
    results: &Results,
    opts: &Options,
    started: Instant,
) -> (String, Summary) {
    let (cal, base) = calibration_and_base(variants);
    let rounds = results[base][0].len();
    let mut md = machine_line(format_args!(
        "trafgen (netsniff-ng 0.6.8, one worker, blocking sends) and all the gateway's work on CPU {GEN_CPU}; {FLOWS} UDP flows; {} devices; {} rounds interleaved, {:.1} s windows, median (min-max) over rounds. Forwarded = tx_packets + tx_dropped of the devices. CPU = run time of trafgen's worker and ksoftirqd/{GEN_CPU} (schedstat) per packet; gateway CPU = that minus the calibration row's.",
        opts.tunnels, opts.rounds, opts.seconds
    ));
    let mut summary = Summary {
        mixes: MIXES.iter().map(|m| m.label()).collect(),
        rows: Vec::new(),
    };
    let _ = writeln!(
        md,
        "Gateway packets per CPU-second, as a ratio to plain routing (higher is better), and gateway CPU time per forwarded packet in ns:\n"
    );
    header(&mut md);
    for (v, variant) in variants.iter().enumerate() {
        if v == cal {
            continue;
        }
        let _ = write!(md, "| {} |", variant.name);
        let mut pps_row = Vec::new();
        let mut cpu_row = Vec::new();
        for m in 0..MIXES.len() {
            let ns = over_rounds(rounds, |r| gateway_ns(results, cal, v, m, r));
            let cap = over_rounds(rounds, |r| {
                gateway_ns(results, cal, base, m, r) / gateway_ns(results, cal, v, m, r)
            });
            if v == base {
                let _ = write!(md, " 1 ({:.0} ns) |", ns.0);
            } else {
                let _ = write!(md, " **{}** ({:.0} ns) |", fmt_ratio(cap), ns.0);
            }
            cpu_row.push(cap);
            pps_row.push(over_rounds(rounds, |r| {
                results[v][m][r].pps / results[base][m][r].pps
            }));
        }
        md.push('\n');
        summary.rows.push(SummaryRow {
            label: variant.short.clone(),
            pps: pps_row,
            cpu: cpu_row,
        });
    }
    raw_tables(&mut md, variants, results);
    let wrong: u64 = results.iter().flatten().flatten().map(|w| w.wrong).sum();
    let sampled: u64 = results.iter().flatten().flatten().map(|w| w.drained).sum();
    let _ = writeln!(
        md,
        "\nPackets sampled at the devices and checked (source prefix per device, TTL 63): {sampled}, wrong: {wrong}."
    );
    targets(&mut md, variants, results);
    let _ = writeln!(
        md,
        "\nForwarding part: {:.0} s.",
        started.elapsed().as_secs_f64()
    );
    (md, summary)
}

/// A table: `title`, the header, then per variant its name and
/// `cell(variant, mix)` for every mix.
fn table_of(
    md: &mut String,
    title: &str,
    variants: &[Variant],
    cell: impl Fn(usize, usize) -> String,
) {
    let _ = writeln!(md, "\n{title}\n");
    header(md);
    for (v, variant) in variants.iter().enumerate() {
        let _ = write!(md, "| {} |", variant.name);
        for m in 0..MIXES.len() {
            let _ = write!(md, " {} |", cell(v, m));
        }
        md.push('\n');
    }
}

/// The tables of raw figures: packets/s and CPU per packet with the generator.
fn raw_tables(md: &mut String, variants: &[Variant], results: &Results) {
    let (cal, base) = calibration_and_base(variants);
    let rounds = results[base][0].len();
    table_of(
        md,
        "Packets/s forwarded with trafgen on the same CPU (so each figure includes the generator's cost), and as a ratio to plain routing:",
        variants,
        |v, m| {
            let runs = &results[v][m];
            let k = over_rounds(rounds, |r| runs[r].pps / 1e3);
            if v == cal {
                format!("{:.0} k received", k.0)
            } else if v == base {
                format!("{:.0} k ({:.0}-{:.0})", k.0, k.1, k.2)
            } else {
                let r = over_rounds(rounds, |r| runs[r].pps / results[base][m][r].pps);
                format!("{:.0} k = {}", k.0, fmt_ratio(r))
            }
        },
    );
    table_of(
        md,
        &format!(
            "CPU time per packet, generator and gateway together, ns (min-max), and the share of CPU {GEN_CPU} they got:"
        ),
        variants,
        |v, m| {
            let runs = &results[v][m];
            let ns = over_rounds(rounds, |r| runs[r].ns_per_packet);
            let share = over_rounds(rounds, |r| runs[r].share);
            format!(
                "{:.0} ({:.0}-{:.0}), {:.0}%",
                ns.0,
                ns.1,
                ns.2,
                share.0 * 100.0
            )
        },
    );
}

/// The issues' targets: ovpn-lb tc on tun >= 1.3x plain routing and >= 1.5x
/// nftables numgen; ovpn-lb XDP on TAP >= 2x plain routing; on gateway
/// packets per CPU-second and, for reference, on packets/s with the
/// generator on the same CPU.
fn targets(md: &mut String, variants: &[Variant], results: &Results) {
    let (_, base) = calibration_and_base(variants);
    let find = |f: &dyn Fn(&Variant) -> bool| variants.iter().position(f);
    let ovpn_lb = |v: &Variant| matches!(v.setup, Setup::OvpnLb { .. });
    let tc_tun = find(&|v| ovpn_lb(v) && v.device == DeviceKind::Tun);
    let xdp_tap = find(&|v| {
        ovpn_lb(v)
            && matches!(&v.setup, Setup::OvpnLb { config } if config.hook.as_deref() == Some("xdp"))
    });
    let numgen = find(&|v| matches!(v.setup, Setup::NftNumgen));
    if let Some(lb) = tc_tun {
        let mut against = vec![(base, 1.3)];
        against.extend(numgen.map(|n| (n, 1.5)));
        target(md, variants, results, lb, &against);
    }
    if let Some(lb) = xdp_tap {
        target(md, variants, results, lb, &[(base, 2.0)]);
    }
}

fn target(
    md: &mut String,
    variants: &[Variant],
    results: &Results,
    lb: usize,
    against: &[(usize, f64)],
) {
    let (cal, base) = calibration_and_base(variants);
    let rounds = results[base][0].len();
    let _ = writeln!(md, "\nTargets for {}:\n", variants[lb].name);
    for &(other, want) in against {
        for capacity in [true, false] {
            let mut worst = f64::INFINITY;
            let mut parts = Vec::new();
            for (m, mix) in MIXES.iter().enumerate() {
                let r = over_rounds(rounds, |r| {
                    if capacity {
                        gateway_ns(results, cal, other, m, r) / gateway_ns(results, cal, lb, m, r)
                    } else {
                        results[lb][m][r].pps / results[other][m][r].pps
                    }
                })
                .0;
                worst = worst.min(r);
                parts.push(format!("{} {r:.2}", mix.label()));
            }
            let verdict = if worst >= want {
                "met".to_owned()
            } else {
                format!("missed by {:.2}", want - worst)
            };
            let _ = writeln!(
                md,
                "- {} >= {want}x {}: {verdict} (worst mix {worst:.2}; {})",
                if capacity {
                    "gateway packets per CPU-second"
                } else {
                    "packets/s with the generator on the same CPU"
                },
                variants[other].name,
                parts.join(", ")
            );
        }
    }
}
