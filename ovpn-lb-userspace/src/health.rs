//! One tunnel's health: whether it may carry traffic, from its device's
//! link state, OpenVPN's own state (where a management interface is
//! configured), its far end's MAC (TAP), and the in-band probes. Pure logic:
//! the inputs come from netlink, the management client and the probes; the
//! output is whether the tunnel is in the rotation, and why not.

use std::time::{Duration, Instant, SystemTime};

/// What OpenVPN's management interface last said, if anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Management {
    /// No management interface configured: link state alone decides.
    None,
    /// Connected to the management interface, which reports this state.
    State(String),
    /// Configured but not reachable now: link state alone decides.
    Lost,
}

/// Why a tunnel is out of the rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The device is missing, down, or without carrier.
    Link,
    /// OpenVPN reports a state other than CONNECTED.
    Openvpn,
    /// A TAP tunnel's far end has no known MAC.
    NextHop,
    /// The far end stopped answering probes, or says it lost the tunnel.
    Probe,
}

impl Cause {
    pub const ALL: [Cause; 4] = [Cause::Link, Cause::Openvpn, Cause::NextHop, Cause::Probe];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Cause::Link => "link",
            Cause::Openvpn => "openvpn",
            Cause::NextHop => "next_hop",
            Cause::Probe => "probe",
        }
    }
}

/// A tunnel joining or leaving the rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub at: SystemTime,
    pub joined: bool,
    /// Why it left (`None` when it joined).
    pub cause: Option<Cause>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// The device exists, is up and has carrier.
    pub link_up: bool,
    pub management: Management,
    /// TAP only: whether the far end's MAC is known; `None` for tun.
    pub next_hop_known: Option<bool>,
    /// Probes' verdict; `None` while the tunnel is not probed.
    pub probe_alive: Option<bool>,
    /// The far gateway says it cannot use this tunnel.
    pub peer_says_down: bool,
    pub in_rotation: bool,
    /// Times the tunnel left the rotation, by cause (in `Cause::ALL` order).
    pub departures: [u64; 4],
    /// When the tunnel last became healthy, for the up-delay.
    healthy_since: Option<Instant>,
    pub last_change: Option<Change>,
}

impl Health {
    /// A tunnel with no device yet, out of the rotation.
    #[must_use]
    pub fn new(has_management: bool, needs_next_hop: bool) -> Self {
        Self {
            link_up: false,
            management: if has_management {
                Management::Lost
            } else {
                Management::None
            },
            next_hop_known: needs_next_hop.then_some(false),
            probe_alive: None,
            peer_says_down: false,
            in_rotation: false,
            departures: [0; 4],
            healthy_since: None,
            last_change: None,
        }
    }

    /// The first reason the tunnel cannot carry traffic, if any.
    #[must_use]
    pub fn fault(&self) -> Option<Cause> {
        self.local_fault()
            .or(self.peer_says_down.then_some(Cause::Probe))
    }

    /// The same, from what this gateway sees by itself: what it tells the
    /// far gateway (telling it what it heard from it would never let a
    /// tunnel come back).
    #[must_use]
    pub fn local_fault(&self) -> Option<Cause> {
        if !self.link_up {
            return Some(Cause::Link);
        }
        if let Management::State(s) = &self.management
            && s != "CONNECTED"
        {
            return Some(Cause::Openvpn);
        }
        if self.next_hop_known == Some(false) {
            return Some(Cause::NextHop);
        }
        if self.probe_alive == Some(false) {
            return Some(Cause::Probe);
        }
        None
    }

    #[must_use]
    pub fn healthy(&self) -> bool {
        self.fault().is_none()
    }

    /// `up` (in the rotation), `joining` (healthy, waiting out the up-delay)
    /// or `down`.
    #[must_use]
    pub fn state(&self) -> &'static str {
        match (self.in_rotation, self.healthy()) {
            (true, _) => "up",
            (false, true) => "joining",
            (false, false) => "down",
        }
    }

    pub fn set_link(&mut self, up: bool, now: Instant) {
        self.link_up = up;
        self.note(now);
    }

    pub fn set_management(&mut self, m: Management, now: Instant) {
        self.management = m;
        self.note(now);
    }

    pub fn set_next_hop(&mut self, known: bool, now: Instant) {
        if self.next_hop_known.is_some() {
            self.next_hop_known = Some(known);
        }
        self.note(now);
    }

    pub fn set_probe(&mut self, alive: Option<bool>, peer_says_down: bool, now: Instant) {
        if (alive, peer_says_down) != (self.probe_alive, self.peer_says_down) {
            self.probe_alive = alive;
            self.peer_says_down = peer_says_down;
            self.note(now);
        }
    }

    /// A failure takes the tunnel out at once; recovery starts the up-delay.
    fn note(&mut self, now: Instant) {
        match self.fault() {
            None => {
                self.healthy_since.get_or_insert(now);
            }
            Some(cause) => {
                self.healthy_since = None;
                if self.in_rotation {
                    self.in_rotation = false;
                    if let Some(i) = Cause::ALL.iter().position(|&c| c == cause) {
                        self.departures[i] += 1;
                    }
                    self.last_change = Some(Change {
                        at: SystemTime::now(),
                        joined: false,
                        cause: Some(cause),
                    });
                }
            }
        }
    }

    /// Healthy at start-up: join at once. The up-delay guards against
    /// flapping, not against a loader restart.
    pub fn admit_now(&mut self) {
        if self.healthy() && !self.in_rotation {
            self.join();
        }
    }

    /// Joins if healthy for `up_delay`; true if it joined.
    pub fn advance(&mut self, now: Instant, up_delay: Duration) -> bool {
        match self.healthy_since {
            Some(since) if !self.in_rotation && now.duration_since(since) >= up_delay => {
                self.join();
                true
            }
            _ => false,
        }
    }

    fn join(&mut self) {
        self.in_rotation = true;
        self.last_change = Some(Change {
            at: SystemTime::now(),
            joined: true,
            cause: None,
        });
    }

    /// When this tunnel may join, if it is waiting to.
    #[must_use]
    pub fn deadline(&self, up_delay: Duration) -> Option<Instant> {
        self.healthy_since
            .filter(|_| !self.in_rotation)
            .map(|s| s + up_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_secs(2);

    fn up(now: Instant) -> Health {
        let mut h = Health::new(false, false);
        h.set_link(true, now);
        h.admit_now();
        h
    }

    #[test]
    fn healthy_at_start_joins_at_once() {
        let now = Instant::now();
        let h = up(now);
        assert!(h.in_rotation);
        assert_eq!(h.state(), "up");
        let mut managed = Health::new(true, false);
        managed.set_link(true, now);
        managed.admit_now();
        assert!(
            managed.in_rotation,
            "management not reached yet: link decides"
        );
    }

    #[test]
    fn down_leaves_at_once_with_its_cause_and_rejoins_after_the_delay() {
        let t0 = Instant::now();
        let mut h = up(t0);
        h.set_link(false, t0);
        assert!(!h.in_rotation);
        assert_eq!(h.state(), "down");
        assert_eq!(h.last_change.unwrap().cause, Some(Cause::Link));
        let t1 = t0 + Duration::from_secs(5);
        h.set_link(true, t1);
        assert!(!h.advance(t1, DELAY), "must wait for the up-delay");
        assert_eq!(h.state(), "joining");
        assert_eq!(h.deadline(DELAY), Some(t1 + DELAY));
        assert!(h.advance(t1 + DELAY, DELAY));
        assert!(h.in_rotation);
        assert!(h.last_change.unwrap().joined);
        assert_eq!(h.deadline(DELAY), None);
    }

    #[test]
    fn flapping_restarts_the_delay() {
        let t0 = Instant::now();
        let mut h = up(t0);
        h.set_link(false, t0);
        h.set_link(true, t0 + Duration::from_secs(1));
        h.set_link(false, t0 + Duration::from_secs(2));
        h.set_link(true, t0 + Duration::from_secs(3));
        assert!(!h.advance(t0 + Duration::from_millis(4500), DELAY));
        assert!(h.advance(t0 + Duration::from_secs(5), DELAY));
    }

    #[test]
    fn management_state_overrides_a_live_link() {
        let t0 = Instant::now();
        let mut h = Health::new(true, false);
        h.set_link(true, t0);
        h.admit_now();
        h.set_management(Management::State("RECONNECTING".into()), t0);
        assert_eq!(h.last_change.unwrap().cause, Some(Cause::Openvpn));
        h.set_management(Management::State("CONNECTED".into()), t0);
        assert!(h.advance(t0 + DELAY, DELAY));
        // Losing the management connection falls back to the link, which is up.
        h.set_management(Management::Lost, t0 + DELAY);
        assert!(h.in_rotation);
        h.set_management(Management::State("EXITING".into()), t0 + DELAY);
        assert!(!h.in_rotation);
    }

    #[test]
    fn the_far_gateways_word_vetoes_but_is_not_passed_back() {
        let t0 = Instant::now();
        let mut h = up(t0);
        h.set_probe(Some(true), true, t0);
        assert!(!h.in_rotation);
        assert_eq!(h.fault(), Some(Cause::Probe));
        assert_eq!(h.local_fault(), None, "we still announce it usable");
        h.set_probe(Some(true), false, t0);
        assert!(h.advance(t0 + DELAY, DELAY));
    }

    #[test]
    fn tap_tunnel_waits_for_its_next_hop_and_probes_can_veto() {
        let t0 = Instant::now();
        let mut h = Health::new(false, true);
        h.set_link(true, t0);
        h.admit_now();
        assert_eq!(h.fault(), Some(Cause::NextHop));
        h.set_next_hop(true, t0);
        assert!(h.advance(t0 + DELAY, DELAY));
        h.set_probe(Some(false), false, t0 + DELAY);
        assert_eq!(h.last_change.unwrap().cause, Some(Cause::Probe));
        assert_eq!(h.departures, [0, 0, 0, 1]);
        h.set_probe(Some(true), false, t0 + DELAY);
        h.set_next_hop(false, t0 + DELAY);
        assert_eq!(h.fault(), Some(Cause::NextHop));
    }
}
