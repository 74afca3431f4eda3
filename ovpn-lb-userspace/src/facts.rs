//! What the machine says about its network devices at one moment: the
//! facts a configuration is validated against.

use std::{collections::HashMap, io};

use anyhow::{Context as _, Result};

use crate::netlink::{LinkFacts, Netlink, netdev};

#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub links: Vec<LinkFacts>,
    /// `NETDEV_XDP_ACT_*` bits by ifindex; empty before Linux 6.3.
    pub xdp_features: HashMap<u32, u64>,
}

impl Facts {
    /// Reads every link and its XDP features.
    ///
    /// # Errors
    /// If netlink fails.
    pub async fn gather(netlink: &Netlink) -> Result<Self> {
        Ok(Self {
            links: netlink.links().await.context("listing network devices")?,
            xdp_features: netdev::features().context("reading drivers' XDP features")?,
        })
    }

    #[must_use]
    pub fn link(&self, name: &str) -> Option<&LinkFacts> {
        self.links.iter().find(|l| l.name == name)
    }

    /// The XDP features of the device named `name`, if the kernel says.
    #[must_use]
    pub fn xdp_features(&self, name: &str) -> Option<u64> {
        self.link(name)
            .and_then(|l| self.xdp_features.get(&l.ifindex).copied())
    }
}

/// A device's packet counters. On a tun device the kernel counts a packet
/// received when its reader (OpenVPN) writes it in, and transmitted when
/// the reader takes it out of the ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DevicePackets {
    pub rx: u64,
    pub tx: u64,
}

/// Every device's packet counters from `/proc/net/dev` (this network
/// namespace), by name.
///
/// # Errors
/// If the file cannot be read.
pub fn device_packets() -> io::Result<HashMap<String, DevicePackets>> {
    Ok(parse_net_dev(&std::fs::read_to_string("/proc/net/dev")?))
}

fn parse_net_dev(text: &str) -> HashMap<String, DevicePackets> {
    text.lines()
        .filter_map(|line| {
            let (name, fields) = line.split_once(':')?;
            let numbers: Vec<u64> = fields
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            // Receive: bytes packets ... (8 fields); transmit: bytes packets ...
            let packets = DevicePackets {
                rx: *numbers.get(1)?,
                tx: *numbers.get(9)?,
            };
            Some((name.trim().to_owned(), packets))
        })
        .collect()
}

/// `SIOCETHTOOL`, `ETHTOOL_GGRO` (`include/uapi/linux/ethtool.h`).
const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GGRO: u32 = 0x2b;

/// Whether generic receive offload is on for device `name`: the kernel then
/// merges a TCP flow's segments into one packet before any program sees
/// them, and packet spray can only place whole merged packets.
///
/// # Errors
/// If the device does not exist or the kernel refuses the query.
pub fn gro_enabled(name: &str) -> io::Result<bool> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        pad: [u8; 16],
    }
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_GGRO,
        data: 0,
    };
    let mut request = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &raw mut value,
        pad: [0; 16],
    };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: a plain socket call; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `request` is a valid `struct ifreq` whose data pointer points
    // to `value`, both live across the call; the kernel writes only `value`.
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL, &raw mut request) };
    let result = if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value.data != 0)
    };
    // SAFETY: `fd` is ours and not used after.
    unsafe { libc::close(fd) };
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gro_state_agrees_with_ethtool() {
        let Ok(out) = std::process::Command::new("ethtool")
            .args(["-k", "lo"])
            .output()
        else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI: ethtool is a test dependency"
            );
            eprintln!("skipped: no ethtool");
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let on = text.contains("generic-receive-offload: on");
        assert_eq!(gro_enabled("lo").unwrap(), on, "{text}");
        assert!(gro_enabled("no-such-dev0").is_err());
        assert!(gro_enabled("a-name-far-too-long-for-linux").is_err());
    }

    #[test]
    fn net_dev_gives_each_devices_packets() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 20943717    1571    0    0    0     0          0         0 20943717    1572    0    0    0     0       0          0
  tun0:     840      10    0    0    0     0          0         0     1680      20    0    7    0     0       0          0
";
        let d = super::parse_net_dev(text);
        assert_eq!(d.len(), 2);
        assert_eq!((d["lo"].rx, d["lo"].tx), (1571, 1572));
        assert_eq!(d["tun0"], super::DevicePackets { rx: 10, tx: 20 });
    }
}
