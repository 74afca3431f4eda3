//! Why the datapath did what it did to a packet. Every packet either program
//! sees is counted under exactly one reason; the names double as metric labels.

macro_rules! reasons {
    ($($variant:ident = $value:literal, $name:literal, $kind:ident, $doc:literal;)*) => {
        /// Per-packet outcome, indexing the `REASON_STATS` map.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason {
            $(#[doc = $doc] $variant = $value,)*
        }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// Stable `snake_case` name, used as the `reason` label.
            #[must_use]
            pub const fn name(self) -> &'static str {
                match self { $(Reason::$variant => $name,)* }
            }

            /// What happened to the packet: forwarded, passed to the kernel, or dropped.
            #[must_use]
            pub const fn outcome(self) -> Outcome {
                match self { $(Reason::$variant => Outcome::$kind,)* }
            }

            #[must_use]
            pub const fn description(self) -> &'static str {
                match self { $(Reason::$variant => $doc,)* }
            }
        }
    };
}

/// The three things that can happen to a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Rewritten and sent on by ovpn-lb.
    Forwarded,
    /// Left untouched and handed to the kernel stack.
    Passed,
    /// Dropped by ovpn-lb.
    Dropped,
    /// Meant for ovpn-lb itself and consumed there: answers to its probes.
    Local,
}

impl Outcome {
    /// As `status` and the `outcome` label of the metrics write it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::Passed => "passed",
            Self::Dropped => "dropped",
            Self::Local => "local",
        }
    }
}

reasons! {
    Sprayed = 0, "sprayed", Forwarded, "LAN packet translated and redirected into a tunnel";
    Restored = 1, "restored", Forwarded, "tunnel packet whose addresses were restored";
    NotIp = 2, "not_ip", Passed, "not IPv4 or IPv6 (ARP, LLDP, ...)";
    NotRemote = 3, "not_remote", Passed, "destination outside the remote prefixes, or excluded";
    NotLan = 4, "not_lan", Passed, "source outside the LAN prefix";
    OverMtu = 5, "over_mtu", Passed, "larger than the chosen tunnel's MTU: the kernel fragments it or answers ICMP";
    TtlExpired = 6, "ttl_expired", Passed, "TTL or hop limit would expire: the kernel answers ICMP time exceeded";
    NothingToRestore = 7, "nothing_to_restore", Passed, "tunnel packet with no translated address";
    UnknownTunnel = 8, "unknown_tunnel", Passed, "arrived on a device that is not a configured tunnel";
    NoTunnel = 9, "no_tunnel", Dropped, "no healthy tunnel in the schedule";
    TunnelGone = 10, "tunnel_gone", Dropped, "the scheduled tunnel has no device (being replaced, or removed while no loader runs)";
    TruncatedEthernet = 11, "truncated_ethernet", Dropped, "frame shorter than an Ethernet header";
    TruncatedIp = 12, "truncated_ip", Dropped, "frame ends inside the IP header";
    BadIpHeader = 13, "bad_ip_header", Dropped, "IP version does not match the protocol, or IPv4 IHL < 5";
    BadIpLength = 14, "bad_ip_length", Dropped, "IP length field disagrees with the frame";
    TruncatedL4 = 15, "truncated_l4", Dropped, "frame ends inside the TCP, UDP or ICMP header";
    Ipv6ExtChain = 16, "ipv6_ext_chain", Dropped, "IPv6 extension header chain too long or truncated";
    RewriteFailed = 17, "rewrite_failed", Dropped, "a kernel helper refused the rewrite";
    NoNextHop = 18, "no_next_hop", Dropped, "the scheduled TAP tunnel's far-end MAC is not known yet";
    RestoredToLan = 19, "restored_to_lan", Forwarded, "tunnel packet restored and sent straight to the LAN device by XDP";
    NotForUs = 20, "not_for_us", Passed, "LAN frame not addressed to this host (broadcast, multicast, another host's MAC)";
    ShortFrame = 21, "short_frame", Passed, "LAN frame ends before the IP addresses: it cannot be remote-bound, the kernel judges it";
    BigTcp = 22, "big_tcp", Passed, "remote-bound GSO packet over 64 KiB (BIG TCP, IP length 0): the kernel segments it and routes it into a tunnel";
    BadIpChecksum = 23, "bad_ip_checksum", Dropped, "IPv4 header checksum does not verify (remote-bound, or to be restored)";
    SpoofedSource = 24, "spoofed_source", Dropped, "tunnel packet from one of our own prefixes, or to our translated address from a source the tunnel's peer may not use";
    TranslatedOnEgress = 25, "translated_on_egress", Forwarded, "LAN-sourced packet the kernel routed into a tunnel (over the MTU, BIG TCP), translated on the tunnel's egress";
    Untranslatable = 26, "untranslatable", Dropped, "LAN-sourced packet leaving a device that is not a known tunnel, or a tunnel without a translation for its family: never sent untranslated";
    ProbeReflected = 27, "probe_reflected", Forwarded, "the far gateway's probe, answered back into the tunnel it came from";
    ProbeAnswered = 28, "probe_answered", Local, "an answer to one of our probes, reported to the loader";
    BadProbe = 29, "bad_probe", Dropped, "tunnel packet to the probe address that is not a well-formed probe";
    ProbeMisrouted = 30, "probe_misrouted", Dropped, "probe or answer that names another tunnel than the one it came by";
    ProbeFromLan = 31, "probe_from_lan", Dropped, "LAN packet to the probe address: probes come only from gateways";
    CleartextBlocked = 32, "cleartext_blocked", Dropped, "packet with a LAN, remote or translated address leaving a WAN interface outside the tunnels: never sent in the clear";
}

/// Number of reasons, the size of the `REASON_STATS` map.
pub const REASON_COUNT: usize = Reason::ALL.len();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_dense_and_names_unique() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?} is out of order");
            for other in &Reason::ALL[i + 1..] {
                assert_ne!(r.name(), other.name());
            }
        }
    }

    /// The reasons table in docs/how-it-works.md is this list: every reason,
    /// in order, with its outcome and meaning as written here.
    #[test]
    fn the_docs_list_every_reason_as_the_code_does() {
        let page = include_str!("../../docs/how-it-works.md");
        let rows: std::vec::Vec<&str> = page
            .lines()
            .skip_while(|l| !l.starts_with("| reason | outcome | meaning |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .collect();
        assert_eq!(
            rows.len(),
            Reason::ALL.len(),
            "docs/how-it-works.md reason table rows"
        );
        for (row, r) in rows.iter().zip(Reason::ALL) {
            let outcome = match r.outcome() {
                Outcome::Forwarded => "forwarded",
                Outcome::Passed => "passed",
                Outcome::Dropped => "dropped",
                Outcome::Local => "local",
            };
            let want = std::format!("| `{}` | {outcome} | {} |", r.name(), r.description());
            assert_eq!(*row, want);
        }
    }
}
