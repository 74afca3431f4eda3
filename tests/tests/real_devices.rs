//! The datapath on real devices: a veth LAN and a tun tunnel opened by the test.
//! This covers what `BPF_PROG_TEST_RUN` cannot: the L3 tunnel program on a real
//! tun, the redirect that strips the Ethernet header, checksums left partial by
//! a sending host's offload (`CHECKSUM_PARTIAL`), and the kernel's handling of a
//! packet over the tunnel MTU, frames too short for tc's test runs.

use std::{
    net::{SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    sync::mpsc,
    time::Duration,
};

use aya::programs::TcAttachType;
use etherparse::{Ipv4Header, UdpHeader};

use ovpn_lb::datapath::Datapath;
use ovpn_lb_common::{
    Prefix4, Prefix6, Reason,
    maps::{Spray, programs, route},
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

/// Table the LAN's remote-bound traffic is routed by, as the loader sets it up.
const TABLE: &str = "100";

/// Brings up tun `ovt0` (MTU 1400) as tunnel 0 with the fixture addressing,
/// routes what the LAN program hands to the kernel as the loader will
/// (policy rules: `iif lan0 to <remote> lookup 100`, a table whose routes
/// lead only into tunnels, and an `unreachable` fallback behind it), and
/// attaches the LAN program and both tunnel programs (ingress and egress).
fn gateway(gw: &Netns) -> (Datapath, Tun) {
    let tun = Tun::open("ovt0");
    gw.ip(&["link", "set", "ovt0", "mtu", "1400", "up"]);
    for (family, remote) in [("-4", "10.20.0.0/16"), ("-6", "fd00:20::/48")] {
        gw.ip(&[
            family, "rule", "add", "pref", "100", "iif", "lan0", "to", remote, "lookup", TABLE,
        ]);
        gw.ip(&[
            family,
            "rule",
            "add",
            "pref",
            "101",
            "iif",
            "lan0",
            "to",
            remote,
            "unreachable",
        ]);
        gw.ip(&[
            family, "route", "add", remote, "dev", "ovt0", "table", TABLE,
        ]);
    }
    let mut dp = Datapath::load().unwrap();
    dp.set_site(&site(Spray::RoundRobin)).unwrap();
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
    dp.program(programs::TUNNEL_EGRESS)
        .unwrap()
        .attach("ovt0", TcAttachType::Egress)
        .unwrap();
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

/// A UDP socket of the LAN host with the given `IP_MTU_DISCOVER` mode.
fn udp_with_pmtu_mode(bind: &str, level: i32, option: i32, mode: i32) -> UdpSocket {
    let s = UdpSocket::bind(bind).unwrap();
    // SAFETY: setsockopt on our own socket with an int option.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            option,
            (&raw const mode).cast(),
            u32::try_from(size_of::<i32>()).unwrap(),
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
    s
}

/// A 1450-byte datagram without DF, over the tunnel MTU: the LAN program
/// hands it to the kernel untranslated (`over_mtu`), the kernel fragments
/// it into the tunnel by the loader's table, and `tunnel_egress` translates
/// every fragment's source. Read from the tun: translated fragments whose
/// headers verify and whose reassembly carries the datagram with a valid
/// UDP checksum for the translated source.
fn over_mtu_fragments_leave_translated(t: &Topology, dp: &Datapath, tun: &mut Tun) {
    let over = dp.reason_stats(Reason::OverMtu).unwrap().packets;
    let egress = dp.reason_stats(Reason::TranslatedOnEgress).unwrap().packets;
    let payload: Vec<u8> = (0..1450u32)
        .map(|i| u8::try_from(i * 13 % 251).unwrap())
        .collect();
    let sent = payload.clone();
    t.host
        .spawn(move || {
            let s = udp_with_pmtu_mode(
                "192.168.10.5:4444",
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_DONT,
            );
            s.send_to(&sent, "10.20.30.8:9").unwrap();
        })
        .join()
        .unwrap();
    let mut fragments = Vec::new();
    let mut covered = 0;
    while covered < 8 + payload.len() {
        let f = tun.read_matching(WAIT, |p| is_v4_to(p, [10, 20, 30, 8], 17));
        let (ip, rest) = Ipv4Header::from_slice(&f).expect("an IPv4 fragment");
        assert_eq!(ip.source, [100, 64, 0, 5], "fragment source not translated");
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
        assert_eq!(ip.time_to_live, 63, "forwarded once, by the kernel");
        assert!(usize::from(ip.total_len) <= 1400, "fragment over the MTU");
        let body = &rest[..usize::from(ip.total_len) - ip.header_len()];
        covered += body.len();
        fragments.push((usize::from(ip.fragment_offset.value()) * 8, body.to_vec()));
    }
    assert!(fragments.len() >= 2, "the kernel should have fragmented");
    fragments.sort();
    let mut datagram = Vec::new();
    for (offset, body) in &fragments {
        assert_eq!(*offset, datagram.len(), "fragments leave no hole");
        datagram.extend_from_slice(body);
    }
    let (udp, data) = UdpHeader::from_slice(&datagram).unwrap();
    assert_eq!(data, &payload[..]);
    assert_eq!(
        udp.checksum,
        udp.calc_checksum_ipv4_raw([100, 64, 0, 5], [10, 20, 30, 8], data)
            .unwrap(),
        "UDP checksum of the reassembled datagram (translated source)"
    );
    let n = u64::try_from(fragments.len()).unwrap();
    assert_eq!(dp.reason_stats(Reason::OverMtu).unwrap().packets, over + 1);
    assert_eq!(
        dp.reason_stats(Reason::TranslatedOnEgress).unwrap().packets,
        egress + n
    );
}

/// Waits for the LAN host to learn a path MTU of 1400 towards `dst`.
fn host_learns_mtu_1400(t: &Topology, family: &str, dst: &str) {
    let mut learned = String::new();
    for _ in 0..30 {
        learned = t.host.ip(&[family, "route", "get", dst]);
        if learned.contains("mtu 1400") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("host did not learn the tunnel MTU towards {dst}: {learned}");
}

/// Nothing to `dst` comes out of the tunnel for a while.
fn nothing_leaves_for(tun: &mut Tun, is_dst: impl Fn(&[u8]) -> bool) {
    let until = std::time::Instant::now() + Duration::from_millis(500);
    while let Some(p) = tun.try_read(until.saturating_duration_since(std::time::Instant::now())) {
        assert!(!is_dst(&p), "a packet left through the tunnel: {p:02x?}");
        if std::time::Instant::now() >= until {
            break;
        }
    }
}

/// DF datagrams over the tunnel MTU: the kernel answers "fragmentation
/// needed" (IPv4) or "packet too big" (IPv6) with MTU 1400, the host learns
/// it, and nothing enters the tunnel.
fn df_over_mtu_gets_an_icmp_error(t: &Topology, dp: &Datapath, tun: &mut Tun) {
    let before = dp.reason_stats(Reason::OverMtu).unwrap().packets;
    t.host
        .spawn(|| {
            let s = udp_with_pmtu_mode(
                "192.168.10.5:0",
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_DO,
            );
            s.send_to(&[0u8; 1450], "10.20.30.7:9").unwrap();
            let s6 = udp_with_pmtu_mode(
                "[fd00:10::5]:0",
                libc::IPPROTO_IPV6,
                libc::IPV6_MTU_DISCOVER,
                libc::IPV6_PMTUDISC_DO,
            );
            s6.send_to(&[0u8; 1450], "[fd00:20:0:30::8]:9").unwrap();
        })
        .join()
        .unwrap();
    host_learns_mtu_1400(t, "-4", "10.20.30.7");
    host_learns_mtu_1400(t, "-6", "fd00:20:0:30::8");
    nothing_leaves_for(tun, |p| {
        is_v4_to(p, [10, 20, 30, 7], 17) || is_v6_to(p, "fd00:20:0:30::8", 17)
    });
    assert_eq!(
        dp.reason_stats(Reason::OverMtu).unwrap().packets,
        before + 2
    );
}

/// The MAC of the gateway's LAN device, read in its namespace.
fn lan0_mac(t: &Topology) -> [u8; 6] {
    let link = t.gw.ip(&["link", "show", "lan0"]);
    let mac: Vec<u8> = link
        .split("link/ether ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("lan0 has a MAC")
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    mac.try_into().unwrap()
}

/// `struct virtio_net_hdr` (little endian): a GSO packet for a packet socket.
const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
const PACKET_VNET_HDR: i32 = 15;

/// A BIG TCP packet: a 100,000-byte TCP GSO packet whose IPv4 total length
/// is 0, sent by the LAN host through a packet socket with a virtio-net
/// header, as GRO builds them with `gro_ipv4_max_size` raised. The LAN
/// program passes it to the kernel (`big_tcp`), which routes it into the
/// tunnel by the loader's table; `tunnel_egress` translates the super-packet
/// before the tun device segments it, so every segment read from the tun
/// carries the translated source and verifies.
fn big_tcp_leaves_translated(t: &Topology, dp: &Datapath, tun: &mut Tun) {
    const PAYLOAD: usize = 100_000;
    const MSS: u16 = 1300;
    let big = dp.reason_stats(Reason::BigTcp).unwrap().packets;
    let egress = dp.reason_stats(Reason::TranslatedOnEgress).unwrap().packets;
    let payload: Vec<u8> = (0..PAYLOAD)
        .map(|i| u8::try_from(i * 7 % 253).unwrap())
        .collect();
    let mut ip = Ipv4Header::new(
        0,
        64,
        etherparse::IpNumber::TCP,
        [192, 168, 10, 5],
        [10, 20, 30, 9],
    )
    .unwrap();
    ip.dont_fragment = true;
    ip.total_len = 0;
    ip.header_checksum = ip.calc_header_checksum();
    let mut tcp = etherparse::TcpHeader::new(40000, 5001, 1, 65535);
    tcp.ack = true;
    let mut frame = Vec::new();
    frame.extend_from_slice(&lan0_mac(t));
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x05]);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    frame.extend_from_slice(&ip.to_bytes());
    frame.extend_from_slice(&tcp.to_bytes());
    frame.extend_from_slice(&payload);
    // No NEEDS_CSUM: the kernel sets up the checksum when it segments.
    let mut vnet = vec![0u8, VIRTIO_NET_HDR_GSO_TCPV4];
    vnet.extend_from_slice(&54u16.to_le_bytes());
    vnet.extend_from_slice(&MSS.to_le_bytes());
    vnet.extend_from_slice(&[0; 4]);
    let packet = [vnet, frame].concat();
    t.host
        .spawn(move || {
            // Else the host's veth segments the packet before it leaves.
            set_gso_ipv4_max_size("h0", 185_000);
            send_packet_socket(&packet, true);
        })
        .join()
        .unwrap();
    let mut seen = vec![false; PAYLOAD.div_ceil(usize::from(MSS))];
    let mut bytes = 0;
    while bytes < PAYLOAD {
        let seg = tun.read_matching(WAIT, |p| is_v4_to(p, [10, 20, 30, 9], 6));
        let (ip, rest) = Ipv4Header::from_slice(&seg).expect("an IPv4 segment");
        assert_eq!(ip.source, [100, 64, 0, 5], "segment source not translated");
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
        assert!(usize::from(ip.total_len) <= 1400, "segment over the MTU");
        let (th, data) = etherparse::TcpHeader::from_slice(rest).unwrap();
        assert_eq!(
            th.checksum,
            th.calc_checksum_ipv4_raw(ip.source, ip.destination, data)
                .unwrap(),
            "TCP checksum of a segment"
        );
        let at = usize::try_from(th.sequence_number - 1).unwrap();
        assert_eq!(data, &payload[at..at + data.len()]);
        seen[at / usize::from(MSS)] = true;
        bytes += data.len();
    }
    assert!(seen.iter().all(|&s| s), "every segment arrived once");
    assert_eq!(dp.reason_stats(Reason::BigTcp).unwrap().packets, big + 1);
    assert_eq!(
        dp.reason_stats(Reason::TranslatedOnEgress).unwrap().packets,
        egress + 1,
        "one super-packet translated before segmentation"
    );
}

/// `IFLA_GSO_IPV4_MAX_SIZE` (Linux 6.3+; iproute2 6.1 cannot set it).
const IFLA_GSO_IPV4_MAX_SIZE: u16 = 63;

/// Lets device `dev` (in the calling thread's namespace) pass IPv4 GSO
/// packets of up to `size` bytes without segmenting them, by rtnetlink.
fn set_gso_ipv4_max_size(dev: &str, size: u32) {
    const RTM_NEWLINK: u16 = 16;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_ACK: u16 = 4;
    let index = i32::try_from(ifindex(dev)).unwrap();
    let mut msg = Vec::new();
    // nlmsghdr (length filled in below), ifinfomsg, one u32 attribute.
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&[0; 8]);
    msg.extend_from_slice(&[0, 0, 0, 0]);
    msg.extend_from_slice(&index.to_ne_bytes());
    msg.extend_from_slice(&[0; 8]);
    msg.extend_from_slice(&8u16.to_ne_bytes());
    msg.extend_from_slice(&IFLA_GSO_IPV4_MAX_SIZE.to_ne_bytes());
    msg.extend_from_slice(&size.to_ne_bytes());
    let len = u32::try_from(msg.len()).unwrap();
    msg[..4].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: a netlink socket we own; the buffers match their lengths.
    let error = unsafe {
        let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE);
        assert!(
            fd >= 0,
            "netlink socket: {}",
            std::io::Error::last_os_error()
        );
        let sent = libc::send(fd, msg.as_ptr().cast(), msg.len(), 0);
        assert_eq!(usize::try_from(sent).ok(), Some(msg.len()));
        let mut ack = [0u8; 256];
        let n = libc::recv(fd, ack.as_mut_ptr().cast(), ack.len(), 0);
        libc::close(fd);
        assert!(n >= 20, "netlink ack: {}", std::io::Error::last_os_error());
        i32::from_ne_bytes(ack[16..20].try_into().unwrap())
    };
    assert_eq!(
        error, 0,
        "setting gso_ipv4_max_size of {dev}: errno {}",
        -error
    );
}

/// Sends `bytes` out of the host's LAN interface through a packet socket,
/// led by a virtio-net header when `vnet`.
fn send_packet_socket(bytes: &[u8], vnet: bool) {
    let ifindex = i32::try_from(ifindex("h0")).unwrap();
    // SAFETY: plain socket calls on a descriptor we own, with buffers and
    // lengths that match; the descriptor is closed before returning.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        if vnet {
            let on: i32 = 1;
            let rc = libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                PACKET_VNET_HDR,
                (&raw const on).cast(),
                u32::try_from(size_of::<i32>()).unwrap(),
            );
            assert_eq!(
                rc,
                0,
                "PACKET_VNET_HDR: {}",
                std::io::Error::last_os_error()
            );
        }
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = u16::try_from(libc::AF_PACKET).unwrap();
        addr.sll_ifindex = ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].fill(0xff);
        let sent = libc::sendto(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            0,
            (&raw const addr).cast(),
            u32::try_from(size_of::<libc::sockaddr_ll>()).unwrap(),
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(
            usize::try_from(sent).ok(),
            Some(bytes.len()),
            "sendto: {err}"
        );
    }
}

/// Sends a raw Ethernet frame out of the host's LAN interface.
fn send_raw_frame(frame: &[u8]) {
    send_packet_socket(frame, false);
}

/// Frames that end inside the IP header, before the addresses, which
/// `BPF_PROG_TEST_RUN` refuses to run under tc: they cannot be classified as
/// remote-bound, so they pass to the kernel and are counted as `short_frame`.
fn short_frames_pass_to_the_kernel(t: &Topology, dp: &Datapath) {
    let before = dp.reason_stats(Reason::ShortFrame).unwrap().packets;
    let v4 = V4::new("192.168.10.5", "10.20.30.7", L4::udp(10)).datagram();
    let v6 = V6::new("fd00:10::5", "fd00:20:0:30::7", L4::udp(10)).datagram();
    // Addressed to the gateway's LAN device: only frames for this host count.
    let mac = lan0_mac(t);
    let to_gw = |mut frame: Vec<u8>| {
        frame[..6].copy_from_slice(&mac);
        frame
    };
    let frames = [to_gw(eth4(&v4[..10])), to_gw(eth6(&v6[..30]))];
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
        after = dp.reason_stats(Reason::ShortFrame).unwrap().packets;
        if after == before + 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        after,
        before + 2,
        "both truncated frames should be counted as short_frame"
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
        // Sprayed packets pass tunnel egress untouched and uncounted.
        assert_eq!(
            dp.reason_stats(Reason::TranslatedOnEgress).unwrap().packets,
            0
        );
        over_mtu_fragments_leave_translated(&t, &dp, &mut tun);
        df_over_mtu_gets_an_icmp_error(&t, &dp, &mut tun);
        big_tcp_leaves_translated(&t, &dp, &mut tun);
        short_frames_pass_to_the_kernel(&t, &dp);
        let stats = dp.tunnel_stats(0).unwrap();
        assert!(stats.tx_packets >= 5 && stats.rx_packets == 2, "{stats:?}");
    });
}
