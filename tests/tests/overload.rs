//! Overload is not an outage. The built-in lab with real OpenVPN, every
//! tunnel shaped by gateway A's OpenVPN (`--shaper`), and one UDP flow from
//! host A at twice what the tunnels carry together, for 20 s: every ring
//! stays full, so most probes and answers are lost there, yet no tunnel
//! leaves the rotation (the far end's packets keep arriving on each and its
//! OpenVPN keeps reading its ring), the flow's goodput stays within 10 % of
//! the tunnels' capacity, and a TCP transfer beside it completes intact.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use sha2::{Digest as _, Sha256};

use ovpn_lb_tests::{
    lab::{HOST_B, Lab, Options, Side},
    netns::enter_named,
    root_alone,
    traffic::{RandomData, UdpSink, rate_between, udp_flood},
};

const TUNNELS: usize = 4;
/// Gateway A's `--shaper` on every tunnel, bytes/s.
const SHAPER: u32 = 1_000_000;
const DATAGRAM: usize = 1200;
const FLOOD: Duration = Duration::from_secs(20);

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// How long [`capacity`] floods, and from when it counts: OpenVPN's shaper
/// lets bursts through, so a short window read anywhere from 0.85 to 1.2 of
/// the steady rate.
const CAPACITY_FLOOD: Duration = Duration::from_secs(8);
const CAPACITY_FROM: Duration = Duration::from_secs(2);

/// What the tunnels carry together, bytes of UDP payload per second:
/// gateway A floods each tunnel's link directly (no ovpn-lb in the way)
/// at twice its shaper, and gateway B counts what arrives.
fn capacity(lab: &Lab) -> f64 {
    let (ga, gb) = (lab.gw(Side::A), lab.gw(Side::B));
    let sinks: Vec<UdpSink> = (0..TUNNELS)
        .map(|k| UdpSink::start(&gb, addr(&format!("10.99.{k}.2"), 6000)))
        .collect();
    let floods: Vec<_> = (0..TUNNELS)
        .map(|k| {
            let ga = ga.clone();
            thread::spawn(move || {
                udp_flood(
                    &ga,
                    None,
                    addr(&format!("10.99.{k}.2"), 6000),
                    2 * u64::from(SHAPER),
                    DATAGRAM,
                    CAPACITY_FLOOD,
                )
            })
        })
        .collect();
    for f in floods {
        f.join().unwrap();
    }
    sinks
        .into_iter()
        .map(|s| rate_between(&s.stop(), CAPACITY_FROM, CAPACITY_FLOOD))
        .sum()
}

/// A TCP transfer under way: the SHA-256 the sender sent, and what the
/// receiver got once it has it all.
struct Transfer {
    sender: thread::JoinHandle<[u8; 32]>,
    received: mpsc::Receiver<([u8; 32], usize)>,
}

/// One TCP connection from host A to host B, opened now, then `bytes` sent
/// over it on a thread.
fn tcp_beside(lab: &Lab, bytes: usize) -> Transfer {
    let listen = addr(HOST_B, 5301);
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, received) = mpsc::channel();
    let hb = lab.host(Side::B);
    thread::spawn(move || {
        enter_named(&hb, || {
            let listener = TcpListener::bind(listen).unwrap();
            ready_tx.send(()).unwrap();
            let (mut conn, _) = listener.accept().unwrap();
            let (mut hash, mut total, mut buf) = (Sha256::new(), 0, vec![0u8; 1 << 16]);
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                total += n;
            }
            let _ = done_tx.send((hash.finalize().into(), total));
        });
    });
    ready_rx.recv().unwrap();
    let ha = lab.host(Side::A);
    let (conn_tx, conn_rx) = mpsc::channel();
    let sender = thread::spawn(move || {
        enter_named(&ha, || {
            let mut conn = TcpStream::connect_timeout(&listen, Duration::from_secs(5)).unwrap();
            conn_tx.send(()).unwrap();
            let (mut data, mut hash, mut buf) =
                (RandomData::new(7, bytes), Sha256::new(), vec![0u8; 1 << 16]);
            loop {
                let n = data.fill(&mut buf);
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                conn.write_all(&buf[..n]).unwrap();
            }
            conn.shutdown(std::net::Shutdown::Write).unwrap();
            hash.finalize().into()
        })
    });
    // Connected before the flood: a SYN lost in a full ring waits seconds.
    conn_rx.recv().unwrap();
    Transfer { sender, received }
}

#[test]
fn a_flood_at_twice_the_capacity_takes_no_tunnel_out() {
    let Some(_alone) = root_alone() else { return };
    let lab = Lab::for_test(
        "ov",
        Options {
            shaper: vec![SHAPER],
            ..Options::default()
        },
    );
    let capacity = capacity(&lab);
    eprintln!("the tunnels carry {capacity:.0} B/s of UDP payload together");
    assert!(capacity > 0.0, "{}", lab.diagnose());
    // That flood, past the loaders, starves the probes: tunnels may have
    // left. The flood below is judged with every tunnel back.
    for side in [Side::A, Side::B] {
        lab.wait_all_up(side, Duration::from_secs(20));
    }
    let departures = [lab.departures(Side::A), lab.departures(Side::B)];
    let sink = UdpSink::start(&lab.host(Side::B), addr(HOST_B, 6100));
    let transfer = tcp_beside(&lab, 256 << 10);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a rate"
    )]
    let offered = (2.0 * capacity) as u64;
    let started = Instant::now();
    let sent = udp_flood(
        &lab.host(Side::A),
        None,
        addr(HOST_B, 6100),
        offered,
        DATAGRAM,
        FLOOD,
    );
    let left = [lab.departures(Side::A), lab.departures(Side::B)];
    thread::sleep(Duration::from_millis(500));
    // The first two seconds fill the rings; what follows is the steady state.
    let from = Duration::from_secs(2) + started.duration_since(sink.started());
    // The last second: the flood ends while the rings still drain.
    let to = from + FLOOD.saturating_sub(Duration::from_secs(3));
    let goodput = rate_between(&sink.stop(), from, to);
    #[expect(clippy::cast_precision_loss, reason = "a rate")]
    let offered_rate = sent as f64 / FLOOD.as_secs_f64();
    eprintln!(
        "flood: {offered_rate:.0} B/s offered, {goodput:.0} B/s arrived ({:.2} of capacity); departures A {:?} B {:?}",
        goodput / capacity,
        left[0],
        left[1]
    );
    assert_eq!(
        left,
        departures,
        "tunnels left the rotation\n{}",
        lab.diagnose()
    );
    assert!(
        offered_rate >= 1.8 * capacity,
        "the flood was {offered_rate:.0} B/s"
    );
    assert!(
        goodput >= 0.9 * capacity,
        "goodput {goodput:.0} B/s against a capacity of {capacity:.0} B/s"
    );
    let sent_sha = transfer.sender.join().unwrap();
    let (received_sha, received) = transfer
        .received
        .recv_timeout(Duration::from_secs(90))
        .expect("the TCP transfer beside the flood never completed");
    eprintln!(
        "TCP beside the flood: {received} bytes intact after {:?}",
        started.elapsed()
    );
    assert_eq!(received, 256 << 10);
    assert_eq!(received_sha, sent_sha, "SHA-256 differs");
}
