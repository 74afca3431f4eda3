//! A tun device opened by the test itself: what the datapath sends into the
//! tunnel is read here, and what the test writes arrives as tunnel ingress.

use std::{
    fs::File,
    io::{Read, Write},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

pub use ovpn_lb::tun::{open_device, open_multi_queue};

/// An open tun device; it disappears when dropped (unless persistent).
pub struct Tun {
    file: File,
    /// Packets read while looking for another, kept for later calls.
    backlog: Vec<Vec<u8>>,
}

impl Tun {
    /// Creates tun device `name` in the calling thread's network namespace.
    ///
    /// # Panics
    /// If `/dev/net/tun` cannot be opened or the device created.
    #[must_use]
    pub fn open(name: &str) -> Self {
        let file = open_device(name, false).unwrap_or_else(|e| panic!("tun device {name}: {e}"));
        Self {
            file,
            backlog: Vec::new(),
        }
    }

    /// Next IP packet the kernel sends into the tunnel that `want` accepts,
    /// within `timeout`.
    ///
    /// # Panics
    /// If none arrives in time.
    pub fn read_matching(&mut self, timeout: Duration, want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        if let Some(i) = self.backlog.iter().position(|p| want(p)) {
            return self.backlog.remove(i);
        }
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no matching packet came out of the tunnel within {timeout:?}"
            );
            let mut pfd = libc::pollfd {
                fd: self.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
            // SAFETY: poll(2) on one pollfd we own, for our own descriptor.
            if unsafe { libc::poll(&raw mut pfd, 1, ms) } <= 0 {
                continue;
            }
            let n = self.file.read(&mut buf).expect("read from tun");
            if want(&buf[..n]) {
                return buf[..n].to_vec();
            }
            self.backlog.push(buf[..n].to_vec());
        }
    }

    /// The next packet sent into the tunnel, if one comes within `timeout`.
    pub fn try_read(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        if !self.backlog.is_empty() {
            return Some(self.backlog.remove(0));
        }
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: as in `read_matching`.
        if unsafe { libc::poll(&raw mut pfd, 1, ms) } <= 0 {
            return None;
        }
        let mut buf = vec![0u8; 65536];
        let n = self.file.read(&mut buf).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    /// Injects an IP packet as if it arrived from the tunnel.
    ///
    /// # Panics
    /// If the write fails.
    pub fn inject(&mut self, packet: &[u8]) {
        self.file.write_all(packet).expect("write to tun");
    }
}
