//! A tun device opened by the test itself: what the datapath sends into the
//! tunnel is read here, and what the test writes arrives as tunnel ingress.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Write},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates tun (or, with `tap`, TAP) device `name` without packet info in the
/// calling thread's network namespace; it lives as long as the file.
///
/// # Errors
/// If `/dev/net/tun` cannot be opened or the kernel refuses the device.
pub fn open_device(name: &str, tap: bool) -> std::io::Result<File> {
    open_with(name, IFF_NO_PI | if tap { IFF_TAP } else { IFF_TUN })
}

/// Creates a multi-queue tun device `name` (its first queue), as some
/// programs other than OpenVPN make them; it lives as long as the file.
///
/// # Errors
/// As [`open_device`].
pub fn open_multi_queue(name: &str) -> std::io::Result<File> {
    open_with(name, IFF_NO_PI | IFF_TUN | IFF_MULTI_QUEUE)
}

fn open_with(name: &str, flags: libc::c_short) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags,
        _pad: [0; 22],
    };
    if name.len() >= libc::IFNAMSIZ {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF on our own descriptor with a properly sized ifreq.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &raw mut req) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

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
