//! The datapath on real devices: a veth LAN and a tun tunnel opened by the test.
//! This covers what `BPF_PROG_TEST_RUN` cannot: the L3 tunnel program on a real
//! tun, the redirect that strips the Ethernet header, checksums left partial by
//! a sending host's offload (`CHECKSUM_PARTIAL`), and the kernel's handling of a
//! packet over the tunnel MTU.

use std::{
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::mpsc,
    time::Duration,
};

use ovpn_lb::datapath::Datapath;
use ovpn_lb_common::{
    Prefix4, Prefix6, Reason,
    maps::{Mode, programs, route},
    schedule,
};
use ovpn_lb_tests::{
    fixture::{site, tunnel},
    netns::{Netns, ifindex},
    packets::{L4, V4, V6, eth4, eth6, validate_checksums},
    require_root, topology,
    tun::Tun,
};

const WAIT: Duration = Duration::from_secs(3);

struct Topology {
    host: Netns,
    gw: Netns,
}

/// LAN host 192.168.10.5 / `fd00:10::5` behind gateway 192.168.10.1 / `fd00:10::1`.
fn topology() -> Topology {
    let host = Netns::new("host");
    let gw = Netns::new("gw");
    topology::host_behind(
        (host.name(), "h0"),
        (gw.name(), "lan0"),
        &[
            ("192.168.10.5/24", "192.168.10.1"),
            ("fd00:10::5/64", "fd00:10::1"),
        ],
    );
    topology::router(gw.name(), &[]);
    Topology { host, gw }
}

fn v4(s: &str, len: u8) -> Prefix4 {
    Prefix4::new(s.parse::<std::net::Ipv4Addr>().unwrap().octets(), len)
}

fn v6(s: &str, len: u8) -> Prefix6 {
    Prefix6::new(s.parse::<std::net::Ipv6Addr>().unwrap().octets(), len)
}

/// Brings up tun `ovt0` (MTU 1400) as tunnel 0 with the fixture addressing, and
/// attaches both programs.
fn gateway(gw: &Netns) -> (Datapath, Tun) {
    let tun = Tun::open("ovt0");
    gw.ip(&["link", "set", "ovt0", "mtu", "1400", "up"]);
    gw.ip(&["route", "add", "10.20.0.0/16", "dev", "ovt0"]);
    gw.ip(&["-6", "route", "add", "fd00:20::/48", "dev", "ovt0"]);
    let mut dp = Datapath::load().unwrap();
    dp.set_site(&site(Mode::Packet)).unwrap();
    dp.set_remote_v4(v4("10.20.0.0", 16), route::SPRAY).unwrap();
    dp.set_remote_v6(v6("fd00:20::", 48), route::SPRAY).unwrap();
    let t = tunnel(0, ifindex("ovt0"));
    dp.set_tunnel(0, &t, None).unwrap();
    dp.set_our_xlat_v4(t.xlat_v4, 0).unwrap();
    dp.set_our_xlat_v6(t.xlat_v6, 0).unwrap();
    dp.publish_schedule(&schedule::build(&[1]).unwrap())
        .unwrap();
    dp.attach_ingress(programs::LAN_INGRESS, "lan0").unwrap();
    dp.attach_ingress(programs::TUNNEL_INGRESS, "ovt0").unwrap();
    (dp, tun)
}

fn is_v4_to(p: &[u8], dst: [u8; 4], proto: u8) -> bool {
    p.len() >= 20 && p[0] >> 4 == 4 && p[9] == proto && p[16..20] == dst
}

fn is_v6_to(p: &[u8], dst: &str, proto: u8) -> bool {
    let dst: std::net::Ipv6Addr = dst.parse().unwrap();
    p.len() >= 40 && p[0] >> 4 == 6 && p[6] == proto && p[24..40] == dst.octets()
}

/// Host sends to the far side: the tunnel gets the translated packet, with
/// every checksum right although the host left them to offload.
fn lan_to_tunnel(t: &Topology, tun: &mut Tun) {
    let sender = t.host.spawn(|| {
        let s = UdpSocket::bind("192.168.10.5:0").unwrap();
        s.send_to(b"hello over v4", "10.20.30.7:9").unwrap();
        let s6 = UdpSocket::bind("[fd00:10::5]:0").unwrap();
        s6.send_to(b"hello over v6", "[fd00:20:0:30::7]:9").unwrap();
        // A SYN: TCP leaves its checksum partial on veth.
        let _ = TcpStream::connect_timeout(
            &"10.20.30.7:80".parse().unwrap(),
            Duration::from_millis(300),
        );
    });
    let udp = tun.read_matching(WAIT, |p| is_v4_to(p, [10, 20, 30, 7], 17));
    assert_eq!(
        udp[12..16],
        [100, 64, 0, 5],
        "source not translated for tunnel 0"
    );
    assert_eq!(udp[8], 63, "TTL not decremented");
    assert!(udp.ends_with(b"hello over v4"));
    validate_checksums(&eth4(&udp)).unwrap();

    let udp6 = tun.read_matching(WAIT, |p| is_v6_to(p, "fd00:20:0:30::7", 17));
    let src6: std::net::Ipv6Addr = "fd00:64:0::5".parse().unwrap();
    assert_eq!(udp6[8..24], src6.octets());
    validate_checksums(&eth6(&udp6)).unwrap();

    let syn = tun.read_matching(WAIT, |p| is_v4_to(p, [10, 20, 30, 7], 6));
    assert_eq!(syn[12..16], [100, 64, 0, 5]);
    validate_checksums(&eth4(&syn)).unwrap();
    sender.join().unwrap();
}

/// Packets from the tunnel, both addresses translated, reach the host restored
/// (the host's kernel drops any with a bad UDP checksum).
fn tunnel_to_lan(t: &Topology, tun: &mut Tun) {
    let (bound, ready) = mpsc::channel();
    let receiver = t.host.spawn(move || {
        let s = UdpSocket::bind("192.168.10.5:5555").unwrap();
        let s6 = UdpSocket::bind("[fd00:10::5]:5555").unwrap();
        bound.send(()).unwrap();
        let mut got = Vec::new();
        for sock in [&s, &s6] {
            sock.set_read_timeout(Some(WAIT)).unwrap();
            let mut buf = [0u8; 1500];
            let (n, from) = sock.recv_from(&mut buf).expect("restored datagram");
            got.push((buf[..n].to_vec(), from));
        }
        got
    });
    ready.recv().unwrap();
    let udp = |payload: &[u8]| L4::Udp {
        sport: 9,
        dport: 5555,
        payload: payload.to_vec(),
        checksum: true,
    };
    tun.inject(&V4::new("100.65.0.7", "100.64.0.5", udp(b"back over v4")).datagram());
    tun.inject(&V6::new("fd00:65:0::7", "fd00:64:0::5", udp(b"back over v6")).datagram());
    let got = receiver.join().unwrap();
    assert_eq!(
        got[0],
        (
            b"back over v4".to_vec(),
            "10.20.30.7:9".parse::<SocketAddr>().unwrap()
        )
    );
    assert_eq!(
        got[1],
        (
            b"back over v6".to_vec(),
            "[fd00:20:0:30::7]:9".parse::<SocketAddr>().unwrap()
        )
    );
}

/// A datagram over the tunnel MTU goes to the kernel, which answers
/// "fragmentation needed": the host learns the path MTU.
fn over_mtu_reaches_the_kernel(t: &Topology, dp: &Datapath) {
    let before = dp.reason_stats(Reason::OverMtu).unwrap().packets;
    t.host
        .spawn(|| {
            let s = UdpSocket::bind("192.168.10.5:0").unwrap();
            s.send_to(&[0u8; 1450], "10.20.30.7:9").unwrap();
        })
        .join()
        .unwrap();
    let mut learned = String::new();
    for _ in 0..30 {
        learned = t.host.ip(&["route", "get", "10.20.30.7"]);
        if learned.contains("mtu 1400") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        learned.contains("mtu 1400"),
        "host did not learn the tunnel MTU: {learned}"
    );
    assert_eq!(
        dp.reason_stats(Reason::OverMtu).unwrap().packets,
        before + 1
    );
}

/// Sends a raw Ethernet frame out of the host's LAN interface.
fn send_raw_frame(frame: &[u8]) {
    let ifindex = i32::try_from(ifindex("h0")).unwrap();
    // SAFETY: a raw socket of our own; `addr` and `frame` outlive the calls
    // that read them, and the descriptor is closed before returning.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = u16::try_from(libc::AF_PACKET).unwrap();
        addr.sll_ifindex = ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].fill(0xff);
        let sent = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const addr).cast(),
            u32::try_from(size_of::<libc::sockaddr_ll>()).unwrap(),
        );
        libc::close(fd);
        assert_eq!(
            usize::try_from(sent).ok(),
            Some(frame.len()),
            "sendto: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Frames that end inside the IP header, which `BPF_PROG_TEST_RUN` refuses to
/// run, are dropped and counted on a real interface.
fn truncated_ip_headers_are_dropped(t: &Topology, dp: &Datapath) {
    let before = dp.reason_stats(Reason::TruncatedIp).unwrap().packets;
    let v4 = V4::new("192.168.10.5", "10.20.30.7", L4::udp(10)).datagram();
    let v6 = V6::new("fd00:10::5", "fd00:20:0:30::7", L4::udp(10)).datagram();
    let frames = [eth4(&v4[..10]), eth6(&v6[..30])];
    t.host
        .spawn(move || {
            for f in &frames {
                send_raw_frame(f);
            }
        })
        .join()
        .unwrap();
    let mut after = before;
    for _ in 0..20 {
        after = dp.reason_stats(Reason::TruncatedIp).unwrap().packets;
        if after == before + 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        after,
        before + 2,
        "both truncated frames should be counted as truncated_ip"
    );
}

#[test]
fn spray_and_restore_on_real_devices() {
    if !require_root("spray_and_restore_on_real_devices") {
        return;
    }
    let t = topology();
    t.gw.enter(|| {
        let (dp, mut tun) = gateway(&t.gw);
        lan_to_tunnel(&t, &mut tun);
        tunnel_to_lan(&t, &mut tun);
        over_mtu_reaches_the_kernel(&t, &dp);
        truncated_ip_headers_are_dropped(&t, &dp);
        let stats = dp.tunnel_stats(0).unwrap();
        assert!(stats.tx_packets >= 3 && stats.rx_packets == 2, "{stats:?}");
    });
}
