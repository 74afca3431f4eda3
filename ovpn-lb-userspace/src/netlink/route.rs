//! Policy rules and the routes of ovpn-lb's own routing table: the path the
//! kernel takes for remote-bound LAN traffic the datapath hands to it
//! (over the tunnel MTU, TTL about to expire), which must only ever lead
//! into a tunnel (see `kernel_path`).

use std::net::IpAddr;

use futures::TryStreamExt as _;
use netlink_packet_route::{
    AddressFamily,
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        RouteType, RouteVia,
    },
    rule::{RuleAction as NlAction, RuleAttribute, RuleMessage},
};
use rtnetlink::{IpVersion, RouteMessageBuilder};

use super::{Netlink, is_absent, is_exists};

/// What a rule does with the packets it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RuleAction {
    /// Look the destination up in this table.
    Lookup(u32),
    /// Answer ICMP "unreachable" and drop.
    Unreachable,
}

/// A policy rule `iif IIF to ADDR/LEN ACTION priority PRIORITY`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rule {
    pub priority: u32,
    pub iif: String,
    pub to: IpAddr,
    pub to_len: u8,
    pub action: RuleAction,
}

impl Rule {
    fn message(&self) -> RuleMessage {
        let mut m = RuleMessage::default();
        m.header.family = family(self.to);
        m.header.dst_len = self.to_len;
        match self.action {
            RuleAction::Lookup(table) => {
                m.header.action = NlAction::ToTable;
                m.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
                m.attributes.push(RuleAttribute::Table(table));
            }
            RuleAction::Unreachable => {
                m.header.action = NlAction::Unreachable;
                m.header.table = RouteHeader::RT_TABLE_UNSPEC;
            }
        }
        m.attributes.push(RuleAttribute::Priority(self.priority));
        m.attributes.push(RuleAttribute::Iifname(self.iif.clone()));
        m.attributes.push(RuleAttribute::Destination(self.to));
        m
    }

    fn of(m: &RuleMessage) -> Option<Self> {
        let mut priority = 0;
        let mut iif = None;
        let mut to = None;
        let mut table = u32::from(m.header.table);
        for a in &m.attributes {
            match a {
                RuleAttribute::Priority(p) => priority = *p,
                RuleAttribute::Iifname(n) => iif = Some(n.clone()),
                RuleAttribute::Destination(d) => to = Some(*d),
                RuleAttribute::Table(t) => table = *t,
                _ => {}
            }
        }
        let action = match m.header.action {
            NlAction::ToTable => RuleAction::Lookup(table),
            NlAction::Unreachable => RuleAction::Unreachable,
            _ => return None,
        };
        Some(Self {
            priority,
            iif: iif?,
            to: to?,
            to_len: m.header.dst_len,
            action,
        })
    }
}

/// The routing protocol number ovpn-lb's own routes in shared tables carry
/// (`ip route show proto 79`), so it finds them again and touches no other.
pub const OWN_PROTOCOL: u8 = 79;
/// Their metric: the last resort, behind any route of the same prefix that
/// the operator keeps.
pub const OWN_METRIC: u32 = u32::MAX;

/// Where the default route of ovpn-lb's table leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteTarget {
    /// Out of a point-to-point (tun) device.
    Device(u32),
    /// To a next hop on an Ethernet (TAP) device.
    Via(IpAddr, u32),
}

/// The default route of one family in ovpn-lb's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelRoute {
    pub table: u32,
    pub v6: bool,
    pub target: RouteTarget,
}

fn family(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn route_address(a: IpAddr) -> RouteAddress {
    match a {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

/// `unreachable ADDR/LEN proto OWN_PROTOCOL metric OWN_METRIC` in `table`.
fn unreachable_route(table: u32, addr: IpAddr, len: u8) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family(addr);
    m.header.destination_prefix_length = len;
    m.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    m.header.protocol = RouteProtocol::Other(OWN_PROTOCOL);
    m.header.scope = RouteScope::Universe;
    m.header.kind = RouteType::Unreachable;
    m.attributes.push(RouteAttribute::Table(table));
    m.attributes
        .push(RouteAttribute::Destination(route_address(addr)));
    m.attributes.push(RouteAttribute::Priority(OWN_METRIC));
    m
}

fn default_route(table: u32, v6: bool, target: Option<RouteTarget>) -> RouteMessage {
    let mut m = if v6 {
        RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .table_id(table)
            .build()
    } else {
        RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .table_id(table)
            .build()
    };
    match target {
        Some(RouteTarget::Device(ifindex)) => {
            m.header.scope = RouteScope::Link;
            m.attributes.push(RouteAttribute::Oif(ifindex));
        }
        Some(RouteTarget::Via(addr, ifindex)) => {
            m.attributes.push(RouteAttribute::Oif(ifindex));
            // An IPv6 route through an IPv4 next hop (RFC 5549) names it with
            // RTA_VIA; a next hop of the route's own family is its gateway.
            m.attributes.push(match (addr, v6) {
                (IpAddr::V4(a), false) => RouteAttribute::Gateway(RouteAddress::Inet(a)),
                (IpAddr::V6(a), true) => RouteAttribute::Gateway(RouteAddress::Inet6(a)),
                (IpAddr::V4(a), true) => RouteAttribute::Via(RouteVia::Inet(a)),
                (IpAddr::V6(a), false) => RouteAttribute::Via(RouteVia::Inet6(a)),
            });
        }
        // A deletion: any scope matches (the kernel compares the scope
        // unless it is "nowhere"; a device route has scope link).
        None => m.header.scope = RouteScope::NoWhere,
    }
    m
}

impl Netlink {
    /// Rules of one family whose priority lies in `priorities`.
    ///
    /// # Errors
    /// If the dump fails.
    pub async fn rules(
        &self,
        v6: bool,
        priorities: std::ops::RangeInclusive<u32>,
    ) -> Result<Vec<Rule>, rtnetlink::Error> {
        let version = if v6 { IpVersion::V6 } else { IpVersion::V4 };
        let messages: Vec<RuleMessage> = self
            .handle
            .rule()
            .get(version)
            .execute()
            .try_collect()
            .await?;
        Ok(messages
            .iter()
            .filter_map(Rule::of)
            .filter(|r| priorities.contains(&r.priority))
            .collect())
    }

    /// Adds `rule`; one that exists already is fine.
    ///
    /// # Errors
    /// If the kernel refuses.
    pub async fn add_rule(&self, rule: &Rule) -> Result<(), rtnetlink::Error> {
        let mut request = self.handle.rule().add();
        *request.message_mut() = rule.message();
        match request.execute().await {
            Err(e) if is_exists(&e) => Ok(()),
            other => other,
        }
    }

    /// Deletes `rule`; one that is gone already is fine.
    ///
    /// # Errors
    /// If the kernel refuses for another reason.
    pub async fn delete_rule(&self, rule: &Rule) -> Result<(), rtnetlink::Error> {
        match self.handle.rule().del(rule.message()).execute().await {
            Err(e) if is_absent(&e) => Ok(()),
            other => other,
        }
    }

    /// Makes `route` the default route of its table and family.
    ///
    /// # Errors
    /// If the kernel refuses (e.g. the device went away meanwhile).
    pub async fn set_default_route(&self, route: KernelRoute) -> Result<(), rtnetlink::Error> {
        self.handle
            .route()
            .add(default_route(route.table, route.v6, Some(route.target)))
            .replace()
            .execute()
            .await
    }

    /// Removes the default route of `table` for one family; gone already is
    /// fine.
    ///
    /// # Errors
    /// If the kernel refuses for another reason.
    pub async fn clear_default_route(&self, table: u32, v6: bool) -> Result<(), rtnetlink::Error> {
        match self
            .handle
            .route()
            .del(default_route(table, v6, None))
            .execute()
            .await
        {
            Err(e) if is_absent(&e) => Ok(()),
            other => other,
        }
    }
}

/// A route that carries no traffic and only says "this gateway announces
/// PREFIX" to a routing daemon reading the kernel's table:
/// `unreachable DST/LEN proto PROTOCOL metric METRIC table TABLE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarkerRoute {
    pub dst: IpAddr,
    pub len: u8,
    pub table: u32,
    pub protocol: u8,
    pub metric: u32,
}

impl std::fmt::Display for MarkerRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.dst, self.len)
    }
}

impl MarkerRoute {
    fn message(&self) -> RouteMessage {
        let mut m = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(self.dst, self.len)
            .map_or_else(|_| RouteMessage::default(), RouteMessageBuilder::build);
        m.header.address_family = family(self.dst);
        m.header.destination_prefix_length = self.len;
        m.header.kind = RouteType::Unreachable;
        m.header.protocol = RouteProtocol::from(self.protocol);
        m.header.scope = RouteScope::Universe;
        m.header.table = u8::try_from(self.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        m.attributes
            .retain(|a| !matches!(a, RouteAttribute::Table(_)));
        m.attributes.push(RouteAttribute::Table(self.table));
        m.attributes.push(RouteAttribute::Priority(self.metric));
        m
    }

    /// The marker route `m` is, if it is one of `table` and `protocol`.
    fn of(m: &RouteMessage, table: u32, protocol: u8) -> Option<Self> {
        if m.header.kind != RouteType::Unreachable
            || m.header.protocol != RouteProtocol::from(protocol)
        {
            return None;
        }
        let mut in_table = u32::from(m.header.table);
        let (mut dst, mut metric) = (None, 0);
        for a in &m.attributes {
            match a {
                RouteAttribute::Table(t) => in_table = *t,
                RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
                RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
                RouteAttribute::Priority(p) => metric = *p,
                _ => {}
            }
        }
        (in_table == table).then_some(Self {
            dst: dst?,
            len: m.header.destination_prefix_length,
            table,
            protocol,
            metric,
        })
    }
}

impl Netlink {
    /// Every route of one family, all tables.
    async fn route_dump(&self, v6: bool) -> Result<Vec<RouteMessage>, rtnetlink::Error> {
        let mut m = RouteMessage::default();
        m.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        self.handle.route().get(m).execute().try_collect().await
    }

    /// The `unreachable` routes ovpn-lb keeps in `table` (its protocol
    /// number), as (prefix address, length).
    ///
    /// # Errors
    /// If the dump fails.
    pub async fn own_unreachable_routes(
        &self,
        table: u32,
        v6: bool,
    ) -> Result<Vec<(IpAddr, u8)>, rtnetlink::Error> {
        Ok(self
            .route_dump(v6)
            .await?
            .iter()
            .filter(|r| {
                table_of(r) == table
                    && r.header.protocol == RouteProtocol::Other(OWN_PROTOCOL)
                    && r.header.kind == RouteType::Unreachable
            })
            .filter_map(|r| {
                let dst = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
                    RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
                    _ => None,
                })?;
                Some((dst, r.header.destination_prefix_length))
            })
            .collect())
    }

    /// Adds ovpn-lb's `unreachable` route for `addr/len` to `table`; there
    /// already is fine.
    ///
    /// # Errors
    /// If the kernel refuses.
    pub async fn add_unreachable(
        &self,
        table: u32,
        addr: IpAddr,
        len: u8,
    ) -> Result<(), rtnetlink::Error> {
        match self
            .handle
            .route()
            .add(unreachable_route(table, addr, len))
            .execute()
            .await
        {
            Err(e) if is_exists(&e) => Ok(()),
            other => other,
        }
    }

    /// Removes ovpn-lb's `unreachable` route for `addr/len` from `table`;
    /// gone already is fine.
    ///
    /// # Errors
    /// If the kernel refuses for another reason.
    pub async fn delete_unreachable(
        &self,
        table: u32,
        addr: IpAddr,
        len: u8,
    ) -> Result<(), rtnetlink::Error> {
        match self
            .handle
            .route()
            .del(unreachable_route(table, addr, len))
            .execute()
            .await
        {
            Err(e) if is_absent(&e) => Ok(()),
            other => other,
        }
    }

    /// The devices the main table's default routes (either family) leave
    /// by: on a gateway, its WAN.
    ///
    /// # Errors
    /// If a dump fails.
    pub async fn default_route_devices(&self) -> Result<Vec<u32>, rtnetlink::Error> {
        let mut out = Vec::new();
        for v6 in [false, true] {
            for r in self.route_dump(v6).await? {
                if table_of(&r) != u32::from(RouteHeader::RT_TABLE_MAIN)
                    || r.header.destination_prefix_length != 0
                    || r.header.kind != RouteType::Unicast
                {
                    continue;
                }
                for a in &r.attributes {
                    match a {
                        RouteAttribute::Oif(i) => out.push(*i),
                        RouteAttribute::MultiPath(hops) => {
                            out.extend(hops.iter().map(|h| h.interface_index));
                        }
                        _ => {}
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// The marker routes of `table` and `protocol`, both families.
    ///
    /// # Errors
    /// If a dump fails.
    pub async fn marker_routes(
        &self,
        table: u32,
        protocol: u8,
    ) -> Result<Vec<MarkerRoute>, rtnetlink::Error> {
        let mut out = Vec::new();
        for v6 in [false, true] {
            let messages = self.route_dump(v6).await?;
            out.extend(
                messages
                    .iter()
                    .filter_map(|m| MarkerRoute::of(m, table, protocol)),
            );
        }
        Ok(out)
    }

    /// Whether any route of IPv4, of IPv6, has several next hops (this
    /// machine spreads traffic over them).
    ///
    /// # Errors
    /// If a dump fails.
    pub async fn multipath_families(&self) -> Result<(bool, bool), rtnetlink::Error> {
        let mut out = [false, false];
        for (i, v6) in [false, true].into_iter().enumerate() {
            let messages = self.route_dump(v6).await?;
            out[i] = messages.iter().any(|m| {
                m.attributes
                    .iter()
                    .any(|a| matches!(a, RouteAttribute::MultiPath(hops) if hops.len() > 1))
            });
        }
        Ok((out[0], out[1]))
    }

    /// Adds `route`; one that exists already is fine.
    ///
    /// # Errors
    /// If the kernel refuses.
    pub async fn add_marker_route(&self, route: &MarkerRoute) -> Result<(), rtnetlink::Error> {
        match self.handle.route().add(route.message()).execute().await {
            Err(e) if is_exists(&e) => Ok(()),
            other => other,
        }
    }

    /// Deletes `route`; one that is gone already is fine.
    ///
    /// # Errors
    /// If the kernel refuses for another reason.
    pub async fn delete_marker_route(&self, route: &MarkerRoute) -> Result<(), rtnetlink::Error> {
        match self.handle.route().del(route.message()).execute().await {
            Err(e) if is_absent(&e) => Ok(()),
            other => other,
        }
    }
}

/// A route's table: the attribute when there is one (tables above 255).
fn table_of(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

/// Where the kernel would forward a packet, by [`Netlink::route_lookup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    /// Out of this device.
    Device(u32),
    /// Unreachable, prohibited or blackholed: dropped with (or without) ICMP.
    Refused,
    /// Delivered locally, or something else that does not leave.
    Local,
}

impl Netlink {
    /// The kernel's routing decision for a packet to `dst`: from `src`
    /// arriving on `iif` (policy rules included), as `ip route get DST from
    /// SRC iif IIF` shows it; or, with neither, one this host sends itself
    /// (`ip route get DST`).
    ///
    /// # Errors
    /// If netlink fails in a way other than "no route".
    pub async fn route_lookup(
        &self,
        dst: IpAddr,
        from: Option<(IpAddr, u32)>,
    ) -> Result<Forwarding, rtnetlink::Error> {
        let mut m = RouteMessage::default();
        m.header.address_family = family(dst);
        m.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        m.attributes
            .push(RouteAttribute::Destination(route_address(dst)));
        if let Some((src, iif)) = from {
            m.header.source_prefix_length = if src.is_ipv4() { 32 } else { 128 };
            m.attributes
                .push(RouteAttribute::Source(route_address(src)));
            m.attributes.push(RouteAttribute::Iif(iif));
        }
        let mut answers = self.handle.route().get(m).execute();
        match answers.try_next().await {
            Ok(Some(r)) => Ok(forwarding_of(&r)),
            Ok(None) => Ok(Forwarding::Refused),
            Err(rtnetlink::Error::NetlinkError(e))
                if matches!(
                    e.raw_code().abs(),
                    libc::ENETUNREACH
                        | libc::EHOSTUNREACH
                        | libc::EACCES
                        | libc::EINVAL
                        | libc::EXDEV
                ) =>
            {
                Ok(Forwarding::Refused)
            }
            Err(e) => Err(e),
        }
    }
}

fn forwarding_of(r: &RouteMessage) -> Forwarding {
    use netlink_packet_route::route::RouteType;
    match r.header.kind {
        RouteType::Unicast => r
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(Forwarding::Device(*i)),
                _ => None,
            })
            .unwrap_or(Forwarding::Local),
        RouteType::Unreachable | RouteType::Prohibit | RouteType::BlackHole => Forwarding::Refused,
        _ => Forwarding::Local,
    }
}
