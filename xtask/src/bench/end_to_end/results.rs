//! What one condition measured, and the ratios taken within each round:
//! efficiency against the round's single-tunnel goodput, and each mode
//! against round robin at the same N.

use ovpn_lb::config::file::Spray;

use super::{
    backlog::Trace,
    condition::Condition,
    iperf::Run,
    variant::{Hosts, Mode, Variant},
};
use crate::bench::{median, spread};

pub struct Measured {
    pub condition: Condition,
    pub variants: Vec<Variant>,
    /// `runs[variant][round]`.
    pub runs: Vec<Vec<Run>>,
    /// Backlog traces at the largest N: (spray, trace).
    pub traces: Vec<(Spray, Trace)>,
}

/// Median and spread of some values.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let (min, max) = spread(values);
        Some(Self {
            median: median(values.to_vec()),
            min,
            max,
        })
    }
}

impl Measured {
    pub fn new(condition: Condition, variants: Vec<Variant>) -> Self {
        Self {
            condition,
            runs: vec![Vec::new(); variants.len()],
            variants,
            traces: Vec::new(),
        }
    }

    fn find(&self, want: impl Fn(&Variant) -> bool) -> Option<usize> {
        self.variants.iter().position(want)
    }

    fn goodput(&self, i: usize, round: usize) -> Option<f64> {
        self.runs[i].get(round).map(|r| r.mbit_per_s)
    }

    /// What `v`'s goodput in `round` is measured against: N x the round's
    /// single tunnel, or with unequal tunnels the sum of the round's single
    /// goodputs of the N tunnels used; the same hosts' setting throughout.
    pub fn baseline(&self, v: &Variant, round: usize) -> Option<f64> {
        let single = |k: Option<usize>| {
            let i = self.find(|b| b.mode == Mode::Single(k) && b.hosts == v.hosts)?;
            self.goodput(i, round)
        };
        if self.condition.unequal() {
            (0..v.tunnels).map(|k| single(Some(k))).sum()
        } else {
            #[expect(clippy::cast_precision_loss, reason = "small counts")]
            single(None).map(|g| g * v.tunnels as f64)
        }
    }

    /// Per round: goodput / baseline.
    pub fn efficiency(&self, i: usize) -> Vec<f64> {
        let v = &self.variants[i];
        self.runs[i]
            .iter()
            .enumerate()
            .filter_map(|(round, r)| Some(r.mbit_per_s / self.baseline(v, round)?))
            .collect()
    }

    /// Per round: goodput / round robin's at the same N and LAN setting.
    pub fn vs_round_robin(&self, i: usize) -> Vec<f64> {
        let v = &self.variants[i];
        let Some(rr) = self.find(|b| {
            b.mode == Mode::OvpnLb(Spray::RoundRobin)
                && b.tunnels == v.tunnels
                && b.hosts == v.hosts
        }) else {
            return Vec::new();
        };
        self.runs[i]
            .iter()
            .enumerate()
            .filter_map(|(round, r)| Some(r.mbit_per_s / self.goodput(rr, round)?))
            .collect()
    }

    /// Median and spread of `f` over variant `i`'s rounds.
    pub fn stat(&self, i: usize, f: impl Fn(&Run) -> f64) -> Option<Stat> {
        Stat::of(&self.runs[i].iter().map(f).collect::<Vec<_>>())
    }

    /// The hosts' settings measured, in order of first appearance.
    pub fn hosts(&self) -> Vec<Hosts> {
        let mut out: Vec<Hosts> = Vec::new();
        for v in &self.variants {
            if !out.contains(&v.hosts) {
                out.push(v.hosts);
            }
        }
        out
    }

    /// The ideal goodput at N tunnels (the baseline's median over rounds).
    pub fn ideal(&self, tunnels: usize, hosts: Hosts) -> Option<f64> {
        let v = Variant {
            mode: Mode::Numgen,
            tunnels,
            hosts,
        };
        let rounds = self.runs.iter().map(Vec::len).max().unwrap_or(0);
        let per_round: Vec<f64> = (0..rounds)
            .filter_map(|round| self.baseline(&v, round))
            .collect();
        Stat::of(&per_round).map(|s| s.median)
    }
}
