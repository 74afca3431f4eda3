//! Links: what the kernel says about one network device.

use futures::TryStreamExt as _;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage, LinkXdp};

use super::{Netlink, is_absent};

/// The link-layer kinds the loader cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// A tun-style device: no link-layer header (`ARPHRD_NONE`).
    L3PointToPoint,
    Ethernet,
    Other(u16),
}

impl std::fmt::Display for LinkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkKind::L3PointToPoint => write!(f, "layer-3 point-to-point"),
            LinkKind::Ethernet => write!(f, "Ethernet"),
            LinkKind::Other(t) => write!(f, "link type {t}"),
        }
    }
}

/// One link as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkFacts {
    pub ifindex: u32,
    pub name: String,
    pub kind: LinkKind,
    pub mtu: u32,
    /// The link-layer address; zero unless it is a 6-byte (Ethernet) one.
    pub mac: [u8; 6],
    /// Administratively up with carrier (`IFF_UP` and `IFF_RUNNING`).
    pub up: bool,
    /// Id of an XDP program attached to the link, 0 for none.
    pub xdp_prog_id: u32,
}

pub(super) fn name(m: &LinkMessage) -> Option<String> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

impl LinkFacts {
    fn of(m: &LinkMessage) -> Self {
        let mut facts = Self {
            ifindex: m.header.index,
            name: name(m).unwrap_or_default(),
            kind: match m.header.link_layer_type {
                LinkLayerType::None => LinkKind::L3PointToPoint,
                LinkLayerType::Ether => LinkKind::Ethernet,
                other => LinkKind::Other(u16::from(other)),
            },
            mtu: 0,
            mac: [0; 6],
            up: m.header.flags.contains(LinkFlags::Up | LinkFlags::Running),
            xdp_prog_id: 0,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::Mtu(mtu) => facts.mtu = *mtu,
                LinkAttribute::Address(a) if a.len() == 6 => facts.mac.copy_from_slice(a),
                LinkAttribute::Xdp(xdp) => {
                    for x in xdp {
                        if let LinkXdp::ProgId(id) = x {
                            facts.xdp_prog_id = *id;
                        }
                    }
                }
                _ => {}
            }
        }
        facts
    }
}

impl Netlink {
    /// Every link in this network namespace.
    ///
    /// # Errors
    /// If the dump fails.
    pub async fn links(&self) -> Result<Vec<LinkFacts>, rtnetlink::Error> {
        self.handle
            .link()
            .get()
            .execute()
            .map_ok(|m| LinkFacts::of(&m))
            .try_collect()
            .await
    }

    /// The link named `name`, or `None` if there is none.
    ///
    /// # Errors
    /// If the request fails for another reason.
    pub async fn link(&self, name: &str) -> Result<Option<LinkFacts>, rtnetlink::Error> {
        let mut answers = self.handle.link().get().match_name(name).execute();
        match answers.try_next().await {
            Ok(m) => Ok(m.map(|m| LinkFacts::of(&m))),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Netlink {
    /// The addresses on device `ifindex`.
    ///
    /// # Errors
    /// If the dump fails.
    pub async fn addresses(&self, ifindex: u32) -> Result<Vec<std::net::IpAddr>, rtnetlink::Error> {
        use netlink_packet_route::address::AddressAttribute;
        let messages: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(ifindex)
            .execute()
            .try_collect()
            .await?;
        Ok(messages
            .iter()
            .flat_map(|m| &m.attributes)
            .filter_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
            .collect())
    }
}
