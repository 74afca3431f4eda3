//! Make sure the packet fits the tunnel, address it to the tunnel's far end
//! if the tunnel carries Ethernet frames, and hand it to the device.

use ovpn_lb_common::{Reason, TunnelConfig, maps::framing};

use crate::{
    hook::Hook,
    layout::EthHdr,
    packet::{Mac, Packet},
    parse::{self, Ip},
};

/// Checks the packet against the tunnel's MTU. A GSO super-packet is judged
/// by the segments it will be cut into.
#[inline(always)]
pub fn fits<C: Hook>(pkt: &Packet<C>, tunnel: &TunnelConfig, ip: &Ip) -> Result<(), Reason> {
    let gso_size = pkt.ctx().gso_size();
    let l3_len = if gso_size == 0 {
        ip.len as u32
    } else {
        parse::segment_len(pkt, ip, gso_size)
    };
    let mtu = if tunnel.mtu != 0 {
        tunnel.mtu
    } else {
        pkt.ctx().device_mtu(tunnel.ifindex)?
    };
    if l3_len > mtu {
        return Err(Reason::OverMtu);
    }
    Ok(())
}

/// On a TAP tunnel, addresses the frame from the device to the tunnel's far
/// end, as the kernel's neighbour output would. A tun tunnel takes bare IP:
/// the Ethernet header is dropped on the way.
#[inline(always)]
pub fn address<C: Hook>(pkt: &Packet<C>, tunnel: &TunnelConfig) -> Result<(), Reason> {
    if tunnel.framing != framing::TAP {
        return Ok(());
    }
    if tunnel.peer_mac == [0; 6] {
        return Err(Reason::NoNextHop);
    }
    let eth = pkt.header::<EthHdr>(0).ok_or(Reason::TruncatedEthernet)?;
    eth.set_addrs(Mac::new(&tunnel.peer_mac), Mac::new(&tunnel.mac));
    Ok(())
}

/// Drops Ethernet padding after the datagram (minimum-size frames), as the
/// kernel's IP input would, so the tunnel carries only the datagram.
#[inline(always)]
pub fn trim_padding<C: Hook>(pkt: &Packet<C>, frame_len: usize) -> Result<(), Reason> {
    if pkt.len() as usize <= frame_len {
        return Ok(());
    }
    pkt.ctx().truncate(frame_len as u32)
}
