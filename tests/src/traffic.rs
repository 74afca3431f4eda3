//! Traffic between the lab's hosts: a TCP transfer whose SHA-256 is checked at
//! both ends, a UDP echo exchange, iperf3 and a WAN capture (pings: `ping`).

use std::{
    fs,
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

    fn fill(&mut self, buf: &mut [u8]) -> usize {
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

/// An `iperf3` server for one test in namespace `ns`, given a moment to listen.
///
/// # Panics
/// If iperf3 cannot start.
#[must_use]
pub fn iperf3_server(ns: &str) -> Spawned {
    let server = netns::command(ns, "iperf3")
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
    /// # Panics
    /// If tcpdump cannot start.
    #[must_use]
    pub fn start(ns: &str, iface: &str, file: &Path) -> Self {
        let child = netns::command(ns, "tcpdump")
            .args(["-i", iface, "-n", "-U", "-s", "128", "-w"])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump (Debian package tcpdump)");
        // Wait until tcpdump has opened its output.
        for _ in 0..100 {
            if fs::metadata(file).is_ok_and(|m| m.len() > 0) {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        Self {
            process: Some(Spawned(child)),
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
