//! The ring accounting packet spray decides by (`ovpn_lb_common::queue`):
//! where its programs read kernel memory (written into the object before it
//! loads), attaching the best set of hooks the kernel takes through pinned
//! links (so they keep counting while no loader runs, as long as the LAN
//! program keeps picking by their figures), and reading their figures.

use std::{
    fs,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd},
        unix::fs::MetadataExt as _,
    },
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Btf as KernelBtf,
    maps::Array,
    programs::{BtfTracePoint, FExit, RawTracePoint, links::FdLink},
};
use ovpn_lb_common::{
    MAX_TUNNELS,
    maps::{
        names,
        programs::{self, Kind, Tracing},
    },
    queue::{KernelLayout, RingHooks, Rings, TunnelQueue, slot},
};

use super::{Datapath, btf::Btf, map, typed};
use crate::pins::{Layout, remove_if_present};

/// `NETDEV_ALIGN`: a device's private area starts at this alignment after
/// its `struct net_device`.
const NETDEV_ALIGN: u32 = 32;
/// The function whose return is a read out of a tun ring (and whose
/// `consume_skb` marks one, for the tracepoint hooks).
const READ_FUNCTION: &str = "tun_do_read";
/// A device whose transmit function this is, is a tun or TAP device.
const XMIT_FUNCTION: &str = "tun_net_xmit";
/// Environment: the best hooks the loader may try (`fexit`, `tp_btf` or
/// `raw_tp`); each test of a fallback sets it.
pub const HOOKS_ENV: &str = "OVPN_LB_RING_HOOKS";
/// Environment: account the rings under any spray, not packet spray's
/// alone (`1`). Round robin ignores the figures; the forwarding bench sets
/// it to price the accounting apart from the pick.
pub const ACCOUNT_ENV: &str = "OVPN_LB_ACCOUNT_RINGS";

/// Whether the rings are accounted under `spray`: packet spray decides by
/// them; the others only where [`ACCOUNT_ENV`] asks.
#[must_use]
pub fn accounted(spray: ovpn_lb_common::maps::Spray) -> bool {
    spray == ovpn_lb_common::maps::Spray::Packet
        || std::env::var(ACCOUNT_ENV).is_ok_and(|v| v == "1")
}

/// Where the ring accounting's programs find what they read, on this
/// kernel, for the network namespace this process is in.
///
/// # Errors
/// If the kernel has no BTF, lacks a member, or hides the tun functions'
/// addresses.
pub fn kernel_layout() -> Result<KernelLayout> {
    let vmlinux = fs::read("/sys/kernel/btf/vmlinux")
        .context("reading the kernel's BTF (/sys/kernel/btf/vmlinux)")?;
    let mut btf = Btf::parse(&vmlinux).context("parsing /sys/kernel/btf/vmlinux")?;
    // tun built as a module: its structs are in its own split BTF.
    if let Ok(module) = fs::read("/sys/kernel/btf/tun") {
        btf.add_split(&module)
            .context("parsing /sys/kernel/btf/tun")?;
    }
    let kallsyms = fs::read_to_string("/proc/kallsyms").context("reading /proc/kallsyms")?;
    let (read_start, read_end) = symbol_range(&kallsyms, READ_FUNCTION)?;
    let (tun_xmit, _) = symbol_range(&kallsyms, XMIT_FUNCTION)?;
    let netns = fs::metadata("/proc/self/ns/net")
        .context("reading our network namespace")?
        .ino();
    Ok(KernelLayout {
        netns: u32::try_from(netns).context("network namespace inode")?,
        skb_len: btf.offset("sk_buff", "len")?,
        skb_dev: btf.offset("sk_buff", "dev")?,
        dev_ifindex: btf.offset("net_device", "ifindex")?,
        // `possible_net_t` is `struct { struct net *net; }`.
        dev_net: btf.offset("net_device", "nd_net")?,
        dev_ops: btf.offset("net_device", "netdev_ops")?,
        ops_start_xmit: btf.offset("net_device_ops", "ndo_start_xmit")?,
        net_inum: btf.offset("net", "ns")? + btf.offset("ns_common", "inum")?,
        dev_priv: btf.size("net_device")?.next_multiple_of(NETDEV_ALIGN),
        tun_tfiles: btf.offset("tun_struct", "tfiles")?,
        tun_dev: btf.offset("tun_struct", "dev")?,
        tfile_tx_ring: btf.offset("tun_file", "tx_ring")?,
        ring_consumer_head: btf.offset("ptr_ring", "consumer_head")?,
        ring_queue: btf.offset("ptr_ring", "queue")?,
        xdp_frame_len: btf.offset("xdp_frame", "len")?,
        pad: 0,
        tun_xmit,
        read_start,
        read_end,
    })
}

/// `[start, next symbol)` of function `name` in `/proc/kallsyms` text.
fn symbol_range(kallsyms: &str, name: &str) -> Result<(u64, u64)> {
    let mut start = None;
    let mut addresses = Vec::new();
    for line in kallsyms.lines() {
        let mut fields = line.split_whitespace();
        let (Some(address), Some(_), Some(symbol)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Ok(address) = u64::from_str_radix(address, 16) else {
            continue;
        };
        if symbol == name {
            start = Some(address);
        }
        addresses.push(address);
    }
    let start = start.ok_or_else(|| anyhow!("{name} is not in /proc/kallsyms"))?;
    if start == 0 {
        bail!("/proc/kallsyms hides addresses (kernel.kptr_restrict; run as root)");
    }
    let end = addresses
        .into_iter()
        .filter(|&a| a > start)
        .min()
        .ok_or_else(|| anyhow!("no symbol follows {name} in /proc/kallsyms"))?;
    Ok((start, end))
}

/// The hooks to try, best first: all of them, or from `OVPN_LB_RING_HOOKS`
/// down.
///
/// # Errors
/// If the variable names no set of hooks.
pub fn hooks_to_try() -> Result<Vec<RingHooks>> {
    let from = match std::env::var(HOOKS_ENV) {
        Ok(name) => RingHooks::from_name(&name)
            .ok_or_else(|| anyhow!("{HOOKS_ENV}={name}: expected fexit, tp_btf or raw_tp"))?,
        Err(_) => RingHooks::Fexit,
    };
    Ok(RingHooks::ALL.into_iter().filter(|&h| h >= from).collect())
}

impl Datapath {
    /// Switches the ring accounting on with the best hooks of `hooks` the
    /// kernel takes, attached through links pinned under `pins` (replacing
    /// a previous run's); returns which, and why each better one failed.
    /// The object must have been loaded with the kernel layout.
    ///
    /// # Errors
    /// If no set of hooks can run; nothing is left attached then.
    pub fn account_rings(
        &mut self,
        pins: &Layout,
        hooks: &[RingHooks],
    ) -> Result<(RingHooks, Vec<String>)> {
        let mut failed = Vec::new();
        let btf = KernelBtf::from_sys_fs().context("reading the kernel's BTF");
        for &h in hooks {
            // Raw tracepoints read every field by offset: they alone run
            // without the kernel's BTF.
            let attached = match &btf {
                Ok(btf) => self.attach_tracing(pins, h, Some(btf)),
                Err(_) if h == RingHooks::RawTracepoint => self.attach_tracing(pins, h, None),
                Err(e) => Err(anyhow!("{e:#}")),
            };
            match attached {
                Ok(()) => return Ok((h, failed)),
                Err(e) => {
                    // Half attached would count enqueues without reads.
                    let _ = self.stop_accounting(pins);
                    failed.push(format!("{}: {e:#}", h.name()));
                }
            }
        }
        bail!("{}", failed.join("; "))
    }

    fn attach_tracing(
        &mut self,
        pins: &Layout,
        hooks: RingHooks,
        btf: Option<&KernelBtf>,
    ) -> Result<()> {
        let retired = programs::RETIRED_TRACING
            .iter()
            .map(|n| pins.tracing_link(n));
        for path in retired {
            remove_if_present(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        for t in hooks.programs() {
            let link = self.attach_one(t, btf)?;
            pin(pins, t, link)?;
        }
        let mut running = hooks.programs().to_vec();
        for t in hooks.extras() {
            match self.attach_one(t, btf) {
                Ok(link) => {
                    pin(pins, t, link)?;
                    running.push(*t);
                }
                Err(e) => log::info!(
                    "ring accounting: {} without {}: {e:#}",
                    hooks.name(),
                    t.name
                ),
            }
        }
        // Another set's links (a previous run's choice), or an extra this
        // run could not attach, would count twice or count stale.
        for t in programs::TRACING {
            if !running.contains(t) {
                remove_if_present(&pins.tracing_link(t.name))?;
            }
        }
        Ok(())
    }

    /// Loads (once) and attaches tracing program `t`; `btf` is needed by all
    /// but raw tracepoints.
    fn attach_one(&mut self, t: &Tracing, btf: Option<&KernelBtf>) -> Result<FdLink> {
        let loading = |e| anyhow!("loading BPF program {} for {}: {e}", t.name, t.target);
        let attaching = |e| anyhow!("attaching {} to {}: {e}", t.name, t.target);
        let typed_btf = || btf.ok_or_else(|| anyhow!("{} needs the kernel's BTF", t.name));
        Ok(match t.kind {
            Kind::Fexit => {
                let p = typed::<FExit>(&mut self.ebpf, t.name)?;
                if p.fd().is_err() {
                    p.load(t.target, typed_btf()?).map_err(loading)?;
                }
                let id = p.attach().map_err(attaching)?;
                FdLink::from(p.take_link(id)?)
            }
            Kind::BtfTracepoint => {
                let p = typed::<BtfTracePoint>(&mut self.ebpf, t.name)?;
                if p.fd().is_err() {
                    p.load(t.target, typed_btf()?).map_err(loading)?;
                }
                let id = p.attach().map_err(attaching)?;
                FdLink::from(p.take_link(id)?)
            }
            Kind::RawTracepoint => {
                let p = typed::<RawTracePoint>(&mut self.ebpf, t.name)?;
                if p.fd().is_err() {
                    p.load().map_err(loading)?;
                }
                let id = p.attach(t.target).map_err(attaching)?;
                FdLink::from(p.take_link(id)?)
            }
        })
    }

    /// Switches the ring accounting off: removes its pinned links, which
    /// detaches the programs.
    ///
    /// # Errors
    /// If a pin cannot be removed.
    pub fn stop_accounting(&mut self, pins: &Layout) -> Result<()> {
        let names = programs::TRACING
            .iter()
            .map(|t| t.name)
            .chain(programs::RETIRED_TRACING.iter().copied());
        for name in names {
            remove_if_present(&pins.tracing_link(name))?;
        }
        Ok(())
    }

    /// Every tunnel's ring accounting.
    ///
    /// # Errors
    /// If the map cannot be read.
    pub fn rings(&self) -> Result<Rings> {
        Ok(self.mapped_rings()?.read_all())
    }

    /// Tunnel `id`'s ring accounting.
    ///
    /// # Errors
    /// If the map cannot be read.
    pub fn queue(&self, id: u32) -> Result<TunnelQueue> {
        self.mapped_rings()?.read(id)
    }

    /// Starts tunnel `id`'s accounting afresh at `now` (monotonic ns): its
    /// device is new, and the old device's figures say nothing about the
    /// new ring. Only that tunnel's record is written, so counts the
    /// programs make meanwhile in the others' stay.
    ///
    /// # Errors
    /// If the map cannot be written.
    pub fn reset_queue(&mut self, id: u32, now: u64) -> Result<()> {
        self.mapped_rings()?.write(id, TunnelQueue::fresh(now))
    }

    /// Writes every tunnel's ring accounting at once: for tests and the
    /// benchmark, which set the rings up as the programs would leave them.
    ///
    /// # Errors
    /// If the map cannot be written.
    pub fn set_rings(&mut self, rings: &Rings) -> Result<()> {
        Array::<_, Rings>::try_from(map(&mut self.ebpf, names::RINGS)?)?
            .set(0, rings, 0)
            .context("writing the ring accounting")
    }

    fn mapped_rings(&self) -> Result<MappedRings> {
        let map = self
            .ebpf
            .map(names::RINGS)
            .ok_or_else(|| anyhow!("the BPF object has no map {}", names::RINGS))?;
        let aya::maps::Map::Array(data) = map else {
            bail!("{} is not an array", names::RINGS);
        };
        MappedRings::new(data.fd().as_fd())
    }

    /// Makes `RING_SLOTS` name exactly the tunnel devices `devices`
    /// (ifindex, tunnel id): each in its slot, a slot two share marked so.
    ///
    /// # Errors
    /// If the map cannot be written.
    pub fn sync_ring_slots(&mut self, devices: &[(u32, u32)]) -> Result<()> {
        let mut wanted = vec![0u64; slot::SLOTS];
        for &(ifindex, id) in devices.iter().filter(|(ifindex, _)| *ifindex != 0) {
            let s = &mut wanted[slot::of(ifindex)];
            *s = if *s == 0 {
                slot::entry(ifindex, id)
            } else {
                // Shared: both look in TUNNEL_BY_IF. The slot keeps one
                // device's index, which is enough to send it there; the
                // other misses the slot, so shared slots name no device.
                slot::entry(0, slot::SHARED)
            };
        }
        let mut m: Array<_, u64> = map(&mut self.ebpf, names::RING_SLOTS)?.try_into()?;
        for (k, &entry) in wanted.iter().enumerate() {
            let k = u32::try_from(k)?;
            if m.get(&k, 0)? != entry {
                m.set(k, entry, 0).context("writing RING_SLOTS")?;
            }
        }
        Ok(())
    }
}

/// The `RINGS` value mapped into this process (the map is
/// `BPF_F_MMAPABLE`): one tunnel's record read or written without copying
/// the rest, which the programs keep counting into meanwhile.
struct MappedRings {
    at: std::ptr::NonNull<Rings>,
}

impl MappedRings {
    fn new(fd: BorrowedFd<'_>) -> Result<Self> {
        // SAFETY: a fresh shared mapping of the map's whole value (one
        // entry, page-aligned by the kernel for a mmapable array); no
        // existing memory is touched.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size_of::<Rings>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mapping the ring accounting");
        }
        let at = std::ptr::NonNull::new(at.cast::<Rings>())
            .ok_or_else(|| anyhow!("mmap returned null"))?;
        Ok(Self { at })
    }

    fn record(&self, id: u32) -> Result<*mut TunnelQueue> {
        let id = id as usize;
        if id >= MAX_TUNNELS {
            bail!("tunnel id {id} is beyond {MAX_TUNNELS}");
        }
        // SAFETY: in bounds, inside the live mapping.
        Ok(unsafe { &raw mut (*self.at.as_ptr()).tunnels[id] })
    }

    fn read(&self, id: u32) -> Result<TunnelQueue> {
        // SAFETY: a valid, aligned record in the mapping; the programs
        // write it meanwhile, word by word, which a copy may catch halfway
        // (each word whole): good enough for a report.
        Ok(unsafe { std::ptr::read_volatile(self.record(id)?) })
    }

    fn read_all(&self) -> Rings {
        // SAFETY: as in `read`, the whole value.
        unsafe { std::ptr::read_volatile(self.at.as_ptr()) }
    }

    fn write(&self, id: u32, q: TunnelQueue) -> Result<()> {
        // SAFETY: a valid, aligned record in a writable shared mapping.
        unsafe { std::ptr::write_volatile(self.record(id)?, q) };
        Ok(())
    }
}

impl Drop for MappedRings {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` made, unmapped once.
        unsafe { libc::munmap(self.at.as_ptr().cast(), size_of::<Rings>()) };
    }
}

/// Pins `link` of tracing program `t`, replacing a previous run's: both
/// counting at once would count each packet twice.
fn pin(pins: &Layout, t: &Tracing, link: FdLink) -> Result<()> {
    let path = pins.tracing_link(t.name);
    remove_if_present(&path).with_context(|| format!("removing {}", path.display()))?;
    link.pin(&path)
        .with_context(|| format!("pinning the link at {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KALLSYMS: &str = "\
ffffffff81db2a90 t __pfx_tun_do_read
ffffffff81db2aa0 t tun_do_read
ffffffff81db2f10 t tun_recvmsg
ffffffffc0001000 t tun_ring_thing\t[tun]
ffffffff8123ad5d t tun_do_read.cold
";

    #[test]
    fn a_function_runs_to_the_next_symbol() {
        assert_eq!(
            symbol_range(KALLSYMS, "tun_do_read").unwrap(),
            (0xffff_ffff_81db_2aa0, 0xffff_ffff_81db_2f10)
        );
    }

    #[test]
    fn hidden_or_missing_symbols_are_errors() {
        assert!(symbol_range(KALLSYMS, "tun_net_xmit").is_err());
        let hidden = "0000000000000000 t tun_do_read\n0000000000000000 t tun_recvmsg\n";
        let e = symbol_range(hidden, "tun_do_read").unwrap_err();
        assert!(e.to_string().contains("kptr_restrict"), "{e}");
    }
}
