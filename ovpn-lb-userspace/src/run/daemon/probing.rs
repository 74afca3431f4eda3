//! The daemon's probes: starting and stopping them with each tunnel's
//! device, sending a round, reading what the far gateway says (its answers
//! and probes, each tunnel's word kept apart and ordered by the far clock),
//! and turning all that into each tunnel's health; and what this gateway
//! tells about itself (its view and flags, `PROBE_VIEW`), probes on or off.

use std::time::Instant;

use ovpn_lb_common::probe::{self as wire, Event, LocalView, Payload, flags};

use super::Daemon;
use crate::{
    announce,
    config::{Probing, TunnelKind},
    facts, health,
    probe::{
        Counters, PeerWord, far_flags,
        io::{Echo, Pinger},
        newest_said, now_ns,
    },
    tunnel::TunnelId,
};

/// `flags::*` as names, for the log and `status`.
#[must_use]
pub fn flag_names(word: u16) -> Vec<String> {
    flags::NAMED
        .iter()
        .filter(|(bit, _)| word & bit != 0)
        .map(|(_, name)| (*name).to_owned())
        .collect()
}

impl Daemon {
    /// Starts probing a tunnel that can be probed, stops one that cannot;
    /// `device_changed`: a new device, whose probing starts afresh.
    pub(super) fn follow_probes(&mut self, k: usize, device_changed: bool) {
        if self.probe.is_none() {
            return;
        }
        let ready = self.tunnels[k].probe_ready();
        let t = &mut self.tunnels[k];
        if !ready || t.spec.probing == Probing::Off {
            t.tracker.stop();
            t.echo = None;
            return;
        }
        if device_changed || !t.tracker.probing() {
            t.tracker.start(now_ns());
        }
        if let Probing::Echo(target) = t.spec.probing
            && (device_changed || t.echo.is_none())
        {
            // The old socket (bound to a device that is gone) and its reader
            // go first.
            t.echo = None;
            let id = 0x4f00 | u16::try_from(k).unwrap_or(0);
            match Pinger::open(&t.spec.device, target, id) {
                Ok(p) => {
                    let (tx, tunnel) = (self.echo_tx.clone(), t.id);
                    t.echo = Some(Echo::start(p, move |seq| {
                        tx.send((tunnel, seq, now_ns())).is_ok()
                    }));
                }
                Err(e) => log::warn!("{}: cannot ping {target}: {e}", t.label()),
            }
        }
    }

    /// Reads every tunnel device's counters: a full ring loses probes, not
    /// this evidence.
    fn read_counters(&mut self) {
        let devices = facts::device_packets().unwrap_or_default();
        let at = now_ns();
        for t in &mut self.tunnels {
            if let Some(d) = devices.get(&t.spec.device) {
                t.tracker.counters(Counters { rx: d.rx, tx: d.tx }, at);
            }
        }
    }

    /// Sends one probe into every probed tunnel. A tunnel with no socket to
    /// send its probe by has none counted: no probe left, none was lost.
    pub(super) fn probe_round(&mut self) {
        let me = self.local_word();
        for t in &mut self.tunnels {
            if !t.tracker.probing() {
                continue;
            }
            // The send time is in the probe and in the tracker: one reading.
            let at = now_ns();
            let sendable = match t.spec.probing {
                Probing::Reflected => self.sender.is_some(),
                Probing::Echo(_) => t.echo.is_some(),
                Probing::Off => false,
            };
            if !sendable {
                t.tracker.unsendable(at);
                if !std::mem::replace(&mut t.probe_unsent, true) {
                    log::warn!(
                        "{}: no socket to send its probes by; none is counted until one is",
                        t.label()
                    );
                }
                continue;
            }
            if std::mem::take(&mut t.probe_unsent) {
                log::info!("{}: probes are sent again", t.label());
            }
            // Behind traffic, a probe measures that wait, not the path (read
            // before the probe itself joins the ring).
            let behind =
                self.rings.is_some() && self.datapath.queue(t.id.raw()).is_ok_and(|q| !q.idle(at));
            let seq = t.tracker.send(at);
            if behind {
                t.tracker.queued_behind_traffic();
            }
            let sent = match (t.spec.probing, &self.sender, &t.echo) {
                (Probing::Reflected, Some(sender), _) => {
                    let peer_mac = (t.spec.kind == TunnelKind::Tap).then_some(t.peer_mac);
                    let id = u16::try_from(t.id.raw()).unwrap_or(u16::MAX);
                    let probe = Payload::probe(id, seq, at, me.view, me.flags);
                    sender.send(t.ifindex(), peer_mac, &probe)
                }
                (Probing::Echo(_), _, Some(e)) => {
                    e.pinger.send(u16::try_from(seq & 0xffff).unwrap_or(0))
                }
                _ => Ok(()),
            };
            // Refused on its way into the tunnel (a firewall, a full queue, a
            // vanishing device): sent and unanswered, which is what it is.
            if let Err(e) = sent {
                log::debug!("{}: probe not sent: {e}", t.label());
            }
        }
    }

    /// What this gateway tells the far one: the tunnels it can use as far
    /// as it knows by itself (bit k: tunnel k), and its flags.
    fn local_word(&self) -> LocalView {
        let view = self
            .tunnels
            .iter()
            .filter(|t| t.health.local_fault().is_none())
            .fold(0, |bits, t| bits | (1 << t.id.raw()));
        LocalView {
            view,
            flags: self.own_flags().word(),
            pad: [0; 6],
        }
    }

    /// Reports of the tunnel programs: answers to our probes, and the far
    /// gateway's probes they reflected. Only tunnels whose far end runs
    /// ovpn-lb take what it says: a plain peer on an echo-probed tunnel
    /// cannot speak for the far gateway.
    pub fn on_probe_events(&mut self, events: &[Event]) {
        let Some(settings) = self.probe else {
            return;
        };
        for e in events {
            let Some(t) = usize::try_from(e.tunnel)
                .ok()
                .and_then(|k| self.tunnels.get_mut(k))
            else {
                continue;
            };
            let p = e.payload.swapped();
            let heard = match u8::try_from(e.kind).unwrap_or(0) {
                wire::ANSWER => t
                    .tracker
                    .answer(p.seq, p.sent_ns, p.reflected_ns, e.received_ns),
                wire::PROBE => {
                    t.tracker.far_probe();
                    true
                }
                _ => false,
            };
            let said = p.said().filter(|_| heard);
            if let Some(said) = said.filter(|_| t.spec.probing == Probing::Reflected) {
                let before = t.peer.map_or(0, |w| w.said.flags);
                let word = PeerWord {
                    said,
                    heard_ns: e.received_ns,
                };
                PeerWord::keep_newest(&mut t.peer, word, &settings);
                let after = t.peer.map_or(0, |w| w.said.flags);
                if flag_names(before) != flag_names(after) {
                    let names = flag_names(after);
                    log::info!(
                        "{}: the far gateway says: {}",
                        t.label(),
                        if names.is_empty() {
                            "all is well".to_owned()
                        } else {
                            names.join(", ")
                        }
                    );
                }
            }
        }
    }

    /// An echo reply from a plain peer's far end.
    pub fn on_echo(&mut self, id: TunnelId, seq: u16, received_ns: u64) {
        if let Some(t) = self.tunnels.get_mut(id.index()) {
            t.tracker.echo_reply(seq, received_ns);
        }
    }

    /// Probes' verdicts into health, and the round due.
    pub(super) fn settle_probes(&mut self) {
        let Some(settings) = self.probe else {
            return;
        };
        if Instant::now() >= self.next_counters {
            self.read_counters();
            self.next_counters = Instant::now() + settings.interval / 4;
        }
        let (now, instant) = (now_ns(), Instant::now());
        let said = newest_said(
            self.tunnels.iter().filter_map(|t| t.peer.as_ref()),
            now,
            &settings,
        );
        let view = said.and_then(|s| s.view);
        let words = self
            .tunnels
            .iter()
            .filter_map(|t| Some((t.peer.as_ref()?, t.health.in_rotation)));
        self.far_flags = announce::Flags::from_word(far_flags(words, now, &settings));
        for t in &mut self.tunnels {
            let alive = t.tracker.alive(now, &settings);
            let peer_down = t.spec.probing == Probing::Reflected
                && view.is_some_and(|v| v & (1 << t.id.raw()) == 0);
            let was = t.health.fault();
            t.health.set_probe(alive, peer_down, instant);
            if t.health.fault() == Some(health::Cause::Probe) && was != Some(health::Cause::Probe) {
                log::info!(
                    "{}: {}",
                    t.label(),
                    if alive == Some(false) {
                        format!(
                            "no probe answered, and no traffic both ways, for {} ms",
                            settings.silence().as_millis()
                        )
                    } else {
                        "the far gateway cannot use it".to_owned()
                    }
                );
            }
            let kept = t.tracker.kept_by_traffic(now, &settings);
            if kept != t.kept_by_traffic {
                t.kept_by_traffic = kept;
                if kept {
                    log::info!(
                        "{}: probes lost (its ring full?); kept in: the far end's packets arrive and OpenVPN reads the ring",
                        t.label()
                    );
                } else {
                    log::info!("{}: probes answered again", t.label());
                }
            }
        }
        if instant >= self.next_probe {
            self.probe_round();
            self.next_probe = instant + settings.interval;
        }
    }

    /// Tells the datapath (and through it the far gateway's probes' answers)
    /// our view and flags when they changed, probes on or off; with probes
    /// on, the far gateway hears it at once on every tunnel that works.
    pub(super) fn announce(&mut self) {
        let me = self.local_word();
        if self.announced == Some(me) {
            return;
        }
        if let Err(e) = self.datapath.set_probe_view(&me) {
            log::debug!("writing PROBE_VIEW: {e:#}");
            return;
        }
        if self.announced.is_some() && self.probe.is_some() {
            self.probe_round();
        }
        self.announced = Some(me);
    }
}
