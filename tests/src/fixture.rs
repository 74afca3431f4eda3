//! The BPF fixture harness: the real object loaded through the production
//! `Datapath` API, run packet by packet with `BPF_PROG_TEST_RUN` inside a
//! namespace that holds the tunnel devices (their MTUs are read by the program).

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::programs::{TestRun as _, TestRunOptions};
use ovpn_lb::datapath::Datapath;
use ovpn_lb_common::{
    MAX_TUNNELS, Prefix4, Prefix6, Reason, ReasonStats, SiteConfig, TunnelConfig, TunnelStats,
    maps::{Spray, family, framing, guard, programs, route},
    schedule,
};

use crate::{netns::Netns, packets::GATEWAY_MAC};

/// The LAN device in the fixture namespace: a TAP device with the gateway's
/// MAC, so the kernel marks frames sent to that MAC as for this host.
pub const LAN_DEVICE: &str = "ovlan";

/// tun devices in the fixture namespace: tunnels 0..3 have one each.
pub const TUNNEL_DEVICES: [&str; 3] = ["ovt0", "ovt1", "ovt2"];
/// MTU of every fixture tunnel device.
pub const TUNNEL_MTU: usize = 1400;
/// Tunnel 3 is configured but its device is missing (ifindex 0).
pub const TUNNEL_WITHOUT_DEVICE: u32 = 3;
/// TAP tunnels: tunnel 4 knows its far end's MAC, tunnel 5 does not yet.
pub const TAP_DEVICES: [&str; 2] = ["ovtap4", "ovtap5"];
pub const TAP_TUNNEL: u32 = 4;
pub const TAP_TUNNEL_UNRESOLVED: u32 = 5;
pub const TUNNELS: u32 = 6;

/// MAC of TAP tunnel `k`'s device (set when the fixture makes it).
#[must_use]
pub fn tap_mac(k: u32) -> [u8; 6] {
    [0x02, 0, 0, 0, u8::try_from(k).unwrap(), 0x01]
}

/// MAC of TAP tunnel `k`'s far end.
#[must_use]
pub fn tap_peer_mac(k: u32) -> [u8; 6] {
    [0x02, 0, 0, 0, u8::try_from(k).unwrap(), 0x02]
}

/// The hook a fixture run goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Tc,
    Xdp,
}

fn v4(s: &str, len: u8) -> Prefix4 {
    Prefix4::new(s.parse::<std::net::Ipv4Addr>().unwrap().octets(), len)
}

fn v6(s: &str, len: u8) -> Prefix6 {
    Prefix6::new(s.parse::<std::net::Ipv6Addr>().unwrap().octets(), len)
}

/// The gateway's configuration used by every fixture row.
#[must_use]
pub fn site(spray: Spray) -> SiteConfig {
    SiteConfig {
        lan_v4: v4("192.168.10.0", 24),
        lan_v6: v6("fd00:10::", 64),
        families: family::V4 | family::V6,
        spray: spray as u32,
        lan_mac: GATEWAY_MAC,
        ..SiteConfig::default()
    }
}

/// Tunnel `k`: our sources become 100.64.k.x / `fd00:64:k::x`; the peer's
/// 100.65.k.x / `fd00:65:k::x` are restored into 10.20.30.x / `fd00:20:0:30::x`.
/// Its MTU is [`TUNNEL_MTU`] as the loader would write it, except tunnel 2's,
/// left 0 so the program asks the kernel (the slow path stays tested).
#[must_use]
pub fn tunnel(k: u32, ifindex: u32) -> TunnelConfig {
    let k8 = u8::try_from(k).unwrap();
    TunnelConfig {
        ifindex,
        mtu: if ifindex == 0 || k == 2 {
            0
        } else {
            u32::try_from(TUNNEL_MTU).unwrap()
        },
        families: family::V4 | family::V6 | family::PEER_V4 | family::PEER_V6,
        xlat_v4: Prefix4::new([100, 64, k8, 0], 24),
        peer_xlat_v4: Prefix4::new([100, 65, k8, 0], 24),
        peer_real_v4: v4("10.20.30.0", 24),
        xlat_v6: v6(&format!("fd00:64:{k:x}::"), 64),
        peer_xlat_v6: v6(&format!("fd00:65:{k:x}::"), 64),
        peer_real_v6: v6("fd00:20:0:30::", 64),
        ..TunnelConfig::default()
    }
}

/// [`tunnel`] on a TAP device, with its far end's MAC known or not.
#[must_use]
pub fn tap_tunnel(k: u32, ifindex: u32, peer_known: bool) -> TunnelConfig {
    TunnelConfig {
        framing: framing::TAP,
        mac: tap_mac(k),
        peer_mac: if peer_known { tap_peer_mac(k) } else { [0; 6] },
        ..tunnel(k, ifindex)
    }
}

/// Which program a row runs through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    Lan,
    /// Tunnel ingress, arriving on tunnel `k`'s device.
    Tunnel(u32),
    /// Tunnel ingress on a device that is not a tunnel (loopback).
    NotATunnel,
    /// Tunnel egress, leaving through tunnel `k`'s device (tc only).
    Egress(u32),
    /// Tunnel egress on a device that is not a tunnel (loopback).
    EgressNotATunnel,
    /// The WAN guard, leaving an Ethernet WAN device (loopback stands in;
    /// tc only).
    Wan,
}

pub struct Run {
    pub verdict: i32,
    pub output: Vec<u8>,
}

/// Summed counters, for before/after deltas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters {
    pub reasons: Vec<ReasonStats>,
    pub tunnels: Vec<TunnelStats>,
}

pub struct Lab {
    pub datapath: Datapath,
    /// Device of each tunnel id, 0 for none.
    pub ifindex: Vec<u32>,
    /// The LAN device.
    pub lan_ifindex: u32,
}

/// Builds the fixture namespace and runs `f` inside it with a loaded datapath.
/// The calling thread is pinned to one CPU, so that per-CPU counters sit in
/// one slot.
///
/// # Panics
/// If the namespace, devices or datapath cannot be set up.
pub fn with_lab<R: Send>(f: impl FnOnce(&mut Lab) -> R + Send) -> R {
    let ns = Netns::new("fixture");
    for dev in TUNNEL_DEVICES {
        ns.ip(&["tuntap", "add", "dev", dev, "mode", "tun"]);
        ns.ip(&["link", "set", dev, "mtu", &TUNNEL_MTU.to_string()]);
    }
    for (dev, k) in TAP_DEVICES.iter().zip(TAP_TUNNEL..) {
        let mac = tap_mac(k).map(|b| format!("{b:02x}")).join(":");
        ns.ip(&["tuntap", "add", "dev", dev, "mode", "tap"]);
        ns.ip(&["link", "set", dev, "mtu", &TUNNEL_MTU.to_string()]);
        ns.ip(&["link", "set", dev, "address", &mac]);
    }
    let mac = GATEWAY_MAC.map(|b| format!("{b:02x}")).join(":");
    ns.ip(&["tuntap", "add", "dev", LAN_DEVICE, "mode", "tap"]);
    ns.ip(&["link", "set", LAN_DEVICE, "address", &mac]);
    ns.enter(|| {
        pin_to_cpu0();
        let mut lab = Lab::new();
        f(&mut lab)
    })
}

fn pin_to_cpu0() {
    assert!(crate::process::pin_thread(0), "pinning to CPU 0");
}

fn device_index(dev: &str) -> u32 {
    let index = crate::netns::ifindex(dev);
    assert_ne!(index, 0, "no device {dev} in the fixture namespace");
    index
}

impl Lab {
    fn new() -> Self {
        let mut datapath = Datapath::load().expect("load the datapath");
        let ifindex: Vec<u32> = TUNNEL_DEVICES
            .iter()
            .map(|d| device_index(d))
            .chain([0])
            .chain(TAP_DEVICES.iter().map(|d| device_index(d)))
            .collect();
        datapath.set_site(&site(Spray::RoundRobin)).unwrap();
        // The far LAN is sprayed to, the far gateway's own address is not.
        for (prefix, route) in [
            (v4("10.20.0.0", 16), route::SPRAY),
            (v4("10.20.0.1", 32), route::EXCLUDE),
        ] {
            datapath.set_remote_v4(prefix, route).unwrap();
            datapath.set_guard_v4(prefix, guard::REMOTE).unwrap();
        }
        for (prefix, route) in [
            (v6("fd00:20::", 48), route::SPRAY),
            (v6("fd00:20::1", 128), route::EXCLUDE),
        ] {
            datapath.set_remote_v6(prefix, route).unwrap();
            datapath.set_guard_v6(prefix, guard::REMOTE).unwrap();
        }
        let lan = site(Spray::RoundRobin);
        datapath.set_guard_v4(lan.lan_v4, guard::LAN).unwrap();
        datapath.set_guard_v6(lan.lan_v6, guard::LAN).unwrap();
        for k in 0..TUNNELS {
            let dev = ifindex.get(k as usize).copied().unwrap_or(0);
            let t = match k {
                TAP_TUNNEL => tap_tunnel(k, dev, true),
                TAP_TUNNEL_UNRESOLVED => tap_tunnel(k, dev, false),
                _ => tunnel(k, dev),
            };
            datapath.set_tunnel(k, &t, None).unwrap();
            datapath.set_our_xlat_v4(t.xlat_v4, k).unwrap();
            datapath.set_our_xlat_v6(t.xlat_v6, k).unwrap();
            for (prefix, kind) in [
                (t.xlat_v4, guard::OURS_TRANSLATED),
                (t.peer_xlat_v4, guard::PEER_TRANSLATED),
            ] {
                datapath.set_guard_v4(prefix, kind).unwrap();
            }
            for (prefix, kind) in [
                (t.xlat_v6, guard::OURS_TRANSLATED),
                (t.peer_xlat_v6, guard::PEER_TRANSLATED),
            ] {
                datapath.set_guard_v6(prefix, kind).unwrap();
            }
        }
        let lan_ifindex = device_index(LAN_DEVICE);
        let mut lab = Self {
            datapath,
            ifindex,
            lan_ifindex,
        };
        lab.set_weights(&[1, 1, 1]);
        lab
    }

    /// Publishes a schedule built from `weights` (0 = down) for tunnels 0.. .
    ///
    /// # Panics
    /// If the schedule cannot be built or written.
    pub fn set_weights(&mut self, weights: &[u32]) {
        let s = schedule::build(weights).unwrap();
        self.datapath.publish_schedule(&s).unwrap();
    }

    /// # Panics
    /// If the site cannot be written.
    pub fn set_spray(&mut self, spray: Spray) {
        self.datapath.set_site(&site(spray)).unwrap();
    }

    /// Runs one packet through the tc programs. `frame` starts with an
    /// Ethernet header, as `BPF_PROG_TEST_RUN` requires for tc programs.
    ///
    /// # Panics
    /// If the kernel refuses the run.
    pub fn run(&mut self, program: Program, frame: &[u8], gso_size: u32) -> Run {
        self.run_on(Hook::Tc, program, frame, gso_size)
    }

    /// Runs one packet through the programs of `hook`. XDP has no GSO:
    /// `gso_size` must be 0 there.
    ///
    /// # Panics
    /// If the kernel refuses the run.
    pub fn run_on(&mut self, hook: Hook, program: Program, frame: &[u8], gso_size: u32) -> Run {
        self.try_run(hook, program, frame, gso_size, false)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"))
    }

    /// Like [`Lab::run_on`]; with `checksum_complete` (tc only) the kernel
    /// hands the program a `CHECKSUM_COMPLETE` skb and afterwards checks that
    /// `skb->csum` still matches the data, failing the run with `EBADMSG`
    /// when the program left it stale.
    ///
    /// # Errors
    /// The kernel's error for the run.
    ///
    /// # Panics
    /// If the program is missing.
    pub fn try_run(
        &mut self,
        hook: Hook,
        program: Program,
        frame: &[u8],
        gso_size: u32,
        checksum_complete: bool,
    ) -> Result<Run, std::io::Error> {
        let flags = if checksum_complete {
            BPF_F_TEST_SKB_CHECKSUM_COMPLETE
        } else {
            0
        };
        self.try_run_flags(hook, program, frame, gso_size, flags)
    }

    /// [`Lab::try_run`] with raw `BPF_PROG_TEST_RUN` flags (tc only).
    ///
    /// # Errors
    /// The kernel's error for the run.
    ///
    /// # Panics
    /// If the program is missing.
    pub fn try_run_flags(
        &mut self,
        hook: Hook,
        program: Program,
        frame: &[u8],
        gso_size: u32,
        flags: u32,
    ) -> Result<Run, std::io::Error> {
        let dev = match program {
            Program::Lan => self.lan_ifindex,
            Program::Tunnel(k) | Program::Egress(k) => self.ifindex[k as usize],
            Program::NotATunnel | Program::EgressNotATunnel | Program::Wan => 1,
        };
        let (name, ctx) = match (hook, program) {
            (Hook::Tc, Program::Lan) => {
                (programs::LAN_INGRESS, skb_ctx(dev, gso_size, frame.len()))
            }
            (Hook::Tc, Program::Egress(_) | Program::EgressNotATunnel) => (
                programs::TUNNEL_EGRESS_ETH,
                skb_ctx(dev, gso_size, frame.len()),
            ),
            (Hook::Tc, Program::Wan) => (
                programs::WAN_EGRESS_ETH,
                skb_ctx(dev, gso_size, frame.len()),
            ),
            (Hook::Tc, _) => (
                programs::TUNNEL_INGRESS_ETH,
                skb_ctx(dev, gso_size, frame.len()),
            ),
            (Hook::Xdp, Program::Egress(_) | Program::EgressNotATunnel | Program::Wan) => {
                panic!("tunnel egress and the WAN guard are tc programs only")
            }
            // The LAN run needs a real ingress device for the frame's rxq:
            // loopback stands in (the program does not look at it).
            (Hook::Xdp, Program::Lan) => (programs::LAN_INGRESS_XDP, xdp_ctx(1, frame.len())),
            (Hook::Xdp, _) => (programs::TUNNEL_INGRESS_XDP, xdp_ctx(dev, frame.len())),
        };
        assert!(hook == Hook::Tc || gso_size == 0, "XDP frames carry no GSO");
        assert!(hook == Hook::Tc || flags == 0, "flags are for skbs");
        let mut out = vec![0u8; 200_000];
        if hook == Hook::Tc {
            let prog = self.datapath.program(name).unwrap();
            let fd = prog.fd().unwrap().as_fd().as_raw_fd();
            let (retval, len) = test_run_raw(fd, frame, &ctx, &mut out, flags)?;
            out.truncate(len);
            return Ok(Run {
                verdict: retval.cast_signed(),
                output: out,
            });
        }
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        };
        let result = self
            .datapath
            .xdp_program(name)
            .unwrap()
            .test_run(opts)
            .map_err(|e| std::io::Error::other(format!("{name}: {e:?}")))?;
        out.truncate(result.data_size_out as usize);
        Ok(Run {
            verdict: result.return_value.cast_signed(),
            output: out,
        })
    }

    /// Why the XDP hook cannot run on this kernel (before Linux 6.3): its
    /// programs are not loaded, and their rows cannot run here.
    #[must_use]
    pub fn xdp_unavailable(&self) -> Option<String> {
        self.datapath.xdp_unavailable().map(str::to_owned)
    }

    /// Why this kernel's test runs cannot hand a program a
    /// `CHECKSUM_COMPLETE` skb, if they cannot: the flag came with Linux
    /// 6.11 and was backported to some stable kernels (Debian 12's 6.1 and
    /// Ubuntu 24.04's 6.8 take it), not to Ubuntu 22.04's 5.15, whose test
    /// run refuses it (EINVAL) while taking the same frame without it.
    pub fn checksum_complete_unavailable(&mut self) -> Option<String> {
        let frame = crate::packets::eth(crate::packets::ETH_P_ARP, &[0; 28]);
        let plain = self.try_run(Hook::Tc, Program::Lan, &frame, 0, false);
        let complete = self.try_run(Hook::Tc, Program::Lan, &frame, 0, true);
        match (plain, complete) {
            (Ok(_), Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => Some(format!(
                "Linux {}'s BPF_PROG_TEST_RUN refuses BPF_F_TEST_SKB_CHECKSUM_COMPLETE ({e})",
                ovpn_lb::datapath::kernel::release()
            )),
            _ => None,
        }
    }

    /// # Panics
    /// If a map cannot be read.
    #[must_use]
    pub fn counters(&self) -> Counters {
        Counters {
            reasons: Reason::ALL
                .iter()
                .map(|&r| self.datapath.reason_stats(r).unwrap())
                .collect(),
            tunnels: (0..u32::try_from(MAX_TUNNELS).unwrap())
                .map(|k| self.datapath.tunnel_stats(k).unwrap())
                .collect(),
        }
    }
}

/// A `struct xdp_md` for `ctx_in`: data offsets and the ingress device.
fn xdp_ctx(ifindex: u32, len: usize) -> Vec<u8> {
    let fields = [0, u32::try_from(len).unwrap(), 0, ifindex, 0, 0];
    fields.iter().flat_map(|f| f.to_ne_bytes()).collect()
}

/// A `struct __sk_buff` for `ctx_in`: only the fields the kernel lets a test set.
fn skb_ctx(ifindex: u32, gso_size: u32, len: usize) -> Vec<u8> {
    const IFINDEX: usize = 40;
    const WIRE_LEN: usize = 160;
    const GSO_SEGS: usize = 164;
    const GSO_SIZE: usize = 176;
    let mut ctx = vec![0u8; 192];
    ctx[IFINDEX..IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
    let _ = WIRE_LEN;
    if gso_size != 0 {
        let segs = u32::try_from(len).unwrap().div_ceil(gso_size);
        ctx[GSO_SEGS..GSO_SEGS + 4].copy_from_slice(&segs.to_ne_bytes());
        ctx[GSO_SIZE..GSO_SIZE + 4].copy_from_slice(&gso_size.to_ne_bytes());
    }
    ctx
}

/// `BPF_F_TEST_SKB_CHECKSUM_COMPLETE` (`include/uapi/linux/bpf.h`, Linux 6.11+).
const BPF_F_TEST_SKB_CHECKSUM_COMPLETE: u32 = 1 << 2;
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The `test` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `BPF_PROG_TEST_RUN` by hand: aya's options cannot pass the skb flags.
/// Returns the program's return value and the output length.
fn test_run_raw(
    prog_fd: i32,
    data: &[u8],
    ctx: &[u8],
    out: &mut [u8],
    flags: u32,
) -> Result<(u32, usize), std::io::Error> {
    let mut attr = TestRunAttr {
        prog_fd: u32::try_from(prog_fd).unwrap(),
        data_size_in: u32::try_from(data.len()).unwrap(),
        data_size_out: u32::try_from(out.len()).unwrap(),
        data_in: data.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ctx_size_in: u32::try_from(ctx.len()).unwrap(),
        ctx_in: ctx.as_ptr() as u64,
        flags,
        ..TestRunAttr::default()
    };
    // SAFETY: every pointer in `attr` refers to a live buffer of the size
    // given next to it; the kernel writes at most `data_size_out` bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &raw mut attr,
            size_of::<TestRunAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((attr.retval, attr.data_size_out as usize))
}
