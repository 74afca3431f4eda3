//! Which program goes where, and attaching it through a pinned link: tcx on
//! ingress and egress, native XDP on ingress. A link pinned by an earlier run
//! has its program replaced in place (one atomic `BPF_LINK_UPDATE`), so a
//! restart or upgrade leaves no packet unprocessed.
//!
//! Kernels before 6.6 have no tcx: there the tc programs go in as legacy
//! `cls_bpf` filters on a `clsact` qdisc ([`TcHook::Legacy`], chosen once
//! when the datapath loads). A filter cannot be pinned, so the program is
//! pinned where the link would be, and the filter sits at a fixed priority
//! and handle where the next run finds it and swaps its program in place;
//! a `clsact` qdisc that ovpn-lb added is marked by an empty directory
//! beside the pins, so `detach` removes that qdisc and no other.

use std::{
    fs,
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::programs::{
    ProgramInfo, SchedClassifier, TcAttachType,
    links::{FdLink, LinkError, PinnedLink},
    tc::SchedClassifierLink,
    xdp::{XdpLink, XdpMode},
};
use ovpn_lb_common::maps::programs;
use serde::{Deserialize, Serialize};

use super::Datapath;
use crate::{
    config::{Hook, TunnelKind},
    netlink::tc::{self, Direction, Slot},
    pins::{Layout, Pinned, drop_link, remove_if_present},
};

/// How tc programs attach: chosen once, when the datapath loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TcHook {
    /// tcx links (Linux 6.6+), pinned.
    Tcx,
    /// `cls_bpf` direct-action filters on a `clsact` qdisc (any kernel).
    Legacy,
}

/// Overrides the choice (`tcx` or `legacy`): for tests of the legacy path
/// on a kernel with tcx, and for hosts whose other tools manage `clsact`.
pub const TC_HOOK_ENV: &str = "OVPN_LB_TC_HOOK";

/// Priority of ovpn-lb's legacy filters ("ov"): fixed, so that the next run
/// finds them; the kernel runs filters of lower priority first.
pub const LEGACY_PRIORITY: u16 = 0x6f76;
/// Handle of ovpn-lb's legacy filters.
const LEGACY_HANDLE: u32 = 1;

impl TcHook {
    /// tcx where the kernel has it (a tcx query on `lo` succeeds), unless
    /// [`TC_HOOK_ENV`] says otherwise; the reason for the choice beside it.
    #[must_use]
    pub fn detect() -> (Self, String) {
        match std::env::var(TC_HOOK_ENV).as_deref() {
            Ok("legacy") => return (TcHook::Legacy, format!("{TC_HOOK_ENV}=legacy")),
            Ok("tcx") => return (TcHook::Tcx, format!("{TC_HOOK_ENV}=tcx")),
            _ => {}
        }
        match SchedClassifier::query_tcx("lo", TcAttachType::Ingress) {
            Ok(_) => (TcHook::Tcx, "the kernel has tcx".to_owned()),
            Err(e) => (
                TcHook::Legacy,
                format!("the kernel has no tcx (Linux 6.6+; a tcx query said: {e})"),
            ),
        }
    }

    /// As the log, `status` and the metrics say it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            TcHook::Tcx => "tcx",
            TcHook::Legacy => "legacy-tc",
        }
    }
}

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
                if other == Point::Ingress && self.tc_hook == TcHook::Legacy {
                    drop_legacy_filter(layout, iface, Direction::Ingress)?;
                }
                drop_link(&pin(layout, iface, other))?;
            }
            let pin = pin(layout, iface, a.point);
            let how = match (a.point, self.tc_hook) {
                (Point::Ingress, TcHook::Tcx) => {
                    self.attach_tcx(a.program, iface, TcAttachType::Ingress, &pin)
                }
                (Point::Egress, TcHook::Tcx) => {
                    self.attach_tcx(a.program, iface, TcAttachType::Egress, &pin)
                }
                (Point::Ingress, TcHook::Legacy) => {
                    self.attach_legacy(a.program, iface, Direction::Ingress, layout)
                }
                (Point::Egress, TcHook::Legacy) => {
                    self.attach_legacy(a.program, iface, Direction::Egress, layout)
                }
                (Point::Xdp, _) => self.attach_xdp(a.program, iface, &pin),
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

    /// A legacy filter: the program swapped in place where our filter sits
    /// (found by its slot, and ours by the program pinned beside it or by
    /// its name), else a new filter, after a `clsact` qdisc if the device
    /// has none. The program is then pinned where a tcx link would be.
    fn attach_legacy(
        &mut self,
        program: &str,
        iface: &str,
        direction: Direction,
        layout: &Layout,
    ) -> Result<Attached> {
        let ifindex = ifindex(iface)?;
        let slot = Slot {
            ifindex,
            direction,
            priority: LEGACY_PRIORITY,
            handle: LEGACY_HANDLE,
        };
        let pin = legacy_pin(layout, iface, direction);
        let present = tc::filters(ifindex, direction)
            .with_context(|| format!("listing tc filters on {iface}"))?
            .into_iter()
            .find(|f| f.priority == slot.priority && f.handle == slot.handle);
        let how = match present {
            Some(f)
                if Some(f.program_id) == pinned_program(&pin)
                    || programs::TC.contains(&f.name.as_str()) =>
            {
                Attached::Replaced
            }
            Some(f) => bail!(
                "{iface} has a foreign tc filter ({}, id {}) at ovpn-lb's priority {LEGACY_PRIORITY:#x}",
                f.name,
                f.program_id
            ),
            None => {
                let added = tc::add_clsact(ifindex)
                    .with_context(|| format!("adding a clsact qdisc to {iface}"))?;
                if added {
                    let mark = clsact_mark(layout, iface);
                    fs::create_dir_all(&mark)
                        .with_context(|| format!("marking {}", mark.display()))?;
                }
                Attached::Created
            }
        };
        let prog = self.program(program)?;
        let fd = prog.fd()?.as_fd().as_raw_fd();
        tc::set_filter(slot, fd, program).with_context(|| {
            format!("attaching {program} to {iface} {direction:?} as a tc filter")
        })?;
        remove_if_present(&pin).with_context(|| format!("removing {}", pin.display()))?;
        prog.pin(&pin)
            .with_context(|| format!("pinning {program} at {}", pin.display()))?;
        Ok(how)
    }

    /// Takes ovpn-lb's program off `iface`'s egress (a WAN device no longer
    /// guarded): its tcx link, or its legacy filter where tc is legacy.
    ///
    /// # Errors
    /// If netlink fails or the pin cannot be removed.
    pub fn detach_egress(&self, layout: &Layout, iface: &str) -> Result<()> {
        if self.tc_hook == TcHook::Legacy {
            drop_legacy_filter(layout, iface, Direction::Egress)?;
        }
        drop_link(&layout.egress_link(iface))?;
        Ok(())
    }

    /// The tc hook chosen when the datapath loaded.
    #[must_use]
    pub fn tc_hook(&self) -> TcHook {
        self.tc_hook
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

/// The program id behind the link (or, legacy tc, the program) pinned at
/// `pin`, if any.
#[must_use]
pub fn pinned_program(pin: &Path) -> Option<u32> {
    match Pinned::at(pin)? {
        Pinned::Link => PinnedLink::from_pin(pin)
            .ok()
            .and_then(|l| FdLink::from(l).info().ok())
            .map(|info| info.program_id()),
        Pinned::Program => ProgramInfo::from_pin(pin).ok().map(|p| p.id()),
        Pinned::Map => None,
    }
}

fn ifindex(iface: &str) -> Result<u32> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: `name` is a valid NUL-terminated string for the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("no device {iface}");
    }
    Ok(index)
}

fn legacy_pin(layout: &Layout, iface: &str, direction: Direction) -> PathBuf {
    match direction {
        Direction::Ingress => layout.link(iface),
        Direction::Egress => layout.egress_link(iface),
    }
}

/// The directory that says ovpn-lb added `iface`'s `clsact` qdisc.
fn clsact_mark(layout: &Layout, iface: &str) -> PathBuf {
    layout.links().join(format!("{iface}-clsact"))
}

/// Removes our legacy filter on `iface`'s hook `direction` if its program
/// is the one pinned for it (the hook changed from tc to XDP).
fn drop_legacy_filter(layout: &Layout, iface: &str, direction: Direction) -> Result<()> {
    let pin = legacy_pin(layout, iface, direction);
    let (Some(program), Ok(ifindex)) = (pinned_program(&pin), ifindex(iface)) else {
        return Ok(());
    };
    let slot = Slot {
        ifindex,
        direction,
        priority: LEGACY_PRIORITY,
        handle: LEGACY_HANDLE,
    };
    if tc::filters(ifindex, direction)?
        .iter()
        .any(|f| f.priority == slot.priority && f.handle == slot.handle && f.program_id == program)
    {
        tc::delete_filter(slot).with_context(|| format!("removing our tc filter on {iface}"))?;
    }
    Ok(())
}

/// Removes ovpn-lb's legacy tc filters (those whose program is pinned
/// beside the links) and the `clsact` qdiscs ovpn-lb added, once nothing
/// else is filtered there; returns what it removed. Pins go with them.
///
/// # Errors
/// If netlink fails or a pin cannot be removed.
pub fn detach_legacy(layout: &Layout) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(layout.links()) else {
        return Ok(removed);
    };
    let mut marks = Vec::new();
    for path in entries.flatten().map(|e| e.path()) {
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        if let Some(iface) = name.strip_suffix("-clsact") {
            marks.push((iface.to_owned(), path));
            continue;
        }
        // A link: `detach` drops it.
        if Pinned::at(&path) != Some(Pinned::Program) {
            continue;
        }
        let Ok(program) = ProgramInfo::from_pin(&path) else {
            continue;
        };
        let (iface, direction) = match (name.strip_suffix("-ingress"), name.strip_suffix("-egress"))
        {
            (Some(i), _) => (i, Direction::Ingress),
            (_, Some(i)) => (i, Direction::Egress),
            _ => continue,
        };
        if let Ok(ifindex) = ifindex(iface) {
            let ours = tc::filters(ifindex, direction)?.into_iter().any(|f| {
                f.priority == LEGACY_PRIORITY
                    && f.handle == LEGACY_HANDLE
                    && f.program_id == program.id()
            });
            if ours {
                tc::delete_filter(Slot {
                    ifindex,
                    direction,
                    priority: LEGACY_PRIORITY,
                    handle: LEGACY_HANDLE,
                })
                .with_context(|| format!("removing ovpn-lb's tc filter on {iface}"))?;
                removed.push(format!(
                    "tc filter {iface} {direction:?} priority {LEGACY_PRIORITY:#x}"
                ));
            }
        }
        remove_if_present(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    for (iface, mark) in marks {
        if let Ok(ifindex) = ifindex(&iface) {
            let others = tc::filters(ifindex, Direction::Ingress)?.len()
                + tc::filters(ifindex, Direction::Egress)?.len();
            if others == 0 && tc::has_clsact(ifindex)? {
                tc::delete_clsact(ifindex)
                    .with_context(|| format!("removing the clsact qdisc of {iface}"))?;
                removed.push(format!("clsact qdisc of {iface}"));
            }
        }
        remove_if_present(&mark).with_context(|| format!("removing {}", mark.display()))?;
    }
    Ok(removed)
}

/// Programs attached to `iface`'s tc hook `direction`, tcx or legacy
/// filters: `(program id, name)`.
///
/// # Errors
/// If the kernel cannot be asked.
pub fn tc_programs(
    hook: TcHook,
    iface: &str,
    direction: TcAttachType,
) -> Result<Vec<(u32, String)>> {
    match hook {
        TcHook::Tcx => Ok(SchedClassifier::query_tcx(iface, direction)?
            .1
            .into_iter()
            .map(|p| (p.id(), p.name_as_str().unwrap_or("?").to_owned()))
            .collect()),
        TcHook::Legacy => {
            let direction = match direction {
                TcAttachType::Egress => Direction::Egress,
                _ => Direction::Ingress,
            };
            Ok(tc::filters(ifindex(iface)?, direction)?
                .into_iter()
                .map(|f| (f.program_id, f.name))
                .collect())
        }
    }
}

/// tcx and XDP programs on `iface` that are not ovpn-lb's (ours are the ones
/// behind our pinned links): reported, and left alone.
#[must_use]
pub fn foreign_programs(
    iface: &str,
    layout: &Layout,
    hook: TcHook,
    xdp_prog_id: u32,
) -> Vec<String> {
    let mut found = Vec::new();
    let kind = match hook {
        TcHook::Tcx => "tcx",
        TcHook::Legacy => "tc",
    };
    for (direction, point, name) in [
        (TcAttachType::Ingress, Point::Ingress, "ingress"),
        (TcAttachType::Egress, Point::Egress, "egress"),
    ] {
        let ours = pinned_program(&pin(layout, iface, point));
        if let Ok(progs) = tc_programs(hook, iface, direction) {
            for (id, prog) in progs {
                if Some(id) != ours {
                    found.push(format!("{kind} {name} program {prog} (id {id})"));
                }
            }
        }
    }
    if xdp_prog_id != 0 && Some(xdp_prog_id) != pinned_program(&layout.xdp_link(iface)) {
        found.push(format!("XDP program id {xdp_prog_id}"));
    }
    found
}
