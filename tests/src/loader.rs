//! The real `ovpn-lb` binary, run in a gateway namespace: `run` as a child
//! that is waited for until it says it runs, and the one-shot commands
//! (`check`, `status`, `detach`).

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Output, Stdio},
    time::Duration,
};

use ovpn_lb::pins::Layout;

use crate::{
    netns,
    process::{self, log_end, wait_until},
};

/// How long `run` may take to attach and say so: a guard against a hang,
/// not a measure (the verifier alone took over 15 s on two cores shared
/// with other builds and a VM).
const START_TIMEOUT: Duration = Duration::from_mins(1);

/// The `ovpn-lb` binary: `$OVPN_LB_BIN`, or the workspace's debug build.
///
/// # Panics
/// If it has not been built.
#[must_use]
pub fn loader_bin() -> PathBuf {
    let path = std::env::var_os("OVPN_LB_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/ovpn-lb"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p ovpn-lb-userspace` (cargo xtask test does)",
        path.display()
    );
    path
}

/// Where a loader runs and keeps its pins and state.
#[derive(Clone, Debug)]
pub struct Site {
    /// The gateway namespace.
    pub ns: String,
    pub bin: PathBuf,
    pub layout: Layout,
}

impl Site {
    /// `ovpn-lb --pin-root .. --run-dir .. ARGS` in the namespace, to completion.
    ///
    /// # Panics
    /// If it cannot start.
    #[must_use]
    pub fn ovpn_lb(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", self.bin.display()))
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut c = netns::command(&self.ns, &self.bin);
        c.arg("--pin-root")
            .arg(&self.layout.pin_root)
            .arg("--run-dir")
            .arg(&self.layout.run_dir)
            .args(args);
        c
    }

    /// `status --json` after sampling for `interval` seconds.
    ///
    /// # Panics
    /// If it prints no JSON.
    #[must_use]
    pub fn status(&self, interval: &str) -> serde_json::Value {
        let out = self.ovpn_lb(&["status", "--json", "--interval", interval]);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json: {e}: {}", process::all_output(&out)))
    }

    /// [`Site::status`], or `None` if there is none to read (yet).
    #[must_use]
    pub fn try_status(&self, interval: &str) -> Option<serde_json::Value> {
        let out = self
            .command(&["status", "--json", "--interval", interval])
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Starts `ovpn-lb run --config CONFIG EXTRA`, its stderr appended to
    /// `log`, and waits until it says it runs. `own_group` puts it in a
    /// process group of its own, out of reach of the terminal's Ctrl-C.
    ///
    /// # Panics
    /// If it exits or does not start in time.
    #[must_use]
    pub fn start(&self, config: &Path, extra: &[&str], log: &Path, own_group: bool) -> Loader {
        self.start_with_env(config, extra, &[], log, own_group)
    }

    /// [`Site::start`] with `env` set for the loader (its test settings,
    /// such as the ring accounting's hooks).
    ///
    /// # Panics
    /// As [`Site::start`].
    #[must_use]
    pub fn start_with_env(
        &self,
        config: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        log: &Path,
        own_group: bool,
    ) -> Loader {
        let from = log_end(log);
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let mut command = self.command(&["run", "--config", &config.to_string_lossy()]);
        command
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if own_group {
            command.process_group(0);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", self.bin.display()));
        let mut loader = Loader {
            child: Some(child),
            log: log.to_path_buf(),
        };
        let mut exited = false;
        let started = wait_until(START_TIMEOUT, Duration::from_millis(20), || {
            exited = !loader.running();
            exited
                || loader
                    .log_text()
                    .get(from..)
                    .is_some_and(|t| t.contains("running with"))
        });
        assert!(
            started && !exited,
            "ovpn-lb in {} {}:\n{}",
            self.ns,
            if exited { "exited" } else { "did not start" },
            loader.log_text()
        );
        loader
    }
}

/// A running `ovpn-lb run`; killed (SIGKILL) on drop unless released.
pub struct Loader {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Loader {
    /// The loader's PID (`ip netns exec` execs it in place).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `signal` and waits for the exit code (`None`: killed by a signal).
    #[must_use]
    pub fn stop(mut self, signal: i32) -> Option<i32> {
        let mut child = self.child.take()?;
        process::signal(i32::try_from(child.id()).ok()?, signal);
        child.wait().ok().and_then(|s| s.code())
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn terminate(mut self, grace: Duration) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                process::signal(pid, libc::SIGTERM);
            }
            wait_until(grace, Duration::from_millis(10), || {
                !matches!(child.try_wait(), Ok(None))
            });
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit by itself.
    ///
    /// # Panics
    /// If it does not within `timeout`.
    #[must_use]
    pub fn wait(mut self, timeout: Duration) -> Option<i32> {
        let mut code = None;
        let exited = wait_until(timeout, Duration::from_millis(10), || {
            match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => {
                    code = status.code();
                    true
                }
                _ => false,
            }
        });
        assert!(exited, "loader did not exit:\n{}", self.log_text());
        self.child = None;
        code
    }

    /// Leaves it running (tracked elsewhere by its PID); returns the PID.
    #[must_use]
    pub fn release(mut self) -> u32 {
        let pid = self.pid();
        // The child is reaped by whoever outlives it.
        std::mem::forget(self.child.take());
        pid
    }

    #[must_use]
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
