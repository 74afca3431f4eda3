//! Map keys and values shared by the BPF programs and userspace.
//!
//! Layout rules: `#[repr(C)]`, no `bool`/`Option`, padding written out, sizes
//! asserted below so both sides agree with the BTF the kernel sees.

use crate::{Prefix4, Prefix6};

/// Most tunnels one gateway can spray over.
pub const MAX_TUNNELS: usize = 64;
/// Slots in a schedule: the resolution of the weights.
pub const SCHEDULE_SLOTS: usize = 256;
/// Slots in a schedule's flow table: flow mode indexes it by the flow hash.
pub const FLOW_SLOTS: usize = 4096;
/// Schedules kept in `SCHEDULES`: one live, one being written.
pub const SCHEDULE_BUFFERS: u32 = 2;
/// Entries in each LPM map (remote prefixes, our translation prefixes).
pub const MAX_PREFIXES: u32 = 1024;

/// Map names as they appear in the object, in bpffs and in `bpftool map`.
pub mod names {
    pub const SITE: &str = "SITE";
    pub const TUNNELS: &str = "TUNNELS";
    pub const TUNNEL_BY_IF: &str = "TUNNEL_BY_IF";
    pub const REMOTE_V4: &str = "REMOTE_V4";
    pub const REMOTE_V6: &str = "REMOTE_V6";
    pub const OUR_XLAT_V4: &str = "OUR_XLAT_V4";
    pub const OUR_XLAT_V6: &str = "OUR_XLAT_V6";
    pub const SCHEDULES: &str = "SCHEDULES";
    pub const ACTIVE_SCHED: &str = "ACTIVE_SCHED";
    pub const SPRAY_CURSOR: &str = "SPRAY_CURSOR";
    pub const TUNNEL_STATS: &str = "TUNNEL_STATS";
    pub const REASON_STATS: &str = "REASON_STATS";
    /// This gateway's view of the tunnels, reflected to the far gateway.
    pub const PROBE_VIEW: &str = "PROBE_VIEW";
    /// Probe reports for the loader (a ring buffer: not pinned, each loader
    /// has its own).
    pub const PROBE_EVENTS: &str = "PROBE_EVENTS";
    /// Tunnel id -> its device (a device map): the kernel deletes an entry
    /// when its device goes away, loader running or not.
    pub const TUNNEL_DEVICES: &str = "TUNNEL_DEVICES";
    /// Every tunnel ring's accounting (`queue::Rings`, one value).
    pub const RINGS: &str = "RINGS";
    /// The ring accounting's device -> tunnel table (`queue::slot`).
    pub const RING_SLOTS: &str = "RING_SLOTS";
    /// Every prefix whose addresses must never leave by the WAN outside a
    /// tunnel (value: a `guard::*` kind), for the WAN guard.
    pub const GUARD_V4: &str = "GUARD_V4";
    pub const GUARD_V6: &str = "GUARD_V6";

    pub const ALL: &[&str] = &[
        SITE,
        TUNNELS,
        TUNNEL_BY_IF,
        REMOTE_V4,
        REMOTE_V6,
        OUR_XLAT_V4,
        OUR_XLAT_V6,
        SCHEDULES,
        ACTIVE_SCHED,
        SPRAY_CURSOR,
        TUNNEL_STATS,
        REASON_STATS,
        PROBE_VIEW,
        TUNNEL_DEVICES,
        RINGS,
        RING_SLOTS,
        GUARD_V4,
        GUARD_V6,
    ];
}

/// Program names in the object.
pub mod programs {
    pub const LAN_INGRESS: &str = "lan_ingress";
    pub const TUNNEL_INGRESS: &str = "tunnel_ingress";
    pub const TUNNEL_INGRESS_ETH: &str = "tunnel_ingress_eth";
    pub const LAN_INGRESS_XDP: &str = "lan_ingress_xdp";
    pub const TUNNEL_INGRESS_XDP: &str = "tunnel_ingress_xdp";
    /// tc egress (tcx) on every tun tunnel device: translates LAN-sourced
    /// packets the kernel routes into the tunnel itself.
    pub const TUNNEL_EGRESS: &str = "tunnel_egress";
    /// The same on TAP tunnel devices (Ethernet framing).
    pub const TUNNEL_EGRESS_ETH: &str = "tunnel_egress_eth";
    /// tc egress (tcx) on each WAN device with Ethernet framing: drops what
    /// would leave in the clear (`guard`).
    pub const WAN_EGRESS_ETH: &str = "wan_egress_eth";
    /// The same on a WAN device without a link-layer header (PPP, tun).
    pub const WAN_EGRESS: &str = "wan_egress";
    /// tc (`sched_cls`) programs.
    pub const TC: &[&str] = &[
        LAN_INGRESS,
        TUNNEL_INGRESS,
        TUNNEL_INGRESS_ETH,
        TUNNEL_EGRESS,
        TUNNEL_EGRESS_ETH,
        WAN_EGRESS,
        WAN_EGRESS_ETH,
    ];
    /// Native XDP programs, for TAP tunnels.
    pub const XDP: &[&str] = &[LAN_INGRESS_XDP, TUNNEL_INGRESS_XDP];
    /// The ring accounting's programs (`crate::queue`), each with what it
    /// attaches to.
    pub const RING_ENQUEUE: Tracing =
        Tracing::new("ring_enqueue", Kind::BtfTracepoint, "net_dev_xmit");
    pub const RING_READ: Tracing = Tracing::new("ring_read", Kind::Fexit, "tun_do_read");
    pub const RING_ENQUEUE_XDP: Tracing =
        Tracing::new("ring_enqueue_xdp", Kind::Fexit, "tun_xdp_xmit");
    pub const RING_READ_CONSUMED: Tracing =
        Tracing::new("ring_read_consumed", Kind::BtfTracepoint, "consume_skb");
    pub const RING_ENQUEUE_RAW: Tracing =
        Tracing::new("ring_enqueue_raw", Kind::RawTracepoint, "net_dev_xmit");
    pub const RING_READ_CONSUMED_RAW: Tracing =
        Tracing::new("ring_read_consumed_raw", Kind::RawTracepoint, "consume_skb");
    /// Every one of them.
    pub const TRACING: &[Tracing] = &[
        RING_ENQUEUE,
        RING_READ,
        RING_ENQUEUE_XDP,
        RING_READ_CONSUMED,
        RING_ENQUEUE_RAW,
        RING_READ_CONSUMED_RAW,
    ];
    /// Tracing programs of earlier versions, whose pinned links the loader
    /// removes.
    pub const RETIRED_TRACING: &[&str] = &["tunnel_enqueue", "tunnel_dequeue"];

    /// How a tracing program attaches.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Kind {
        /// After a kernel function returns (`fexit/<function>`).
        Fexit,
        /// A tracepoint with typed arguments (`tp_btf/<tracepoint>`).
        BtfTracepoint,
        /// A raw tracepoint (`raw_tp/<tracepoint>`).
        RawTracepoint,
    }

    /// A tracing program: its name, how it attaches, and to what.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Tracing {
        pub name: &'static str,
        pub kind: Kind,
        pub target: &'static str,
    }

    impl Tracing {
        const fn new(name: &'static str, kind: Kind, target: &'static str) -> Self {
            Self { name, kind, target }
        }
    }
}

/// `families` bits in [`SiteConfig`] and [`TunnelConfig`].
pub mod family {
    pub const V4: u32 = 1 << 0;
    pub const V6: u32 = 1 << 1;
    /// Tunnel only: the peer translates its IPv4 sources on this tunnel.
    pub const PEER_V4: u32 = 1 << 2;
    /// Tunnel only: the peer translates its IPv6 sources on this tunnel.
    pub const PEER_V6: u32 = 1 << 3;
}

/// How the LAN program spreads packets over the tunnels (the `spray`
/// setting; "mode" is left to the loader's hook choice, tc or XDP).
#[repr(u32)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Spray {
    /// Every packet takes the next slot of the weighted round-robin table:
    /// one flow uses every tunnel, in a fixed order.
    RoundRobin = 0,
    /// A 5-tuple hash picks the slot: one flow stays on one tunnel.
    Flow = 1,
    /// Every packet takes the tunnel where it would leave first, from each
    /// tunnel's backlog and measured drain rate: one flow uses every
    /// tunnel, and its packets arrive in the order they were sent.
    #[default]
    Packet = 2,
}

impl Spray {
    /// As the configuration and `status` write it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Spray::RoundRobin => "round-robin",
            Spray::Flow => "flow",
            Spray::Packet => "packet",
        }
    }
}

/// The gateway's own side: single entry of `SITE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteConfig {
    pub lan_v4: Prefix4,
    pub lan_v6: Prefix6,
    /// `family::V4` / `family::V6`: which LAN prefixes are set.
    pub families: u32,
    /// A [`Spray`] value.
    pub spray: u32,
    /// The LAN device: where the XDP restore program sends packets it
    /// forwards itself.
    pub lan_ifindex: u32,
    /// `site_flags::*` bits.
    pub flags: u32,
    /// MAC address of the LAN device: under XDP only frames sent to it are
    /// sprayed (tc reads the kernel's verdict, `skb->pkt_type`). All zero:
    /// unknown, and the XDP LAN program sprays nothing.
    pub lan_mac: [u8; 6],
    pub pad: [u8; 2],
}

/// `flags` bits in [`SiteConfig`].
pub mod site_flags {
    /// The LAN driver transmits frames redirected by XDP programs
    /// (`NETDEV_XDP_ACT_NDO_XMIT`): the XDP restore program may forward
    /// straight to it instead of passing to the kernel.
    pub const LAN_XDP_XMIT: u32 = 1 << 0;
}

/// What a tunnel device carries, in [`TunnelConfig::framing`].
pub mod framing {
    /// Bare IP packets (`dev tun`): the kernel strips the LAN's Ethernet header.
    pub const TUN: u32 = 0;
    /// Ethernet frames (`dev tap`): we address each frame to the tunnel's peer.
    pub const TAP: u32 = 1;
}

/// One tunnel, indexed by tunnel id in `TUNNELS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelConfig {
    /// Device to redirect into; 0 while the device is missing.
    pub ifindex: u32,
    /// `family::*` bits saying which prefixes below are set.
    pub families: u32,
    /// Our LAN sources become this prefix on this tunnel.
    pub xlat_v4: Prefix4,
    /// Sources the peer translated for this tunnel...
    pub peer_xlat_v4: Prefix4,
    /// ...are restored into this prefix (the peer's LAN).
    pub peer_real_v4: Prefix4,
    pub xlat_v6: Prefix6,
    pub peer_xlat_v6: Prefix6,
    pub peer_real_v6: Prefix6,
    /// The device's MTU as the loader last saw it (it follows link events);
    /// 0: unknown, the program asks the kernel instead.
    pub mtu: u32,
    /// A `framing::*` value.
    pub framing: u32,
    /// TAP only: the device's own MAC, the source of frames sent into it.
    pub mac: [u8; 6],
    /// TAP only: the MAC of the tunnel's far end (its next hop), learnt from
    /// the neighbour table; all zero while unknown.
    pub peer_mac: [u8; 6],
}

/// Traffic through one tunnel, per CPU, in `TUNNEL_STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelStats {
    /// Packets sprayed into the tunnel.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Packets that arrived from the tunnel.
    pub rx_packets: u64,
    pub rx_bytes: u64,
}

impl TunnelStats {
    /// Field-wise sum: per-CPU values add up to the total.
    #[must_use]
    pub const fn plus(self, o: &Self) -> Self {
        Self {
            tx_packets: self.tx_packets + o.tx_packets,
            tx_bytes: self.tx_bytes + o.tx_bytes,
            rx_packets: self.rx_packets + o.rx_packets,
            rx_bytes: self.rx_bytes + o.rx_bytes,
        }
    }
}

/// Packets and bytes per [`crate::Reason`], per CPU, in `REASON_STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReasonStats {
    pub packets: u64,
    pub bytes: u64,
}

impl ReasonStats {
    /// Field-wise sum: per-CPU values add up to the total.
    #[must_use]
    pub const fn plus(self, o: &Self) -> Self {
        Self {
            packets: self.packets + o.packets,
            bytes: self.bytes + o.bytes,
        }
    }
}

/// One schedule: both tables a spray setting can use, published together.
/// `len` 0 means no healthy tunnel (for both). Two live in `SCHEDULES`;
/// `ACTIVE_SCHED` says which one packets use.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Slots of `slots` in use.
    pub len: u32,
    /// Entries of `members` in use; 0 while the ring accounting is off, and
    /// packet mode then walks `slots` like round robin.
    pub members_len: u32,
    /// Round robin: tunnel ids laid out by smooth weighted round-robin.
    pub slots: [u8; SCHEDULE_SLOTS],
    /// Flow mode: the owner of each flow-hash slot by weighted rendezvous
    /// hashing, so a tunnel leaving or rejoining moves only its own slots.
    pub flow: [u8; FLOW_SLOTS],
    /// Packet mode: the healthy tunnels, compared for every packet.
    pub members: [u8; MAX_TUNNELS],
    /// Packet mode, by tunnel id: how much longer the tunnel's path is than
    /// the fastest tunnel's, ns (from the probes; 0 without them).
    pub path_ns: [u32; MAX_TUNNELS],
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            len: 0,
            members_len: 0,
            slots: [0; SCHEDULE_SLOTS],
            flow: [0; FLOW_SLOTS],
            members: [0; MAX_TUNNELS],
            path_ns: [0; MAX_TUNNELS],
        }
    }
}

/// Value of `GUARD_V4` / `GUARD_V6`: whose prefix an address is in (for
/// the log). Any entry keeps a packet for it off the WAN; as a source,
/// any but [`guard::LAN`]: a LAN host's own traffic to the Internet passes.
pub mod guard {
    /// Our LAN (guarded as a destination only).
    pub const LAN: u32 = 1;
    /// A remote prefix (the far LAN, and anything behind it).
    pub const REMOTE: u32 = 2;
    /// One of our translation prefixes.
    pub const OURS_TRANSLATED: u32 = 3;
    /// One of the peer's translation prefixes.
    pub const PEER_TRANSLATED: u32 = 4;
}

/// Value of `REMOTE_V4` / `REMOTE_V6`: what to do with a destination.
pub mod route {
    /// Leave to the kernel (the gateway's own addresses inside a remote prefix).
    pub const EXCLUDE: u32 = 0;
    /// Spray through the tunnels.
    pub const SPRAY: u32 = 1;
}

const _: () = assert!(size_of::<SiteConfig>() == 64);
const _: () = assert!(size_of::<TunnelConfig>() == 148);
const _: () = assert!(size_of::<TunnelStats>() == 32);
const _: () = assert!(size_of::<ReasonStats>() == 16);
const _: () = assert!(
    size_of::<Schedule>() == 8 + SCHEDULE_SLOTS + FLOW_SLOTS + MAX_TUNNELS + 4 * MAX_TUNNELS
);
const _: () = assert!(FLOW_SLOTS.is_power_of_two());
const _: () = assert!(MAX_TUNNELS <= u8::MAX as usize + 1);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C) with integer fields and no implicit padding
    // (the size assertions above would catch any).
    unsafe impl aya::Pod for super::SiteConfig {}
    unsafe impl aya::Pod for super::TunnelConfig {}
    unsafe impl aya::Pod for super::TunnelStats {}
    unsafe impl aya::Pod for super::ReasonStats {}
    unsafe impl aya::Pod for super::Schedule {}
}
