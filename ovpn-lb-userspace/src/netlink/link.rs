//! Links: what the kernel says about one network device.

use futures::TryStreamExt as _;
use netlink_packet_core::Nla as _;
use netlink_packet_route::link::{
    InfoData, InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage, LinkXdp,
};

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

/// The driver behind a device, from its link info.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Driver {
    /// The tun driver (`/dev/net/tun`): a tun or TAP device, with its
    /// queues if it was made multi-queue.
    Tun { multi_queue: bool },
    /// Another kind, as `ip -d link` names it (`veth`, `ovpn-dco`, ...).
    Other(String),
    /// No link info: a physical device.
    #[default]
    Unknown,
}

/// `IFLA_TUN_MULTI_QUEUE` (`include/uapi/linux/if_link.h`): a u8 flag.
const IFLA_TUN_MULTI_QUEUE: u16 = 7;

impl Driver {
    /// Why packet spray's ring accounting cannot follow this device's
    /// queue, or `None` when it can: it reads the one ring of a single-queue
    /// tun or TAP device of the tun driver. An `OpenVPN` with data-channel
    /// offload has no such ring (its packets go to the kernel's ovpn device).
    #[must_use]
    pub fn why_no_ring(&self) -> Option<String> {
        match self {
            Driver::Tun { multi_queue: false } => None,
            Driver::Tun { multi_queue: true } => {
                Some("a multi-queue tun device (one ring per queue)".to_owned())
            }
            Driver::Other(kind) if kind.starts_with("ovpn") => Some(format!(
                "an OpenVPN data-channel offload device ({kind}), with no tun ring; add `disable-dco` to its OpenVPN configuration"
            )),
            Driver::Other(kind) => Some(format!("a {kind} device, not one of the tun driver")),
            Driver::Unknown => Some("not a device of the tun driver".to_owned()),
        }
    }

    fn of(infos: &[LinkInfo]) -> Self {
        let mut driver = Driver::Unknown;
        for info in infos {
            match info {
                // The data (multi-queue or not) may come first.
                LinkInfo::Kind(InfoKind::Tun) if driver == Driver::Unknown => {
                    driver = Driver::Tun { multi_queue: false };
                }
                LinkInfo::Kind(InfoKind::Tun) => {}
                LinkInfo::Kind(InfoKind::Other(kind)) => driver = Driver::Other(kind.clone()),
                LinkInfo::Kind(kind) => driver = Driver::Other(kind.to_string()),
                LinkInfo::Data(InfoData::Tun(nlas)) => {
                    let multi_queue = nlas.iter().any(|nla| {
                        let mut value = vec![0u8; nla.value_len()];
                        nla.emit_value(&mut value);
                        nla.kind() == IFLA_TUN_MULTI_QUEUE && value.first().is_some_and(|&v| v != 0)
                    });
                    driver = Driver::Tun { multi_queue };
                }
                _ => {}
            }
        }
        driver
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
    pub driver: Driver,
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
            driver: Driver::Unknown,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::Mtu(mtu) => facts.mtu = *mtu,
                LinkAttribute::Address(a) if a.len() == 6 => facts.mac.copy_from_slice(a),
                LinkAttribute::LinkInfo(infos) => facts.driver = Driver::of(infos),
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
