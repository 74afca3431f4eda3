//! What the machine says about a network interface: index, kind and MTU.
//!
//! Read with socket ioctls rather than `/sys`, so the answer is for the caller's
//! network namespace even when `/sys` was mounted for another one.

use std::{ffi::CString, fmt, io};

/// The link-layer kinds the loader cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfaceKind {
    /// A tun-style device: no link-layer header (`ARPHRD_NONE`).
    L3PointToPoint,
    Ethernet,
    Other(u16),
}

impl fmt::Display for IfaceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IfaceKind::L3PointToPoint => write!(f, "layer-3 point-to-point"),
            IfaceKind::Ethernet => write!(f, "Ethernet"),
            IfaceKind::Other(t) => write!(f, "link type {t}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfaceInfo {
    pub ifindex: u32,
    pub kind: IfaceKind,
    pub mtu: u32,
    /// `NETDEV_XDP_ACT_*` bits (see `xdp_features`); `None` if the kernel
    /// does not say (before Linux 6.3).
    pub xdp_features: Option<u64>,
}

/// Looks interfaces up by name.
pub trait Interfaces {
    fn lookup(&self, name: &str) -> Option<IfaceInfo>;
}

/// The real machine, in the calling thread's network namespace.
pub struct System;

const ARPHRD_ETHER: u16 = 1;
const ARPHRD_NONE: u16 = 0xfffe;

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    /// `ifr_mtu`, `ifr_hwaddr.sa_family`, ... share this union.
    data: [u8; 24],
}

fn ioctl(name: &str, request: libc::c_ulong) -> io::Result<IfReq> {
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: [0; 24],
    };
    if name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
        *dst = src.cast_signed();
    }
    // SAFETY: plain socket and ioctl calls on a properly sized ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let rc = libc::ioctl(fd, request, &raw mut req);
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc < 0 {
            return Err(err);
        }
    }
    Ok(req)
}

impl Interfaces for System {
    fn lookup(&self, name: &str) -> Option<IfaceInfo> {
        let cname = CString::new(name).ok()?;
        // SAFETY: a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return None;
        }
        let hw = ioctl(name, libc::SIOCGIFHWADDR).ok()?;
        let mtu = ioctl(name, libc::SIOCGIFMTU).ok()?;
        let family = u16::from_ne_bytes([hw.data[0], hw.data[1]]);
        let kind = match family {
            ARPHRD_NONE => IfaceKind::L3PointToPoint,
            ARPHRD_ETHER => IfaceKind::Ethernet,
            other => IfaceKind::Other(other),
        };
        Some(IfaceInfo {
            ifindex,
            kind,
            mtu: u32::from_ne_bytes([mtu.data[0], mtu.data[1], mtu.data[2], mtu.data[3]]),
            xdp_features: crate::xdp_features::of(ifindex).ok(),
        })
    }
}

#[cfg(test)]
pub mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A made-up machine for validation tests.
    pub struct FakeInterfaces(HashMap<String, IfaceInfo>);

    impl FakeInterfaces {
        #[must_use]
        pub fn new(list: &[(&str, IfaceInfo)]) -> Self {
            Self(list.iter().map(|(n, i)| ((*n).to_owned(), *i)).collect())
        }
    }

    impl Interfaces for FakeInterfaces {
        fn lookup(&self, name: &str) -> Option<IfaceInfo> {
            self.0.get(name).copied()
        }
    }

    #[test]
    fn loopback_is_found() {
        let lo = System.lookup("lo").expect("every namespace has lo");
        assert_eq!(lo.kind, IfaceKind::Other(772));
        assert!(lo.mtu > 0);
        assert!(System.lookup("no-such-if0").is_none());
    }
}
