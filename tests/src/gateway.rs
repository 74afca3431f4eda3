//! A gateway lab for the loader's tests: a LAN host and a gateway in their own
//! namespaces, tun devices held open by the test (standing in for OpenVPN),
//! a responder behind each tun that answers pings as the far gateway would,
//! and the real `ovpn-lb` binary run as a child process.

use std::{
    fmt::Write as _,
    fs,
    io::{Read as _, Write as _},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData, PerCpuArray};
use etherparse::{Icmpv4Header, Icmpv4Type, IpNumber, Ipv4Header};
use ovpn_lb_common::{Schedule, TunnelStats, maps::names};

use crate::{
    netns::{Netns, run},
    tun::Tun,
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Loader tests measure timing (the 100 ms health bound), so they run one at a
/// time even when the test harness runs threads in parallel.
static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the loader-test lock for the caller's scope.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The `ovpn-lb` binary: `$OVPN_LB_BIN`, or the workspace's debug build.
#[must_use]
pub fn loader_bin() -> PathBuf {
    let path = std::env::var_os("OVPN_LB_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/ovpn-lb"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p ovpn-lb-userspace` (cargo xtask test does)",
        path.display()
    );
    path
}

/// A private bpffs mount and scratch directory, removed on drop.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    #[must_use]
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "ovpnlb-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(dir.join("bpf")).unwrap();
        run(
            "mount",
            &["-t", "bpf", "bpf", dir.join("bpf").to_str().unwrap()],
        );
        Self { dir }
    }

    /// Pin root given to the loader: inside the bpffs mount, so `detach` can
    /// remove it without touching the mount.
    #[must_use]
    pub fn pin_root(&self) -> PathBuf {
        self.dir.join("bpf/ovpn-lb")
    }

    #[must_use]
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let bpf = self.dir.join("bpf");
        // A loader that just exited may still be releasing the mount.
        let unmounted = (0..20).any(|_| {
            let ok = Command::new("umount")
                .arg(&bpf)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                thread::sleep(Duration::from_millis(50));
            }
            ok
        });
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&bpf).status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A tun device with a thread answering pings to the far host: the echo
/// request leaves as 100.64.k.x -> 10.20.30.7 and the reply comes back from
/// the peer's translated 100.65.k.7, as a far ovpn-lb gateway would send it.
pub struct Responder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    /// Opens tun `name` in `gw` for tunnel `k` and starts answering.
    #[must_use]
    pub fn start(gw: &Netns, name: &str, k: u8) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let name = name.to_owned();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = gw.spawn(move || {
            let mut tun = Tun::open(&name);
            ready_tx.send(()).unwrap();
            while !flag.load(Ordering::Relaxed) {
                let Some(packet) = tun.try_read(Duration::from_millis(5)) else {
                    continue;
                };
                if let Some(reply) = echo_reply(&packet, Ipv4Addr::new(100, 65, k, 7)) {
                    tun.inject(&reply);
                }
            }
        });
        ready_rx.recv().expect("tun opened");
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An echo reply from `from` for an IPv4 echo request, else `None`.
fn echo_reply(packet: &[u8], from: Ipv4Addr) -> Option<Vec<u8>> {
    let (ip, rest) = Ipv4Header::from_slice(packet).ok()?;
    if ip.protocol != IpNumber::ICMP {
        return None;
    }
    let (icmp, payload) = Icmpv4Header::from_slice(rest).ok()?;
    let Icmpv4Type::EchoRequest(echo) = icmp.icmp_type else {
        return None;
    };
    let reply = Icmpv4Header::with_checksum(Icmpv4Type::EchoReply(echo), payload);
    let mut header = Ipv4Header::new(
        u16::try_from(reply.header_len() + payload.len()).ok()?,
        64,
        IpNumber::ICMP,
        from.octets(),
        ip.source,
    )
    .ok()?;
    header.header_checksum = header.calc_header_checksum();
    Some([header.to_bytes().as_slice(), &reply.to_bytes(), payload].concat())
}

/// The running loader; killed (SIGKILL) on drop if still running.
pub struct LoaderProcess {
    child: Child,
    pub log: PathBuf,
}

impl LoaderProcess {
    /// The loader's PID (`ip netns exec` execs it in place).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` and waits for the exit code (`None`: killed by a signal).
    #[must_use]
    pub fn stop(mut self, signal: i32) -> Option<i32> {
        let pid = i32::try_from(self.child.id()).unwrap();
        unsafe { libc::kill(pid, signal) };
        self.child.wait().ok().and_then(|s| s.code())
    }

    /// Waits for the process to exit by itself.
    #[must_use]
    pub fn wait(mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "loader did not exit:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[must_use]
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LoaderProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// LAN host 192.168.10.5 behind gateway `lan0` (192.168.10.1), tunnels
/// `ovt0..` held open by responders, and scratch space for pins and config.
pub struct GatewayLab {
    pub host: Netns,
    pub gw: Netns,
    pub scratch: Scratch,
    pub responders: Vec<Option<Responder>>,
    pub config: PathBuf,
}

pub const TUNNEL_COUNT: usize = 3;

impl GatewayLab {
    /// `extra` is appended to every `[[tunnel]]` k as returned by `per_tunnel(k)`.
    #[must_use]
    pub fn new(up_delay_ms: u64, per_tunnel: impl Fn(usize) -> String) -> Self {
        let host = Netns::new("lhost");
        let gw = Netns::new("lgw");
        host.ip(&[
            "link",
            "add",
            "h0",
            "type",
            "veth",
            "peer",
            "name",
            "lan0",
            "netns",
            gw.name(),
        ]);
        host.ip(&["addr", "add", "192.168.10.5/24", "dev", "h0"]);
        host.ip(&["link", "set", "h0", "up"]);
        host.ip(&["route", "add", "default", "via", "192.168.10.1"]);
        gw.ip(&["addr", "add", "192.168.10.1/24", "dev", "lan0"]);
        gw.ip(&["link", "set", "lan0", "up"]);
        gw.exec(&[
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
        ]);
        let mut responders = Vec::new();
        for k in 0..TUNNEL_COUNT {
            let name = format!("ovt{k}");
            responders.push(Some(Responder::start(&gw, &name, u8::try_from(k).unwrap())));
            gw.ip(&["link", "set", &name, "up"]);
        }
        // The kernel's own path (over-MTU packets) leaves by tunnel 0.
        gw.ip(&["route", "add", "10.20.0.0/16", "dev", "ovt0"]);
        let scratch = Scratch::new("loader");
        let mut text = format!(
            "remote_prefixes = [\"10.20.30.0/24\"]\nup_delay_ms = {up_delay_ms}\n# The responders stand in for the far gateway's traffic, not its probes.\nprobe_interval_ms = 0\n\n[lan]\ninterface = \"lan0\"\nprefixes = [\"192.168.10.0/24\"]\n"
        );
        for k in 0..TUNNEL_COUNT {
            let _ = write!(
                text,
                "\n[[tunnel]]\ndevice = \"ovt{k}\"\ntranslate = [\"100.64.{k}.0/24\"]\npeer_translate = [\"100.65.{k}.0/24\"]\n{}\n",
                per_tunnel(k)
            );
        }
        let config = scratch.dir.join("ovpn-lb.toml");
        fs::write(&config, text).unwrap();
        Self {
            host,
            gw,
            scratch,
            responders,
            config,
        }
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--pin-root".into(),
            self.scratch.pin_root().display().to_string(),
            "--run-dir".into(),
            self.scratch.run_dir().display().to_string(),
        ]
    }

    /// Runs `ovpn-lb ARGS` in the gateway namespace to completion.
    #[must_use]
    pub fn ovpn_lb(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", self.gw.name()])
            .arg(loader_bin())
            .args(self.args())
            .args(args)
            .output()
            .unwrap()
    }

    /// Starts `ovpn-lb run` and waits until it reports running.
    #[must_use]
    pub fn start_loader(&self, extra: &[&str]) -> LoaderProcess {
        let log = self.scratch.dir.join(format!(
            "loader-{}.log",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let child = Command::new("ip")
            .args(["netns", "exec", self.gw.name()])
            .arg(loader_bin())
            .args(self.args())
            .args(["run", "--config", self.config.to_str().unwrap()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let loader = LoaderProcess { child, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !loader.log_text().contains("running with") {
            assert!(
                Instant::now() < deadline,
                "loader did not start:\n{}",
                loader.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
        loader
    }

    /// The schedule packets use now, read from the pinned maps.
    #[must_use]
    pub fn live_schedule(&self) -> Schedule {
        let maps = self.scratch.pin_root().join("maps");
        let active: Array<_, u32> =
            Map::from_map_data(MapData::from_pin(maps.join(names::ACTIVE_SCHED)).unwrap())
                .unwrap()
                .try_into()
                .unwrap();
        let index = active.get(&0, 0).unwrap();
        let buffers: Array<_, Schedule> =
            Map::from_map_data(MapData::from_pin(maps.join(names::SCHEDULES)).unwrap())
                .unwrap()
                .try_into()
                .unwrap();
        buffers.get(&index, 0).unwrap()
    }

    /// Tunnels that hold at least one slot of the live schedule.
    #[must_use]
    pub fn in_rotation(&self) -> Vec<usize> {
        let s = self.live_schedule();
        let mut ks: Vec<usize> = s.slots[..s.len as usize]
            .iter()
            .map(|&k| usize::from(k))
            .collect();
        ks.sort_unstable();
        ks.dedup();
        ks
    }

    /// Waits until `pred(in_rotation)` holds; returns how long that took.
    pub fn wait_rotation(&self, timeout: Duration, pred: impl Fn(&[usize]) -> bool) -> Duration {
        self.wait_rotation_since(Instant::now(), timeout, pred)
    }

    /// As [`GatewayLab::wait_rotation`], timed from `start`.
    pub fn wait_rotation_since(
        &self,
        start: Instant,
        timeout: Duration,
        pred: impl Fn(&[usize]) -> bool,
    ) -> Duration {
        loop {
            let now = self.in_rotation();
            if pred(&now) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "rotation stayed {now:?} for {timeout:?}"
            );
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Tunnel `k`'s entry in the pinned `TUNNELS` map.
    #[must_use]
    pub fn tunnel_config(&self, k: u32) -> ovpn_lb_common::TunnelConfig {
        let path = self.scratch.pin_root().join("maps").join(names::TUNNELS);
        let map: Array<_, ovpn_lb_common::TunnelConfig> =
            Map::from_map_data(MapData::from_pin(path).unwrap())
                .unwrap()
                .try_into()
                .unwrap();
        map.get(&k, 0).unwrap()
    }

    /// Tunnel counters from the pinned map, summed over CPUs.
    #[must_use]
    pub fn tunnel_stats(&self, k: u32) -> TunnelStats {
        let path = self
            .scratch
            .pin_root()
            .join("maps")
            .join(names::TUNNEL_STATS);
        let map: PerCpuArray<_, TunnelStats> = Map::from_map_data(MapData::from_pin(path).unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        map.get(&k, 0)
            .unwrap()
            .iter()
            .fold(TunnelStats::default(), TunnelStats::plus)
    }

    /// `GET /metrics` from the loader's default endpoint inside the gateway.
    #[must_use]
    pub fn scrape(&self) -> String {
        self.gw.enter(|| {
            let mut conn =
                std::net::TcpStream::connect("127.0.0.1:9477").expect("metrics endpoint");
            conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .unwrap();
            let mut response = String::new();
            conn.read_to_string(&mut response).unwrap();
            assert!(
                response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
                "{response}"
            );
            response
                .split_once("\r\n\r\n")
                .map(|(_, body)| body.to_owned())
                .unwrap_or_default()
        })
    }

    /// Starts `ping` from the LAN host to the far host: `count` echoes at
    /// `interval`. Returns the process to wait for.
    #[must_use]
    pub fn ping(&self, count: u32, interval: &str) -> Child {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                self.host.name(),
                "ping",
                "-n",
                "-q",
                "-i",
                interval,
                "-W",
                "1",
            ])
            .args(["-c", &count.to_string(), "10.20.30.7"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// `GET path` over HTTP/1.0 from inside `ns`: (status, body).
#[must_use]
pub fn http_get(ns: &Netns, addr: &str, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    ns.enter(|| {
        let mut conn =
            std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        conn.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).unwrap();
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    })
}

/// A child process killed (by its PID) and reaped on drop.
pub struct Spawned(pub Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of the sample `series` (name and labels exactly as exposed).
#[must_use]
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// (transmitted, received) from ping's summary.
#[must_use]
pub fn ping_summary(output: &str) -> (u32, u32) {
    let line = output
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in:\n{output}"));
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    (nums[0], nums[1])
}
