//! The loaded BPF object and typed writes to its maps: the only place userspace
//! touches the datapath's state.

use std::{
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, PerCpuArray, lpm_trie::Key, lpm_trie::LpmTrie},
    programs::{
        SchedClassifier, TcAttachType, Xdp,
        links::{FdLink, LinkError, PinnedLink},
        tc::SchedClassifierLink,
        xdp::{XdpLink, XdpMode},
    },
};
use ovpn_lb_common::{
    Prefix4, Prefix6, Reason, ReasonStats, Schedule, SiteConfig, TunnelConfig, TunnelStats,
    maps::{MAX_TUNNELS, SCHEDULE_BUFFERS, names, programs, route},
};

use crate::{
    config::{Config, Device, Net},
    pins::{Layout, remove_if_present},
};

/// The BPF object, embedded at build time by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ovpn-lb-ebpf.o"));

/// A packet that read the active index just before a flip may still be walking
/// the old buffer; it finishes within microseconds (programs run under RCU), so
/// waiting this long before overwriting that buffer is ample.
const SCHEDULE_GRACE: Duration = Duration::from_millis(10);

/// What [`Datapath::attach_pinned`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A pinned link existed; its program was swapped in place.
    Replaced,
    /// A new link was made and pinned.
    Created,
}

pub struct Datapath {
    ebpf: Ebpf,
    last_flip: Option<Instant>,
}

/// Hands the link pinned at `pin`, if any, to `replace`, which swaps its
/// program; true if it did. A pin it could not use (its device was
/// recreated) is removed, so a new link can take its place.
fn pinned_link(pin: &Path, replace: impl FnOnce(FdLink) -> bool) -> Result<bool> {
    let Ok(pinned) = PinnedLink::from_pin(pin) else {
        return Ok(false);
    };
    if replace(FdLink::from(pinned)) {
        return Ok(true);
    }
    remove_if_present(pin).with_context(|| format!("removing stale {}", pin.display()))?;
    Ok(false)
}

fn pin_link(link: FdLink, pin: &Path) -> Result<Attached> {
    link.pin(pin)
        .with_context(|| format!("pinning the link at {}", pin.display()))?;
    Ok(Attached::Created)
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("the BPF object has no map named {name}"))
}

impl Datapath {
    /// Loads the embedded object into the kernel: maps are created, programs are
    /// verified and loaded, nothing is attached.
    ///
    /// # Errors
    /// If the object was not built, or the kernel refuses a map or program.
    pub fn load() -> Result<Self> {
        Self::load_with(&mut EbpfLoader::new())
    }

    /// Like [`Datapath::load`], with every map pinned by name under
    /// `layout.maps()`: maps already pinned there (a previous run) are reused, so
    /// counters, configuration and schedule carry over.
    ///
    /// # Errors
    /// As [`Datapath::load`]; also if a pinned map does not fit this object.
    pub fn load_pinned(layout: &Layout) -> Result<Self> {
        let dir = layout.maps();
        let paths: Vec<(&str, PathBuf)> = names::ALL.iter().map(|&n| (n, dir.join(n))).collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        Self::load_with(&mut loader).with_context(|| {
            format!(
                "maps pinned under {} do not fit this build; `ovpn-lb detach` removes them",
                dir.display()
            )
        })
    }

    fn load_with(loader: &mut EbpfLoader) -> Result<Self> {
        if OBJECT.is_empty() {
            bail!("the BPF object was not built into this binary: build with `cargo xtask build`");
        }
        let mut ebpf = loader.load(OBJECT).context("loading the BPF object")?;
        for &name in programs::TC {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("the BPF object has no program {name}"))?
                .try_into()?;
            program
                .load()
                .with_context(|| format!("loading BPF program {name}"))?;
        }
        for &name in programs::XDP {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("the BPF object has no program {name}"))?
                .try_into()?;
            program
                .load()
                .with_context(|| format!("loading BPF program {name}"))?;
        }
        Ok(Self {
            ebpf,
            last_flip: None,
        })
    }

    /// A loaded program, by name (see `ovpn_lb_common::maps::programs`).
    ///
    /// # Errors
    /// If there is no such program.
    pub fn program(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        Ok(self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("no program {name}"))?
            .try_into()?)
    }

    /// A loaded XDP program, by name.
    ///
    /// # Errors
    /// If there is no such program.
    pub fn xdp_program(&mut self, name: &str) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("no program {name}"))?
            .try_into()?)
    }

    /// Attaches program `name` to the ingress of `iface` (tcx where the kernel
    /// has it). The link lives as long as this `Datapath`.
    ///
    /// # Errors
    /// If there is no such program or interface, or the kernel refuses.
    pub fn attach_ingress(&mut self, name: &str, iface: &str) -> Result<()> {
        self.program(name)?
            .attach(iface, TcAttachType::Ingress)
            .with_context(|| format!("attaching {name} to {iface} ingress"))?;
        Ok(())
    }

    /// Attaches `program` to `iface`'s ingress through a tcx link pinned at
    /// `pin`. If that pin holds a live link, its program is replaced in place
    /// (one atomic `BPF_LINK_UPDATE`: no packet goes unprocessed).
    ///
    /// # Errors
    /// If the interface is missing or the kernel refuses.
    pub fn attach_pinned(&mut self, program: &str, iface: &str, pin: &Path) -> Result<Attached> {
        let prog = self.program(program)?;
        let replaced = pinned_link(pin, |old| {
            SchedClassifierLink::try_from(old).is_ok_and(|l| prog.attach_to_link(l).is_ok())
        })?;
        if replaced {
            return Ok(Attached::Replaced);
        }
        let id = prog.attach(iface, TcAttachType::Ingress).with_context(|| {
            format!("attaching {program} to {iface} ingress (tcx, Linux 6.6 or newer)")
        })?;
        let link: FdLink = prog
            .take_link(id)?
            .try_into()
            .map_err(|e: LinkError| anyhow!("{program} on {iface} is not a tcx link: {e}"))?;
        pin_link(link, pin)
    }

    /// Attaches XDP `program` to `iface` in native (driver) mode through a
    /// link pinned at `pin`, replacing the program of a live pinned link in
    /// place. Generic XDP is never used: it loses offloaded checksums.
    ///
    /// # Errors
    /// If the interface is missing or its driver refuses native XDP.
    pub fn attach_xdp_pinned(
        &mut self,
        program: &str,
        iface: &str,
        pin: &Path,
    ) -> Result<Attached> {
        let prog = self.xdp_program(program)?;
        let replaced = pinned_link(pin, |old| {
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
        pin_link(link, pin)
    }

    /// Writes a validated configuration: `site` (from `Config::site` plus
    /// what the loader knows of the LAN device), tunnels (one [`Device`] per
    /// tunnel), prefixes. New entries go in before stale ones come out, so no
    /// packet falls between two configurations.
    ///
    /// # Errors
    /// If the kernel refuses an update.
    pub fn write_config(
        &mut self,
        config: &Config,
        site: &SiteConfig,
        devices: &[Device],
    ) -> Result<()> {
        self.set_site(site)?;
        let mut wanted_if = Vec::new();
        for (k, tunnel) in config.tunnels.iter().enumerate() {
            let id = u32::try_from(k)?;
            let device = devices.get(k).copied().unwrap_or_default();
            self.set_tunnel(id, &tunnel.datapath_config(&device), None)?;
            if device.ifindex != 0 {
                wanted_if.push(device.ifindex);
            }
        }
        let mut tunnels: Array<_, TunnelConfig> =
            map(&mut self.ebpf, names::TUNNELS)?.try_into()?;
        for id in config.tunnels.len()..MAX_TUNNELS {
            tunnels.set(u32::try_from(id)?, TunnelConfig::default(), 0)?;
        }
        let mut by_if: HashMap<_, u32, u32> =
            map(&mut self.ebpf, names::TUNNEL_BY_IF)?.try_into()?;
        let stale: Vec<u32> = by_if
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted_if.contains(k))
            .collect();
        for k in stale {
            let _ = by_if.remove(&k);
        }

        let (mut remote4, mut remote6) = (Vec::new(), Vec::new());
        for (nets, action) in [
            (&config.remote, route::SPRAY),
            (&config.exclude, route::EXCLUDE),
        ] {
            for net in nets {
                match net {
                    Net::V4(p) => remote4.push((p.prefix_len(), p.octets(), action)),
                    Net::V6(p) => remote6.push((p.prefix_len(), p.octets(), action)),
                }
            }
        }
        let (mut ours4, mut ours6) = (Vec::new(), Vec::new());
        for (k, t) in config.tunnels.iter().enumerate() {
            let id = u32::try_from(k)?;
            if let Some(p) = t.xlat_v4 {
                ours4.push((p.prefix_len(), p.octets(), id));
            }
            if let Some(p) = t.xlat_v6 {
                ours6.push((p.prefix_len(), p.octets(), id));
            }
        }
        self.sync_lpm(names::REMOTE_V4, &remote4)?;
        self.sync_lpm(names::REMOTE_V6, &remote6)?;
        self.sync_lpm(names::OUR_XLAT_V4, &ours4)?;
        self.sync_lpm(names::OUR_XLAT_V6, &ours6)
    }

    fn sync_lpm<const N: usize>(
        &mut self,
        name: &str,
        wanted: &[(u8, [u8; N], u32)],
    ) -> Result<()> {
        for &(len, octets, value) in wanted {
            self.lpm_insert(name, len, octets, value)?;
        }
        let mut m: LpmTrie<_, [u8; N], u32> = map(&mut self.ebpf, name)?.try_into()?;
        let stale: Vec<Key<[u8; N]>> = m
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                !wanted
                    .iter()
                    .any(|w| u32::from(w.0) == k.prefix_len() && w.1 == k.data())
            })
            .collect();
        for k in stale {
            m.remove(&k)
                .with_context(|| format!("removing a stale entry from {name}"))?;
        }
        Ok(())
    }

    /// The live schedule, as packets see it.
    ///
    /// # Errors
    /// If a map cannot be read.
    pub fn live_schedule(&self) -> Result<Schedule> {
        let active: Array<_, u32> = self.map_ref(names::ACTIVE_SCHED)?.try_into()?;
        let index = active.get(&0, 0)?;
        let buffers: Array<_, Schedule> = self.map_ref(names::SCHEDULES)?.try_into()?;
        Ok(buffers.get(&index, 0)?)
    }

    /// # Errors
    /// If the kernel refuses the update.
    pub fn set_site(&mut self, site: &SiteConfig) -> Result<()> {
        let mut m: Array<_, SiteConfig> = map(&mut self.ebpf, names::SITE)?.try_into()?;
        m.set(0, site, 0).context("writing SITE")?;
        Ok(())
    }

    /// Writes tunnel `id` and indexes its device for the tunnel ingress program.
    /// `previous_ifindex` is dropped from the index (a recreated device).
    ///
    /// # Errors
    /// If `id` is out of range or the kernel refuses the update.
    pub fn set_tunnel(
        &mut self,
        id: u32,
        tunnel: &TunnelConfig,
        previous_ifindex: Option<u32>,
    ) -> Result<()> {
        if id as usize >= MAX_TUNNELS {
            bail!("tunnel id {id} is beyond the datapath's {MAX_TUNNELS} tunnels");
        }
        let mut by_if: HashMap<_, u32, u32> =
            map(&mut self.ebpf, names::TUNNEL_BY_IF)?.try_into()?;
        if let Some(old) = previous_ifindex.filter(|&old| old != tunnel.ifindex && old != 0) {
            // Absent already is fine.
            let _ = by_if.remove(&old);
        }
        if tunnel.ifindex != 0 {
            by_if
                .insert(tunnel.ifindex, id, 0)
                .context("writing TUNNEL_BY_IF")?;
        }
        let mut tunnels: Array<_, TunnelConfig> =
            map(&mut self.ebpf, names::TUNNELS)?.try_into()?;
        tunnels.set(id, tunnel, 0).context("writing TUNNELS")?;
        Ok(())
    }

    /// Marks destinations in `prefix` as sprayed (`route::SPRAY`) or left to the
    /// kernel (`route::EXCLUDE`).
    ///
    /// # Errors
    /// If the kernel refuses the update.
    pub fn set_remote_v4(&mut self, prefix: Prefix4, action: u32) -> Result<()> {
        self.lpm_insert(
            names::REMOTE_V4,
            prefix.prefix_len(),
            prefix.octets(),
            action,
        )
    }

    /// # Errors
    /// If the kernel refuses the update.
    pub fn set_remote_v6(&mut self, prefix: Prefix6, action: u32) -> Result<()> {
        self.lpm_insert(
            names::REMOTE_V6,
            prefix.prefix_len(),
            prefix.octets(),
            action,
        )
    }

    /// Registers one of our translation prefixes, so replies to it are restored.
    ///
    /// # Errors
    /// If the kernel refuses the update.
    pub fn set_our_xlat_v4(&mut self, prefix: Prefix4, tunnel: u32) -> Result<()> {
        self.lpm_insert(
            names::OUR_XLAT_V4,
            prefix.prefix_len(),
            prefix.octets(),
            tunnel,
        )
    }

    /// # Errors
    /// If the kernel refuses the update.
    pub fn set_our_xlat_v6(&mut self, prefix: Prefix6, tunnel: u32) -> Result<()> {
        self.lpm_insert(
            names::OUR_XLAT_V6,
            prefix.prefix_len(),
            prefix.octets(),
            tunnel,
        )
    }

    fn lpm_insert<const N: usize>(
        &mut self,
        name: &str,
        prefix_len: u8,
        octets: [u8; N],
        value: u32,
    ) -> Result<()> {
        let mut m: LpmTrie<_, [u8; N], u32> = map(&mut self.ebpf, name)?.try_into()?;
        m.insert(&Key::new(prefix_len.into(), octets), value, 0)
            .with_context(|| format!("writing {name}"))?;
        Ok(())
    }

    /// Makes `schedule` live without any packet seeing a half-written one: it is
    /// written into the buffer packets are not reading, then the active index
    /// (one aligned 32-bit word) is flipped.
    ///
    /// # Errors
    /// If the kernel refuses an update.
    pub fn publish_schedule(&mut self, schedule: &Schedule) -> Result<()> {
        if let Some(since) = self.last_flip.map(|t| t.elapsed())
            && since < SCHEDULE_GRACE
        {
            thread::sleep(SCHEDULE_GRACE.saturating_sub(since));
        }
        let active: Array<_, u32> = map(&mut self.ebpf, names::ACTIVE_SCHED)?.try_into()?;
        let next = (active.get(&0, 0)? + 1) % SCHEDULE_BUFFERS;
        let mut buffers: Array<_, Schedule> = map(&mut self.ebpf, names::SCHEDULES)?.try_into()?;
        buffers
            .set(next, schedule, 0)
            .context("writing SCHEDULES")?;
        let mut active: Array<_, u32> = map(&mut self.ebpf, names::ACTIVE_SCHED)?.try_into()?;
        active.set(0, next, 0).context("flipping ACTIVE_SCHED")?;
        self.last_flip = Some(Instant::now());
        Ok(())
    }

    /// Counters of tunnel `id`, summed over CPUs.
    ///
    /// # Errors
    /// If the map cannot be read.
    pub fn tunnel_stats(&self, id: u32) -> Result<TunnelStats> {
        let m: PerCpuArray<_, TunnelStats> = self.map_ref(names::TUNNEL_STATS)?.try_into()?;
        Ok(m.get(&id, 0)?
            .iter()
            .fold(TunnelStats::default(), TunnelStats::plus))
    }

    /// Counters of one reason, summed over CPUs.
    ///
    /// # Errors
    /// If the map cannot be read.
    pub fn reason_stats(&self, reason: Reason) -> Result<ReasonStats> {
        let m: PerCpuArray<_, ReasonStats> = self.map_ref(names::REASON_STATS)?.try_into()?;
        Ok(m.get(&(reason as u32), 0)?
            .iter()
            .fold(ReasonStats::default(), ReasonStats::plus))
    }

    /// Pins every map under `dir` (which must be on a bpffs), by map name.
    ///
    /// # Errors
    /// If a pin cannot be created.
    pub fn pin_maps(&mut self, dir: &Path) -> Result<()> {
        for &name in names::ALL {
            let path = dir.join(name);
            map(&mut self.ebpf, name)?
                .pin(&path)
                .with_context(|| format!("pinning {name} at {}", path.display()))?;
        }
        Ok(())
    }

    fn map_ref(&self, name: &str) -> Result<&Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| anyhow!("the BPF object has no map named {name}"))
    }
}
