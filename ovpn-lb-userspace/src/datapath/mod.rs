//! The loaded BPF object and typed writes to its maps: the only place userspace
//! touches the datapath's state. Attaching programs is in `attach`; what the
//! running kernel offers, and the fallbacks, in `kernel`.

pub mod attach;
mod btf;
pub mod kernel;
pub mod rings;

use std::{
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader, VerifierLogLevel,
    maps::{Array, DevMapHash, HashMap, Map, PerCpuArray, lpm_trie::Key, lpm_trie::LpmTrie},
    programs::{SchedClassifier, TcAttachType, Xdp},
};
use ovpn_lb_common::{
    Prefix4, Prefix6, Reason, ReasonStats, Schedule, SiteConfig, TunnelConfig, TunnelStats,
    maps::{MAX_TUNNELS, SCHEDULE_BUFFERS, names, programs},
    probe::LocalView,
    queue::KernelLayout,
};

use crate::{config::LpmEntries, pins::Layout};

/// The ring accounting's kernel layout in the object's read-only data.
const RING_LAYOUT: &str = "RING_LAYOUT";

/// The BPF object, embedded at build time by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ovpn-lb-ebpf.o"));

/// Map sizes this build changes from the object's, for the upgrade test
/// only: a build made with `OVPN_LB_UPGRADE_TEST_LAYOUT` set gives
/// `PROBE_VIEW` a second (unused) entry, so its map layout differs from every
/// other build's, as a real upgrade's may.
const LAYOUT_OVERRIDES: &[(&str, u32)] = if option_env!("OVPN_LB_UPGRADE_TEST_LAYOUT").is_some() {
    &[(names::PROBE_VIEW, 2)]
} else {
    &[]
};

/// `BPF_F_RDONLY_PROG` (`include/uapi/linux/bpf.h`).
const BPF_F_RDONLY_PROG: u32 = 1 << 7;

/// The map layout this build creates: per pinned map, (type, key size,
/// value size, entries, flags).
fn object_layout() -> Result<Vec<(&'static str, [u32; 5])>> {
    let object = aya_obj::Object::parse(OBJECT).context("parsing the embedded BPF object")?;
    names::ALL
        .iter()
        .map(|&name| {
            let m = object
                .maps
                .get(name)
                .ok_or_else(|| anyhow!("the BPF object has no map named {name}"))?;
            let entries = LAYOUT_OVERRIDES
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(m.max_entries(), |&(_, e)| e);
            Ok((
                name,
                [
                    m.map_type(),
                    m.key_size(),
                    m.value_size(),
                    entries,
                    m.map_flags() & !BPF_F_RDONLY_PROG,
                ],
            ))
        })
        .collect()
}

/// How the maps pinned in `dir` differ from this build's, one line per map
/// (empty when they fit, or nothing is pinned). A pin this build does not
/// make, or one it makes that is missing beside others, differs too.
fn pinned_layout_differences(dir: &Path) -> Result<Vec<String>> {
    let pinned: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if pinned.is_empty() || OBJECT.is_empty() {
        return Ok(Vec::new());
    }
    let ours = object_layout()?;
    let mut differences: Vec<String> = pinned
        .iter()
        .filter(|p| !ours.iter().any(|(n, _)| n == p))
        .map(|p| format!("{p}: not in this build"))
        .collect();
    for (name, want) in &ours {
        let Ok(info) = aya::maps::MapInfo::from_pin(dir.join(name)) else {
            differences.push(format!("{name}: missing"));
            continue;
        };
        let kind = info.map_type().map_or(u32::MAX, |t| t as u32);
        // Device maps are read-only to programs: the kernel adds the flag.
        let have = [
            kind,
            info.key_size(),
            info.value_size(),
            info.max_entries(),
            info.map_flags() & !BPF_F_RDONLY_PROG,
        ];
        if &have != want {
            differences.push(format!(
                "{name}: type, key, value, entries, flags {have:?}, this build {want:?}"
            ));
        }
    }
    Ok(differences)
}

/// A packet that read the active index just before a flip may still be walking
/// the old buffer; it finishes within microseconds (programs run under RCU), so
/// waiting this long before overwriting that buffer is ample.
const SCHEDULE_GRACE: Duration = Duration::from_millis(10);

pub struct Datapath {
    ebpf: Ebpf,
    last_flip: Option<Instant>,
    /// How tc programs attach here, chosen at load.
    tc_hook: attach::TcHook,
    /// Why that choice.
    tc_hook_reason: String,
    /// Why the XDP hook cannot run here, if it cannot (its programs are
    /// then not loaded, and tc carries everything).
    xdp_unavailable: Option<String>,
}

/// Program `name` of the object, as its type `P`.
fn typed<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("the BPF object has no program {name}"))?;
    Ok(program.try_into()?)
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
        Self::load_with(&mut EbpfLoader::new(), None)
    }

    /// Like [`Datapath::load`], with every map pinned by name under
    /// `layout.maps()`: maps already pinned there (a previous run) are reused, so
    /// counters, configuration and schedule carry over. Maps an earlier build
    /// of another layout pinned are replaced, all of them: the programs it
    /// attached keep their maps until this run's programs replace them.
    /// `rings` is where the ring accounting reads kernel memory
    /// (`rings::kernel_layout`), if it is to run.
    ///
    /// # Errors
    /// As [`Datapath::load`]; also if an old pin cannot be removed.
    pub fn load_pinned(layout: &Layout, rings: Option<&KernelLayout>) -> Result<Self> {
        let dir = layout.maps();
        let differences = pinned_layout_differences(&dir)?;
        if !differences.is_empty() {
            log::warn!(
                "the maps pinned under {} are of another build's layout ({}): replacing them (their counters start again from zero)",
                dir.display(),
                differences.join("; ")
            );
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                crate::pins::remove_if_present(&entry.path())
                    .with_context(|| format!("removing {}", entry.path().display()))?;
            }
        }
        let paths: Vec<(&str, PathBuf)> = names::ALL.iter().map(|&n| (n, dir.join(n))).collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        Self::load_with(&mut loader, rings)
    }

    fn load_with<'a>(loader: &mut EbpfLoader<'a>, rings: Option<&'a KernelLayout>) -> Result<Self> {
        for &(name, entries) in LAYOUT_OVERRIDES {
            loader.map_max_entries(name, entries);
        }
        if OBJECT.is_empty() {
            bail!("the BPF object was not built into this binary: build with `cargo xtask build`");
        }
        if let Some(rings) = rings {
            loader.override_global(RING_LAYOUT, rings, true);
        }
        // For whoever changes the programs: the verifier's whole walk in the
        // error when it refuses one.
        if std::env::var_os("OVPN_LB_VERIFIER_LOG").is_some() {
            loader.verifier_log_level(VerifierLogLevel::DEBUG | VerifierLogLevel::STATS);
        }
        let mut ebpf = loader.load(OBJECT).context("loading the BPF object")?;
        // A kernel that refuses a program is refused, named, before anything
        // is attached.
        let refused = |name: &str, e: aya::programs::ProgramError| {
            let detail = format!("{e:#}");
            let reason = kernel::refusal(name, &detail);
            anyhow!(detail).context(reason)
        };
        for &name in programs::TC {
            let result = typed::<SchedClassifier>(&mut ebpf, name)?.load();
            result.map_err(|e| refused(name, e))?;
        }
        // Without the drivers' XDP features (the `netdev` family) the XDP
        // hook is never chosen, and its programs are not loaded (Linux 6.1's
        // verifier works for minutes on `lan_ingress_xdp`, then refuses it).
        let mut xdp_unavailable = (!crate::netlink::netdev::available()).then(|| {
            format!(
                "Linux {} has no netdev netlink family (6.3+), so no drivers' XDP features, which the XDP hook needs",
                kernel::release()
            )
        });
        if xdp_unavailable.is_none() {
            for &name in programs::XDP {
                // The XDP hook is optional (tc carries everything): a
                // verifier that refuses its programs (Ubuntu 24.04's 6.8
                // refuses `lan_ingress_xdp`) leaves the hook out, stated.
                if let Err(e) = typed::<Xdp>(&mut ebpf, name)?.load() {
                    xdp_unavailable = Some(kernel::xdp_refusal(name, &format!("{e:#}")));
                    break;
                }
            }
        }
        let (tc_hook, tc_hook_reason) = attach::TcHook::detect();
        Ok(Self {
            ebpf,
            last_flip: None,
            tc_hook,
            tc_hook_reason,
            xdp_unavailable,
        })
    }

    /// What this kernel offers and the fallbacks in force (the ring
    /// accounting's is added when it is tried).
    #[must_use]
    pub fn kernel_report(&self) -> kernel::Report {
        kernel::Report::new(
            self.tc_hook,
            &self.tc_hook_reason,
            self.xdp_unavailable.as_deref(),
        )
    }

    /// Why the XDP hook cannot run here, if it cannot.
    #[must_use]
    pub fn xdp_unavailable(&self) -> Option<&str> {
        self.xdp_unavailable.as_deref()
    }

    /// A loaded tc program, by name (see `ovpn_lb_common::maps::programs`).
    ///
    /// # Errors
    /// If there is no such program.
    pub fn program(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        typed(&mut self.ebpf, name)
    }

    /// A loaded XDP program, by name.
    ///
    /// # Errors
    /// If there is no such program.
    pub fn xdp_program(&mut self, name: &str) -> Result<&mut Xdp> {
        typed(&mut self.ebpf, name)
    }

    /// Attaches program `name` to the ingress of `iface` (tcx where the kernel
    /// has it). The link lives as long as this `Datapath`.
    ///
    /// # Errors
    /// If there is no such program or interface, or the kernel refuses.
    pub fn attach_ingress(&mut self, name: &str, iface: &str) -> Result<()> {
        use aya::programs::tc::{NlOptions, TcAttachOptions, TcError, qdisc_add_clsact};
        let program = typed::<SchedClassifier>(&mut self.ebpf, name)?;
        if self.tc_hook == attach::TcHook::Legacy {
            // A filter, on a clsact qdisc that must be there.
            match qdisc_add_clsact(iface) {
                Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                other => other.with_context(|| format!("adding clsact to {iface}"))?,
            }
            program.attach_with_options(
                iface,
                TcAttachType::Ingress,
                TcAttachOptions::Netlink(NlOptions::default()),
            )
        } else {
            program.attach(iface, TcAttachType::Ingress)
        }
        .with_context(|| format!("attaching {name} to {iface} ingress"))?;
        Ok(())
    }

    /// Makes the LPM maps hold exactly `remote` (`REMOTE_*`), `ours`
    /// (`OUR_XLAT_*`) and `guarded` (`GUARD_*`). New entries go in before
    /// stale ones come out, so no packet falls between two configurations.
    ///
    /// # Errors
    /// If the kernel refuses an update.
    pub fn sync_prefixes(
        &mut self,
        remote: &LpmEntries,
        ours: &LpmEntries,
        guarded: &LpmEntries,
    ) -> Result<()> {
        self.sync_lpm(names::REMOTE_V4, &remote.v4)?;
        self.sync_lpm(names::REMOTE_V6, &remote.v6)?;
        self.sync_lpm(names::OUR_XLAT_V4, &ours.v4)?;
        self.sync_lpm(names::OUR_XLAT_V6, &ours.v6)?;
        self.sync_lpm(names::GUARD_V4, &guarded.v4)?;
        self.sync_lpm(names::GUARD_V6, &guarded.v6)
    }

    /// Clears the entries of tunnel ids from `count` on (a configuration with
    /// fewer tunnels than the last one), and drops device index entries not
    /// in `ifindexes`.
    ///
    /// # Errors
    /// If the kernel refuses an update.
    pub fn retire_tunnels(&mut self, count: usize, ifindexes: &[u32]) -> Result<()> {
        let mut tunnels: Array<_, TunnelConfig> =
            map(&mut self.ebpf, names::TUNNELS)?.try_into()?;
        for id in count..MAX_TUNNELS {
            tunnels.set(u32::try_from(id)?, TunnelConfig::default(), 0)?;
        }
        let mut devices: DevMapHash<_> = map(&mut self.ebpf, names::TUNNEL_DEVICES)?.try_into()?;
        for id in count..MAX_TUNNELS {
            let _ = devices.remove(u32::try_from(id)?);
        }
        let mut by_if: HashMap<_, u32, u32> =
            map(&mut self.ebpf, names::TUNNEL_BY_IF)?.try_into()?;
        let stale: Vec<u32> = by_if
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !ifindexes.contains(k))
            .collect();
        for k in stale {
            let _ = by_if.remove(&k);
        }
        self.index_ring_devices()
    }

    /// The `TUNNELS` entry of `id` as the datapath holds it now.
    ///
    /// # Errors
    /// If the map cannot be read.
    pub fn tunnel(&self, id: u32) -> Result<TunnelConfig> {
        let m: Array<_, TunnelConfig> = self.map_ref(names::TUNNELS)?.try_into()?;
        Ok(m.get(&id, 0)?)
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
        let mut devices: DevMapHash<_> = map(&mut self.ebpf, names::TUNNEL_DEVICES)?.try_into()?;
        if tunnel.ifindex == 0 {
            // Absent already is fine.
            let _ = devices.remove(id);
        } else {
            devices
                .insert(id, tunnel.ifindex, None, 0)
                .context("writing TUNNEL_DEVICES")?;
        }
        let mut tunnels: Array<_, TunnelConfig> =
            map(&mut self.ebpf, names::TUNNELS)?.try_into()?;
        tunnels.set(id, tunnel, 0).context("writing TUNNELS")?;
        self.index_ring_devices()
    }

    /// `RING_SLOTS` after `TUNNEL_BY_IF`: the ring accounting's table of
    /// our tunnel devices.
    fn index_ring_devices(&mut self) -> Result<()> {
        let by_if: HashMap<_, u32, u32> = self.map_ref(names::TUNNEL_BY_IF)?.try_into()?;
        let devices: Vec<(u32, u32)> = by_if.iter().filter_map(Result::ok).collect();
        self.sync_ring_slots(&devices)
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

    /// Keeps addresses in `prefix` off the WAN (`GUARD_V4`; `kind`: a
    /// `guard::*` value).
    ///
    /// # Errors
    /// If the kernel refuses the update.
    pub fn set_guard_v4(&mut self, prefix: Prefix4, kind: u32) -> Result<()> {
        self.lpm_insert(names::GUARD_V4, prefix.prefix_len(), prefix.octets(), kind)
    }

    /// # Errors
    /// If the kernel refuses the update.
    pub fn set_guard_v6(&mut self, prefix: Prefix6, kind: u32) -> Result<()> {
        self.lpm_insert(names::GUARD_V6, prefix.prefix_len(), prefix.octets(), kind)
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

    /// Our view of the tunnels (bit k: tunnel k usable) and our flags,
    /// which the tunnel programs write into the answers they reflect.
    ///
    /// # Errors
    /// If the object has no `PROBE_VIEW` map or the kernel refuses.
    pub fn set_probe_view(&mut self, view: &LocalView) -> Result<()> {
        let mut m: Array<_, LocalView> = map(&mut self.ebpf, names::PROBE_VIEW)?.try_into()?;
        m.set(0, view, 0).context("writing PROBE_VIEW")?;
        Ok(())
    }

    /// The ring buffer the tunnel programs report probes on; taken once.
    ///
    /// # Errors
    /// If the object has no such map.
    pub fn take_probe_events(&mut self) -> Result<aya::maps::RingBuf<aya::maps::MapData>> {
        let m = self
            .ebpf
            .take_map(names::PROBE_EVENTS)
            .ok_or_else(|| anyhow!("the BPF object has no map named {}", names::PROBE_EVENTS))?;
        Ok(m.try_into()?)
    }

    /// The loaded object, for what needs it whole (aya-log).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    fn map_ref(&self, name: &str) -> Result<&Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| anyhow!("the BPF object has no map named {name}"))
    }
}
