//! FRR in a test bed: one instance per namespace, started as `frr@.service`
//! would start it (the daemons its `daemons` file names, zebra and staticd
//! always, then `vtysh -b` applying its `frr.conf`), but with every socket,
//! PID file and log in a directory of the test bed's (`-N` the namespace's
//! name, `--vty_socket`, `-z`, `-i`, `--log`). Daemons run as FRR's own
//! user, as Debian runs them; they are stopped by their PIDs.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    netns,
    process::{self, pid_in, wait_until},
};

/// Where Debian's `frr` package puts the daemons.
pub const DAEMON_DIR: &str = "/usr/lib/frr";
/// The daemons that always run, first (zebra before the others).
const ALWAYS: &[&str] = &["zebra", "staticd"];
/// The daemons a `daemons` file may switch on, in frrinit's order.
const OPTIONAL: &[&str] = &["bgpd", "bfdd"];

/// One FRR instance.
#[derive(Clone, Debug)]
pub struct Frr {
    /// Its namespace, also its path space (`-N`).
    pub ns: String,
    /// Where `frr.conf` and `daemons` are (its `/etc/frr`).
    pub conf_dir: PathBuf,
    /// Sockets, PID files and logs (its `/var/run/frr`), FRR's user's.
    pub run_dir: PathBuf,
}

impl Frr {
    /// The daemons to run and their options, from the `daemons` file.
    ///
    /// # Panics
    /// If it cannot be read.
    #[must_use]
    pub fn daemons(&self) -> Vec<(String, Vec<String>)> {
        let path = self.conf_dir.join("daemons");
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let value = |key: &str| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
            })
        };
        ALWAYS
            .iter()
            .copied()
            .chain(
                OPTIONAL
                    .iter()
                    .copied()
                    .filter(|d| value(d).as_deref() == Some("yes")),
            )
            .map(|d| {
                let options = value(&format!("{d}_options")).unwrap_or_default();
                (
                    d.to_owned(),
                    options.split_whitespace().map(str::to_owned).collect(),
                )
            })
            .collect()
    }

    #[must_use]
    pub fn pid_file(&self, daemon: &str) -> PathBuf {
        self.run_dir.join(format!("{daemon}.pid"))
    }

    #[must_use]
    pub fn log(&self, daemon: &str) -> PathBuf {
        self.run_dir.join(format!("{daemon}.log"))
    }

    /// Every daemon's PID file, to record before starting.
    #[must_use]
    pub fn pid_files(&self) -> Vec<PathBuf> {
        self.daemons()
            .iter()
            .map(|(d, _)| self.pid_file(d))
            .collect()
    }

    /// Makes the run directory, FRR's user's.
    fn prepare(&self) {
        fs::create_dir_all(&self.run_dir)
            .unwrap_or_else(|e| panic!("{}: {e}", self.run_dir.display()));
        process::run("chown", &["frr:frr", &self.run_dir.display().to_string()]);
    }

    /// Starts every daemon, then applies `frr.conf`.
    ///
    /// # Panics
    /// If a daemon does not start or the configuration is refused.
    pub fn start(&self) {
        self.prepare();
        for (daemon, options) in self.daemons() {
            self.start_daemon(&daemon, &options);
        }
        self.apply(None);
    }

    /// Starts one daemon without configuration (as frrinit does).
    ///
    /// # Panics
    /// If it does not write its PID file.
    pub fn start_daemon(&self, daemon: &str, options: &[String]) {
        let pid_file = self.pid_file(daemon);
        let _ = fs::remove_file(&pid_file);
        let run = self.run_dir.display().to_string();
        let mut args: Vec<String> = vec![
            format!("{DAEMON_DIR}/{daemon}"),
            "-d".into(),
            "-N".into(),
            self.ns.clone(),
            "--vty_socket".into(),
            run.clone(),
            "-z".into(),
            format!("{run}/zserv.api"),
            "-i".into(),
            pid_file.display().to_string(),
            "--log".into(),
            format!("file:{}", self.log(daemon).display()),
        ];
        args.extend(options.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        netns::exec(&self.ns, &args);
        assert!(
            wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
                pid_in(&pid_file).is_some()
            }),
            "{daemon} in {} wrote no PID file:\n{}",
            self.ns,
            fs::read_to_string(self.log(daemon)).unwrap_or_default()
        );
    }

    /// Restarts `daemon` (after it died or was killed) and gives it its
    /// configuration again, as watchfrr does.
    pub fn restart(&self, daemon: &str) {
        let options = self
            .daemons()
            .into_iter()
            .find(|(d, _)| d == daemon)
            .map(|(_, o)| o)
            .unwrap_or_default();
        self.start_daemon(daemon, &options);
        self.apply(Some(daemon));
    }

    /// `vtysh -b`: the integrated configuration to every daemon, or to one.
    ///
    /// # Panics
    /// If vtysh fails.
    pub fn apply(&self, daemon: Option<&str>) {
        let mut args = self.vtysh_args();
        args.extend([
            "--config_dir".into(),
            self.conf_dir.display().to_string(),
            "-b".into(),
        ]);
        if let Some(d) = daemon {
            args.extend(["-d".into(), d.to_owned()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = netns::command(&self.ns, "vtysh")
            .args(&args)
            .output()
            .expect("vtysh");
        assert!(
            out.status.success(),
            "vtysh -b in {}: {}",
            self.ns,
            process::all_output(&out)
        );
    }

    fn vtysh_args(&self) -> Vec<String> {
        vec!["--vty_socket".into(), self.run_dir.display().to_string()]
    }

    /// `vtysh -c COMMAND`'s output ("" if vtysh fails).
    #[must_use]
    pub fn vtysh(&self, command: &str) -> String {
        let mut args = self.vtysh_args();
        args.extend(["-c".into(), command.to_owned()]);
        netns::command(&self.ns, "vtysh")
            .args(&args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// A `... json` command's answer (`Null` when there is none).
    #[must_use]
    pub fn json(&self, command: &str) -> serde_json::Value {
        serde_json::from_str(&self.vtysh(command)).unwrap_or(serde_json::Value::Null)
    }

    /// Kills `daemon` (SIGKILL, by its PID file); returns the PID.
    #[expect(
        clippy::must_use_candidate,
        reason = "most callers only kill; some wait for the PID to end"
    )]
    pub fn kill(&self, daemon: &str) -> Option<i32> {
        let pid = pid_in(&self.pid_file(daemon))?;
        process::signal(pid, libc::SIGKILL);
        let _ = fs::remove_file(self.pid_file(daemon));
        Some(pid)
    }

    /// Kills every daemon.
    pub fn stop(&self) {
        for (d, _) in self.daemons() {
            if let Some(pid) = self.kill(&d) {
                process::wait_gone(pid);
            }
        }
    }

    /// The daemons' logs, for a failure message.
    #[must_use]
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (d, _) in self.daemons() {
            let log = fs::read_to_string(self.log(&d)).unwrap_or_default();
            let _ = write!(out, "--- {} {d}:\n{log}", self.ns);
        }
        out
    }
}

/// `vtysh -C`: whether FRR's own parser takes the `frr.conf` in `dir`
/// (nothing needs to run); its complaints otherwise.
///
/// # Errors
/// vtysh's output when it refuses the file.
pub fn check_config(dir: &Path) -> Result<(), String> {
    let out = std::process::Command::new("vtysh")
        .args(["-C", "--config_dir"])
        .arg(dir)
        .output()
        .map_err(|e| format!("vtysh: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(process::all_output(&out))
    }
}
