//! One runtime record per tunnel: its validated configuration, its device as
//! the kernel last reported it, and its health.

use std::fmt;

use ovpn_lb_common::TunnelConfig;

use crate::{
    config::{TunnelKind, TunnelSpec},
    health::Health,
    netlink::LinkFacts,
    probe::{PeerWord, Tracker, io::Echo},
};

/// A tunnel's index in the configuration: its key in every datapath map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TunnelId(u32);

impl TunnelId {
    /// # Panics
    /// For an index beyond `u32`, which validation (at most `MAX_TUNNELS`)
    /// rules out.
    #[must_use]
    pub fn new(index: usize) -> Self {
        Self(u32::try_from(index).expect("at most MAX_TUNNELS tunnels"))
    }

    #[must_use]
    pub fn raw(self) -> u32 {
        self.0
    }

    #[must_use]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for TunnelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

pub struct Tunnel {
    pub id: TunnelId,
    pub spec: TunnelSpec,
    /// The device, while it exists (and is of the configured kind).
    pub link: Option<LinkFacts>,
    /// TAP: the far end's MAC from the neighbour table; zero while unknown.
    pub peer_mac: [u8; 6],
    pub health: Health,
    /// Its probes, while it is probed.
    pub tracker: Tracker,
    /// ICMP echo to a plain peer's far end, while the device exists.
    pub echo: Option<Echo>,
    /// What the far gateway last said on this tunnel (its view of the
    /// tunnels, its flags), newest by its clock.
    pub peer: Option<PeerWord>,
    /// Alive by its traffic while its probes are lost (said in the log).
    pub kept_by_traffic: bool,
    /// It had no socket to send its last probe by (said once, until it has).
    pub probe_unsent: bool,
}

impl Tunnel {
    #[must_use]
    pub fn new(id: TunnelId, spec: TunnelSpec) -> Self {
        let health = Health::new(spec.management.is_some(), spec.kind == TunnelKind::Tap);
        Self {
            id,
            spec,
            link: None,
            peer_mac: [0; 6],
            health,
            tracker: Tracker::default(),
            echo: None,
            peer: None,
            kept_by_traffic: false,
            probe_unsent: false,
        }
    }

    /// The device's ifindex, 0 while it is missing.
    #[must_use]
    pub fn ifindex(&self) -> u32 {
        self.link.as_ref().map_or(0, |l| l.ifindex)
    }

    /// This tunnel's `TUNNELS` entry.
    #[must_use]
    pub fn entry(&self) -> TunnelConfig {
        self.spec.entry(self.link.as_ref(), self.peer_mac)
    }

    /// `tunnel 2 (tun2)`, for the log.
    #[must_use]
    pub fn label(&self) -> String {
        format!("tunnel {} ({})", self.id, self.spec.device)
    }

    /// Whether probes can be sent: the device exists and, for a TAP tunnel,
    /// the far end's MAC is known.
    #[must_use]
    pub fn probe_ready(&self) -> bool {
        self.link.is_some() && (self.spec.kind == TunnelKind::Tun || self.peer_mac != [0; 6])
    }

    /// Weight in the schedule: 0 while out of the rotation.
    #[must_use]
    pub fn live_weight(&self) -> u32 {
        if self.health.in_rotation {
            self.spec.weight
        } else {
            0
        }
    }
}
