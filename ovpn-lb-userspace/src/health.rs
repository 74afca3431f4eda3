//! Tunnel health: which tunnels are in the rotation, from link state and, where
//! configured, `OpenVPN`'s own state. Pure logic; the inputs come from `netlink`
//! and `management`, the output is a weight per tunnel for the schedule.

use std::time::{Duration, Instant};

/// What `OpenVPN`'s management interface last said, if anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Management {
    /// No management address configured: link state alone decides.
    None,
    /// Connected to the management interface, which reports this state.
    State(String),
    /// Configured but not reachable now: link state alone decides.
    Lost,
}

impl Management {
    /// `Some(healthy)` when the management interface has an opinion.
    fn verdict(&self) -> Option<bool> {
        match self {
            Management::State(s) => Some(s == "CONNECTED"),
            Management::None | Management::Lost => None,
        }
    }
}

/// Whether frames into the tunnel can be addressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextHop {
    /// A tun tunnel carries bare IP.
    NotNeeded,
    /// A TAP tunnel whose far end's MAC is not known (yet).
    Unknown,
    Known,
}

#[derive(Clone, Debug)]
pub struct Tunnel {
    pub weight: u32,
    /// Current device ifindex; 0 while the device does not exist.
    pub ifindex: u32,
    /// Administratively up with carrier (`IFF_UP` and `IFF_RUNNING`).
    pub link_up: bool,
    pub management: Management,
    pub next_hop: NextHop,
    pub in_rotation: bool,
    /// When the tunnel last became healthy, for the up-delay.
    healthy_since: Option<Instant>,
}

impl Tunnel {
    #[must_use]
    pub fn healthy(&self) -> bool {
        self.ifindex != 0
            && self.link_up
            && self.next_hop != NextHop::Unknown
            && self.management.verdict().unwrap_or(true)
    }

    /// Short state for `status` and metrics.
    #[must_use]
    pub fn state(&self) -> &'static str {
        match (self.in_rotation, self.healthy()) {
            (true, _) => "up",
            (false, true) => "joining",
            (false, false) => "down",
        }
    }
}

pub struct Health {
    pub tunnels: Vec<Tunnel>,
    up_delay: Duration,
}

impl Health {
    /// Starts with every tunnel down and no device. `needs_next_hop`: the
    /// tunnel is TAP and must know its far end's MAC to be healthy.
    #[must_use]
    pub fn new(
        weights: &[u32],
        up_delay: Duration,
        management: &[bool],
        needs_next_hop: &[bool],
    ) -> Self {
        let tunnels = weights
            .iter()
            .zip(management)
            .zip(needs_next_hop)
            .map(|((&weight, &has_management), &needs_next_hop)| Tunnel {
                weight,
                ifindex: 0,
                link_up: false,
                management: if has_management {
                    Management::Lost
                } else {
                    Management::None
                },
                next_hop: if needs_next_hop {
                    NextHop::Unknown
                } else {
                    NextHop::NotNeeded
                },
                in_rotation: false,
                healthy_since: None,
            })
            .collect();
        Self { tunnels, up_delay }
    }

    /// Tunnels healthy at start-up join at once: the up-delay guards against
    /// flapping, not against a loader restart.
    pub fn admit_healthy_now(&mut self) {
        for t in &mut self.tunnels {
            t.in_rotation = t.healthy();
        }
    }

    pub fn set_link(&mut self, k: usize, ifindex: u32, link_up: bool, now: Instant) {
        let t = &mut self.tunnels[k];
        t.ifindex = ifindex;
        t.link_up = link_up;
        Self::note(t, now);
    }

    pub fn set_next_hop(&mut self, k: usize, known: bool, now: Instant) {
        let t = &mut self.tunnels[k];
        if t.next_hop != NextHop::NotNeeded {
            t.next_hop = if known {
                NextHop::Known
            } else {
                NextHop::Unknown
            };
        }
        Self::note(t, now);
    }

    pub fn set_management(&mut self, k: usize, management: Management, now: Instant) {
        let t = &mut self.tunnels[k];
        t.management = management;
        Self::note(t, now);
    }

    fn note(t: &mut Tunnel, now: Instant) {
        if t.healthy() {
            t.healthy_since.get_or_insert(now);
        } else {
            t.healthy_since = None;
            t.in_rotation = false;
        }
    }

    /// Admits tunnels whose up-delay has passed.
    pub fn advance(&mut self, now: Instant) {
        for t in &mut self.tunnels {
            if let Some(since) = t.healthy_since
                && !t.in_rotation
                && now.duration_since(since) >= self.up_delay
            {
                t.in_rotation = true;
            }
        }
    }

    /// When the next waiting tunnel may join.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        self.tunnels
            .iter()
            .filter(|t| !t.in_rotation)
            .filter_map(|t| t.healthy_since.map(|s| s + self.up_delay))
            .min()
    }

    /// Weight per tunnel for the schedule: 0 for tunnels out of the rotation.
    #[must_use]
    pub fn weights(&self) -> Vec<u32> {
        self.tunnels
            .iter()
            .map(|t| if t.in_rotation { t.weight } else { 0 })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_secs(2);

    fn two(now: Instant) -> Health {
        let mut h = Health::new(&[1, 3], DELAY, &[false, true], &[false, false]);
        h.set_link(0, 10, true, now);
        h.set_link(1, 11, true, now);
        h
    }

    #[test]
    fn healthy_at_start_join_at_once() {
        let now = Instant::now();
        let mut h = two(now);
        h.admit_healthy_now();
        // Tunnel 1 has a management address not reached yet: link state decides.
        assert_eq!(h.weights(), [1, 3]);
    }

    #[test]
    fn down_leaves_at_once_and_rejoins_after_the_delay() {
        let t0 = Instant::now();
        let mut h = two(t0);
        h.admit_healthy_now();
        h.set_link(0, 10, false, t0);
        assert_eq!(h.weights(), [0, 3]);
        assert_eq!(h.tunnels[0].state(), "down");
        let t1 = t0 + Duration::from_secs(5);
        h.set_link(0, 10, true, t1);
        h.advance(t1);
        assert_eq!(h.weights(), [0, 3], "must wait for the up-delay");
        assert_eq!(h.tunnels[0].state(), "joining");
        assert_eq!(h.next_deadline(), Some(t1 + DELAY));
        h.advance(t1 + DELAY);
        assert_eq!(h.weights(), [1, 3]);
        assert_eq!(h.next_deadline(), None);
    }

    #[test]
    fn flapping_restarts_the_delay() {
        let t0 = Instant::now();
        let mut h = two(t0);
        h.admit_healthy_now();
        h.set_link(0, 0, false, t0);
        h.set_link(0, 12, true, t0 + Duration::from_secs(1));
        h.set_link(0, 12, false, t0 + Duration::from_secs(2));
        h.set_link(0, 12, true, t0 + Duration::from_secs(3));
        h.advance(t0 + Duration::from_millis(4500));
        assert_eq!(h.weights()[0], 0);
        h.advance(t0 + Duration::from_secs(5));
        assert_eq!(h.weights()[0], 1);
        assert_eq!(
            h.tunnels[0].ifindex, 12,
            "a recreated device's new ifindex is kept"
        );
    }

    #[test]
    fn management_state_overrides_a_live_link() {
        let t0 = Instant::now();
        let mut h = two(t0);
        h.admit_healthy_now();
        h.set_management(1, Management::State("RECONNECTING".into()), t0);
        assert_eq!(h.weights(), [1, 0]);
        h.set_management(1, Management::State("CONNECTED".into()), t0);
        h.advance(t0 + DELAY);
        assert_eq!(h.weights(), [1, 3]);
        // Losing the management connection falls back to the link, which is up.
        h.set_management(1, Management::Lost, t0 + DELAY);
        assert_eq!(h.weights(), [1, 3]);
        h.set_management(1, Management::State("EXITING".into()), t0 + DELAY);
        assert_eq!(h.weights(), [1, 0]);
    }

    #[test]
    fn missing_device_is_down() {
        let t0 = Instant::now();
        let mut h = Health::new(&[1], DELAY, &[false], &[false]);
        h.set_link(0, 0, true, t0);
        h.admit_healthy_now();
        assert_eq!(h.weights(), [0]);
    }

    #[test]
    fn tap_tunnel_waits_for_its_next_hop() {
        let t0 = Instant::now();
        let mut h = Health::new(&[1], DELAY, &[false], &[true]);
        h.set_link(0, 7, true, t0);
        h.admit_healthy_now();
        assert_eq!(h.weights(), [0], "no far-end MAC yet");
        h.set_next_hop(0, true, t0);
        h.advance(t0 + DELAY);
        assert_eq!(h.weights(), [1]);
        h.set_next_hop(0, false, t0 + DELAY);
        assert_eq!(h.weights(), [0], "neighbour failed: out at once");
    }
}
