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

/// A handler for SIGUSR1 without `SA_RESTART`, as a Ctrl-C handler is;
/// the one it replaces.
fn handle_sigusr1() -> libc::sigaction {
    // SAFETY: a zeroed `sigaction` is a valid empty one; the handler does
    // nothing, so it is async-signal-safe; `old` is written by the call.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = ignore as *const () as libc::sighandler_t;
        libc::sigemptyset(&raw mut action.sa_mask);
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(
            libc::sigaction(libc::SIGUSR1, &raw const action, &raw mut old),
            0
        );
        old
    }
}

/// This process's threads.
fn threads() -> Vec<libc::pid_t> {
    fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// SIGUSR1 to each of `threads`.
fn signal(threads: &[libc::pid_t]) {
    // SAFETY: getpid(2) cannot fail.
    let pid = unsafe { libc::getpid() };
    for &tid in threads {
        // SAFETY: a signal this process handles, to its own thread.
        let sent = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGUSR1) };
        assert_eq!(sent, 0, "tgkill {tid}");
    }
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
    let old = handle_sigusr1();
    let before = threads();
    let relay = Relay::start(ns.name(), listen, target, Duration::from_millis(2));
    let relays: Vec<_> = threads()
        .into_iter()
        .filter(|t| !before.contains(t))
        .collect();
    assert_eq!(relays.len(), 2, "one thread each way");
    let near = ns.enter(|| UdpSocket::bind("127.0.0.1:0").expect("a socket"));

    // Nothing holds the target port: the relay's datagram is refused.
    near.send_to(b"refused", listen).expect("sent");
    std::thread::sleep(Duration::from_millis(100));
    // The receives the relay's threads wait in, interrupted over and over.
    for _ in 0..50 {
        signal(&relays);
        std::thread::sleep(Duration::from_millis(2));
    }

    let far = ns.enter(|| UdpSocket::bind(target).expect("the target port"));
    near.send_to(b"there", listen).expect("sent");
    let (got, via) = receive(&far).expect("the relay passes datagrams on");
    assert_eq!(got, b"there");
    far.send_to(b"back", via).expect("sent");
    let (got, from) = receive(&near).expect("the relay passes answers back");
    assert_eq!((got.as_slice(), from), (&b"back"[..], listen));
    drop(relay);
    // SAFETY: `old` is the action `handle_sigusr1` replaced.
    unsafe { libc::sigaction(libc::SIGUSR1, &raw const old, std::ptr::null_mut()) };
}
