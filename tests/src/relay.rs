//! A UDP relay that holds every datagram for a fixed time: the test bed's
//! longer WAN path (this kernel has no netem). One relay per tunnel, in
//! gateway B's namespace: gateway A's OpenVPN sends to the relay's port on
//! B's WAN address, the relay passes each datagram on to B's OpenVPN
//! `delay` later, and B's answers back to A `delay` later too, so the
//! tunnel's round trip grows by twice `delay`. Datagrams keep their order.
//!
//! Threads of the process that made the lab, stopped when the relay is
//! dropped.

use std::{
    collections::VecDeque,
    io::ErrorKind,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::netns;

/// Longest a relay thread sleeps before it looks at its queue and the stop
/// flag again.
const POLL: Duration = Duration::from_millis(1);

/// A running relay; dropping it stops its threads.
pub struct Relay {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// One direction: datagrams waiting for their time.
struct Held {
    queue: VecDeque<(Instant, Vec<u8>)>,
    delay: Duration,
}

impl Held {
    fn new(delay: Duration) -> Self {
        Self {
            queue: VecDeque::new(),
            delay,
        }
    }

    /// How long the next receive may wait: until the first datagram is due.
    fn wait(&self) -> Duration {
        self.queue.front().map_or(POLL, |(due, _)| {
            due.saturating_duration_since(Instant::now())
                .clamp(Duration::from_micros(50), POLL)
        })
    }

    /// Sends every datagram that is due through `send`.
    fn release(&mut self, mut send: impl FnMut(&[u8])) {
        let now = Instant::now();
        while self.queue.front().is_some_and(|(due, _)| *due <= now) {
            let (_, datagram) = self.queue.pop_front().expect("checked above");
            send(&datagram);
        }
    }

    fn hold(&mut self, datagram: &[u8]) {
        self.queue
            .push_back((Instant::now() + self.delay, datagram.to_vec()));
    }
}

/// Receives into `buf` for at most `wait`; the length, or `None` when
/// nothing came.
///
/// A receive with a timeout is never restarted after a signal handler ran
/// (signal(7)): `EINTR` whenever the process that made the lab handles a
/// signal. And a datagram sent to a port nobody holds (an OpenVPN
/// restarting) comes back as `ECONNREFUSED` on the next receive of the
/// connected socket. Neither ends the relay: either once stopped a
/// tunnel's path for good, mid-benchmark.
fn receive(socket: &UdpSocket, buf: &mut [u8], wait: Duration) -> Option<(usize, SocketAddr)> {
    socket
        .set_read_timeout(Some(wait))
        .expect("a non-zero timeout");
    match socket.recv_from(buf) {
        Ok(got) => Some(got),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::WouldBlock
                    | ErrorKind::TimedOut
                    | ErrorKind::Interrupted
                    | ErrorKind::ConnectionRefused
            ) =>
        {
            None
        }
        Err(e) => panic!("relay receive: {e}"),
    }
}

impl Relay {
    /// Starts a relay in namespace `ns` that listens on `listen` and passes
    /// what it gets to `target`, and `target`'s answers back to the last
    /// sender, each `delay` later.
    ///
    /// # Panics
    /// If its sockets cannot be made.
    #[must_use]
    pub fn start(ns: &str, listen: SocketAddr, target: SocketAddr, delay: Duration) -> Self {
        let (outer, inner) = netns::enter_named(ns, || {
            let outer = UdpSocket::bind(listen).unwrap_or_else(|e| panic!("bind {listen}: {e}"));
            let inner = UdpSocket::bind(SocketAddr::new(listen.ip(), 0))
                .unwrap_or_else(|e| panic!("bind {}: {e}", listen.ip()));
            inner
                .connect(target)
                .unwrap_or_else(|e| panic!("connect {target}: {e}"));
            (outer, inner)
        });
        let stop = Arc::new(AtomicBool::new(false));
        let sender: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let forward = {
            let (outer, inner) = (clone(&outer), clone(&inner));
            let (stop, sender) = (stop.clone(), sender.clone());
            thread::spawn(move || {
                let mut held = Held::new(delay);
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    if let Some((len, from)) = receive(&outer, &mut buf, held.wait()) {
                        *sender.lock().expect("not poisoned") = Some(from);
                        held.hold(&buf[..len]);
                    }
                    held.release(|d| {
                        let _ = inner.send(d);
                    });
                }
            })
        };
        let back = {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut held = Held::new(delay);
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    if let Some((len, _)) = receive(&inner, &mut buf, held.wait()) {
                        held.hold(&buf[..len]);
                    }
                    let to = *sender.lock().expect("not poisoned");
                    held.release(|d| {
                        if let Some(to) = to {
                            let _ = outer.send_to(d, to);
                        }
                    });
                }
            })
        };
        Self {
            stop,
            threads: vec![forward, back],
        }
    }
}

fn clone(socket: &UdpSocket) -> UdpSocket {
    socket.try_clone().expect("a socket descriptor to spare")
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let died: Vec<String> = self
            .threads
            .drain(..)
            .filter_map(|t| t.join().err())
            .map(|payload| {
                payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default()
            })
            .collect();
        // A dead thread cut its tunnel's path for the rest of the run: what
        // was measured through it is void, so say so (unless a panic is
        // already unwinding, which a second one would abort).
        assert!(
            died.is_empty() || std::thread::panicking(),
            "a relay thread died during the run: {}",
            died.join("; ")
        );
    }
}
