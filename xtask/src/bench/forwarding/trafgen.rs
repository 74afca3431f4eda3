//! The traffic: trafgen's packet configurations per mix, and trafgen itself.

use std::{
    fmt::Write as _,
    fs::{self, File},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use ovpn_lb_tests::netns;

use super::{
    FLOWS,
    network::{ELSEWHERE_V4, ELSEWHERE_V6, GEN_DEV, GEN_MAC, LAN_MAC, Topology},
};

/// One traffic mix.
#[derive(Clone, Copy)]
pub(super) struct Mix {
    pub(super) v6: bool,
    /// Bytes handed to the veth (Ethernet header included, no FCS).
    pub(super) frame: usize,
    pub(super) to: Destination,
}

/// Where the traffic goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Destination {
    /// The remote prefixes: into the tunnels.
    Tunnels,
    /// A prefix the gateway routes out of a veth (the hook cost round).
    Elsewhere,
}

impl Destination {
    pub(super) fn describe(self) -> &'static str {
        match self {
            Self::Tunnels => "into the tunnels",
            Self::Elsewhere => "elsewhere (a veth)",
        }
    }
}

impl Mix {
    pub(super) fn label(self) -> String {
        format!("IPv{} {} B", if self.v6 { 6 } else { 4 }, self.frame)
    }

    pub(super) fn file(self) -> String {
        let to = if self.to == Destination::Tunnels {
            ""
        } else {
            "-elsewhere"
        };
        format!("v{}-{}{to}.cfg", if self.v6 { 6 } else { 4 }, self.frame)
    }
}

pub(super) const MIXES: [Mix; 4] = [
    Mix {
        v6: false,
        frame: 64,
        to: Destination::Tunnels,
    },
    Mix {
        v6: false,
        frame: 1400,
        to: Destination::Tunnels,
    },
    Mix {
        v6: true,
        frame: 64,
        to: Destination::Tunnels,
    },
    Mix {
        v6: true,
        frame: 1400,
        to: Destination::Tunnels,
    },
];

/// trafgen's packet configuration: `FLOWS` precomputed UDP packets sent round
/// robin (trafgen fills in lengths and checksums when it compiles them, so
/// sending costs no per-packet computation).
pub(super) fn trafgen_config(mix: Mix) -> String {
    let mut t = String::new();
    let (l3, pad) = if mix.v6 {
        ("ipv6", mix.frame - 14 - 40 - 8)
    } else {
        ("ipv4", mix.frame - 14 - 20 - 8)
    };
    for i in 0..FLOWS {
        let host = 1 + i % 250;
        let (net, dst) = (i / 250, 1 + i % 250);
        let (remote4, remote6) = match mix.to {
            Destination::Tunnels => ("10.20", "fd20:"),
            Destination::Elsewhere => (ELSEWHERE_V4, ELSEWHERE_V6),
        };
        let (src, dst, ttl) = if mix.v6 {
            (
                format!("fd10:a::{host:x}"),
                format!("{remote6}:{net:x}:{dst:x}"),
                "hoplimit",
            )
        } else {
            (
                format!("10.10.0.{host}"),
                format!("{remote4}.{net}.{dst}"),
                "ttl",
            )
        };
        let sport = 1024 + (i * 61) % 60000;
        let dport = 5001 + i % 7;
        let _ = writeln!(
            t,
            "{{ eth(da={LAN_MAC}, sa={GEN_MAC}), {l3}(sa={src}, da={dst}, {ttl}=64), udp(sp={sport}, dp={dport}), fill(0x00, {pad}) }}"
        );
    }
    t
}

/// A running trafgen, in its own process group; the group is killed on drop.
pub(super) struct Trafgen {
    pub(super) child: Child,
    pub(super) log: PathBuf,
}

impl Trafgen {
    pub(super) fn start(topo: &Topology, mix: Mix, count: u64) -> Result<Self> {
        let log = topo.dir.join("trafgen.log");
        let config = topo.dir.join(mix.file());
        fs::write(&config, trafgen_config(mix))?;
        let child = netns::command(&topo.gen_ns, "trafgen")
            .arg("--in")
            .arg(&config)
            .args(["--out", GEN_DEV, "--cpus", "1", "--gap", "0ns"])
            .args(["--num", &count.to_string(), "--notouch-irq"])
            .stdin(Stdio::null())
            .stdout(File::create(&log)?)
            .stderr(File::create(topo.dir.join("trafgen.err"))?)
            // Its own group: trafgen forks its worker, and only a signal to
            // the whole group reaches both.
            .process_group(0)
            .spawn()
            .context("starting trafgen")?;
        Ok(Self { child, log })
    }

    pub(super) fn pgid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).unwrap_or(0)
    }

    pub(super) fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub(super) fn output(&self) -> String {
        let err = fs::read_to_string(self.log.with_extension("err")).unwrap_or_default();
        let out = fs::read_to_string(&self.log).unwrap_or_default();
        format!("{}{}", err.trim(), out.trim())
    }

    /// SIGINT to the group, then SIGKILL to whatever is left after a grace.
    pub(super) fn stop(&mut self) {
        let pgid = self.pgid();
        if pgid <= 0 {
            return;
        }
        // SAFETY: killpg(2) touches no memory; the group is trafgen's own.
        unsafe { libc::killpg(pgid, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.running() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        // Also reaches a worker that outlived its parent (the group id stays
        // reserved while any member lives, so it cannot name anyone else).
        // SAFETY: as above.
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Trafgen {
    fn drop(&mut self) {
        self.stop();
    }
}
