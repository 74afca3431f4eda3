//! keepalived in a test bed: one per gateway namespace, from the gateway's
//! generated `keepalived.conf`, its PID files and log in the test bed's
//! directory, stopped by its PIDs.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    netns,
    process::{self, pid_in, wait_until},
};

/// One keepalived: the parent and its VRRP child.
#[derive(Clone, Debug)]
pub struct Keepalived {
    pub ns: String,
    pub config: PathBuf,
    /// PID files and the log go here.
    pub dir: PathBuf,
}

impl Keepalived {
    #[must_use]
    pub fn pid_files(&self) -> Vec<PathBuf> {
        ["keepalived.pid", "vrrp.pid"]
            .iter()
            .map(|f| self.dir.join(f))
            .collect()
    }

    #[must_use]
    pub fn log(&self) -> PathBuf {
        self.dir.join("keepalived.log")
    }

    /// Starts it (VRRP only), and waits for both PID files.
    ///
    /// # Panics
    /// If it does not start.
    pub fn start(&self) {
        fs::create_dir_all(&self.dir).unwrap_or_else(|e| panic!("{}: {e}", self.dir.display()));
        let [parent, vrrp] = [0, 1].map(|i| self.pid_files()[i].clone());
        let log = self.log();
        let args: Vec<String> = vec![
            "keepalived".into(),
            "--vrrp".into(),
            "--no_bfd".into(),
            "--log-detail".into(),
            "--no-syslog".into(),
            format!("--use-file={}", self.config.display()),
            format!("--pid={}", parent.display()),
            format!("--vrrp_pid={}", vrrp.display()),
            // A config id of its own, so no two lab instances read each other's.
            format!("--config-id={}", self.ns),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = netns::command(&self.ns, args[0])
            .args(&args[1..])
            .stdout(fs::File::create(&log).expect("keepalived log"))
            .stderr(std::process::Stdio::null())
            .status()
            .expect("keepalived");
        assert!(out.success(), "keepalived in {} failed to start", self.ns);
        assert!(
            wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
                pid_in(&parent).is_some() && pid_in(&vrrp).is_some()
            }),
            "keepalived in {} wrote no PID files:\n{}",
            self.ns,
            fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Kills it, children first (SIGKILL, by its PID files).
    pub fn kill(&self) {
        for f in self.pid_files().iter().rev() {
            if let Some(pid) = pid_in(f) {
                process::signal(pid, libc::SIGKILL);
                process::wait_gone(pid);
            }
            let _ = fs::remove_file(f);
        }
    }
}

/// `keepalived -t` of `config` in namespace `ns` (whose interfaces it
/// names): its complaints, if any.
///
/// # Errors
/// keepalived's output when it finds a problem.
pub fn check_config(ns: &str, config: &Path) -> Result<(), String> {
    let out = netns::command(ns, "keepalived")
        .arg("--config-test")
        .arg(format!("--use-file={}", config.display()))
        .output()
        .map_err(|e| format!("keepalived: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(process::all_output(&out))
    }
}
