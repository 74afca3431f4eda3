//! Commands and processes the test bed starts: a command run to completion,
//! children killed and reaped on drop, PID files, signals, and waiting for
//! a line in a log.

use std::{
    fs,
    path::Path,
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

/// Runs a command, returning stdout; panics with stderr on failure.
///
/// # Panics
/// If the command cannot start or exits non-zero.
#[expect(
    clippy::must_use_candidate,
    reason = "most callers run it for its effect"
)]
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stdout and stderr of a finished command, one after the other.
#[must_use]
pub fn all_output(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A child process killed (by its PID) and reaped on drop.
pub struct Spawned(pub Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The PID a process wrote to `path`, if it did.
#[must_use]
pub fn pid_in(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Sends `signal` to `pid`, a process the test bed started.
pub fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) has no memory effects; callers pass only PIDs of
    // processes the test bed started (read from its own PID files).
    unsafe { libc::kill(pid, signal) };
}

/// Polls `done` every `every` until it holds or `timeout` (stretched on a
/// slow machine, see [`crate::slowed`]) passes; whether it held.
pub fn wait_until(timeout: Duration, every: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + crate::slowed(timeout);
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(every);
    }
}

/// Waits until the log at `path`, from byte `from` on, contains `needle`.
///
/// # Errors
/// The whole log, when `needle` did not appear within `timeout`.
pub fn wait_for_log(
    path: &Path,
    from: usize,
    needle: &str,
    timeout: Duration,
) -> Result<(), String> {
    let seen = |text: &str| text.get(from..).is_some_and(|new| new.contains(needle));
    if wait_until(timeout, Duration::from_millis(20), || {
        seen(&fs::read_to_string(path).unwrap_or_default())
    }) {
        Ok(())
    } else {
        Err(fs::read_to_string(path).unwrap_or_default())
    }
}

/// The size of the file at `path` (0 if missing): where new log lines start.
#[must_use]
pub fn log_end(path: &Path) -> usize {
    fs::metadata(path).map_or(0, |m| usize::try_from(m.len()).unwrap_or(0))
}

/// Keeps the calling thread on `cpu`; whether the kernel agreed.
#[must_use]
pub fn pin_thread(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and
    // sched_setaffinity(2) only read and write that local set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) == 0
    }
}

/// Waits until process `pid` has ended (a zombie counts as ended: a
/// daemon's reaper may be slow), so that what it held is free again.
///
/// # Panics
/// If it lives on for 10 seconds.
pub fn wait_gone(pid: i32) {
    let status = format!("/proc/{pid}/status");
    let gone = wait_until(Duration::from_secs(10), Duration::from_millis(5), || {
        std::fs::read_to_string(&status).map_or(true, |s| s.contains("State:\tZ"))
    });
    assert!(gone, "process {pid} did not exit");
}
