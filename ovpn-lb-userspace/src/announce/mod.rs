//! Whether this gateway may be sent traffic, and saying so. ovpn-lb speaks
//! no routing protocol: it keeps one marker route per remote prefix in the
//! kernel (`unreachable PREFIX proto P metric M`, carrying no traffic: the
//! LAN's packets follow ovpn-lb's own programs and rules) while it is
//! healthy, which a BGP daemon (FRR's `redistribute kernel`, BIRD) turns into
//! an announcement to the site router, and a health file for keepalived's
//! `track_file`. Several gateway pairs announcing the same prefixes are
//! spread by the router's ECMP; one that withdraws gets no new flows.
//!
//! Healthy means: at least `min_tunnels` tunnels in the rotation, the LAN
//! device up, no maintenance file, the loader not stopping, and the far
//! gateway of the pair raising no flag (it drains, or lost its LAN: traffic
//! sent through this gateway would reach a far end that cannot deliver it).
//! This gateway raises the same flags for the far one (`own_flags`).
//!
//! Pure logic here (`Announcer`: inputs in, the verdict and its reasons
//! out); `kernel` keeps the marker routes and the health file in step.

pub mod kernel;

use std::time::SystemTime;

use ovpn_lb_common::probe::flags;
use serde::{Deserialize, Serialize};

/// Why the gateway does not announce. Several may hold at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Block {
    /// Fewer tunnels in the rotation than `min_tunnels`.
    TooFewTunnels,
    /// The LAN device is missing, down or without carrier.
    LanDown,
    /// The maintenance file exists.
    Maintenance,
    /// The loader is stopping (SIGTERM/SIGINT): it drains before it exits.
    Stopping,
    /// The far gateway of the pair drains (maintenance or stopping).
    FarDraining,
    /// The far gateway of the pair lost its LAN.
    FarLanDown,
}

impl Block {
    pub const ALL: [Block; 6] = [
        Block::TooFewTunnels,
        Block::LanDown,
        Block::Maintenance,
        Block::Stopping,
        Block::FarDraining,
        Block::FarLanDown,
    ];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Block::TooFewTunnels => "too_few_tunnels",
            Block::LanDown => "lan_down",
            Block::Maintenance => "maintenance",
            Block::Stopping => "stopping",
            Block::FarDraining => "far_draining",
            Block::FarLanDown => "far_lan_down",
        }
    }
}

/// What a gateway tells the far gateway of its pair, in its probes; and
/// what it heard from it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flags {
    /// It withdraws on purpose (maintenance file, stopping).
    pub draining: bool,
    /// Its LAN device is down: it cannot deliver what it restores.
    pub lan_down: bool,
}

impl Flags {
    #[must_use]
    pub fn any(self) -> bool {
        self.draining || self.lan_down
    }

    /// The probes' flags word saying these, as this gateway tells them.
    #[must_use]
    pub fn word(self) -> u16 {
        flags::own(self.draining, self.lan_down)
    }

    /// What a flags word heard from the far gateway raises (its
    /// [`flags::COUPLED`] bits; any other is ignored).
    #[must_use]
    pub fn from_word(word: u16) -> Self {
        Self {
            draining: word & flags::DRAINING != 0,
            lan_down: word & flags::LAN_DOWN != 0,
        }
    }
}

/// Everything the verdict depends on, read fresh at each decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inputs {
    pub in_rotation: usize,
    pub lan_up: bool,
    pub maintenance: bool,
    pub stopping: bool,
    /// What the far gateway last said.
    pub far: Flags,
}

impl Inputs {
    /// What this gateway tells the far one.
    #[must_use]
    pub fn own_flags(&self) -> Flags {
        Flags {
            draining: self.maintenance || self.stopping,
            lan_down: !self.lan_up,
        }
    }
}

/// Why not announce, in [`Block::ALL`]'s order; empty: announce.
#[must_use]
pub fn blocks(inputs: &Inputs, min_tunnels: usize) -> Vec<Block> {
    let held = [
        inputs.in_rotation < min_tunnels,
        !inputs.lan_up,
        inputs.maintenance,
        inputs.stopping,
        inputs.far.draining,
        inputs.far.lan_down,
    ];
    Block::ALL
        .into_iter()
        .zip(held)
        .filter_map(|(b, h)| h.then_some(b))
        .collect()
}

/// The announcement, as decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Announcer {
    pub min_tunnels: usize,
    pub announced: bool,
    /// Why it is withdrawn (empty while announced).
    pub blocks: Vec<Block>,
    /// The last inputs, for `status`.
    pub inputs: Option<Inputs>,
    /// Times the announcement changed (both ways) since the loader started.
    pub transitions: u64,
    /// When it last changed (or the loader started).
    pub since: SystemTime,
}

impl Announcer {
    /// Withdrawn until the first decision.
    #[must_use]
    pub fn new(min_tunnels: usize) -> Self {
        Self {
            min_tunnels,
            announced: false,
            blocks: Vec::new(),
            inputs: None,
            transitions: 0,
            since: SystemTime::now(),
        }
    }

    /// Decides on `inputs`; true when the announcement changed. The first
    /// decision is no transition: it states what the start found.
    pub fn decide(&mut self, inputs: Inputs) -> bool {
        let blocks = blocks(&inputs, self.min_tunnels);
        let announced = blocks.is_empty();
        let first = self.inputs.is_none();
        self.inputs = Some(inputs);
        self.blocks = blocks;
        if announced == self.announced && !first {
            return false;
        }
        if !first {
            self.transitions += 1;
        }
        self.announced = announced;
        self.since = SystemTime::now();
        true
    }

    /// One line for the log and `status`: the verdict and why.
    #[must_use]
    pub fn explain(&self) -> String {
        explain(
            self.announced,
            &self.blocks,
            self.inputs.as_ref(),
            self.min_tunnels,
        )
    }
}

/// The verdict and its reasons in words: every condition while announced,
/// only those that fail while not.
#[must_use]
pub fn explain(
    announced: bool,
    blocks: &[Block],
    inputs: Option<&Inputs>,
    min_tunnels: usize,
) -> String {
    if inputs.is_none() {
        return format!(
            "{}: kept as found while the loader starts",
            if announced { "announced" } else { "withdrawn" }
        );
    }
    let in_rotation = inputs.map_or(0, |i| i.in_rotation);
    if announced {
        return format!(
            "announced: {in_rotation} tunnel(s) in the rotation (at least {min_tunnels}), LAN up, no maintenance file, the far gateway raises no flag"
        );
    }
    let why: Vec<String> = blocks
        .iter()
        .map(|b| match b {
            Block::TooFewTunnels => format!(
                "{in_rotation} tunnel(s) in the rotation, fewer than min_tunnels = {min_tunnels}"
            ),
            Block::LanDown => "the LAN device is down".to_owned(),
            Block::Maintenance => "the maintenance file exists".to_owned(),
            Block::Stopping => "the loader is stopping (draining)".to_owned(),
            Block::FarDraining => "the far gateway drains".to_owned(),
            Block::FarLanDown => "the far gateway lost its LAN".to_owned(),
        })
        .collect();
    if why.is_empty() {
        "withdrawn".to_owned()
    } else {
        format!("withdrawn: {}", why.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Inputs {
        Inputs {
            in_rotation: 2,
            lan_up: true,
            maintenance: false,
            stopping: false,
            far: Flags::default(),
        }
    }

    /// A change to healthy inputs, and the one reason it makes.
    type Case = (fn(&mut Inputs), Block);

    #[test]
    fn healthy_announces_and_each_condition_withdraws_on_its_own() {
        assert!(blocks(&healthy(), 1).is_empty());
        assert!(blocks(&healthy(), 2).is_empty());
        let cases: [Case; 6] = [
            (|i| i.in_rotation = 1, Block::TooFewTunnels),
            (|i| i.lan_up = false, Block::LanDown),
            (|i| i.maintenance = true, Block::Maintenance),
            (|i| i.stopping = true, Block::Stopping),
            (|i| i.far.draining = true, Block::FarDraining),
            (|i| i.far.lan_down = true, Block::FarLanDown),
        ];
        for (change, block) in cases {
            let mut i = healthy();
            change(&mut i);
            assert_eq!(blocks(&i, 2), vec![block], "{i:?}");
        }
        let all = Inputs {
            in_rotation: 0,
            lan_up: false,
            maintenance: true,
            stopping: true,
            far: Flags {
                draining: true,
                lan_down: true,
            },
        };
        assert_eq!(blocks(&all, 1), Block::ALL.to_vec());
    }

    #[test]
    fn our_flags_say_what_the_far_gateway_must_know() {
        assert_eq!(healthy().own_flags(), Flags::default());
        let mut i = healthy();
        i.maintenance = true;
        assert_eq!(
            i.own_flags(),
            Flags {
                draining: true,
                lan_down: false
            }
        );
        let mut i = healthy();
        i.stopping = true;
        i.lan_up = false;
        assert_eq!(
            i.own_flags(),
            Flags {
                draining: true,
                lan_down: true
            }
        );
        // The far gateway's flags are not passed back: that would never let
        // a pair come back.
        let mut i = healthy();
        i.far.draining = true;
        i.far.lan_down = true;
        assert!(!i.own_flags().any());
    }

    #[test]
    fn the_far_gateway_reads_our_flags_from_the_probes_word() {
        // A1 stops, then loses its LAN: B1 withdraws for each, and for
        // nothing else the word carries.
        let mut a1 = healthy();
        a1.stopping = true;
        let mut b1 = healthy();
        b1.far = Flags::from_word(a1.own_flags().word());
        assert_eq!(blocks(&b1, 1), vec![Block::FarDraining]);
        let mut a1 = healthy();
        a1.lan_up = false;
        b1.far = Flags::from_word(a1.own_flags().word());
        assert_eq!(blocks(&b1, 1), vec![Block::FarLanDown]);
        b1.far = Flags::from_word(healthy().own_flags().word() | (1 << 9));
        assert!(blocks(&b1, 1).is_empty());
    }

    #[test]
    fn transitions_count_changes_not_decisions() {
        let mut a = Announcer::new(1);
        assert!(a.decide(healthy()), "the first decision states the start");
        assert!(a.announced);
        assert_eq!(a.transitions, 0);
        assert!(!a.decide(healthy()));
        let mut far = healthy();
        far.far.lan_down = true;
        assert!(a.decide(far));
        assert!(!a.announced);
        assert_eq!(a.blocks, vec![Block::FarLanDown]);
        assert!(
            a.explain().contains("the far gateway lost its LAN"),
            "{}",
            a.explain()
        );
        assert!(!a.decide(far));
        assert!(a.decide(healthy()));
        assert_eq!(a.transitions, 2);
        assert!(a.explain().starts_with("announced: 2 tunnel(s)"));
        // Withdrawn at the start: no transition either.
        let mut b = Announcer::new(3);
        assert!(b.decide(healthy()));
        assert!(!b.announced);
        assert_eq!(b.transitions, 0);
        assert!(
            b.explain()
                .contains("2 tunnel(s) in the rotation, fewer than min_tunnels = 3"),
            "{}",
            b.explain()
        );
    }
}
