//! One measured TCP flow: iperf3 from host A to host B with the congestion
//! control asked for (a namespace would inherit the host's default), and
//! the kernel counters around it (nstat) on the hosts and on the far
//! gateway.

use std::collections::BTreeMap;

use super::variant::Congestion;
use anyhow::{Context as _, Result, bail};
use ovpn_lb_tests::{
    lab::{Forwarding, HOST_B, Lab, Side, mptcp_address},
    netns,
    traffic::{iperf3_goodput_mbit, iperf3_server_with},
};

/// One iperf3 run's outcome.
#[derive(Clone, Copy, Debug, Default)]
pub struct Run {
    pub mbit_per_s: f64,
    /// The sender's retransmitted segments.
    pub retransmits: u64,
    /// Sender-side reordering events (nstat `TcpExt`*Reorder).
    pub reorder: u64,
    /// Segments the receiver queued out of order (nstat `TcpExtTCPOFOQueue`).
    pub ofo: u64,
    /// Times gateway A's loader took a tunnel out of its rotation (probes
    /// unanswered behind a full ring, mostly); 0 without ovpn-lb.
    pub departures: u64,
    /// Datagrams gateway B's sockets dropped for a full receive buffer
    /// (nstat `UdpRcvbufErrors`): OpenVPN there did not keep up.
    pub far_drops: u64,
}

const REORDER_COUNTERS: &[&str] = &[
    "TcpExtTCPSACKReorder",
    "TcpExtTCPTSReorder",
    "TcpExtTCPRenoReorder",
    "TcpExtTCPReorder",
];

pub fn nstat(ns: &str) -> BTreeMap<String, u64> {
    let out = netns::command(ns, "nstat").args(["-asz", "-j"]).output();
    let Ok(out) = out else { return BTreeMap::new() };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["kernel"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

pub fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>, names: &[&str]) -> u64 {
    names
        .iter()
        .map(|n| {
            after
                .get(*n)
                .unwrap_or(&0)
                .saturating_sub(*before.get(*n).unwrap_or(&0))
        })
        .sum()
}

/// Tunnel departures from gateway A's rotation so far, summed.
fn departures(lab: &Lab) -> u64 {
    if lab.options.forwarding == Forwarding::OvpnLb {
        lab.departures(Side::A).iter().sum()
    } else {
        0
    }
}

/// One flow from host A to host B for `seconds` under `congestion`; with
/// `mptcp`, both ends run iperf3 under `mptcpize` and the client binds to
/// host A's address for the first path (`Lab::mptcp_paths`).
pub fn iperf(lab: &Lab, seconds: u32, congestion: Congestion, mptcp: bool) -> Result<Run> {
    let (ha, hb, gb) = (lab.host(Side::A), lab.host(Side::B), lab.gw(Side::B));
    let wrapper: &[&str] = if mptcp { &["mptcpize", "run"] } else { &[] };
    let server = iperf3_server_with(&hb, wrapper);
    let (sa, sb, sg) = (nstat(&ha), nstat(&hb), nstat(&gb));
    let left = departures(lab);
    let bind = mptcp_address(0);
    let mut client = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = netns::command(&ha, program);
            c.args(rest).arg("iperf3").args(["-B", &bind]);
            c
        }
        None => netns::command(&ha, "iperf3"),
    };
    let out = client
        .args(["-J", "-c", HOST_B, "-C", congestion.name()])
        .args(["-t", &seconds.to_string()])
        .output()
        .context("running iperf3")?;
    let (ea, eb, eg) = (nstat(&ha), nstat(&hb), nstat(&gb));
    let departed = departures(lab) - left;
    drop(server);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    Ok(Run {
        mbit_per_s: iperf3_goodput_mbit(&v),
        retransmits: v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
        reorder: delta(&ea, &sa, REORDER_COUNTERS),
        ofo: delta(&eb, &sb, &["TcpExtTCPOFOQueue"]),
        far_drops: delta(&eg, &sg, &["UdpRcvbufErrors"]),
        departures: departed,
    })
}
