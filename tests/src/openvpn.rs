//! OpenVPN processes of a test bed: started in a gateway namespace from a
//! configuration file, with test-bed paths (PID file, log) and options
//! given on the command line after it, optionally held to a CPU quota.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    netns,
    process::{pid_in, wait_for_log, wait_until},
};

/// The cgroup v1 CPU controller.
const CGROUP_CPU: &str = "/sys/fs/cgroup/cpu";
/// A short quota period, so that throttling is smooth rather than bursty.
const CFS_PERIOD_US: u32 = 10_000;
/// What OpenVPN logs once the tunnel is up (rewritten at each start).
pub const CONNECTED: &str = "Initialization Sequence Completed";

/// One OpenVPN process's files.
#[derive(Clone, Debug)]
pub struct OpenVpn {
    pub ns: String,
    pub config: PathBuf,
    pub pid_file: PathBuf,
    pub log: PathBuf,
}

impl OpenVpn {
    /// Starts it as a daemon with `--config`, then `extra` options (later
    /// ones win), and waits for its PID file.
    ///
    /// # Panics
    /// If it cannot start.
    pub fn start(&self, extra: &[&str]) {
        let _ = fs::remove_file(&self.pid_file);
        let mut args = vec![
            "openvpn".to_owned(),
            "--config".to_owned(),
            self.config.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args.extend([
            "--writepid".to_owned(),
            self.pid_file.display().to_string(),
            "--log".to_owned(),
            self.log.display().to_string(),
            "--daemon".to_owned(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        netns::exec(&self.ns, &args);
        assert!(
            wait_until(Duration::from_secs(5), Duration::from_millis(20), || self
                .pid_file
                .exists()),
            "OpenVPN {} wrote no PID file:\n{}",
            self.config.display(),
            fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    #[must_use]
    pub fn pid(&self) -> Option<i32> {
        pid_in(&self.pid_file)
    }

    /// Waits until it has completed its initialisation: its log says so.
    /// (The management interface takes one client, and the loader holds it.)
    ///
    /// # Panics
    /// If it does not within `timeout`.
    pub fn wait_connected(&self, timeout: Duration) {
        if let Err(log) = wait_for_log(&self.log, 0, CONNECTED, timeout) {
            panic!("OpenVPN {} did not connect:\n{log}", self.config.display());
        }
    }

    /// Kills it (SIGKILL, by the PID it wrote); returns that PID, to wait
    /// for with `process::wait_gone`.
    #[expect(
        clippy::must_use_candidate,
        reason = "most callers only kill; some wait for the PID to end"
    )]
    pub fn kill(&self) -> Option<i32> {
        let pid = self.pid()?;
        crate::process::signal(pid, libc::SIGKILL);
        let _ = fs::remove_file(&self.pid_file);
        Some(pid)
    }
}

/// The cgroup that holds a process named `name` to a CPU quota.
#[must_use]
pub fn cpu_group(name: &str) -> PathBuf {
    Path::new(CGROUP_CPU).join(name)
}

/// Holds `pid` to `percent` of a CPU in cgroup `group` (made if missing),
/// with a 10 ms period.
///
/// # Panics
/// If the cgroup cannot be written.
pub fn cap_cpu(group: &Path, pid: i32, percent: u32) {
    let write = |file: &str, value: String| {
        let path = group.join(file);
        fs::write(&path, value).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    };
    fs::create_dir_all(group).unwrap_or_else(|e| panic!("cgroup {}: {e}", group.display()));
    write("cpu.cfs_period_us", CFS_PERIOD_US.to_string());
    write(
        "cpu.cfs_quota_us",
        (CFS_PERIOD_US * percent / 100).to_string(),
    );
    write("cgroup.procs", pid.to_string());
}
