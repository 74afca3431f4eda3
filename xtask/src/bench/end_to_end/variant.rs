//! What is measured under each condition: one tunnel, and at each N of the
//! sweep ovpn-lb's round robin, ovpn-lb's packet mode and nftables numgen,
//! with the hosts sending wire segments, and where the condition asks for
//! it the same on GSO aggregates.

use ovpn_lb::config::file::Spray;

use super::condition::{Condition, thousands};
use crate::bench::BenchArgs;

/// How a flow crosses the tunnels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One tunnel, plain kernel routing: tunnel k, or with `None` tunnel
    /// `round % N` (equal tunnels take turns being the baseline).
    Single(Option<usize>),
    /// ovpn-lb on both gateways with this `spray`.
    OvpnLb(Spray),
    /// nftables `numgen inc mod N` on both gateways.
    Numgen,
}

/// One row of a condition's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Variant {
    pub mode: Mode,
    /// Tunnels sprayed over (1 for a single tunnel).
    pub tunnels: usize,
    /// The hosts send wire segments (false: GSO aggregates).
    pub segments: bool,
}

/// The sprayed modes, in table order.
pub const SPRAYED: [Mode; 3] = [
    Mode::OvpnLb(Spray::RoundRobin),
    Mode::OvpnLb(Spray::Packet),
    Mode::Numgen,
];

/// A spray mode as the report names it.
pub fn spray_label(spray: Spray) -> &'static str {
    match spray {
        Spray::RoundRobin => "round robin",
        Spray::Packet => "packet (earliest departure)",
        Spray::Flow => "flow",
    }
}

impl Variant {
    pub fn is_baseline(&self) -> bool {
        matches!(self.mode, Mode::Single(_))
    }

    /// The tunnel a single-tunnel run uses in round `round` of a lab of
    /// `max` tunnels.
    pub fn single_tunnel(&self, round: usize, max: usize) -> Option<usize> {
        match self.mode {
            Mode::Single(k) => Some(k.unwrap_or(round % max)),
            _ => None,
        }
    }

    /// The mode alone, for plot series: `round robin`, `packet`, ...
    pub fn mode_name(&self) -> String {
        let name = match self.mode {
            Mode::Single(_) => "plain routing".to_owned(),
            Mode::OvpnLb(spray) => format!("ovpn-lb {}", spray_label(spray)),
            Mode::Numgen => "nftables numgen".to_owned(),
        };
        if self.segments {
            name
        } else {
            format!("{name}, GSO aggregates")
        }
    }

    /// The row's label in the report.
    pub fn label(&self, args: &BenchArgs) -> String {
        let lead = match self.mode {
            Mode::Single(Some(k)) => {
                let rate = args.unequal_shapers.get(k).or(args.unequal_shapers.last());
                format!(
                    "1 tunnel (tun{k}, {} B/s)",
                    rate.map_or_else(|| "?".to_owned(), |&r| thousands(r))
                )
            }
            Mode::Single(None) => "1 tunnel".to_owned(),
            _ => format!("{} tunnels", self.tunnels),
        };
        format!("{lead}, {}", self.mode_name())
    }
}

/// Every variant of `condition` for the tunnel counts in `sweep`: the
/// baselines first.
pub fn list(condition: Condition, sweep: &[usize]) -> Vec<Variant> {
    let max = sweep.iter().copied().max().unwrap_or(1);
    let lan = if condition.with_aggregates() {
        vec![true, false]
    } else {
        vec![true]
    };
    let mut v = Vec::new();
    for &segments in &lan {
        let singles: Vec<Mode> = if condition.unequal() {
            (0..max).map(|k| Mode::Single(Some(k))).collect()
        } else {
            vec![Mode::Single(None)]
        };
        v.extend(singles.into_iter().map(|mode| Variant {
            mode,
            tunnels: 1,
            segments,
        }));
    }
    for &segments in &lan {
        for &tunnels in sweep {
            v.extend(SPRAYED.iter().map(|&mode| Variant {
                mode,
                tunnels,
                segments,
            }));
        }
    }
    v
}
