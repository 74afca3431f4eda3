//! The lab's delaying UDP relay (`ovpn_lb_tests::relay`), which stands in
//! for a longer WAN path: it must keep passing datagrams through what the
//! process that runs it and the OpenVPN behind it do to it, or a tunnel's
//! path dies in the middle of a benchmark.

use std::{
    fs,
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use ovpn_lb_tests::{netns::Netns, relay::Relay, root_alone};

extern "C" fn ignore(_: libc::c_int) {}

/// A handler for SIGUSR1 without `SA_RESTART`, as a Ctrl-C handler is.
fn handle_sigusr1() {
    // SAFETY: a zeroed `sigaction` is a valid empty one; the handler does
    // nothing, so it is async-signal-safe.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = ignore as *const () as libc::sighandler_t;
        libc::sigemptyset(&raw mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGUSR1, &raw const action, std::ptr::null_mut()),
            0
        );
    }
}

/// SIGUSR1 to every other thread of this process.
fn signal_other_threads() -> usize {
    // SAFETY: getpid(2) and gettid(2) cannot fail.
    let (pid, me) = unsafe { (libc::getpid(), libc::gettid()) };
    let mut sent = 0;
    for entry in fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let Some(tid) = entry
            .ok()
            .and_then(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        if tid != me {
            // SAFETY: a signal this process handles, to its own thread.
            if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGUSR1) } == 0 {
                sent += 1;
            }
        }
    }
    sent
}

/// A datagram within a second, if any.
fn receive(socket: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("a timeout");
    let mut buf = [0u8; 64];
    let (len, from) = socket.recv_from(&mut buf).ok()?;
    Some((buf[..len].to_vec(), from))
}

/// The far OpenVPN gone for a moment (its port refuses), then signals that
/// interrupt the relay's receives: datagrams still pass both ways after.
#[test]
fn the_relay_outlives_a_refused_port_and_signals() {
    let Some(_serial) = root_alone() else { return };
    let ns = Netns::new("relay");
    let listen: SocketAddr = "127.0.0.1:41001".parse().expect("an address");
    let target: SocketAddr = "127.0.0.1:41002".parse().expect("an address");
    handle_sigusr1();
    let _relay = Relay::start(ns.name(), listen, target, Duration::from_millis(2));
    let near = ns.enter(|| UdpSocket::bind("127.0.0.1:0").expect("a socket"));

    // Nothing holds the target port: the relay's datagram is refused.
    near.send_to(b"refused", listen).expect("sent");
    std::thread::sleep(Duration::from_millis(100));
    // Every receive the relay's threads are in is interrupted, over and over.
    for _ in 0..50 {
        assert!(signal_other_threads() > 0);
        std::thread::sleep(Duration::from_millis(2));
    }

    let far = ns.enter(|| UdpSocket::bind(target).expect("the target port"));
    near.send_to(b"there", listen).expect("sent");
    let (got, relay) = receive(&far).expect("the relay passes datagrams on");
    assert_eq!(got, b"there");
    far.send_to(b"back", relay).expect("sent");
    let (got, from) = receive(&near).expect("the relay passes answers back");
    assert_eq!((got.as_slice(), from), (&b"back"[..], listen));
}
