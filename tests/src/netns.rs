//! Network namespaces owned by a test and removed when it ends, pass or fail.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A named network namespace (`ip netns`), deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `ovpnlb-<tag>-<pid>-<n>`, unique per process and call.
    ///
    /// # Panics
    /// If `ip netns add` fails.
    #[must_use]
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "ovpnlb-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> ARGS`, panicking with its stderr on failure.
    ///
    /// # Panics
    /// If the command fails.
    #[expect(
        clippy::must_use_candidate,
        reason = "most callers run it for its effect"
    )]
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `ip netns exec <ns> ARGS`, panicking with its stderr on failure.
    #[expect(
        clippy::must_use_candidate,
        reason = "most callers run it for its effect"
    )]
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `f` on a thread that has joined this namespace; panics propagate.
    ///
    /// # Panics
    /// If the namespace cannot be entered, or `f` panics.
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        enter_named(&self.name, f)
    }
}

/// Runs `f` on a thread that has joined the named namespace; panics propagate.
///
/// # Panics
/// If the namespace cannot be entered, or `f` panics.
pub fn enter_named<R: Send>(name: &str, f: impl FnOnce() -> R + Send) -> R {
    let path = format!("/run/netns/{name}");
    thread::scope(|s| {
        let handle = s.spawn(|| {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
            f()
        });
        handle
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

impl Netns {
    /// Like [`Netns::enter`], but on a detached thread, for work that must run
    /// while the caller does something in another namespace.
    ///
    /// # Panics
    /// The returned handle's `join` reports a failure to enter or a panic in `f`.
    pub fn spawn<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> thread::JoinHandle<R> {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        if let Ok(out) = out
            && !out.status.success()
        {
            eprintln!(
                "warning: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

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
