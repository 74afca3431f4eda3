//! A gateway for the loader's tests: a LAN host and a gateway in their own
//! namespaces, tun devices held open by the test (standing in for OpenVPN),
//! a responder behind each tun that answers pings as the far gateway would,
//! and the real `ovpn-lb` binary run as a child process with the
//! configuration the generator makes for such a site.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData, PerCpuArray};
use etherparse::{Icmpv4Header, Icmpv4Type, IpNumber, Ipv4Header};
use ovpn_lb::{
    config::file,
    generate::{self, Request, Side},
    pins::Layout,
    status::Counters,
};
use ovpn_lb_common::{Schedule, TunnelStats, maps::names};

use crate::{
    bpffs,
    loader::{self, Loader, loader_bin},
    netns::{Netns, enter_named},
    ping::{self, Pings},
    topology,
    tun::Tun,
};

static NEXT: AtomicU32 = AtomicU32::new(0);

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
        bpffs::mount(&dir.join("bpf"));
        Self { dir }
    }

    /// Where the loader pins and keeps its state: the pin root inside the
    /// bpffs mount, so `detach` can remove it without touching the mount.
    #[must_use]
    pub fn layout(&self) -> Layout {
        Layout {
            pin_root: self.dir.join("bpf/ovpn-lb"),
            run_dir: self.dir.join("run"),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        bpffs::unmount(&self.dir.join("bpf"));
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// What the far gateway behind the responders says and does, changeable
/// while they run.
#[derive(Clone, Debug)]
pub struct Far {
    /// The view written into answers.
    pub view: u64,
    /// The reflector's flags word written into answers; 0 answers as a
    /// first-version peer (the word was padding then).
    pub flags: u16,
    /// Probes of its own, per tunnel: (view, flags word, how many per
    /// millisecond); none while empty.
    pub probes: Vec<Option<(u64, u16, u32)>>,
}

impl Default for Far {
    /// A first-version peer that can use every tunnel, sending no probes.
    fn default() -> Self {
        Self {
            view: u64::MAX,
            flags: 0,
            probes: Vec::new(),
        }
    }
}

/// The far gateway's behaviour, shared by every responder of a lab.
pub type FarSays = Arc<std::sync::Mutex<Far>>;

/// A tun device with a thread answering pings to the far host: the echo
/// request leaves as 100.64.k.x -> 10.20.30.7 and the reply comes back from
/// the peer's translated 100.65.k.7, as a far ovpn-lb gateway would send it;
/// probes are answered as [`Far`] says, and probes of its own sent.
pub struct Responder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    /// Opens tun `name` in `gw` for tunnel `k` and starts answering, as a
    /// first-version far gateway that can use every tunnel.
    #[must_use]
    pub fn start(gw: &Netns, name: &str, k: u8) -> Self {
        Self::start_as(gw, name, k, &FarSays::default())
    }

    /// The same, the far gateway behaving as `far` says.
    #[must_use]
    pub fn start_as(gw: &Netns, name: &str, k: u8, far: &FarSays) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let name = name.to_owned();
        let far = far.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = gw.spawn(move || {
            let mut tun = Tun::open(&name);
            ready_tx.send(()).unwrap();
            let mut seq = 0u32;
            while !flag.load(Ordering::Relaxed) {
                let says = far.lock().unwrap().clone();
                if let Some((view, flags, per_ms)) =
                    says.probes.get(usize::from(k)).copied().flatten()
                {
                    for _ in 0..per_ms {
                        seq = seq.wrapping_add(1);
                        tun.inject(&far_probe(k, seq, view, flags));
                    }
                }
                let Some(packet) = tun.try_read(Duration::from_millis(1)) else {
                    continue;
                };
                if let Some(reply) = echo_reply(&packet, k).or_else(|| probe_answer(&packet, &says))
                {
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

/// `CLOCK_MONOTONIC` now, ns: on one host the far program's clock is ours.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a live timespec the call writes.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    u64::try_from(now.tv_sec).unwrap() * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap()
}

/// A probe of the far gateway's on tunnel `k`, saying `view` with the
/// sender's flags word `flags` (0: as a first-version peer).
fn far_probe(k: u8, seq: u32, view: u64, flags: u16) -> Vec<u8> {
    use ovpn_lb_common::probe::{self, Payload};
    let mut p = Payload::probe(u16::from(k), seq, monotonic_ns(), view, 0);
    p.sender_flags = flags.to_be();
    probe::datagram(&p).to_vec()
}

/// The far gateway's answer to one of the loader's probes, as its tunnel
/// program would reflect it (kind, its receive time, its view and flags as
/// `far` says), else `None`.
fn probe_answer(packet: &[u8], far: &Far) -> Option<Vec<u8>> {
    use ovpn_lb_common::probe;
    const KIND: usize = probe::IPV4_HLEN + probe::UDP_HLEN + 5;
    const REFLECTOR_FLAGS: usize = probe::IPV4_HLEN + probe::UDP_HLEN + 14;
    const REFLECTED: usize = probe::IPV4_HLEN + probe::UDP_HLEN + 24;
    const REFLECTOR_VIEW: usize = probe::IPV4_HLEN + probe::UDP_HLEN + 40;
    let is_probe = packet.len() == probe::PACKET_LEN
        && packet[16..20] == probe::DST
        && packet.get(KIND) == Some(&probe::PROBE);
    if !is_probe {
        return None;
    }
    let mut answer = packet.to_vec();
    answer[KIND] = probe::ANSWER;
    // The far program stamps its kernel's monotonic clock; on one host that
    // is ours, so each tunnel's forward offset is its real one-way delay
    // (packet spray adds the differences to the tunnels' waits).
    answer[REFLECTED..REFLECTED + 8].copy_from_slice(&monotonic_ns().to_be_bytes());
    answer[REFLECTOR_VIEW..REFLECTOR_VIEW + 8].copy_from_slice(&far.view.to_be_bytes());
    answer[REFLECTOR_FLAGS..REFLECTOR_FLAGS + 2].copy_from_slice(&far.flags.to_be_bytes());
    Some(answer)
}

/// The reply to an IPv4 echo request that came by tunnel `k`, else `None`.
/// [`FAR_HOST`] answers as the far gateway translates it for that tunnel
/// (100.65.k.7); any other address answers as itself, a plain peer.
fn echo_reply(packet: &[u8], k: u8) -> Option<Vec<u8>> {
    let (ip, rest) = Ipv4Header::from_slice(packet).ok()?;
    if ip.protocol != IpNumber::ICMP {
        return None;
    }
    let to = Ipv4Addr::from(ip.destination);
    let from = if FAR_HOST.parse() == Ok(to) {
        Ipv4Addr::new(100, 65, k, 7)
    } else {
        to
    };
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

/// LAN host 192.168.10.5 behind gateway `lan0` (192.168.10.1), tunnels
/// `ovt0..` held open by responders, and scratch space for pins and config.
pub struct GatewayLab {
    pub host: Netns,
    pub gw: Netns,
    pub scratch: Scratch,
    pub responders: Vec<Option<Responder>>,
    /// What the far gateway behind the responders says and does.
    pub far: FarSays,
    pub config: PathBuf,
}

pub const TUNNEL_COUNT: usize = 3;
/// The far host the responders answer for.
pub const FAR_HOST: &str = "10.20.30.7";

/// The generator's configuration for this gateway (site A, LAN
/// 192.168.10.0/24, far LAN 10.20.30.0/24: translations 100.64.k.0/24 and
/// 100.65.k.0/24), on the test's devices, without OpenVPN management.
fn loader_config(up_delay_ms: u64, per_tunnel: impl Fn(usize, &mut file::Tunnel)) -> file::File {
    let mut request = Request::new(
        ["192.0.2.1", "192.0.2.2"],
        ["lan0", "lan0"],
        [&["192.168.10.0/24"], &["10.20.30.0/24"]],
    );
    request.tunnels = TUNNEL_COUNT;
    let plan = request.plan().expect("the test site's plan");
    let mut c = generate::loader_config(&plan, Side::A);
    c.up_delay_ms = up_delay_ms;
    // On a slow machine the responders answer late: probes wait as long.
    c.probe_interval_ms *= u64::from(crate::slowdown());
    for (k, t) in c.tunnels.iter_mut().enumerate() {
        t.device = format!("ovt{k}");
        t.management = None;
        per_tunnel(k, t);
    }
    c
}

/// The LAN: host 192.168.10.5 on `h0`, the gateway's `lan0` 192.168.10.1.
fn lan(host: &Netns, gw: &Netns) {
    topology::host_behind(
        (host.name(), "h0"),
        (gw.name(), "lan0"),
        &[("192.168.10.5/24", "192.168.10.1")],
    );
}

impl GatewayLab {
    /// Deletes the LAN device (the host's end goes with it) and makes it
    /// again: a new device, as when a bridge, bond or VLAN is recreated.
    pub fn recreate_lan(&self) {
        self.gw.ip(&["link", "del", "lan0"]);
        lan(&self.host, &self.gw);
    }

    #[must_use]
    pub fn new(up_delay_ms: u64) -> Self {
        Self::with_tunnels(up_delay_ms, |_, _| {})
    }

    /// `per_tunnel(k, tunnel)` adjusts tunnel k's configuration.
    #[must_use]
    pub fn with_tunnels(up_delay_ms: u64, per_tunnel: impl Fn(usize, &mut file::Tunnel)) -> Self {
        let host = Netns::new("lhost");
        let gw = Netns::new("lgw");
        lan(&host, &gw);
        topology::router(gw.name(), &[]);
        let mut responders = Vec::new();
        let far = FarSays::default();
        for k in 0..TUNNEL_COUNT {
            let name = format!("ovt{k}");
            responders.push(Some(Responder::start_as(
                &gw,
                &name,
                u8::try_from(k).unwrap(),
                &far,
            )));
            gw.ip(&["link", "set", &name, "up"]);
        }
        // The kernel's own path (over-MTU packets) leaves by tunnel 0.
        gw.ip(&["route", "add", "10.20.0.0/16", "dev", "ovt0"]);
        let scratch = Scratch::new("loader");
        let config = scratch.dir.join("ovpn-lb.toml");
        let text = loader_config(up_delay_ms, per_tunnel)
            .to_toml()
            .expect("TOML");
        fs::write(&config, text).unwrap();
        Self {
            host,
            gw,
            scratch,
            responders,
            far,
            config,
        }
    }

    /// A gateway with `ovpn-lb run` started on it.
    #[must_use]
    pub fn running(up_delay_ms: u64) -> (Self, Loader) {
        let lab = Self::new(up_delay_ms);
        let loader = lab.start_loader(&[]);
        (lab, loader)
    }

    /// Stops `loader` with SIGTERM, which it must answer by exiting 0, then
    /// detaches everything.
    ///
    /// # Panics
    /// If either does not succeed.
    pub fn stop_and_detach(&self, loader: Loader) {
        let log = loader.log_text();
        assert_eq!(loader.stop(libc::SIGTERM), Some(0), "{log}");
        let out = self.ovpn_lb(&["detach"]);
        assert!(out.status.success(), "{out:?}");
    }

    /// The loader as the tests run it.
    #[must_use]
    pub fn site(&self) -> loader::Site {
        loader::Site {
            ns: self.gw.name().to_owned(),
            bin: loader_bin(),
            layout: self.scratch.layout(),
        }
    }

    /// Runs `ovpn-lb ARGS` in the gateway namespace to completion.
    #[must_use]
    pub fn ovpn_lb(&self, args: &[&str]) -> std::process::Output {
        self.site().ovpn_lb(args)
    }

    /// Starts `ovpn-lb run` and waits until it reports running.
    #[must_use]
    pub fn start_loader(&self, extra: &[&str]) -> Loader {
        self.start_loader_with_env(extra, &[])
    }

    /// [`GatewayLab::start_loader`] with `env` set for the loader.
    #[must_use]
    pub fn start_loader_with_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Loader {
        let log = self.scratch.dir.join(format!(
            "loader-{}.log",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        self.site()
            .start_with_env(&self.config, extra, env, &log, false)
    }

    fn map<T>(&self, name: &str) -> T
    where
        T: TryFrom<Map>,
        T::Error: std::fmt::Debug,
    {
        let path = self.scratch.layout().maps().join(name);
        Map::from_map_data(MapData::from_pin(path).unwrap())
            .unwrap()
            .try_into()
            .unwrap()
    }

    /// The schedule packets use now, read from the pinned maps.
    #[must_use]
    pub fn live_schedule(&self) -> Schedule {
        let active: Array<_, u32> = self.map(names::ACTIVE_SCHED);
        let index = active.get(&0, 0).unwrap();
        let buffers: Array<_, Schedule> = self.map(names::SCHEDULES);
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
        let timeout = crate::slowed(timeout);
        loop {
            let now = self.in_rotation();
            if pred(&now) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "rotation stayed {now:?} for {timeout:?}\n{}",
                self.loader_logs()
            );
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// The end of every loader log this lab wrote, for a failure's message.
    fn loader_logs(&self) -> String {
        let mut logs: Vec<_> = std::fs::read_dir(&self.scratch.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("loader-"))
            })
            .collect();
        logs.sort();
        logs.iter()
            .map(|p| {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                format!("--- {} (last 40 lines)\n{tail}", p.display())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Tunnel `k`'s entry in the pinned `TUNNELS` map.
    #[must_use]
    pub fn tunnel_config(&self, k: u32) -> ovpn_lb_common::TunnelConfig {
        let map: Array<_, ovpn_lb_common::TunnelConfig> = self.map(names::TUNNELS);
        map.get(&k, 0).unwrap()
    }

    /// Tunnel counters from the pinned map, summed over CPUs.
    #[must_use]
    pub fn tunnel_stats(&self, k: u32) -> TunnelStats {
        let map: PerCpuArray<_, TunnelStats> = self.map(names::TUNNEL_STATS);
        map.get(&k, 0)
            .unwrap()
            .iter()
            .fold(TunnelStats::default(), TunnelStats::plus)
    }

    /// Every tunnel's counters and ring accounting, from the pinned maps.
    #[must_use]
    pub fn counters(&self) -> Counters {
        let n = u32::try_from(TUNNEL_COUNT).unwrap();
        Counters::read(&self.scratch.layout(), n).expect("pinned counters")
    }

    /// `GET /metrics` from the loader's default endpoint inside the gateway.
    #[must_use]
    pub fn scrape(&self) -> String {
        let (status, body) = http_get(&self.gw, "127.0.0.1:9477", "/metrics");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Starts pinging the far host from the LAN host: `count` echoes at
    /// `interval`. Returns the pings to wait for.
    #[must_use]
    pub fn ping(&self, count: u32, interval: &str) -> Pings {
        ping::ping_background(self.host.name(), FAR_HOST, count, interval)
    }
}

/// `GET path` over HTTP/1.0 from inside `ns`: (status, body).
#[must_use]
pub fn http_get(ns: &Netns, addr: &str, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    enter_named(ns.name(), || {
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
