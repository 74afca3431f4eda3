//! Traffic between the lab's hosts: a TCP transfer whose SHA-256 is checked at
//! both ends, a UDP echo exchange, iperf3 and a WAN capture (pings: `ping`).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use sha2::{Digest, Sha256};

use crate::{
    netns::{self, enter_named},
    process::Spawned,
};

/// Deterministic pseudo-random bytes (xorshift64*), `len` of them, in chunks.
pub struct RandomData {
    state: u64,
    left: usize,
}

impl RandomData {
    #[must_use]
    pub fn new(seed: u64, len: usize) -> Self {
        Self {
            state: seed | 1,
            left: len,
        }
    }

    /// Fills `buf` with the next bytes; how many, 0 at the end.
    pub fn fill(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.left);
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let v = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        self.left -= n;
        n
    }
}

/// How long a transfer may make no progress before it fails: TCP's own
/// retransmissions get far longer, and a test waiting on them would hang.
const STALL: Duration = Duration::from_mins(1);

/// What a TCP transfer saw at both ends.
#[derive(Debug)]
pub struct Transfer {
    pub sent_sha256: [u8; 32],
    pub received_sha256: [u8; 32],
    pub received_bytes: usize,
    /// The sender's address as the receiver saw it.
    pub peer: SocketAddr,
}

impl Transfer {
    /// Asserts that all `bytes` arrived, hash intact, from the real source
    /// address `from` (no translation left over).
    ///
    /// # Panics
    /// If any of these differs.
    pub fn assert_intact(&self, bytes: usize, from: &str) {
        assert_eq!(self.received_bytes, bytes, "bytes received");
        assert_eq!(self.received_sha256, self.sent_sha256, "SHA-256 differs");
        assert_eq!(self.peer.ip().to_string(), from, "the real source arrives");
    }
}

/// Sends `bytes` of pseudo-random data over one TCP connection from namespace
/// `from` to `listen` (an address inside namespace `to`), hashing both ends.
/// `during` runs while the data flows.
///
/// # Panics
/// If the connection fails.
pub fn tcp_transfer(
    from: &str,
    to: &str,
    listen: SocketAddr,
    bytes: usize,
    during: impl FnOnce(),
) -> Transfer {
    tcp_transfer_at(from, to, listen, bytes, None, during)
}

/// [`tcp_transfer`], the sender writing at most `rate` bytes per second
/// when given (an application-limited flow, which fills no queue).
///
/// # Panics
/// If the connection fails.
pub fn tcp_transfer_at(
    from: &str,
    to: &str,
    listen: SocketAddr,
    bytes: usize,
    rate: Option<u64>,
    during: impl FnOnce(),
) -> Transfer {
    let (ready_tx, ready_rx) = mpsc::channel();
    let to = to.to_owned();
    let receiver = thread::spawn(move || {
        enter_named(&to, || {
            let listener = TcpListener::bind(listen).unwrap();
            ready_tx.send(()).unwrap();
            let (mut conn, peer) = listener.accept().unwrap();
            // A transfer that stalls for good fails instead of hanging.
            conn.set_read_timeout(Some(STALL)).unwrap();
            let mut hash = Sha256::new();
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0;
            loop {
                let n = conn.read(&mut buf).expect("receive");
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                total += n;
            }
            (hash.finalize().into(), total, peer)
        })
    });
    ready_rx.recv().unwrap();
    let from = from.to_owned();
    let sender = thread::spawn(move || {
        enter_named(&from, || {
            let mut conn =
                TcpStream::connect_timeout(&listen, Duration::from_secs(5)).expect("connect");
            conn.set_write_timeout(Some(STALL)).unwrap();
            conn.set_read_timeout(Some(STALL)).unwrap();
            let mut data = RandomData::new(0x5eed, bytes);
            let mut hash = Sha256::new();
            let mut buf = vec![0u8; 1 << 16];
            let started = std::time::Instant::now();
            let mut sent = 0u64;
            loop {
                let n = data.fill(&mut buf);
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                conn.write_all(&buf[..n]).expect("send");
                sent += n as u64;
                if let Some(rate) = rate {
                    // Ahead of the rate: wait until it catches up.
                    let due = Duration::from_micros(sent * 1_000_000 / rate.max(1));
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        thread::sleep(wait);
                    }
                }
            }
            conn.shutdown(std::net::Shutdown::Write).unwrap();
            // Wait for the receiver to finish reading before closing.
            let _ = conn.read(&mut [0u8; 1]);
            let sent: [u8; 32] = hash.finalize().into();
            sent
        })
    });
    during();
    let sent_sha256 = sender.join().expect("sender");
    let (received_sha256, received_bytes, peer) = receiver.join().expect("receiver");
    Transfer {
        sent_sha256,
        received_sha256,
        received_bytes,
        peer,
    }
}

/// Sends `count` UDP datagrams from namespace `from` to an echo server at
/// `server` in namespace `to`; returns the echoes received and the source
/// address the server saw.
///
/// # Panics
/// If sockets cannot be made.
#[must_use]
pub fn udp_exchange(from: &str, to: &str, server: SocketAddr, count: usize) -> (usize, SocketAddr) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let to = to.to_owned();
    let echo = thread::spawn(move || {
        enter_named(&to, || {
            let s = UdpSocket::bind(server).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            ready_tx.send(()).unwrap();
            let mut seen = None;
            let mut buf = [0u8; 2048];
            while let Ok((n, peer)) = s.recv_from(&mut buf) {
                seen = Some(peer);
                s.send_to(&buf[..n], peer).unwrap();
            }
            seen
        })
    });
    ready_rx.recv().unwrap();
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .unwrap();
    let echoed = enter_named(from, || {
        let s = UdpSocket::bind(bind).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut got = 0;
        let mut buf = [0u8; 2048];
        for i in 0..count {
            let msg = format!("datagram {i}");
            s.send_to(msg.as_bytes(), server).unwrap();
            if let Ok((n, _)) = s.recv_from(&mut buf)
                && &buf[..n] == msg.as_bytes()
            {
                got += 1;
            }
        }
        got
    });
    let peer = echo.join().unwrap().expect("the echo server heard nothing");
    (echoed, peer)
}

/// The goodput in Mbit/s of an `iperf3 -J` report: what the receiver got
/// (0 when the report has none).
#[must_use]
pub fn iperf3_goodput_mbit(report: &serde_json::Value) -> f64 {
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e6
}

/// An `iperf3` server for one test in namespace `ns`, given a moment to listen.
///
/// # Panics
/// If iperf3 cannot start.
#[must_use]
pub fn iperf3_server(ns: &str) -> Spawned {
    iperf3_server_with(ns, &[])
}

/// [`iperf3_server`] with `wrapper` before iperf3 (for example
/// `["mptcpize", "run"]`: the server accepts MPTCP).
///
/// # Panics
/// If it cannot start.
#[must_use]
pub fn iperf3_server_with(ns: &str, wrapper: &[&str]) -> Spawned {
    let (program, args) = match wrapper.split_first() {
        Some((first, rest)) => (*first, [rest, &["iperf3"]].concat()),
        None => ("iperf3", Vec::new()),
    };
    let server = netns::command(ns, program)
        .args(args)
        .args(["-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 (Debian package iperf3)");
    thread::sleep(Duration::from_millis(300));
    Spawned(server)
}

/// A packet capture on `iface` in namespace `ns`, written to `file`.
pub struct Capture {
    process: Option<Spawned>,
    pub file: PathBuf,
}

impl Capture {
    /// Starts tcpdump and returns once it says it is listening (on a busy
    /// machine that can take seconds, and packets sent before are missed).
    ///
    /// # Panics
    /// If tcpdump cannot start, or does not listen within 20 s.
    #[must_use]
    pub fn start(ns: &str, iface: &str, file: &Path) -> Self {
        use std::io::BufRead as _;
        let mut child = netns::command(ns, "tcpdump")
            // Immediate mode: each packet is handed over (and written) as it
            // comes, not in blocks the kernel retires a second later, which
            // a short capture may never see.
            .args([
                "-i",
                iface,
                "-n",
                "-U",
                "--immediate-mode",
                "-s",
                "128",
                "-w",
            ])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump (Debian package tcpdump)");
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        // Reads tcpdump's messages for as long as it runs, so it never
        // blocks on a full pipe; the first "listening" line is the signal.
        thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        let listening = rx.recv_timeout(Duration::from_secs(20)).is_ok();
        let process = Spawned(child);
        assert!(listening, "tcpdump on {iface} in {ns} never listened");
        Self {
            process: Some(process),
            file: file.to_path_buf(),
        }
    }

    /// Stops the capture (SIGINT, so tcpdump flushes) and returns the file.
    #[must_use]
    pub fn stop(mut self) -> CaptureFile {
        if let Some(p) = self.process.take() {
            crate::process::signal(i32::try_from(p.0.id()).unwrap(), libc::SIGINT);
            thread::sleep(Duration::from_millis(300));
            drop(p);
        }
        CaptureFile(self.file.clone())
    }
}

/// A finished capture.
pub struct CaptureFile(pub PathBuf);

impl CaptureFile {
    /// Asserts that no captured packet matches `filter`, showing the first
    /// few that do after `what`.
    ///
    /// # Panics
    /// If any does.
    pub fn assert_none(&self, filter: &str, what: &str) {
        let hits = self.read(filter);
        assert!(hits.is_empty(), "{what}: {:?}", &hits[..hits.len().min(5)]);
    }

    /// `tcpdump -r` of the capture with `filter`, one packet a line.
    ///
    /// # Panics
    /// If the capture cannot be read.
    #[must_use]
    pub fn read(&self, filter: &str) -> Vec<String> {
        let mut args = vec!["-r", self.0.to_str().unwrap(), "-n"];
        if !filter.is_empty() {
            args.push(filter);
        }
        let out = Command::new("tcpdump")
            .args(&args)
            .stderr(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// A UDP receiver counting what arrives, in 100 ms bins, until dropped.
pub struct UdpSink {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<thread::JoinHandle<Vec<u64>>>,
    started: std::time::Instant,
}

/// Width of a [`UdpSink`] bin.
const BIN: Duration = Duration::from_millis(100);

impl UdpSink {
    /// Listens on `addr` inside namespace `ns`.
    ///
    /// # Panics
    /// If the socket cannot be bound.
    #[must_use]
    pub fn start(ns: &str, addr: SocketAddr) -> Self {
        use std::sync::{Arc, atomic::AtomicBool, atomic::Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let started = std::time::Instant::now();
        let (ready_tx, ready_rx) = mpsc::channel();
        let ns = ns.to_owned();
        let thread = thread::spawn(move || {
            enter_named(&ns, || {
                let s = UdpSocket::bind(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                ready_tx.send(()).unwrap();
                let mut bins = Vec::new();
                let mut buf = vec![0u8; 65536];
                while !flag.load(Ordering::Relaxed) {
                    if let Ok(n) = s.recv(&mut buf) {
                        let bin = usize::try_from(started.elapsed().as_millis() / BIN.as_millis())
                            .unwrap_or(usize::MAX);
                        if bins.len() <= bin {
                            bins.resize(bin + 1, 0);
                        }
                        bins[bin] += n as u64;
                    }
                }
                bins
            })
        });
        ready_rx.recv().unwrap();
        Self {
            stop,
            thread: Some(thread),
            started,
        }
    }

    /// When it started: the time bins count from.
    #[must_use]
    pub fn started(&self) -> std::time::Instant {
        self.started
    }

    /// Stops it; bytes received per 100 ms from its start.
    ///
    /// # Panics
    /// If its thread panicked.
    #[must_use]
    pub fn stop(mut self) -> Vec<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default()
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Bytes per second in `bins` (of a [`UdpSink`]) between `from` and `to`
/// after its start.
#[must_use]
#[expect(clippy::cast_precision_loss, reason = "a rate")]
pub fn rate_between(bins: &[u64], from: Duration, to: Duration) -> f64 {
    let (a, b) = (
        usize::try_from(from.as_millis() / BIN.as_millis()).unwrap_or(0),
        usize::try_from(to.as_millis() / BIN.as_millis()).unwrap_or(0),
    );
    let bytes: u64 = bins.iter().take(b).skip(a).sum();
    bytes as f64 / to.saturating_sub(from).as_secs_f64()
}

/// Sends UDP datagrams of `size` bytes from namespace `ns` to `to` at
/// `rate` bytes per second (paced every millisecond) for `how_long`,
/// optionally from `from`; returns the bytes sent.
///
/// # Panics
/// If the socket cannot be made.
#[must_use]
pub fn udp_flood(
    ns: &str,
    from: Option<SocketAddr>,
    to: SocketAddr,
    rate: u64,
    size: usize,
    how_long: Duration,
) -> u64 {
    enter_named(ns, || {
        let bind = from.unwrap_or_else(|| {
            if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
                .parse()
                .unwrap()
        });
        let s = UdpSocket::bind(bind).unwrap();
        let payload = vec![0x5a; size];
        let start = std::time::Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < how_long {
            let due =
                u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX) * rate / 1_000_000;
            while sent < due {
                // A full socket buffer or an unreachable moment: the flood
                // goes on, as a real sender's would.
                if s.send_to(&payload, to).is_ok() {
                    sent += size as u64;
                } else {
                    break;
                }
            }
            thread::sleep(Duration::from_millis(1));
        }
        sent
    })
}
