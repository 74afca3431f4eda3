//! Neighbour entries of TAP tunnels' far ends. The loader makes them
//! *managed* (Linux 5.16+, `NTF_EXT_MANAGED`): the kernel resolves the
//! address and keeps it resolved without traffic, so the datapath can address
//! frames to a MAC that stays current. An operator's permanent entry is used
//! as it is.

use std::net::IpAddr;

use futures::TryStreamExt as _;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage, NeighbourState,
};

use super::{Netlink, is_absent};

/// One neighbour entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub addr: IpAddr,
    /// The link-layer address while the entry is usable (reachable, stale,
    /// permanent, ...), else `None`.
    pub mac: Option<[u8; 6]>,
    pub permanent: bool,
}

fn usable(state: NeighbourState) -> bool {
    matches!(
        state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Noarp
            | NeighbourState::Permanent
    )
}

impl Neighbour {
    fn of(m: &NeighbourMessage) -> Option<Self> {
        let mut addr = None;
        let mut lladdr = None;
        for a in &m.attributes {
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                    addr = Some(IpAddr::V4(*v4));
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                    addr = Some(IpAddr::V6(*v6));
                }
                NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                    let mut mac = [0; 6];
                    mac.copy_from_slice(l);
                    lladdr = Some(mac);
                }
                _ => {}
            }
        }
        Some(Self {
            ifindex: m.header.ifindex,
            addr: addr?,
            mac: lladdr.filter(|_| usable(m.header.state)),
            permanent: m.header.state == NeighbourState::Permanent,
        })
    }
}

impl Netlink {
    /// The neighbour entry for `addr` on `ifindex`, if there is one.
    ///
    /// # Errors
    /// If the dump fails.
    pub async fn neighbour(
        &self,
        ifindex: u32,
        addr: IpAddr,
    ) -> Result<Option<Neighbour>, rtnetlink::Error> {
        let mut entries = self.handle.neighbours().get().execute();
        while let Some(m) = entries.try_next().await? {
            if m.header.ifindex == ifindex
                && let Some(n) = Neighbour::of(&m)
                && n.addr == addr
            {
                return Ok(Some(n));
            }
        }
        Ok(None)
    }

    /// Makes the entry for `addr` on `ifindex` a managed one; an operator's
    /// permanent entry is left alone. True if the entry is ours.
    ///
    /// # Errors
    /// If the kernel refuses (managed entries need Linux 5.16+).
    pub async fn manage_neighbour(
        &self,
        ifindex: u32,
        addr: IpAddr,
    ) -> Result<bool, rtnetlink::Error> {
        if self
            .neighbour(ifindex, addr)
            .await?
            .is_some_and(|n| n.permanent)
        {
            return Ok(false);
        }
        let mut request = self
            .handle
            .neighbours()
            .add(ifindex, addr)
            .state(NeighbourState::None)
            .replace();
        request
            .message_mut()
            .attributes
            .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        request.execute().await?;
        Ok(true)
    }

    /// Removes the entry for `addr` on `ifindex`; true if there was one.
    ///
    /// # Errors
    /// If the kernel refuses for another reason than "not there".
    pub async fn forget_neighbour(
        &self,
        ifindex: u32,
        addr: IpAddr,
    ) -> Result<bool, rtnetlink::Error> {
        let mut message = NeighbourMessage::default();
        message.header.ifindex = ifindex;
        message.header.family = match addr {
            IpAddr::V4(_) => netlink_packet_route::AddressFamily::Inet,
            IpAddr::V6(_) => netlink_packet_route::AddressFamily::Inet6,
        };
        message
            .attributes
            .push(NeighbourAttribute::Destination(match addr {
                IpAddr::V4(a) => NeighbourAddress::Inet(a),
                IpAddr::V6(a) => NeighbourAddress::Inet6(a),
            }));
        match self.handle.neighbours().del(message).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
