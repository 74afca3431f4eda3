//! The ring accounting packet spray decides by (`ovpn_lb_common::queue`):
//! where the tracing programs read kernel memory, attaching them through
//! pinned links (so they keep counting while no loader runs, as long as the
//! LAN program keeps picking by their figures), and reading their figures.

use std::{fs, os::unix::fs::MetadataExt as _};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    maps::Array,
    programs::{RawTracePoint, links::FdLink},
};
use ovpn_lb_common::{
    maps::{names, programs},
    queue::{KernelLayout, TunnelQueue},
};

use super::{Datapath, btf::Btf, map, typed};
use crate::pins::{Layout, remove_if_present};

/// `NETDEV_ALIGN`: a device's private area starts at this alignment after
/// its `struct net_device`.
const NETDEV_ALIGN: u32 = 32;
/// The function whose `consume_skb` marks a packet OpenVPN read.
const READ_FUNCTION: &str = "tun_do_read";

/// Where the tracing programs find what they read, on this kernel, for the
/// network namespace this process is in.
///
/// # Errors
/// If the kernel has no BTF, lacks a member, or hides `tun_do_read`.
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
        net_inum: btf.offset("net", "ns")? + btf.offset("ns_common", "inum")?,
        dev_priv: btf.size("net_device")?.next_multiple_of(NETDEV_ALIGN),
        tun_tfiles: btf.offset("tun_struct", "tfiles")?,
        tfile_tx_ring: btf.offset("tun_file", "tx_ring")?,
        ring_producer: btf.offset("ptr_ring", "producer")?,
        ring_consumer_head: btf.offset("ptr_ring", "consumer_head")?,
        ring_queue: btf.offset("ptr_ring", "queue")?,
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

impl Datapath {
    /// Switches the ring accounting on: writes `layout`, then attaches the
    /// tracing programs through links pinned under `pins`, replacing a
    /// previous run's.
    ///
    /// # Errors
    /// If the kernel refuses a program; nothing is left attached then.
    pub fn account_rings(&mut self, pins: &Layout, layout: KernelLayout) -> Result<()> {
        Array::<_, KernelLayout>::try_from(map(&mut self.ebpf, names::KERNEL_LAYOUT)?)?
            .set(0, layout, 0)
            .context("writing the kernel layout")?;
        let attached = self.attach_tracing(pins);
        if attached.is_err() {
            // Half attached would count enqueues without reads.
            let _ = self.stop_accounting(pins);
        }
        attached
    }

    fn attach_tracing(&mut self, pins: &Layout) -> Result<()> {
        for &(name, tracepoint) in programs::TRACING {
            let program = typed::<RawTracePoint>(&mut self.ebpf, name)?;
            if program.fd().is_err() {
                program
                    .load()
                    .with_context(|| format!("loading BPF program {name}"))?;
            }
            let id = program
                .attach(tracepoint)
                .with_context(|| format!("attaching {name} to raw tracepoint {tracepoint}"))?;
            let link = FdLink::from(program.take_link(id)?);
            // The previous run's link goes first: both counting at once
            // would count each packet twice.
            let pin = pins.tracing_link(name);
            remove_if_present(&pin).with_context(|| format!("removing {}", pin.display()))?;
            link.pin(&pin)
                .with_context(|| format!("pinning the link at {}", pin.display()))?;
        }
        Ok(())
    }

    /// Switches the ring accounting off: removes its pinned links (which
    /// detaches the programs) and clears the layout.
    ///
    /// # Errors
    /// If a pin cannot be removed or the layout written.
    pub fn stop_accounting(&mut self, pins: &Layout) -> Result<()> {
        for &(name, _) in programs::TRACING {
            remove_if_present(&pins.tracing_link(name))?;
        }
        Array::<_, KernelLayout>::try_from(map(&mut self.ebpf, names::KERNEL_LAYOUT)?)?
            .set(0, KernelLayout::default(), 0)
            .context("clearing the kernel layout")
    }

    /// Tunnel `id`'s ring accounting.
    ///
    /// # Errors
    /// If the map cannot be read.
    pub fn queue(&self, id: u32) -> Result<TunnelQueue> {
        let map = self
            .ebpf
            .map(names::TUNNEL_QUEUES)
            .ok_or_else(|| anyhow!("the BPF object has no map {}", names::TUNNEL_QUEUES))?;
        Ok(Array::<_, TunnelQueue>::try_from(map)?.get(&id, 0)?)
    }

    /// Starts tunnel `id`'s accounting afresh: its device is new, and the
    /// old device's figures say nothing about the new ring.
    ///
    /// # Errors
    /// If the map cannot be written.
    pub fn reset_queue(&mut self, id: u32) -> Result<()> {
        Array::<_, TunnelQueue>::try_from(map(&mut self.ebpf, names::TUNNEL_QUEUES)?)?
            .set(id, TunnelQueue::default(), 0)
            .context("resetting a tunnel's ring accounting")
    }
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
