//! `ovpn-lb kernel`: what this kernel offers ovpn-lb, tried for real (the
//! programs loaded, XDP attached to a TAP device of its own), as
//! `name: value` lines.

use std::fmt::Write as _;

use anyhow::{Context as _, Result, bail};
use aya::programs::xdp::XdpMode;
use ovpn_lb_common::{maps::programs, queue::RingHooks};

use crate::{
    datapath::{
        Datapath,
        kernel::{csum_ipv6_flag, release, ring_accounting_blocker, ring_hooks_blocker},
    },
    tun,
};

/// `ovpn-lb kernel`: the report as text, `name: value` lines, and whether
/// ovpn-lb can run here.
#[must_use]
pub fn inspect() -> (String, bool) {
    let mut out = String::new();
    let _ = writeln!(out, "kernel: {}", release());
    let mut datapath = match Datapath::load() {
        Ok(d) => d,
        Err(e) => {
            let _ = writeln!(out, "refused: {e}");
            // The verifier's whole walk is for whoever changes the programs.
            if std::env::var_os("OVPN_LB_VERIFIER_LOG").is_some() {
                let _ = writeln!(out, "detail: {e:#}");
            }
            return (out, false);
        }
    };
    let report = datapath.kernel_report();
    let xdp = if datapath.xdp_unavailable().is_some() {
        "XDP not loaded".to_owned()
    } else {
        format!("{} XDP", programs::XDP.len())
    };
    let _ = writeln!(out, "programs: accepted ({} tc, {xdp})", programs::TC.len());
    let _ = writeln!(out, "hook: {}", report.tc_hook);
    let _ = writeln!(
        out,
        "xdp on tap: {}",
        match xdp_on_tap(&mut datapath) {
            Ok(()) => "native".to_owned(),
            Err(e) => format!("no ({e:#})"),
        }
    );
    match ring_accounting_blocker() {
        None => {
            let _ = writeln!(out, "spray: packet, round-robin, flow");
            let hooks: Vec<String> = RingHooks::ALL
                .into_iter()
                .map(|h| match ring_hooks_blocker(h) {
                    None => h.name().to_owned(),
                    Some(why) => format!("not {} ({why})", h.name()),
                })
                .collect();
            let _ = writeln!(out, "ring hooks to try: {}", hooks.join(", "));
        }
        Some(why) => {
            let _ = writeln!(out, "spray: round-robin, flow (packet sprays round robin)");
            let _ = writeln!(out, "spray fallback: {why}");
        }
    }
    let probes = datapath.take_probe_events().is_ok();
    let _ = writeln!(out, "probes: {}", if probes { "yes" } else { "no" });
    let _ = writeln!(
        out,
        "l4 checksum: {}",
        if csum_ipv6_flag(&report.release) {
            "BPF_F_IPV6"
        } else {
            "retry without BPF_F_IPV6"
        }
    );
    for f in &report.fallbacks {
        let _ = writeln!(out, "fallback {}: {}", f.name, f.what);
    }
    (out, true)
}

/// Attaches the TAP tunnel's XDP program natively to a TAP device made for
/// the purpose in a network namespace of its own (on a thread of its own,
/// so this process's namespace stays), then lets both go.
fn xdp_on_tap(datapath: &mut Datapath) -> Result<()> {
    if let Some(why) = datapath.xdp_unavailable() {
        bail!("{why}");
    }
    let program = datapath.xdp_program(programs::TUNNEL_INGRESS_XDP)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<()> {
                // SAFETY: unshare(2) changes only this thread's namespace.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    bail!("unshare: {}", std::io::Error::last_os_error());
                }
                let name = "ovlbprobe0";
                let tap = tun::open_device(name, true).context("making a TAP device")?;
                let id = program
                    .attach(name, XdpMode::Driver)
                    .with_context(|| format!("native XDP on TAP device {name}"))?;
                program.detach(id)?;
                drop(tap);
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| bail!("the probe thread panicked"))
    })
}
