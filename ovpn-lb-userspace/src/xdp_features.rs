//! What a device's driver can do with XDP, from the kernel's `netdev` generic
//! netlink family (Linux 6.3+): the facts `mode = "auto"` decides on.

use std::{
    io, mem,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// Runs XDP programs natively (`NETDEV_XDP_ACT_BASIC`).
pub const BASIC: u64 = 1 << 0;
/// Native programs may return `XDP_REDIRECT`.
pub const REDIRECT: u64 = 1 << 1;
/// Transmits frames other devices' XDP programs redirect to it (`ndo_xdp_xmit`).
pub const NDO_XMIT: u64 = 1 << 2;

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const CTRL_ATTR_MCAST_GROUPS: u16 = 7;
const CTRL_ATTR_MCAST_GRP_NAME: u16 = 1;
const CTRL_ATTR_MCAST_GRP_ID: u16 = 2;
const NETDEV_CMD_DEV_ADD_NTF: u8 = 2;
const NETDEV_CMD_DEV_CHANGE_NTF: u8 = 4;
const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;

/// The `NETDEV_XDP_ACT_*` bits of `ifindex`, or an error when the kernel
/// cannot say (older than 6.3, or no such device).
///
/// # Errors
/// If the socket fails or the kernel answers with an error.
pub fn of(ifindex: u32) -> io::Result<u64> {
    let socket = Socket::open()?;
    let family = socket.request(
        GENL_ID_CTRL,
        CTRL_CMD_GETFAMILY,
        &attr(CTRL_ATTR_FAMILY_NAME, b"netdev\0"),
    )?;
    let family = find(&family, CTRL_ATTR_FAMILY_ID)
        .and_then(|p| Some(u16::from_ne_bytes(p.get(..2)?.try_into().ok()?)))
        .ok_or_else(|| io::Error::other("the kernel has no netdev netlink family"))?;
    let answer = socket.request(
        family,
        NETDEV_CMD_DEV_GET,
        &attr(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes()),
    )?;
    find(&answer, NETDEV_A_DEV_XDP_FEATURES)
        .and_then(|p| Some(u64::from_ne_bytes(p.get(..8)?.try_into().ok()?)))
        .ok_or_else(|| io::Error::other("no xdp-features in the kernel's answer"))
}

/// Follows changes of devices' XDP features (a veth's `ndo-xmit` comes and
/// goes with its peer's GRO or XDP program).
pub struct Watcher(Socket);

impl Watcher {
    /// Subscribes to the netdev family's notifications.
    ///
    /// # Panics
    /// Never: the constant conversion fits.
    ///
    /// # Errors
    /// If the kernel has no netdev family or refuses the subscription.
    pub fn open() -> io::Result<Self> {
        let socket = Socket::open()?;
        let (_, group) = socket.netdev_family()?;
        let group = group.ok_or_else(|| io::Error::other("the netdev family has no mgmt group"))?;
        // SAFETY: setsockopt with a u32 we own.
        let rc = unsafe {
            libc::setsockopt(
                socket.0.as_raw_fd(),
                SOL_NETLINK,
                NETLINK_ADD_MEMBERSHIP,
                (&raw const group).cast(),
                u32::try_from(mem::size_of::<u32>()).expect("4"),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(socket))
    }

    /// Blocks for the next notifications: (ifindex, features) pairs.
    ///
    /// # Panics
    /// Never: a received length is not negative.
    ///
    /// # Errors
    /// If the socket fails.
    pub fn next(&self) -> io::Result<Vec<(u32, u64)>> {
        let mut buf = vec![0u8; 16 * 1024];
        // SAFETY: receiving into a buffer we own.
        let n = unsafe { libc::recv(self.0.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(usize::try_from(n).expect("non-negative"));
        Ok(notifications(&buf))
    }
}

/// Device notifications in one datagram.
fn notifications(mut b: &[u8]) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    while b.len() >= NLMSG_HDRLEN + GENL_HDRLEN {
        let len = usize::try_from(u32::from_ne_bytes(b[0..4].try_into().expect("4"))).unwrap_or(0);
        if len < NLMSG_HDRLEN + GENL_HDRLEN || len > b.len() {
            break;
        }
        let body = &b[NLMSG_HDRLEN..len];
        if matches!(body[0], NETDEV_CMD_DEV_ADD_NTF | NETDEV_CMD_DEV_CHANGE_NTF) {
            let ifindex = find(body, NETDEV_A_DEV_IFINDEX)
                .and_then(|p| Some(u32::from_ne_bytes(p.get(..4)?.try_into().ok()?)));
            let features = find(body, NETDEV_A_DEV_XDP_FEATURES)
                .and_then(|p| Some(u64::from_ne_bytes(p.get(..8)?.try_into().ok()?)));
            if let (Some(i), Some(f)) = (ifindex, features) {
                out.push((i, f));
            }
        }
        b = b.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    out
}

/// Names of the set bits, for log lines.
#[must_use]
pub fn describe(features: u64) -> String {
    let names: Vec<&str> = [
        (BASIC, "basic"),
        (REDIRECT, "redirect"),
        (NDO_XMIT, "ndo-xmit"),
    ]
    .iter()
    .filter(|(bit, _)| features & bit != 0)
    .map(|(_, name)| *name)
    .collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(4 + payload.len()).expect("small attribute");
    let mut a = [len.to_ne_bytes(), kind.to_ne_bytes()].concat();
    a.extend_from_slice(payload);
    a.resize(a.len().next_multiple_of(4), 0);
    a
}

/// The payload of the first attribute of type `kind` in a generic netlink answer.
fn find(answer: &[u8], kind: u16) -> Option<&[u8]> {
    let mut b = answer.get(GENL_HDRLEN..)?;
    while b.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let k = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        if k == kind {
            return Some(&b[4..len]);
        }
        b = b.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    None
}

/// Attributes inside a nested attribute, as (type, payload) pairs.
fn nested(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        if len < 4 || len > b.len() {
            break;
        }
        out.push((u16::from_ne_bytes([b[2], b[3]]) & 0x3fff, &b[4..len]));
        b = b.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    out
}

struct Socket(OwnedFd);

impl Socket {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket calls; the fd is owned right away.
        unsafe {
            let fd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_GENERIC,
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_nl = mem::zeroed();
            addr.nl_family = u16::try_from(libc::AF_NETLINK).expect("fits");
            let len = u32::try_from(mem::size_of::<libc::sockaddr_nl>()).expect("small");
            if libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Self(fd))
        }
    }

    /// The netdev family's id and its "mgmt" notification group.
    fn netdev_family(&self) -> io::Result<(u16, Option<u32>)> {
        let answer = self.request(
            GENL_ID_CTRL,
            CTRL_CMD_GETFAMILY,
            &attr(CTRL_ATTR_FAMILY_NAME, b"netdev\0"),
        )?;
        let family = find(&answer, CTRL_ATTR_FAMILY_ID)
            .and_then(|p| Some(u16::from_ne_bytes(p.get(..2)?.try_into().ok()?)))
            .ok_or_else(|| io::Error::other("the kernel has no netdev netlink family"))?;
        let group = find(&answer, CTRL_ATTR_MCAST_GROUPS).and_then(|groups| {
            nested(groups).into_iter().find_map(|(_, g)| {
                let inner = nested(g);
                let name = inner
                    .iter()
                    .find(|(k, _)| *k == CTRL_ATTR_MCAST_GRP_NAME)?
                    .1;
                let id = inner.iter().find(|(k, _)| *k == CTRL_ATTR_MCAST_GRP_ID)?.1;
                if !name.starts_with(b"mgmt") {
                    return None;
                }
                Some(u32::from_ne_bytes(id.get(..4)?.try_into().ok()?))
            })
        });
        Ok((family, group))
    }

    /// Sends one request and returns the answer's generic netlink body.
    fn request(&self, family: u16, cmd: u8, attrs: &[u8]) -> io::Result<Vec<u8>> {
        let total = NLMSG_HDRLEN + GENL_HDRLEN + attrs.len();
        let mut msg = Vec::with_capacity(total);
        msg.extend_from_slice(&u32::try_from(total).expect("small").to_ne_bytes());
        msg.extend_from_slice(&family.to_ne_bytes());
        msg.extend_from_slice(
            &u16::try_from(libc::NLM_F_REQUEST)
                .expect("fits")
                .to_ne_bytes(),
        );
        msg.extend_from_slice(&1u32.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&[cmd, 1, 0, 0]);
        msg.extend_from_slice(attrs);
        // SAFETY: sending and receiving buffers we own.
        unsafe {
            if libc::send(self.0.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut buf = vec![0u8; 8192];
            let n = libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0);
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            buf.truncate(usize::try_from(n).expect("non-negative"));
            if buf.len() < NLMSG_HDRLEN {
                return Err(io::Error::other("short netlink answer"));
            }
            if u16::from_ne_bytes([buf[4], buf[5]]) == NLMSG_ERROR {
                let errno = i32::from_ne_bytes(buf[16..20].try_into().expect("4 bytes"));
                return Err(io::Error::from_raw_os_error(-errno));
            }
            Ok(buf.split_off(NLMSG_HDRLEN))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_no_native_xdp_and_the_answer_parses() {
        // Needs Linux 6.3+; every namespace has lo at ifindex 1.
        let features = of(1).expect("the netdev family answers for lo");
        assert_eq!(
            features & BASIC,
            0,
            "lo runs no native XDP: {}",
            describe(features)
        );
    }

    #[test]
    fn the_notification_group_is_found() {
        Watcher::open().expect("subscribing to netdev notifications (Linux 6.3+)");
    }

    #[test]
    fn describes_bits() {
        assert_eq!(describe(BASIC | NDO_XMIT), "basic, ndo-xmit");
        assert_eq!(describe(0), "none");
    }
}
