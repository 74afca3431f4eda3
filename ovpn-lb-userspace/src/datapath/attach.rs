//! Which program goes where, and attaching it through a pinned link: tcx on
//! ingress and egress, native XDP on ingress. A link pinned by an earlier run
//! has its program replaced in place (one atomic `BPF_LINK_UPDATE`), so a
//! restart or upgrade leaves no packet unprocessed.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use aya::programs::{
    SchedClassifier, TcAttachType,
    links::{FdLink, LinkError, PinnedLink},
    tc::SchedClassifierLink,
    xdp::{XdpLink, XdpMode},
};
use ovpn_lb_common::maps::programs;

use super::Datapath;
use crate::{
    config::{Hook, TunnelKind},
    pins::{Layout, drop_link, remove_if_present},
};

/// Where on a device a program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// tcx ingress.
    Ingress,
    /// tcx egress.
    Egress,
    /// Native (driver) XDP.
    Xdp,
}

/// A program and where it attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub program: &'static str,
    pub point: Point,
}

/// What attaching did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A pinned link existed; its program was swapped in place.
    Replaced,
    /// A new link was made and pinned.
    Created,
}

/// The program on the LAN device.
#[must_use]
pub fn lan(hook: Hook) -> Vec<Attachment> {
    vec![match hook {
        Hook::Tc => Attachment {
            program: programs::LAN_INGRESS,
            point: Point::Ingress,
        },
        Hook::Xdp => Attachment {
            program: programs::LAN_INGRESS_XDP,
            point: Point::Xdp,
        },
    }]
}

/// The WAN guard on a WAN device's egress: framed for an Ethernet device,
/// bare IP for one without a link-layer header (PPP, tun).
#[must_use]
pub fn wan(ethernet: bool) -> Vec<Attachment> {
    vec![Attachment {
        program: if ethernet {
            programs::WAN_EGRESS_ETH
        } else {
            programs::WAN_EGRESS
        },
        point: Point::Egress,
    }]
}

/// The programs on a tunnel device: the restore on ingress, and on egress
/// the translation of what the kernel itself sends into the tunnel.
#[must_use]
pub fn tunnel(kind: TunnelKind, hook: Hook) -> Vec<Attachment> {
    let (ingress, egress) = match (kind, hook) {
        (TunnelKind::Tun, _) => (
            Attachment {
                program: programs::TUNNEL_INGRESS,
                point: Point::Ingress,
            },
            programs::TUNNEL_EGRESS,
        ),
        (TunnelKind::Tap, Hook::Tc) => (
            Attachment {
                program: programs::TUNNEL_INGRESS_ETH,
                point: Point::Ingress,
            },
            programs::TUNNEL_EGRESS_ETH,
        ),
        (TunnelKind::Tap, Hook::Xdp) => (
            Attachment {
                program: programs::TUNNEL_INGRESS_XDP,
                point: Point::Xdp,
            },
            programs::TUNNEL_EGRESS_ETH,
        ),
    };
    vec![
        ingress,
        Attachment {
            program: egress,
            point: Point::Egress,
        },
    ]
}

fn pin(layout: &Layout, iface: &str, point: Point) -> std::path::PathBuf {
    match point {
        Point::Ingress => layout.link(iface),
        Point::Egress => layout.egress_link(iface),
        Point::Xdp => layout.xdp_link(iface),
    }
}

/// Hands the link pinned at `pin`, if any, to `replace`, which swaps its
/// program; true if it did. A pin it could not use (its device was
/// recreated) is removed, so a new link can take its place.
fn replace_pinned(pin: &Path, replace: impl FnOnce(FdLink) -> bool) -> Result<bool> {
    let Ok(pinned) = PinnedLink::from_pin(pin) else {
        return Ok(false);
    };
    if replace(FdLink::from(pinned)) {
        return Ok(true);
    }
    remove_if_present(pin).with_context(|| format!("removing stale {}", pin.display()))?;
    Ok(false)
}

fn pin_new(link: FdLink, pin: &Path) -> Result<Attached> {
    link.pin(pin)
        .with_context(|| format!("pinning the link at {}", pin.display()))?;
    Ok(Attached::Created)
}

impl Datapath {
    /// Attaches every program of `what` to `iface`, each through a link
    /// pinned under `layout`. The ingress of a device has one program, tcx
    /// or XDP: a link of the other kind that an earlier run (with another
    /// hook) left is dropped.
    ///
    /// # Errors
    /// If the interface is missing or the kernel refuses.
    pub fn attach(
        &mut self,
        layout: &Layout,
        iface: &str,
        what: &[Attachment],
    ) -> Result<Vec<(Attachment, Attached)>> {
        let mut done = Vec::new();
        for a in what {
            let other_ingress = match a.point {
                Point::Ingress => Some(Point::Xdp),
                Point::Xdp => Some(Point::Ingress),
                Point::Egress => None,
            };
            if let Some(other) = other_ingress {
                drop_link(&pin(layout, iface, other))?;
            }
            let pin = pin(layout, iface, a.point);
            let how = match a.point {
                Point::Ingress => self.attach_tcx(a.program, iface, TcAttachType::Ingress, &pin),
                Point::Egress => self.attach_tcx(a.program, iface, TcAttachType::Egress, &pin),
                Point::Xdp => self.attach_xdp(a.program, iface, &pin),
            }?;
            done.push((*a, how));
        }
        Ok(done)
    }

    fn attach_tcx(
        &mut self,
        program: &str,
        iface: &str,
        direction: TcAttachType,
        pin: &Path,
    ) -> Result<Attached> {
        let prog: &mut SchedClassifier = self.program(program)?;
        let replaced = replace_pinned(pin, |old| {
            SchedClassifierLink::try_from(old).is_ok_and(|l| prog.attach_to_link(l).is_ok())
        })?;
        if replaced {
            return Ok(Attached::Replaced);
        }
        let id = prog.attach(iface, direction).with_context(|| {
            format!("attaching {program} to {iface} {direction:?} (tcx, Linux 6.6 or newer)")
        })?;
        let link: FdLink = prog
            .take_link(id)?
            .try_into()
            .map_err(|e: LinkError| anyhow!("{program} on {iface} is not a tcx link: {e}"))?;
        pin_new(link, pin)
    }

    /// Native XDP only: generic XDP loses offloaded checksums.
    fn attach_xdp(&mut self, program: &str, iface: &str, pin: &Path) -> Result<Attached> {
        let prog = self.xdp_program(program)?;
        let replaced = replace_pinned(pin, |old| {
            XdpLink::try_from(old).is_ok_and(|l| prog.attach_to_link(l).is_ok())
        })?;
        if replaced {
            return Ok(Attached::Replaced);
        }
        let id = prog
            .attach(iface, XdpMode::Driver)
            .with_context(|| format!("attaching {program} to {iface} as native XDP"))?;
        let link: FdLink = prog
            .take_link(id)?
            .try_into()
            .map_err(|e: LinkError| anyhow!("{program} on {iface} is not a bpf_link: {e}"))?;
        pin_new(link, pin)
    }
}

/// The program id behind the link pinned at `pin`, if any.
#[must_use]
pub fn pinned_program(pin: &Path) -> Option<u32> {
    PinnedLink::from_pin(pin)
        .ok()
        .and_then(|l| FdLink::from(l).info().ok())
        .map(|info| info.program_id())
}

/// tcx and XDP programs on `iface` that are not ovpn-lb's (ours are the ones
/// behind our pinned links): reported, and left alone.
#[must_use]
pub fn foreign_programs(iface: &str, layout: &Layout, xdp_prog_id: u32) -> Vec<String> {
    let mut found = Vec::new();
    for (direction, point, name) in [
        (TcAttachType::Ingress, Point::Ingress, "ingress"),
        (TcAttachType::Egress, Point::Egress, "egress"),
    ] {
        let ours = pinned_program(&pin(layout, iface, point));
        if let Ok((_, progs)) = SchedClassifier::query_tcx(iface, direction) {
            for p in progs {
                if Some(p.id()) != ours {
                    let prog = p.name_as_str().unwrap_or("?").to_owned();
                    found.push(format!("tcx {name} program {prog} (id {})", p.id()));
                }
            }
        }
    }
    if xdp_prog_id != 0 && Some(xdp_prog_id) != pinned_program(&layout.xdp_link(iface)) {
        found.push(format!("XDP program id {xdp_prog_id}"));
    }
    found
}
