//! The labs of one condition, all up at once (idle ones only exchange
//! OpenVPN pings): one without ovpn-lb, whose gateways route the far LAN
//! through each tunnel in turn for the single-tunnel baselines, spray it
//! with nftables numgen over the first N tunnels, or route host A's MPTCP
//! subflows one per tunnel; and one ovpn-lb lab per N
//! and spray mode. The hosts' LAN setting (wire segments or GSO super-packets)
//! is switched per run.

use std::{path::Path, thread};

use anyhow::{Result, anyhow};
use ovpn_lb::config::file::Spray;
use ovpn_lb_tests::{
    lab::{Forwarding, Lab, Options},
    numgen::Numgen,
};

use super::{
    condition::Condition,
    variant::{Mode, Variant},
};
use crate::bench::BenchArgs;

pub struct Labs {
    /// Without loaders, `max` tunnels.
    kernel: Lab,
    /// ovpn-lb on both gateways: (tunnels, spray, lab).
    ovpn_lb: Vec<(usize, Spray, Lab)>,
    max: usize,
}

/// One lab to build: directory name, namespace tag, options.
struct Spec {
    name: String,
    tag: String,
    options: Options,
}

impl Labs {
    /// Builds, side by side, every lab `variants` need under `condition`,
    /// in `dir`, with `ovpn-lb` from `bin`.
    pub fn up(
        condition: Condition,
        args: &BenchArgs,
        variants: &[Variant],
        dir: &Path,
        bin: &Path,
    ) -> Result<Self> {
        let max = variants.iter().map(|v| v.tunnels).max().unwrap_or(1);
        let letter = condition.letter();
        let mut specs = vec![Spec {
            name: "kernel".into(),
            tag: format!("b{letter}k"),
            options: Options {
                forwarding: Forwarding::Routes,
                ..condition.options(args, max)
            },
        }];
        let mut wanted: Vec<(usize, Spray)> = Vec::new();
        for v in variants {
            if let Mode::OvpnLb(spray) = v.mode
                && !wanted.contains(&(v.tunnels, spray))
            {
                wanted.push((v.tunnels, spray));
            }
        }
        for &(n, spray) in &wanted {
            let short = match spray {
                Spray::Packet => "p",
                Spray::RoundRobin => "r",
                Spray::Flow => "f",
            };
            specs.push(Spec {
                name: format!("ovpn-lb-{n}{short}"),
                tag: format!("b{letter}{n}{short}"),
                options: Options {
                    spray,
                    ..condition.options(args, n)
                },
            });
        }
        let mut labs = thread::scope(|s| {
            let handles: Vec<_> = specs
                .iter()
                .map(|spec| {
                    s.spawn(|| Lab::up(&dir.join(&spec.name), &spec.tag, bin, spec.options.clone()))
                })
                .collect();
            // Join every thread before judging, so that the labs that did
            // come up are torn down with the rest.
            let joined: Vec<_> = handles.into_iter().map(|h| h.join().ok()).collect();
            joined.into_iter().collect::<Option<Vec<Lab>>>()
        })
        .ok_or_else(|| anyhow!("a lab of condition {} did not come up", condition.name()))?
        .into_iter();
        let kernel = labs.next().expect("the kernel lab is first");
        let ovpn_lb = wanted
            .into_iter()
            .zip(labs)
            .map(|((n, spray), lab)| (n, spray, lab))
            .collect();
        Ok(Self {
            kernel,
            ovpn_lb,
            max,
        })
    }

    /// The ovpn-lb lab of `tunnels` tunnels spraying with `spray`.
    pub fn ovpn_lb(&self, tunnels: usize, spray: Spray) -> Option<&Lab> {
        self.ovpn_lb
            .iter()
            .find(|(n, s, _)| *n == tunnels && *s == spray)
            .map(|(_, _, lab)| lab)
    }

    /// Sets up `variant` for a run in round `round`: the hosts' LAN
    /// setting, and on the lab without loaders the route or the numgen
    /// spray, which stays until the returned guards are dropped.
    pub fn prepare(&self, variant: &Variant, round: usize) -> (&Lab, Vec<Numgen>) {
        let lab = match variant.mode {
            Mode::OvpnLb(spray) => self
                .ovpn_lb(variant.tunnels, spray)
                .expect("a lab for every ovpn-lb variant"),
            Mode::Single(_) | Mode::Numgen | Mode::Mptcp => &self.kernel,
        };
        lab.set_wire_segments(variant.hosts.segments);
        let guards = match variant.mode {
            Mode::Single(_) => {
                let k = variant.single_tunnel(round, self.max).unwrap_or(0);
                lab.route_all_through(k);
                Vec::new()
            }
            Mode::Numgen => {
                lab.route_all_through(0);
                lab.numgen(variant.tunnels)
            }
            Mode::Mptcp => {
                lab.route_all_through(0);
                lab.mptcp_paths(variant.tunnels);
                Vec::new()
            }
            Mode::OvpnLb(_) => Vec::new(),
        };
        (lab, guards)
    }

    /// Tunnels of the lab without loaders (the largest N).
    pub fn max(&self) -> usize {
        self.max
    }
}
