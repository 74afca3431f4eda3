//! Tun and TAP devices made by this process through `/dev/net/tun`: the
//! `kernel` command's XDP check, and the test bed's own tunnels.

use std::{
    fs::{File, OpenOptions},
    os::fd::AsRawFd,
};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates tun (or, with `tap`, TAP) device `name` without packet info in the
/// calling thread's network namespace; it lives as long as the file.
///
/// # Errors
/// If `/dev/net/tun` cannot be opened or the kernel refuses the device.
pub fn open_device(name: &str, tap: bool) -> std::io::Result<File> {
    open_with(name, IFF_NO_PI | if tap { IFF_TAP } else { IFF_TUN })
}

/// Creates a multi-queue tun device `name` (its first queue), as some
/// programs other than OpenVPN make them; it lives as long as the file.
///
/// # Errors
/// As [`open_device`].
pub fn open_multi_queue(name: &str) -> std::io::Result<File> {
    open_with(name, IFF_NO_PI | IFF_TUN | IFF_MULTI_QUEUE)
}

fn open_with(name: &str, flags: libc::c_short) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags,
        _pad: [0; 22],
    };
    if name.len() >= libc::IFNAMSIZ {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF on our own descriptor with a properly sized ifreq.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &raw mut req) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}
