//! In-band probes on a tunnel's ingress (the wire format and why it looks
//! as it does: `ovpn_lb_common::probe`).
//!
//! A probe from the far gateway is answered right here, back into the
//! tunnel it came from, with our receive time and view written in: the far
//! loader measures the path and both rings, not our scheduling. An answer to
//! one of our probes is reported to the loader and goes no further. Both are
//! reported through `PROBE_EVENTS`, within a budget per tunnel and kind
//! (`PROBE_BUDGET`), so a flood on one tunnel cannot crowd out the others'
//! reports; neither ever reaches the kernel's stack or a LAN host.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use ovpn_lb_common::{
    Reason,
    probe::{self, Event, Payload, flags},
};

use crate::{
    hook::Hook,
    layout::{ETH_HLEN, EthHdr, IPPROTO_UDP, Ipv4Hdr, UdpHdr},
    maps::{PROBE_BUDGET, PROBE_EVENTS, PROBE_VIEW},
    packet::Packet,
};

/// What a probe on a tunnel's ingress became.
pub enum Handled {
    /// Answered: the caller sends it back out of the device it came in by.
    Reflected,
    /// An answer to us, reported: the caller consumes it.
    Reported,
}

/// Probe destination, as loaded from the wire.
const DST: u32 = u32::from_ne_bytes(probe::DST);
const SRC: u32 = u32::from_ne_bytes(probe::SRC);

/// The report budget per tunnel and kind: one report per this long on
/// average, twice the rate of probes at the shortest interval (10 ms)...
const REPORT_EVERY_NS: u64 = 5_000_000;
/// ...and this many at once (a view change is announced at once, beside
/// the regular probe).
const REPORT_BURST: u64 = 4;

/// Whether a report of `kind` on tunnel `id` fits the budget now (a
/// generic cell rate: the slot's time runs ahead of the clock by one
/// interval per report, up to the burst). Two CPUs may both take the last
/// place: the budget is a bound, not an exact count.
#[inline(always)]
fn within_budget(id: u32, kind: u8, now: u64) -> bool {
    let Some(slots) = PROBE_BUDGET.get_ptr_mut(id) else {
        return false;
    };
    let i = usize::from(kind == probe::ANSWER);
    // SAFETY: the pointer is into this tunnel's map value, valid for the
    // program's run; racing CPUs at worst each take a report.
    let slot = unsafe { &mut (*slots)[i] };
    let due = if *slot > now { *slot } else { now };
    if due - now > (REPORT_BURST - 1) * REPORT_EVERY_NS {
        return false;
    }
    *slot = due + REPORT_EVERY_NS;
    true
}

/// Whether the IPv4 destination `dst` marks a probe: the one check every
/// packet on a tunnel pays.
#[inline(always)]
pub fn is_probe_address(dst: u32) -> bool {
    dst == DST
}

/// Handles the probe-addressed IPv4 packet at `l3` on tunnel `id`.
#[inline(always)]
pub fn handle<C: Hook>(pkt: &Packet<C>, l3: usize, id: u32) -> Result<Handled, Reason> {
    let ip = pkt.header::<Ipv4Hdr>(l3).ok_or(Reason::TruncatedIp)?;
    if ip.vihl() != 0x45
        || ip.proto() != IPPROTO_UDP
        || usize::from(ip.tot_len()) != probe::PACKET_LEN
        || ip.src() != SRC
    {
        return Err(Reason::BadProbe);
    }
    let udp = pkt
        .header::<UdpHdr>(l3 + probe::IPV4_HLEN)
        .ok_or(Reason::BadProbe)?;
    if udp.dst_port() != probe::PORT {
        return Err(Reason::BadProbe);
    }
    let body = pkt
        .header::<Payload>(l3 + probe::IPV4_HLEN + probe::UDP_HLEN)
        .ok_or(Reason::BadProbe)?;
    if body.magic() != probe::MAGIC || body.version() != probe::VERSION {
        return Err(Reason::BadProbe);
    }
    // Probes and answers name their tunnel: one that crossed another is
    // refused, so a mixed-up configuration cannot pass for a live tunnel.
    if u32::from(body.tunnel()) != id {
        return Err(Reason::ProbeMisrouted);
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let kind = body.kind();
    let event = Event {
        kind: u32::from(kind),
        tunnel: id,
        payload: body.get(),
        received_ns: now,
    };
    // A full ring loses a report, not the packet: the loader counts the
    // probe as unanswered, which is the safe side. So does a report past
    // the budget.
    if within_budget(id, kind, now) {
        let _ = PROBE_EVENTS.output(event, 0);
    }
    match kind {
        probe::PROBE => {
            let ours = PROBE_VIEW.get(0).copied().unwrap_or_default();
            // Addresses stay: answers are told from probes by their kind, and
            // the header checksum stays right. The UDP checksum is 0 (none).
            body.answer(probe::ANSWER, now, ours.view, ours.flags | flags::PRESENT);
            if l3 == ETH_HLEN {
                let eth = pkt.header::<EthHdr>(0).ok_or(Reason::TruncatedEthernet)?;
                let (dst, src) = (eth.dst(), eth.src());
                eth.set_addrs(src, dst);
            }
            Ok(Handled::Reflected)
        }
        probe::ANSWER => Ok(Handled::Reported),
        _ => Err(Reason::BadProbe),
    }
}
