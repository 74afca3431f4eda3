//! Booted systemd machines: `systemd-nspawn --boot` on the Debian 12 root
//! that `cargo xtask test` makes (`cargo xtask` set-up, `container_root`),
//! each joined to a lab namespace, so that a gateway runs as an operator
//! runs it: packages installed with apt and dpkg, services under systemd.
//!
//! - The root is shared and never written: each machine boots on a volatile
//!   overlay (`--volatile=overlay`), gone when it stops.
//! - Each machine gets the host directories it needs bound in: its own
//!   bpffs directory on `/sys/fs/bpf` (so the test sees its pins from
//!   outside), and a read-only share (packages, generated files).
//! - `CAP_NET_ADMIN`, `CAP_BPF`, `CAP_PERFMON` and `CAP_SYSLOG` are added to
//!   the container's bounding set, and `bpf(2)` to nspawn's system call
//!   filter: nspawn keeps none of them by default, and ovpn-lb's unit grants
//!   them from there.
//! - No systemd runs on the host (nor machined): nspawn does not register,
//!   and commands enter the machine with `nsenter` at its init's PID.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use crate::process::{self, all_output, wait_until};

/// Where the containers' root is: `$OVPN_LB_CONTAINER_ROOT`, else where
/// `cargo xtask` set-up makes it (`$XDG_CACHE_HOME/ovpn-lb` or
/// `~/.cache/ovpn-lb`, then `containers/debian-12`).
#[must_use]
pub fn image() -> PathBuf {
    if let Some(root) = std::env::var_os("OVPN_LB_CONTAINER_ROOT") {
        return PathBuf::from(root);
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("ovpn-lb/containers/debian-12")
}

/// Capabilities nspawn drops by default that BPF and networking need.
const CAPABILITIES: &str = "CAP_NET_ADMIN,CAP_BPF,CAP_PERFMON,CAP_SYSLOG";
/// How long a boot may take until `systemctl is-system-running` settles.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// What to boot.
pub struct Boot<'a> {
    /// Machine and host name.
    pub name: &'a str,
    /// The network namespace it joins (`ip netns` name).
    pub netns: &'a str,
    pub image: &'a Path,
    /// Host directory bound on the machine's `/sys/fs/bpf`.
    pub bpffs: &'a Path,
    /// Host directory bound read-only on the machine's `/mnt/ovpn-lb`.
    pub share: &'a Path,
    /// nspawn's console output.
    pub log: &'a Path,
    /// Written with nspawn's PID once it runs (for the lab's teardown).
    pub pid_file: &'a Path,
}

/// Where [`Boot::share`] appears inside the machine.
pub const SHARE: &str = "/mnt/ovpn-lb";

/// A booted machine, powered off (or killed) on drop.
pub struct Machine {
    pub name: String,
    nspawn: Option<Child>,
    /// The machine's init, as the host sees it.
    leader: i32,
    log: PathBuf,
}

impl Machine {
    /// Boots `boot` and waits until its systemd has finished starting.
    ///
    /// # Panics
    /// If nspawn fails or the boot does not settle in time.
    #[must_use]
    pub fn boot(boot: &Boot) -> Self {
        let log =
            fs::File::create(boot.log).unwrap_or_else(|e| panic!("{}: {e}", boot.log.display()));
        let err = log.try_clone().expect("a log descriptor");
        let child = Command::new("systemd-nspawn")
            .args(["--quiet", "--register=no", "--keep-unit", "--boot"])
            .arg(format!("--directory={}", boot.image.display()))
            .args(["--volatile=overlay", "--console=read-only"])
            .arg(format!("--machine={}", boot.name))
            .arg(format!("--hostname={}", boot.name))
            .arg(format!(
                "--network-namespace-path=/run/netns/{}",
                boot.netns
            ))
            .arg(format!("--bind={}:/sys/fs/bpf", boot.bpffs.display()))
            .arg(format!("--bind-ro={}:{SHARE}", boot.share.display()))
            .arg(format!("--capability={CAPABILITIES}"))
            // nspawn's own seccomp filter refuses bpf(2) to the machine's
            // processes (EPERM), whatever their capabilities.
            .arg("--system-call-filter=bpf")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("systemd-nspawn: {e}"));
        fs::write(boot.pid_file, child.id().to_string())
            .unwrap_or_else(|e| panic!("{}: {e}", boot.pid_file.display()));
        let mut machine = Self {
            name: boot.name.to_owned(),
            leader: 0,
            nspawn: Some(child),
            log: boot.log.to_path_buf(),
        };
        let nspawn = machine.nspawn.as_ref().map_or(0, Child::id);
        let found = wait_until(BOOT_TIMEOUT, Duration::from_millis(100), || {
            machine.leader = init_of(nspawn).unwrap_or(0);
            machine.leader != 0
        });
        assert!(
            found,
            "{}: no init started:\n{}",
            boot.name,
            machine.console()
        );
        let mut state = String::new();
        let settled = wait_until(BOOT_TIMEOUT, Duration::from_millis(200), || {
            machine
                .sh("systemctl is-system-running")
                .0
                .trim()
                .clone_into(&mut state);
            state == "running" || state == "degraded"
        });
        assert!(
            settled,
            "{}: systemd says {state:?}:\n{}",
            boot.name,
            machine.console()
        );
        if state == "degraded" {
            eprintln!(
                "{}: booted degraded:\n{}",
                boot.name,
                machine.sh("systemctl --failed --no-pager").0
            );
        }
        machine
    }

    /// `PROGRAM` run inside the machine as its root, with a plain
    /// environment (not the test's).
    #[must_use]
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.leader.to_string(), "-a", "-r", "-w"])
            .args(["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
            .args(["HOME=/root", "LANG=C.UTF-8", "TERM=dumb"])
            .arg("DEBIAN_FRONTEND=noninteractive")
            .arg(program);
        c
    }

    /// `sh -c SCRIPT` inside: (everything it printed, its exit code).
    #[must_use]
    pub fn sh(&self, script: &str) -> (String, Option<i32>) {
        let out = self.output(script);
        (all_output(&out), out.status.code())
    }

    fn output(&self, script: &str) -> Output {
        self.command("sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("nsenter: {e}"))
    }

    /// `sh -c SCRIPT` inside, which must succeed; what it printed (also
    /// shown in the test's log).
    ///
    /// # Panics
    /// If it fails.
    #[expect(
        clippy::must_use_candidate,
        reason = "most callers run it for its effect"
    )]
    pub fn must(&self, script: &str) -> String {
        let (said, code) = self.sh(script);
        eprintln!("{}# {script}\n{said}", self.name);
        assert_eq!(code, Some(0), "{}: `{script}` failed:\n{said}", self.name);
        said
    }

    /// A unit's `systemctl show` property, e.g. `MainPID`.
    #[must_use]
    pub fn property(&self, unit: &str, name: &str) -> String {
        self.sh(&format!("systemctl show --value -p {name} {unit}"))
            .0
            .trim()
            .to_owned()
    }

    /// The console so far (boot messages), for failure reports.
    #[must_use]
    pub fn console(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// A path inside the machine, as the host sees it.
    #[must_use]
    pub fn path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.leader)).join(inside.trim_start_matches('/'))
    }
}

/// The init nspawn started: its child in a new PID namespace.
fn init_of(nspawn: u32) -> Option<i32> {
    let children = fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|c| c.parse::<i32>().ok())
        .find(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "systemd")
        })
}

impl Drop for Machine {
    fn drop(&mut self) {
        let Some(mut child) = self.nspawn.take() else {
            return;
        };
        // nspawn answers SIGTERM with a clean power-off of the machine.
        process::signal(i32::try_from(child.id()).unwrap_or(0), libc::SIGTERM);
        let gone = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            child.try_wait().is_ok_and(|s| s.is_some())
        });
        if !gone {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
