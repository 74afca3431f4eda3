//! In-band probes between two ovpn-lb gateways: the wire format, shared by
//! the loader (which sends probes and reads the answers) and the tunnel
//! programs (which reflect probes and hand answers up).
//!
//! A probe is an IPv4/UDP datagram from [`SRC`] to [`DST`], port [`PORT`],
//! sent into one tunnel device. Loopback addresses are the mark: the LAN
//! program never sprays to a loopback destination and no kernel forwards
//! one, so nothing from a LAN can reach a tunnel program looking like a probe,
//! and a probe that reaches a gateway without ovpn-lb is dropped as martian.
//! The far gateway's tunnel program turns it into an answer (kind [`ANSWER`],
//! its own receive time and rotation written in, addresses unchanged) and
//! sends it back into the tunnel it came from, so the far loader's scheduling stays out of the
//! measured time (the BFD echo idea).
//!
//! Multi-byte fields are in network byte order.
//!
//! Versions agree: the datagram is the same 76 bytes as the first version's
//! (which checks its length and `VERSION` and refuses anything else), and
//! what came since lives in what was its zero padding: each side's 16-bit
//! flags word ([`flags`]). A first-version peer leaves them zero and never
//! reads them; a zero word without [`flags::PRESENT`] therefore says "an
//! older peer", whose reflected view is unknown when it is 0 (its loader
//! wrote none: probes off, or not started yet).

/// `127.0.0.1`, wire order.
pub const SRC: [u8; 4] = [127, 0, 0, 1];
/// `127.0.0.2`, wire order.
pub const DST: [u8; 4] = [127, 0, 0, 2];
/// UDP source and destination port.
pub const PORT: u16 = 0x6f76;
/// "OVLB".
pub const MAGIC: u32 = 0x4f56_4c42;
pub const VERSION: u8 = 1;
/// A probe on its way out.
pub const PROBE: u8 = 1;
/// A probe reflected by the far gateway.
pub const ANSWER: u8 = 2;

/// Header lengths before the payload.
pub const IPV4_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;

/// The flags words, `sender_flags` and `reflector_flags`. Unknown bits are
/// ignored, so a newer peer may set more.
pub mod flags {
    /// Written by every sender that knows the flags: the word means what it
    /// says. Without it (an older peer), every flag is unknown.
    pub const PRESENT: u16 = 1 << 15;
    /// The view beside the word is one: the gateway's loader has worked it
    /// out. Without it the view is unknown and vetoes nothing.
    pub const VIEW_KNOWN: u16 = 1 << 0;
    /// The gateway is draining (about to stop carrying traffic).
    pub const DRAINING: u16 = 1 << 1;
    /// The gateway's LAN device is down or missing.
    pub const LAN_DOWN: u16 = 1 << 2;

    /// The flags a gateway tells about itself, by name, for logs and status.
    pub const NAMED: &[(u16, &str)] = &[(DRAINING, "draining"), (LAN_DOWN, "lan_down")];

    /// The far gateway's flags that take this gateway's announcement down
    /// with it: what a router sends into this pair would reach a far end
    /// that is leaving, or cannot deliver it.
    pub const COUPLED: u16 = DRAINING | LAN_DOWN;

    /// The word a gateway's loader tells the far gateway of its pair: its
    /// view is known; it drains (withdrawn on purpose: a maintenance file,
    /// a stop); its LAN device is down or missing.
    #[must_use]
    pub const fn own(draining: bool, lan_down: bool) -> u16 {
        let mut word = VIEW_KNOWN;
        if draining {
            word |= DRAINING;
        }
        if lan_down {
            word |= LAN_DOWN;
        }
        word
    }
}

/// What this gateway tells the far gateway about itself: its view of the
/// tunnels and its flags, the value of `PROBE_VIEW` (all zero until the
/// loader writes it: an unknown view).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalView {
    /// Bit k: tunnel k usable, as far as this gateway knows by itself.
    pub view: u64,
    /// `flags::*`, [`flags::PRESENT`] aside (the programs add it).
    pub flags: u16,
    pub pad: [u8; 6],
}

const _: () = assert!(size_of::<LocalView>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C) with integer fields and explicit padding (the size
    // assertion above would catch any other).
    unsafe impl aya::Pod for super::LocalView {}
}

/// The UDP payload of a probe or an answer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Payload {
    pub magic: u32,
    pub version: u8,
    /// [`PROBE`] or [`ANSWER`].
    pub kind: u8,
    /// The sender's tunnel id: an answer must come back on the same tunnel.
    pub tunnel: u16,
    pub seq: u32,
    /// The sender's `flags::*` (zero from an older peer).
    pub sender_flags: u16,
    /// The reflector's, written in when it reflects (zero from an older
    /// peer, which leaves them as they came).
    pub reflector_flags: u16,
    /// The sender's `CLOCK_MONOTONIC` when it sent the probe, ns.
    pub sent_ns: u64,
    /// The far gateway's `CLOCK_MONOTONIC` when it reflected it, ns (0 in a
    /// probe). Only differences between tunnels mean anything: the two
    /// clocks are unrelated.
    pub reflected_ns: u64,
    /// Tunnels the sender can use, as far as it knows by itself (bit k:
    /// tunnel k): how a one-sided failure reaches the far gateway.
    pub sender_view: u64,
    /// The same of the far gateway, written in when it reflects.
    pub reflector_view: u64,
}

pub const PAYLOAD_LEN: usize = size_of::<Payload>();
const _: () = assert!(PAYLOAD_LEN == 48);
/// The whole datagram.
pub const PACKET_LEN: usize = IPV4_HLEN + UDP_HLEN + PAYLOAD_LEN;

/// What a tunnel program hands up to the loader, through `PROBE_EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// [`PROBE`]: the far gateway's probe was reflected (its view learnt);
    /// [`ANSWER`]: an answer to one of ours arrived.
    pub kind: u32,
    /// The tunnel it arrived on.
    pub tunnel: u32,
    /// The payload as it arrived (host order is the reader's job).
    pub payload: Payload,
    /// This gateway's `CLOCK_MONOTONIC` at arrival, ns.
    pub received_ns: u64,
}

const _: () = assert!(size_of::<Event>() == 64);

/// What the far gateway said about itself in one probe or answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Said {
    /// Its view of the tunnels (bit k: tunnel k usable); `None`: unknown.
    pub view: Option<u64>,
    /// Its `flags::*` beyond `PRESENT` and `VIEW_KNOWN` (0 from an older peer).
    pub flags: u16,
    /// When it said so, by its own clock (`CLOCK_MONOTONIC`, ns): views
    /// heard on different tunnels are ordered by it.
    pub far_ns: u64,
}

impl Said {
    /// The flags of [`flags::COUPLED`] it raises: nonzero, and a gateway
    /// with an announcement withdraws it.
    #[must_use]
    pub fn coupled(&self) -> u16 {
        self.flags & flags::COUPLED
    }
}

/// What the far gateway says now: of the words heard on its tunnels (the
/// caller passes those still fresh), the one it said last by its own clock.
/// A word heard late on a slow tunnel does not undo a newer one.
#[must_use]
pub fn newest(words: impl IntoIterator<Item = Said>) -> Option<Said> {
    words.into_iter().max_by_key(|w| w.far_ns)
}

impl Payload {
    /// A probe, in wire order, carrying our `view` and `flags::*`.
    #[must_use]
    pub fn probe(tunnel: u16, seq: u32, sent_ns: u64, view: u64, flags: u16) -> Self {
        Self {
            magic: MAGIC.to_be(),
            version: VERSION,
            kind: PROBE,
            tunnel: tunnel.to_be(),
            seq: seq.to_be(),
            sender_flags: (flags | flags::PRESENT).to_be(),
            reflector_flags: 0,
            sent_ns: sent_ns.to_be(),
            reflected_ns: 0,
            sender_view: view.to_be(),
            reflector_view: 0,
        }
    }

    /// What the far gateway said in this payload (host order): as the
    /// sender of a probe, or as the reflector of an answer. An older peer's
    /// probe carries its loader's view (it probes only when its loader
    /// runs); its answer carries whatever its `PROBE_VIEW` held, 0 when its
    /// loader never wrote one, which is no view at all.
    #[must_use]
    pub fn said(&self) -> Option<Said> {
        let (view, word, far_ns) = match self.kind {
            PROBE => (self.sender_view, self.sender_flags, self.sent_ns),
            ANSWER => (self.reflector_view, self.reflector_flags, self.reflected_ns),
            _ => return None,
        };
        let known = if word & flags::PRESENT != 0 {
            word & flags::VIEW_KNOWN != 0
        } else {
            self.kind == PROBE || view != 0
        };
        let told = if word & flags::PRESENT != 0 {
            word & !(flags::PRESENT | flags::VIEW_KNOWN)
        } else {
            0
        };
        Some(Said {
            view: known.then_some(view),
            flags: told,
            far_ns,
        })
    }

    /// The same in host order (or back: the swap is its own inverse).
    #[must_use]
    pub fn swapped(self) -> Self {
        Self {
            magic: u32::from_be(self.magic),
            version: self.version,
            kind: self.kind,
            tunnel: u16::from_be(self.tunnel),
            seq: u32::from_be(self.seq),
            sender_flags: u16::from_be(self.sender_flags),
            reflector_flags: u16::from_be(self.reflector_flags),
            sent_ns: u64::from_be(self.sent_ns),
            reflected_ns: u64::from_be(self.reflected_ns),
            sender_view: u64::from_be(self.sender_view),
            reflector_view: u64::from_be(self.reflector_view),
        }
    }

    /// The payload's bytes, to put on the wire.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; PAYLOAD_LEN] {
        let mut b = [0u8; PAYLOAD_LEN];
        b[0..4].copy_from_slice(&self.magic.to_ne_bytes());
        b[4] = self.version;
        b[5] = self.kind;
        b[6..8].copy_from_slice(&self.tunnel.to_ne_bytes());
        b[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        b[12..14].copy_from_slice(&self.sender_flags.to_ne_bytes());
        b[14..16].copy_from_slice(&self.reflector_flags.to_ne_bytes());
        b[16..24].copy_from_slice(&self.sent_ns.to_ne_bytes());
        b[24..32].copy_from_slice(&self.reflected_ns.to_ne_bytes());
        b[32..40].copy_from_slice(&self.sender_view.to_ne_bytes());
        b[40..48].copy_from_slice(&self.reflector_view.to_ne_bytes());
        b
    }
}

/// The whole IPv4/UDP probe datagram, header checksum filled in and UDP
/// checksum 0 (none, as IPv4 allows).
#[must_use]
pub fn datagram(payload: &Payload) -> [u8; PACKET_LEN] {
    let mut d = [0u8; PACKET_LEN];
    let total = u16::try_from(PACKET_LEN).unwrap_or(u16::MAX);
    d[0] = 0x45;
    d[2..4].copy_from_slice(&total.to_be_bytes());
    d[6] = 0x40; // DF: never fragmented
    d[8] = 64; // TTL
    d[9] = 17; // UDP
    d[12..16].copy_from_slice(&SRC);
    d[16..20].copy_from_slice(&DST);
    let check = crate::checksum::fold(
        d[..IPV4_HLEN]
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum(),
    );
    d[10..12].copy_from_slice(&(!check).to_be_bytes());
    let udp_len = u16::try_from(UDP_HLEN + PAYLOAD_LEN).unwrap_or(u16::MAX);
    d[20..22].copy_from_slice(&PORT.to_be_bytes());
    d[22..24].copy_from_slice(&PORT.to_be_bytes());
    d[24..26].copy_from_slice(&udp_len.to_be_bytes());
    d[IPV4_HLEN + UDP_HLEN..].copy_from_slice(&payload.to_bytes());
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_datagram_is_valid_ipv4_udp() {
        let p = Payload::probe(3, 7, 1_000_000, 0b1011, flags::LAN_DOWN | flags::VIEW_KNOWN);
        let d = datagram(&p);
        // The header sums to 0xffff with its checksum.
        let sum: u32 = d[..IPV4_HLEN]
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        assert_eq!(crate::checksum::fold(sum), 0xffff);
        assert_eq!(&d[12..20], &[127, 0, 0, 1, 127, 0, 0, 2]);
        assert_eq!(u16::from_be_bytes([d[22], d[23]]), PORT);
        // The payload reads back.
        let back = &d[IPV4_HLEN + UDP_HLEN..];
        assert_eq!(u32::from_be_bytes(back[0..4].try_into().unwrap()), MAGIC);
        assert_eq!(back[5], PROBE);
        assert_eq!(u16::from_be_bytes([back[6], back[7]]), 3);
        assert_eq!(u64::from_be_bytes(back[32..40].try_into().unwrap()), 0b1011);
        assert_eq!(
            u16::from_be_bytes([back[12], back[13]]),
            flags::PRESENT | flags::LAN_DOWN | flags::VIEW_KNOWN
        );
        assert_eq!(&back[14..16], &[0, 0], "the reflector's word is its own");
        let host = p.swapped();
        assert_eq!((host.tunnel, host.seq, host.sent_ns), (3, 7, 1_000_000));
        assert_eq!(
            host.said(),
            Some(Said {
                view: Some(0b1011),
                flags: flags::LAN_DOWN,
                far_ns: 1_000_000
            })
        );
    }

    /// A first-version payload, host order: the flags words were padding.
    fn first_version(kind: u8, sender_view: u64, reflector_view: u64) -> Payload {
        Payload {
            magic: MAGIC,
            version: VERSION,
            kind,
            tunnel: 1,
            seq: 9,
            sender_flags: 0,
            reflector_flags: 0,
            sent_ns: 100,
            reflected_ns: 200,
            sender_view,
            reflector_view,
        }
    }

    #[test]
    fn an_older_peers_word_is_understood() {
        // Its probes carry its loader's view, whatever it is (0: it can use
        // no tunnel).
        assert_eq!(
            first_version(PROBE, 0, 0).said(),
            Some(Said {
                view: Some(0),
                flags: 0,
                far_ns: 100
            })
        );
        // Its answers carry its PROBE_VIEW: 0 means its loader wrote none.
        assert_eq!(first_version(ANSWER, 0b11, 0).said().unwrap().view, None);
        assert_eq!(
            first_version(ANSWER, 0, 0b10).said(),
            Some(Said {
                view: Some(0b10),
                flags: 0,
                far_ns: 200
            })
        );
        // Our probe reflected by it: our own flags come back in the
        // sender's word, the reflector's stays zero, so nothing of ours is
        // taken for its.
        let mut echoed = Payload::probe(1, 9, 100, 0b11, flags::LAN_DOWN).swapped();
        echoed.kind = ANSWER;
        echoed.reflected_ns = 200;
        assert_eq!(
            echoed.said(),
            Some(Said {
                view: None,
                flags: 0,
                far_ns: 200
            })
        );
    }

    /// Gateway A1's loader, as gateway B1 hears it in A1's probes and in
    /// A1's answers to B1's: the flags that make B1 withdraw, the newest
    /// word winning whichever tunnel brought it, and an older peer never
    /// taken to raise any.
    #[test]
    fn the_pair_is_coupled_through_the_flags_words() {
        assert_eq!(flags::own(false, false), flags::VIEW_KNOWN);
        // A1 drains: its probe on tunnel 0 says so.
        let probe = Payload::probe(0, 1, 1_000, 0b11, flags::own(true, false)).swapped();
        let draining = probe.said().unwrap();
        assert_eq!(draining.coupled(), flags::DRAINING);
        // A1's LAN goes down: its tunnel program writes it into its answer
        // to B1's probe on tunnel 1 (the reflector's word).
        let mut answer = Payload::probe(1, 5, 500, 0b11, flags::own(false, false)).swapped();
        answer.kind = ANSWER;
        answer.reflected_ns = 2_000;
        answer.reflector_view = 0b11;
        answer.reflector_flags = flags::PRESENT | flags::own(false, true);
        let lan_down = answer.said().unwrap();
        assert_eq!(lan_down.coupled(), flags::LAN_DOWN);
        assert_eq!(lan_down.view, Some(0b11), "the view is beside it");
        // B1's own word, reflected back to it, is never taken for A1's.
        let mut mine = Payload::probe(1, 6, 600, 0b11, flags::own(true, true)).swapped();
        mine.kind = ANSWER;
        mine.reflected_ns = 2_100;
        mine.reflector_flags = flags::PRESENT | flags::own(false, false);
        assert_eq!(mine.said().unwrap().coupled(), 0);
        // The newest by A1's clock wins, in whatever order they arrived.
        assert_eq!(newest([lan_down, draining]), Some(lan_down));
        assert_eq!(newest([draining, lan_down]), Some(lan_down));
        // A1 back to health: a newer word without flags lifts them.
        let well = Payload::probe(0, 2, 3_000, 0b11, flags::own(false, false)).swapped();
        let well = well.said().unwrap();
        assert_eq!(newest([draining, lan_down, well]).unwrap().coupled(), 0);
        assert_eq!(newest([]), None, "nothing heard: nothing raised");
        // An older peer (no PRESENT) raises nothing, whatever its padding
        // held; unknown bits of a newer one do not couple either.
        let mut old = first_version(PROBE, 0b11, 0);
        old.sender_flags = flags::DRAINING | flags::LAN_DOWN;
        assert_eq!(old.said().unwrap().coupled(), 0);
        let mut newer = first_version(PROBE, 0b11, 0);
        newer.sender_flags = flags::PRESENT | flags::VIEW_KNOWN | (1 << 9);
        assert_eq!(newer.said().unwrap().coupled(), 0);
    }

    #[test]
    fn a_newer_peer_says_unknown_and_its_flags() {
        let mut p = first_version(ANSWER, 0, 0);
        p.reflector_flags = flags::PRESENT;
        assert_eq!(p.said().unwrap().view, None, "no view written yet");
        p.reflector_flags = flags::PRESENT | flags::VIEW_KNOWN | flags::DRAINING | (1 << 9);
        let said = p.said().unwrap();
        assert_eq!(said.view, Some(0), "a known empty view");
        assert_eq!(said.flags & flags::DRAINING, flags::DRAINING);
        // Bits it does not know are carried, and ignored by whoever reads
        // only the named ones.
        assert_eq!(said.flags & (1 << 9), 1 << 9);
    }
}
