//! The measured network: generator and gateway namespaces joined by a veth,
//! the N devices opened by this process, and the readers that sample what
//! the gateway sends into them.

use std::{
    fmt::Write as _,
    fs::{self, File},
    io::Read as _,
    os::fd::AsRawFd as _,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow, ensure};
use ovpn_lb_tests::{
    netns, process,
    teardown::Teardown,
    topology::{self, End},
};

use super::{AUX_CPU, READ_BATCH, READ_EVERY, Sample, runtime_ns};

pub(super) const LAN_DEV: &str = "lan0";
pub(super) const GEN_DEV: &str = "gen0";
pub(super) const GEN_MAC: &str = "02:0f:00:00:00:01";
pub(super) const LAN_MAC: &str = "02:0f:00:00:00:02";
pub(super) const LAN_V4: &str = "10.10.0.0/24";
pub(super) const LAN_V6: &str = "fd10:a::/64";
pub(super) const REMOTE_V4: &str = "10.20.0.0/16";
pub(super) const REMOTE_V6: &str = "fd20::/48";
/// Traffic elsewhere (the hook cost round): the first groups of prefixes
/// that are neither LAN nor remote, which the gateway routes out of a
/// veth.
pub(super) const ELSEWHERE_V4: &str = "10.30";
pub(super) const ELSEWHERE_V6: &str = "fd30:";
pub(super) const ELSEWHERE_DEV: &str = "other0";
const ELSEWHERE_PEER: &str = "other1";
/// The next hop's address there: nobody's.
const ELSEWHERE_MAC: &str = "02:0f:00:00:02:01";
/// First routing table and rule priority of the fwmark variant.
pub(super) const TABLE_BASE: usize = 100;
pub(super) const RULE_PREF_BASE: usize = 1000;

/// What the N target devices are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// Layer 3 (`IFF_TUN`), like an OpenVPN `dev tun`.
    Tun,
    /// Ethernet (`IFF_TAP`), like an OpenVPN `dev tap`.
    Tap,
}

impl DeviceKind {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Tun => "tun",
            Self::Tap => "tap",
        }
    }

    pub(super) fn device(self, k: usize) -> String {
        format!("{}{k}", self.name())
    }

    /// Where the IP header starts in what a reader gets.
    pub(super) fn ip_offset(self) -> usize {
        match self {
            Self::Tun => 0,
            Self::Tap => 14,
        }
    }
}

/// Device k's translation prefixes: IPv4, IPv6.
pub(super) fn xlat(k: usize) -> [String; 2] {
    [format!("100.64.{k}.0/24"), format!("fd64:0:0:{k:x}::/64")]
}

/// The next hops behind device k (on-link; permanent neighbours on TAP):
/// IPv4, IPv6.
pub(super) fn next_hops(k: usize) -> [String; 2] {
    [format!("10.255.{k}.1"), format!("fd99::{k:x}:1")]
}

/// Keeps the calling thread on `cpu` (best effort: the figures say which
/// CPU the work ran on).
pub(super) fn pin_thread(cpu: usize) {
    let _ = process::pin_thread(cpu);
}

/// Opens tun/tap device `name` in the calling thread's namespace; it lives as
/// long as the file.
pub(super) fn open_device(kind: DeviceKind, name: &str) -> Result<File> {
    ovpn_lb_tests::tun::open_device(name, kind == DeviceKind::Tap)
        .with_context(|| format!("opening {} device {name}", kind.name()))
}

/// What each reader counts.
#[derive(Default)]
pub(super) struct ReaderCounts {
    pub(super) drained: AtomicU64,
    /// Drained packets without the expected source prefix or TTL.
    pub(super) wrong: AtomicU64,
    /// The first of them, in hex, for the warning.
    pub(super) first_wrong: Mutex<Option<String>>,
}

pub(super) const EXPECT_LAN_SOURCE: u8 = 0;
pub(super) const EXPECT_TRANSLATED: u8 = 1;
/// The calibration row: nothing should reach the devices.
pub(super) const EXPECT_NOTHING: u8 = 2;

/// Whether a packet read from device `k` looks forwarded as it should.
pub(super) fn looks_right(ip: &[u8], k: usize, expect: u8) -> bool {
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

pub(super) fn is_multicast(ip: &[u8]) -> bool {
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
pub(super) fn reader_loop(
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

/// `/proc/net/dev` of the calling thread's namespace: name -> (`rx_packets`,
/// `tx_packets + tx_dropped`).
pub(super) fn net_dev() -> Result<Vec<(String, u64, u64)>> {
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

/// The generator and gateway namespaces, the veth, the N devices and their
/// readers, a work directory with a private bpffs mount. Everything is made
/// after its record exists, so drop tears down exactly what was made.
pub struct Topology {
    pub(super) kind: DeviceKind,
    pub(super) n: usize,
    pub(super) gen_ns: String,
    pub(super) gw_ns: String,
    pub(super) dir: PathBuf,
    pub(super) teardown: Teardown,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) expect: Arc<AtomicU32>,
    pub(super) counts: Arc<Vec<ReaderCounts>>,
    pub(super) readers: Vec<JoinHandle<()>>,
}

impl Topology {
    /// Builds topology number `seq` of this process.
    pub(super) fn new(kind: DeviceKind, n: usize, seq: usize) -> Result<Self> {
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
    pub(super) fn gw(&self, args: &[&str]) {
        netns::ip(&self.gw_ns, args);
    }

    pub(super) fn device(&self, k: usize) -> String {
        self.kind.device(k)
    }

    pub(super) fn build(&mut self) -> Result<()> {
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
        Ok(())
    }

    /// Brings the devices up with their next hops, the fwmark tables and the
    /// plain route.
    pub(super) fn build_devices(&self) {
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
        self.build_elsewhere();
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

    /// A route out of the gateway for traffic that never meets a tunnel
    /// (the hook cost round).
    fn build_elsewhere(&self) {
        // Traffic elsewhere: out of a veth whose other end, in the same
        // namespace, drops it on arrival (addressed to another host). This
        // kernel has no dummy device. Quiet like the tunnel devices: none
        // of the kernel's own packets in its count.
        self.gw(&[
            "link",
            "add",
            ELSEWHERE_DEV,
            "type",
            "veth",
            "peer",
            "name",
            ELSEWHERE_PEER,
        ]);
        for dev in [ELSEWHERE_DEV, ELSEWHERE_PEER] {
            self.gw(&[
                "link",
                "set",
                dev,
                "addrgenmode",
                "none",
                "multicast",
                "off",
                "up",
            ]);
        }
        for (family, prefix, hop) in [
            (
                "-4",
                format!("{ELSEWHERE_V4}.0.0/16"),
                format!("{ELSEWHERE_V4}.255.254"),
            ),
            (
                "-6",
                format!("{ELSEWHERE_V6}:/48"),
                format!("{ELSEWHERE_V6}:fffe"),
            ),
        ] {
            self.gw(&[
                "neigh",
                "replace",
                &hop,
                "lladdr",
                ELSEWHERE_MAC,
                "dev",
                ELSEWHERE_DEV,
                "nud",
                "permanent",
            ]);
            self.gw(&[
                family,
                "route",
                "add",
                &prefix,
                "via",
                &hop,
                "dev",
                ELSEWHERE_DEV,
                "onlink",
            ]);
        }
    }

    /// Opens the N devices, each on its own thread in the gateway namespace,
    /// which then samples what arrives, on `AUX_CPU`.
    pub(super) fn start_readers(&mut self) -> Result<()> {
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
    pub(super) fn take_first_wrong(&self) -> String {
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
    pub(super) fn sample(&self, tasks: &[u32]) -> Result<Sample> {
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
        let elsewhere = find(ELSEWHERE_DEV).map_or(0, |e| e.2);
        let (mut drained, mut wrong) = (0, 0);
        for c in self.counts.iter() {
            drained += c.drained.load(Ordering::Relaxed);
            wrong += c.wrong.load(Ordering::Relaxed);
        }
        Ok(Sample {
            at,
            devices,
            lan_rx,
            elsewhere,
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
