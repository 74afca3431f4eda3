//! ICMP echo from a namespace, counted exactly: `count` requests at a fixed
//! interval, and every distinct reply that arrives before a deadline (the
//! requests' own time plus [`GRACE`]). iputils' ping waits only two round
//! trips after its last request, so on a loaded machine a late reply counts
//! as lost; and with a deadline (`-w`) it sends more than `count`.

use std::{
    io::{self, Read as _},
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicU16, Ordering},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use ovpn_lb_common::echo;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::netns;

/// How late a reply may be and still count: a reply is late, not lost, on a
/// machine busy with other work; a lost one never comes.
pub const GRACE: Duration = Duration::from_secs(3);

/// Identifiers of this process's pingers: each matches only its own replies.
static NEXT_ID: AtomicU16 = AtomicU16::new(0);

/// Pings running on their own thread; each request answered or not.
pub struct Pings(JoinHandle<Vec<bool>>);

impl Pings {
    /// Waits for the pings to end: (requests sent, distinct replies).
    ///
    /// # Panics
    /// If the pinger failed (no socket, a send refused).
    #[must_use]
    pub fn wait(self) -> (u32, u32) {
        let answered = self.answered();
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        (
            count(answered.len()),
            count(answered.iter().filter(|&&a| a).count()),
        )
    }

    /// Waits for the pings to end: the longest run of requests in a row
    /// that got no reply (how long forwarding stopped, in intervals).
    ///
    /// # Panics
    /// If the pinger failed.
    #[must_use]
    pub fn longest_silence(self) -> u32 {
        let mut longest = 0;
        let mut run = 0;
        for answered in self.answered() {
            run = if answered { 0 } else { run + 1 };
            longest = longest.max(run);
        }
        longest
    }

    /// Waits for the pings to end: each request, answered or not.
    ///
    /// # Panics
    /// If the pinger failed.
    #[must_use]
    pub fn answered(self) -> Vec<bool> {
        self.0
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

/// `count` echo requests from namespace `ns` to `target`, `interval` seconds
/// apart (as ping's `-i`): (sent, distinct replies).
///
/// # Panics
/// If the target or interval does not parse, or the pinger fails.
#[must_use]
pub fn ping(ns: &str, target: &str, count: u32, interval: &str) -> (u32, u32) {
    ping_background(ns, target, count, interval).wait()
}

/// [`ping`] on a thread of its own, for pings across a fault.
///
/// # Panics
/// If the target or interval does not parse.
#[must_use]
pub fn ping_background(ns: &str, target: &str, count: u32, interval: &str) -> Pings {
    ping_background_from(ns, None, target, count, interval)
}

/// [`ping_background`] from source address `from` (one of the namespace's),
/// or the one the kernel picks.
///
/// # Panics
/// If the target or interval does not parse.
#[must_use]
pub fn ping_background_from(
    ns: &str,
    from: Option<IpAddr>,
    target: &str,
    count: u32,
    interval: &str,
) -> Pings {
    let target: IpAddr = target
        .parse()
        .unwrap_or_else(|e| panic!("ping target {target}: {e}"));
    let interval = Duration::from_secs_f64(
        interval
            .parse()
            .unwrap_or_else(|e| panic!("ping interval {interval}: {e}")),
    );
    let ns = ns.to_owned();
    #[expect(clippy::cast_possible_truncation, reason = "any 16 bits of the PID do")]
    let id = (std::process::id() as u16) ^ NEXT_ID.fetch_add(0x0101, Ordering::Relaxed);
    Pings(thread::spawn(move || {
        netns::join(&ns);
        run(from, target, count, interval, id)
            .unwrap_or_else(|e| panic!("ping {target} from {ns}: {e}"))
    }))
}

/// Each request sent, answered or not.
fn run(
    from: Option<IpAddr>,
    target: IpAddr,
    count: u32,
    interval: Duration,
    id: u16,
) -> io::Result<Vec<bool>> {
    let v6 = target.is_ipv6();
    let (domain, protocol) = if v6 {
        (Domain::IPV6, Protocol::ICMPV6)
    } else {
        (Domain::IPV4, Protocol::ICMPV4)
    };
    let socket = Socket::new(domain, Type::RAW, Some(protocol))?;
    if let Some(from) = from {
        socket.bind(&SockAddr::from(SocketAddr::new(from, 0)))?;
    }
    let to = SockAddr::from(SocketAddr::new(target, 0));
    let mut answered = vec![false; count as usize];
    let start = Instant::now();
    let deadline = start + interval * count + GRACE;
    let mut sent: u16 = 0;
    let count = u16::try_from(count).expect("at most 65535 pings");
    loop {
        let now = Instant::now();
        let due = start + interval * u32::from(sent);
        if sent < count && now >= due {
            send(&socket, &to, &echo::request(v6, id, sent))?;
            sent += 1;
            continue;
        }
        if (sent == count && answered.iter().all(|&a| a)) || now >= deadline {
            break;
        }
        // At least a millisecond: a timeout under a microsecond reaches the
        // kernel as 0, which means none (the read would wait for ever).
        let wait = (if sent < count { due } else { deadline } - now).max(Duration::from_millis(1));
        socket.set_read_timeout(Some(wait))?;
        let mut buf = [0u8; 1500];
        let n = match (&socket).read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Some(seq) = echo::reply_seq(v6, &buf[..n], id)
            && let Some(slot) = answered.get_mut(usize::from(seq))
        {
            *slot = true;
        }
    }
    answered.truncate(usize::from(sent));
    Ok(answered)
}

/// A request the kernel refuses for want of a route (every tunnel down) is
/// sent and lost, as with ping.
fn send(socket: &Socket, to: &SockAddr, msg: &[u8]) -> io::Result<()> {
    match socket.send_to(msg, to) {
        Err(e)
            if e.raw_os_error().is_some_and(|c| {
                [libc::ENETUNREACH, libc::EHOSTUNREACH, libc::ENOBUFS].contains(&c)
            }) =>
        {
            Ok(())
        }
        other => other.map(drop),
    }
}
