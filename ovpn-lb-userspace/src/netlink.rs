//! Link and neighbour events from rtnetlink: devices appearing, going up or
//! down, losing carrier, disappearing; neighbour entries resolving or going
//! away (the MACs of TAP tunnels' far ends). One socket, subscribed to both
//! groups, in the network namespace of the thread that opens it.

use std::{
    io, mem,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const RTMGRP_LINK: u32 = 1;
const RTMGRP_NEIGH: u32 = 4;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const RTM_GETNEIGH: u16 = 30;
const NDMSG_LEN: usize = 12;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
/// Neighbour states with a usable link-layer address.
const NUD_VALID: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80;
const IFLA_ADDRESS: u16 = 1;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_PROG_ID: u16 = 4;
const NLMSG_HDRLEN: usize = 16;
const IFINFO_LEN: usize = 16;
const IFF_UP: u32 = 0x1;
const IFF_RUNNING: u32 = 0x40;

/// One link's state as netlink reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkEvent {
    pub name: String,
    pub ifindex: u32,
    /// Up with carrier; false for a removed link.
    pub up: bool,
    pub removed: bool,
    /// Id of an XDP program attached to the link, 0 for none.
    pub xdp_prog_id: u32,
    pub mtu: u32,
    /// The link-layer address, zero unless it is a 6-byte (Ethernet) one.
    pub mac: [u8; 6],
}

/// A neighbour entry's state: `mac` is `None` while unresolved or once gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighbourEvent {
    pub ifindex: u32,
    pub addr: std::net::IpAddr,
    pub mac: Option<[u8; 6]>,
}

pub struct LinkMonitor {
    fd: OwnedFd,
}

impl LinkMonitor {
    /// Opens a socket subscribed to link events.
    ///
    /// # Panics
    /// Never: the constant conversions fit.
    ///
    /// # Errors
    /// If the socket cannot be made or bound.
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket calls; the fd is owned right away.
        unsafe {
            let fd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_nl = mem::zeroed();
            addr.nl_family = u16::try_from(libc::AF_NETLINK).expect("fits");
            addr.nl_groups = RTMGRP_LINK | RTMGRP_NEIGH;
            let len = u32::try_from(mem::size_of::<libc::sockaddr_nl>()).expect("small");
            if libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Self { fd })
        }
    }

    /// Asks for every link's current state; the answers arrive through [`LinkMonitor::next`].
    ///
    /// # Panics
    /// Never: the constant conversions fit.
    ///
    /// # Errors
    /// If the request cannot be sent.
    pub fn request_dump(&self) -> io::Result<()> {
        self.dump(RTM_GETLINK, IFINFO_LEN)
    }

    /// Asks for every neighbour entry; answers arrive through [`LinkMonitor::next`].
    ///
    /// # Errors
    /// If the request cannot be sent.
    pub fn request_neighbour_dump(&self) -> io::Result<()> {
        self.dump(RTM_GETNEIGH, NDMSG_LEN)
    }

    fn dump(&self, kind: u16, body: usize) -> io::Result<()> {
        let mut msg = vec![0u8; NLMSG_HDRLEN + body];
        let len = u32::try_from(msg.len()).expect("small");
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
        msg[4..6].copy_from_slice(&kind.to_ne_bytes());
        let flags = u16::try_from(libc::NLM_F_REQUEST | libc::NLM_F_DUMP).expect("fits");
        msg[6..8].copy_from_slice(&flags.to_ne_bytes());
        msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
        // SAFETY: sending a buffer we own.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Blocks for the next batch of link events; `done` marks the end of a dump.
    ///
    /// # Panics
    /// Never: a received length is not negative.
    ///
    /// # Errors
    /// If the socket fails (an overrun is reported as `ENOBUFS`: dump again).
    pub fn next(&self) -> io::Result<Batch> {
        let mut buf = vec![0u8; 64 * 1024];
        // SAFETY: receiving into a buffer we own.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(usize::try_from(n).expect("non-negative"));
        Ok(parse(&buf))
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Attributes as (type, payload) pairs.
fn attributes(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while let (Some(len), Some(kind)) = (u16_at(b, 0), u16_at(b, 2)) {
        let len = usize::from(len);
        if len < 4 || len > b.len() {
            break;
        }
        // The top bits of the type are flags (nested, byte order).
        out.push((kind & 0x3fff, &b[4..len]));
        b = b.get(align4(len)..).unwrap_or_default();
    }
    out
}

/// The link and neighbour messages of one netlink datagram.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub events: Vec<LinkEvent>,
    pub neighbours: Vec<NeighbourEvent>,
    /// The datagram ended a dump (`NLMSG_DONE`) or reported an error.
    pub done: bool,
}

/// Parses the link messages in one netlink datagram; other messages are skipped.
#[must_use]
pub fn parse(mut b: &[u8]) -> Batch {
    let mut events = Vec::new();
    let mut neighbours = Vec::new();
    let mut done = false;
    while let (Some(len), Some(kind)) = (u32_at(b, 0), u16_at(b, 4)) {
        let len = usize::try_from(len).unwrap_or(0);
        if kind == NLMSG_DONE || kind == NLMSG_ERROR {
            done = true;
            break;
        }
        if len < NLMSG_HDRLEN || len > b.len() {
            break;
        }
        let body = &b[NLMSG_HDRLEN..len];
        if (kind == RTM_NEWLINK || kind == RTM_DELLINK) && body.len() >= IFINFO_LEN {
            let ifindex = u32_at(body, 4).unwrap_or(0);
            let flags = u32_at(body, 8).unwrap_or(0);
            let mut name = String::new();
            let mut xdp_prog_id = 0;
            let mut mtu = 0;
            let mut mac = [0; 6];
            for (attr, payload) in attributes(&body[IFINFO_LEN..]) {
                match attr {
                    IFLA_ADDRESS => mac = payload.try_into().unwrap_or_default(),
                    IFLA_MTU => mtu = u32_at(payload, 0).unwrap_or(0),
                    IFLA_IFNAME => {
                        name.clear();
                        name.push_str(String::from_utf8_lossy(payload).trim_end_matches('\0'));
                    }
                    IFLA_XDP => {
                        for (inner, p) in attributes(payload) {
                            if inner == IFLA_XDP_PROG_ID {
                                xdp_prog_id = u32_at(p, 0).unwrap_or(0);
                            }
                        }
                    }
                    _ => {}
                }
            }
            let removed = kind == RTM_DELLINK;
            events.push(LinkEvent {
                name,
                ifindex,
                up: !removed && flags & IFF_UP != 0 && flags & IFF_RUNNING != 0,
                removed,
                xdp_prog_id,
                mtu,
                mac,
            });
        }
        if (kind == RTM_NEWNEIGH || kind == RTM_DELNEIGH)
            && let Some(n) = neighbour(kind, body)
        {
            neighbours.push(n);
        }
        b = b.get(align4(len)..).unwrap_or_default();
    }
    Batch {
        events,
        neighbours,
        done,
    }
}

fn neighbour(kind: u16, body: &[u8]) -> Option<NeighbourEvent> {
    let ifindex = u32_at(body, 4)?;
    let state = u16_at(body, 8)?;
    let mut addr = None;
    let mut lladdr = None;
    for (attr, payload) in attributes(body.get(NDMSG_LEN..)?) {
        match (attr, payload.len()) {
            (NDA_DST, 4) => addr = Some(std::net::IpAddr::from(<[u8; 4]>::try_from(payload).ok()?)),
            (NDA_DST, 16) => {
                addr = Some(std::net::IpAddr::from(<[u8; 16]>::try_from(payload).ok()?));
            }
            (NDA_LLADDR, 6) => lladdr = <[u8; 6]>::try_from(payload).ok(),
            _ => {}
        }
    }
    let usable = kind == RTM_NEWNEIGH && state & NUD_VALID != 0;
    Some(NeighbourEvent {
        ifindex,
        addr: addr?,
        mac: lladdr.filter(|_| usable),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = u16::try_from(4 + payload.len()).unwrap();
        let mut a = [len.to_ne_bytes(), kind.to_ne_bytes()].concat();
        a.extend_from_slice(payload);
        a.resize(align4(a.len()), 0);
        a
    }

    fn link_msg(kind: u16, ifindex: u32, flags: u32, name: &str, extra: &[u8]) -> Vec<u8> {
        let mut body = vec![0u8; IFINFO_LEN];
        body[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        body[8..12].copy_from_slice(&flags.to_ne_bytes());
        body.extend(attr(IFLA_IFNAME, format!("{name}\0").as_bytes()));
        body.extend_from_slice(extra);
        let len = u32::try_from(NLMSG_HDRLEN + body.len()).unwrap();
        let mut m = len.to_ne_bytes().to_vec();
        m.extend(kind.to_ne_bytes());
        m.extend([0u8; 10]);
        m.extend(body);
        m
    }

    #[test]
    fn parses_new_and_removed_links() {
        let xdp = attr(
            IFLA_XDP | 0x8000,
            &attr(IFLA_XDP_PROG_ID, &77u32.to_ne_bytes()),
        );
        let mut extra = attr(IFLA_MTU, &1400u32.to_ne_bytes());
        extra.extend(xdp);
        extra.extend(attr(IFLA_ADDRESS, &[2, 0, 0, 0, 0, 7]));
        let mut datagram = link_msg(RTM_NEWLINK, 7, IFF_UP | IFF_RUNNING, "tun0", &extra);
        datagram.extend(link_msg(RTM_NEWLINK, 8, IFF_UP, "tun1", &[]));
        datagram.extend(link_msg(RTM_DELLINK, 9, IFF_UP | IFF_RUNNING, "tun2", &[]));
        let batch = parse(&datagram);
        assert!(!batch.done);
        assert_eq!(
            batch.events,
            vec![
                LinkEvent {
                    name: "tun0".into(),
                    ifindex: 7,
                    up: true,
                    removed: false,
                    xdp_prog_id: 77,
                    mtu: 1400,
                    mac: [2, 0, 0, 0, 0, 7],
                },
                LinkEvent {
                    name: "tun1".into(),
                    ifindex: 8,
                    up: false,
                    removed: false,
                    xdp_prog_id: 0,
                    mtu: 0,
                    mac: [0; 6],
                },
                LinkEvent {
                    name: "tun2".into(),
                    ifindex: 9,
                    up: false,
                    removed: true,
                    xdp_prog_id: 0,
                    mtu: 0,
                    mac: [0; 6],
                },
            ]
        );
    }

    fn neigh_msg(
        kind: u16,
        ifindex: u32,
        state: u16,
        dst: &[u8],
        lladdr: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut body = vec![0u8; NDMSG_LEN];
        body[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        body[8..10].copy_from_slice(&state.to_ne_bytes());
        body.extend(attr(NDA_DST, dst));
        if let Some(l) = lladdr {
            body.extend(attr(NDA_LLADDR, l));
        }
        let len = u32::try_from(NLMSG_HDRLEN + body.len()).unwrap();
        let mut m = len.to_ne_bytes().to_vec();
        m.extend(kind.to_ne_bytes());
        m.extend([0u8; 10]);
        m.extend(body);
        m
    }

    #[test]
    fn parses_neighbours_resolved_unresolved_and_gone() {
        const REACHABLE: u16 = 0x02;
        const INCOMPLETE: u16 = 0x01;
        let mac = [2, 0, 0, 0, 9, 9];
        let mut datagram = neigh_msg(RTM_NEWNEIGH, 5, REACHABLE, &[10, 99, 0, 2], Some(&mac));
        datagram.extend(neigh_msg(
            RTM_NEWNEIGH,
            5,
            INCOMPLETE,
            &[10, 99, 1, 2],
            None,
        ));
        let v6: [u8; 16] = "fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets();
        datagram.extend(neigh_msg(RTM_DELNEIGH, 6, REACHABLE, &v6, Some(&mac)));
        let batch = parse(&datagram);
        assert_eq!(
            batch.neighbours,
            vec![
                NeighbourEvent {
                    ifindex: 5,
                    addr: "10.99.0.2".parse().unwrap(),
                    mac: Some(mac),
                },
                NeighbourEvent {
                    ifindex: 5,
                    addr: "10.99.1.2".parse().unwrap(),
                    mac: None,
                },
                NeighbourEvent {
                    ifindex: 6,
                    addr: "fd00::2".parse().unwrap(),
                    mac: None,
                },
            ]
        );
    }

    #[test]
    fn stops_at_done_and_survives_garbage() {
        let mut datagram = link_msg(RTM_NEWLINK, 1, 0, "lo", &[]);
        let mut done = vec![0u8; NLMSG_HDRLEN];
        done[0..4].copy_from_slice(&16u32.to_ne_bytes());
        done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        datagram.extend(done);
        let batch = parse(&datagram);
        assert_eq!((batch.events.len(), batch.done), (1, true));
        assert!(parse(&[0xff; 7]).events.is_empty());
        assert!(parse(&[200, 0, 0, 0, 16, 0, 0, 0]).events.is_empty());
    }

    #[test]
    fn sees_loopback_in_a_real_dump() {
        let m = LinkMonitor::open().unwrap();
        m.request_dump().unwrap();
        let batch = m.next().unwrap();
        assert!(batch.events.iter().any(|e| e.name == "lo"), "{batch:?}");
    }
}
