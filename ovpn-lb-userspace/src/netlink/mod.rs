//! Everything the loader says to and hears from the kernel over netlink: one
//! rtnetlink connection for requests about links, neighbours, policy rules
//! and routes, another subscribed to link, neighbour and route
//! notifications, and the `netdev` generic-netlink family for drivers' XDP
//! features.
//!
//! Requests never share the notifications' socket: once a burst of
//! notifications overflows a socket, the kernel drops every unicast answer
//! to it (a reply, an acknowledgement) until its queue has been read empty,
//! without another error, so a request there could wait for ever.
//!
//! Notifications are used as triggers only: whoever receives one asks the
//! kernel for the current state of that link or neighbour table. A dump and
//! the notifications queued beside it arrive on different channels, so
//! applying a notification's own contents could undo a newer dump.

mod link;
mod neighbour;
pub mod netdev;
mod route;
pub mod tc;

use std::io;

use futures::StreamExt as _;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::{Handle, MulticastGroup};
use tokio::sync::mpsc;

pub use link::{Driver, LinkFacts, LinkKind};
pub use neighbour::Neighbour;
pub use route::{
    Forwarding, KernelRoute, MarkerRoute, OWN_PROTOCOL, RouteTarget, Rule, RuleAction,
};

/// A notification worth a fresh look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A link appeared, changed or went away.
    Link { ifindex: u32, name: Option<String> },
    /// A neighbour entry on `ifindex` changed.
    Neighbour { ifindex: u32 },
    /// A route changed (in any table): the default route's device may be
    /// another now.
    Route,
    /// Notifications were lost (the socket's buffer overflowed): look at
    /// everything again.
    Overrun,
}

/// The rtnetlink connection for requests. Cheap to clone.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens the request connection and, on a socket of its own, one
    /// subscribed to link, neighbour and route notifications; runs both on
    /// the current tokio runtime. Notifications arrive on the returned
    /// channel.
    ///
    /// # Errors
    /// If a socket cannot be made or bound.
    pub fn open() -> io::Result<(Self, mpsc::UnboundedReceiver<Event>)> {
        let requests = Self::requests_only()?;
        // The handle is dropped: nothing is ever asked on this socket.
        let (connection, _, mut messages) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Link,
            MulticastGroup::Neigh,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
        ])?;
        tokio::spawn(connection);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some((message, _)) = messages.next().await {
                if let Some(event) = event_of(message)
                    && tx.send(event).is_err()
                {
                    return;
                }
            }
        });
        Ok((requests, rx))
    }

    /// A connection for requests only (no notifications), e.g. for `check`
    /// and `detach`.
    ///
    /// # Errors
    /// If the socket cannot be made.
    pub fn requests_only() -> io::Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }
}

fn event_of(message: NetlinkMessage<RouteNetlinkMessage>) -> Option<Event> {
    match message.payload {
        NetlinkPayload::Overrun(_) => Some(Event::Overrun),
        NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l),
        ) => Some(Event::Link {
            ifindex: l.header.index,
            name: link::name(&l),
        }),
        NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n),
        ) => Some(Event::Neighbour {
            ifindex: n.header.ifindex,
        }),
        NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_),
        ) => Some(Event::Route),
        _ => None,
    }
}

/// True when a netlink error says "no such thing" (already gone, or never there).
fn is_absent(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if matches!(m.raw_code().abs(), libc::ENODEV | libc::ENOENT | libc::ESRCH | libc::EADDRNOTAVAIL))
}

/// True when a netlink error says "exists already".
fn is_exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code().abs() == libc::EEXIST)
}
