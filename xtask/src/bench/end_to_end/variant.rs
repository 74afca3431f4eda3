//! What is measured under each condition: one tunnel, and at each N of the
//! sweep ovpn-lb's round robin, ovpn-lb's packet mode, nftables numgen and
//! MPTCP on the hosts,
//! for every setting of the hosts the run asks for (wire segments or GSO
//! super-packets, CUBIC or BBR).

use ovpn_lb::config::file::Spray;

use super::condition::Condition;
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
    /// No spray: the hosts run the flow as MPTCP, one subflow per tunnel
    /// (`Lab::mptcp_paths`), what multipath users get by changing them.
    Mptcp,
}

/// The hosts' congestion control.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Congestion {
    Cubic,
    Bbr,
}

impl Congestion {
    /// As iperf3's `-C` and the report name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cubic => "cubic",
            Self::Bbr => "bbr",
        }
    }
}

/// How the hosts send: what a variant's baseline must share with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hosts {
    /// Wire segments (TSO/GSO off, the gateways' GRO off); false: GSO
    /// super-packets, as hosts behind a virtual switch send them.
    pub segments: bool,
    pub congestion: Congestion,
}

impl Hosts {
    /// How the hosts send, in words.
    fn sending(self) -> &'static str {
        if self.segments {
            "wire segments"
        } else {
            "GSO super-packets"
        }
    }

    /// In full, for tables: `wire segments, CUBIC`, `GSO super-packets, BBR`.
    pub fn describe(self) -> String {
        format!(
            "{}, {}",
            self.sending(),
            self.congestion.name().to_uppercase()
        )
    }

    /// For labels: `, GSO super-packets, BBR`; nothing for wire segments and
    /// CUBIC.
    pub fn suffix(self) -> String {
        let mut s = String::new();
        if !self.segments {
            s.push_str(", ");
            s.push_str(self.sending());
        }
        if self.congestion != Congestion::Cubic {
            s.push_str(", ");
            s.push_str(&self.congestion.name().to_uppercase());
        }
        s
    }
}

/// One row of a condition's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Variant {
    pub mode: Mode,
    /// Tunnels sprayed over (1 for a single tunnel).
    pub tunnels: usize,
    pub hosts: Hosts,
}

/// The modes over N tunnels, in table order: the sprayed ones and the
/// MPTCP peer.
pub const SPRAYED: [Mode; 4] = [
    Mode::OvpnLb(Spray::RoundRobin),
    Mode::OvpnLb(Spray::Packet),
    Mode::Numgen,
    Mode::Mptcp,
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
            Mode::Mptcp => "MPTCP (hosts changed)".to_owned(),
        };
        format!("{name}{}", self.hosts.suffix())
    }

    /// The row's label in the report.
    pub fn label(&self, args: &BenchArgs, condition: Condition) -> String {
        let lead = match self.mode {
            Mode::Single(Some(k)) => {
                format!("1 tunnel (tun{k}, {})", condition.tunnel_note(args, k))
            }
            Mode::Single(None) => "1 tunnel".to_owned(),
            _ => format!("{} tunnels", self.tunnels),
        };
        format!("{lead}, {}", self.mode_name())
    }
}

/// Every variant of `condition` for the tunnel counts in `sweep` and each
/// of `hosts`: the baselines first.
pub fn list(condition: Condition, sweep: &[usize], hosts: &[Hosts]) -> Vec<Variant> {
    let max = sweep.iter().copied().max().unwrap_or(1);
    let mut v = Vec::new();
    for &h in hosts {
        let singles: Vec<Mode> = if condition.unequal() {
            (0..max).map(|k| Mode::Single(Some(k))).collect()
        } else {
            vec![Mode::Single(None)]
        };
        v.extend(singles.into_iter().map(|mode| Variant {
            mode,
            tunnels: 1,
            hosts: h,
        }));
    }
    for &h in hosts {
        for &tunnels in sweep {
            v.extend(SPRAYED.iter().map(|&mode| Variant {
                mode,
                tunnels,
                hosts: h,
            }));
        }
    }
    v
}
