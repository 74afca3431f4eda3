//! Putting probes on the wire and reading what comes back.
//!
//! - [`Sender`]: one `AF_PACKET` socket writes probe datagrams straight into
//!   tunnel devices (for a TAP device, framed to the far end's MAC), past the
//!   routing table: a probe measures exactly the tunnel it names.
//! - [`Events`]: the tunnel programs' reports (answers to our probes, and
//!   the far gateway's probes they reflected), from a BPF ring buffer.
//! - [`Pinger`]: for a tunnel whose far end is a plain OpenVPN (no ovpn-lb to
//!   reflect probes), ICMP echo to an address behind it.

use std::{
    io, mem,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd},
    sync::Arc,
};

use aya::maps::{MapData, RingBuf};
use ovpn_lb_common::{
    echo,
    probe::{self, Event, Payload},
};
use tokio::io::{Interest, unix::AsyncFd};

/// `ETH_P_IP` in network order, for `sockaddr_ll`.
const ETH_P_IP_BE: u16 = 0x0800u16.to_be();

fn socket(domain: i32, kind: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: a plain socket call; the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            domain,
            kind | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Writes probes into tunnel devices.
pub struct Sender {
    fd: OwnedFd,
}

impl Sender {
    /// # Errors
    /// Without `CAP_NET_RAW`.
    pub fn open() -> io::Result<Self> {
        // Protocol 0: this socket sends only, it never receives a copy of traffic.
        Ok(Self {
            fd: socket(libc::AF_PACKET, libc::SOCK_DGRAM, 0)?,
        })
    }

    /// Sends `payload` into device `ifindex`; `peer_mac` frames it for a TAP
    /// device.
    ///
    /// # Errors
    /// If the device is gone or its queue is full.
    pub fn send(
        &self,
        ifindex: u32,
        peer_mac: Option<[u8; 6]>,
        payload: &Payload,
    ) -> io::Result<()> {
        let datagram = probe::datagram(payload);
        // SAFETY: a zeroed sockaddr_ll is valid; the fields set below are plain data.
        let mut to: libc::sockaddr_ll = unsafe { mem::zeroed() };
        to.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or(0);
        to.sll_protocol = ETH_P_IP_BE;
        to.sll_ifindex = i32::try_from(ifindex).unwrap_or(0);
        if let Some(mac) = peer_mac {
            to.sll_halen = 6;
            to.sll_addr[..6].copy_from_slice(&mac);
        }
        send_to(&self.fd, &datagram, &to)
    }
}

/// `sendto(2)` of `buf` on `fd` to the socket address `to` (a `libc`
/// `sockaddr_*`).
fn send_to<A>(fd: &OwnedFd, buf: &[u8], to: &A) -> io::Result<()> {
    // SAFETY: a buffer and an address we own, with their sizes; `A` is a
    // sockaddr type the socket's family takes (the callers' contract).
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            0,
            (&raw const *to).cast(),
            u32::try_from(mem::size_of::<A>()).unwrap_or(0),
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The tunnel programs' probe reports.
pub struct Events {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl Events {
    /// Reads from the ring buffer map `ring`; needs a tokio runtime.
    ///
    /// # Errors
    /// If the descriptor cannot be registered.
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the ring buffer owns its map descriptor, open and the same
        // for as long as the AsyncFd holds it.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self { ring })
    }

    /// Waits for the next reports (at least one).
    ///
    /// # Errors
    /// If waiting fails.
    pub async fn next(&mut self) -> io::Result<Vec<Event>> {
        loop {
            let mut guard = self.ring.readable_mut().await?;
            let ring = guard.get_inner_mut();
            let mut out = Vec::new();
            while let Some(item) = ring.next() {
                if item.len() >= mem::size_of::<Event>() {
                    // SAFETY: the item holds at least an Event's bytes; Event is
                    // plain integers, valid for any bit pattern; read unaligned.
                    out.push(unsafe { item.as_ptr().cast::<Event>().read_unaligned() });
                }
            }
            guard.clear_ready();
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }
}

/// A plain peer's echo probing: the socket, and the task that reads its
/// replies. Dropping it (the device replaced, the tunnel no longer probed)
/// ends the task, and with it the socket: one of each per tunnel, however
/// often its OpenVPN restarts.
pub struct Echo {
    pub pinger: Arc<Pinger>,
    reader: tokio::task::AbortHandle,
}

impl Echo {
    /// Starts reading `pinger`'s replies on a task, handing each sequence
    /// number to `on_reply` until it returns false; needs a tokio runtime.
    pub fn start(pinger: Pinger, on_reply: impl Fn(u16) -> bool + Send + 'static) -> Self {
        let pinger = Arc::new(pinger);
        let reading = pinger.clone();
        let reader = tokio::spawn(async move {
            while let Ok(seq) = reading.reply().await {
                if !on_reply(seq) {
                    return;
                }
            }
        })
        .abort_handle();
        Self { pinger, reader }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// ICMP echo through one tunnel to an address behind it.
pub struct Pinger {
    fd: AsyncFd<OwnedFd>,
    target: IpAddr,
    id: u16,
}

impl Pinger {
    /// A raw ICMP socket bound to `device`, sending to `target` with echo id `id`.
    ///
    /// # Errors
    /// Without `CAP_NET_RAW`, or if the device does not exist.
    pub fn open(device: &str, target: IpAddr, id: u16) -> io::Result<Self> {
        let fd = match target {
            IpAddr::V4(_) => socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)?,
            IpAddr::V6(_) => socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6)?,
        };
        // SAFETY: setsockopt with a buffer we own and its length.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                device.as_ptr().cast(),
                u32::try_from(device.len()).unwrap_or(0),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the OwnedFd keeps its descriptor open for the AsyncFd's life.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self { fd, target, id })
    }

    /// Whether echo probes to `target` can be sent at all: a raw ICMP
    /// socket of its family opens.
    ///
    /// # Errors
    /// Without `CAP_NET_RAW`, or where the family is not allowed.
    pub fn check(target: IpAddr) -> io::Result<()> {
        match target {
            IpAddr::V4(_) => socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
            IpAddr::V6(_) => socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6),
        }
        .map(drop)
    }

    /// Sends echo request `seq`.
    ///
    /// # Errors
    /// If the kernel refuses.
    pub fn send(&self, seq: u16) -> io::Result<()> {
        let msg = echo::request(self.target.is_ipv6(), self.id, seq);
        match self.target {
            IpAddr::V4(a) => {
                // SAFETY: a zeroed sockaddr_in is valid; fields set below.
                let mut to: libc::sockaddr_in = unsafe { mem::zeroed() };
                to.sin_family = u16::try_from(libc::AF_INET).unwrap_or(0);
                to.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
                send_to(self.fd.get_ref(), &msg, &to)
            }
            IpAddr::V6(a) => {
                // SAFETY: a zeroed sockaddr_in6 is valid; fields set below.
                let mut to: libc::sockaddr_in6 = unsafe { mem::zeroed() };
                to.sin6_family = u16::try_from(libc::AF_INET6).unwrap_or(0);
                to.sin6_addr.s6_addr = a.octets();
                send_to(self.fd.get_ref(), &msg, &to)
            }
        }
    }

    /// Waits for the next echo reply to us: its sequence number.
    ///
    /// # Errors
    /// If the socket fails.
    pub async fn reply(&self) -> io::Result<u16> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut buf = [0u8; 1500];
            let got = guard.try_io(|fd| {
                // SAFETY: receiving into a buffer we own, with its size.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(usize::try_from(n).unwrap_or(0))
                }
            });
            let Ok(n) = got else { continue };
            let n = n?;
            if let Some(seq) = echo::reply_seq(self.target.is_ipv6(), &buf[..n], self.id) {
                return Ok(seq);
            }
        }
    }
}
