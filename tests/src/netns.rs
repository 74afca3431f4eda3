//! Network namespaces: named ones owned by a test and removed when it ends,
//! commands run in a namespace by name, and threads that join one.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use crate::process::run;

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
        Self::named(&format!(
            "ovpnlb-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Creates the namespace `name`, with its loopback up.
    ///
    /// # Panics
    /// If `ip netns add` fails (the name is taken, for one).
    #[must_use]
    pub fn named(name: &str) -> Self {
        add(name);
        Self {
            name: name.to_owned(),
        }
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> ARGS`, panicking with its stderr on failure.
    #[expect(
        clippy::must_use_candidate,
        reason = "most callers run it for its effect"
    )]
    pub fn ip(&self, args: &[&str]) -> String {
        ip(&self.name, args)
    }

    /// Runs `ip netns exec <ns> ARGS`, panicking with its stderr on failure.
    #[expect(
        clippy::must_use_candidate,
        reason = "most callers run it for its effect"
    )]
    pub fn exec(&self, args: &[&str]) -> String {
        exec(&self.name, args)
    }

    /// Runs `f` on a thread that has joined this namespace; panics propagate.
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        enter_named(&self.name, f)
    }

    /// Like [`Netns::enter`], but on a detached thread, for work that must run
    /// while the caller does something in another namespace.
    pub fn spawn<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> thread::JoinHandle<R> {
        let name = self.name.clone();
        thread::spawn(move || {
            join(&name);
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

/// `ip netns add NAME`, loopback up.
///
/// # Panics
/// If the namespace cannot be made.
pub fn add(name: &str) {
    run("ip", &["netns", "add", name]);
    ip(name, &["link", "set", "lo", "up"]);
}

/// `ip netns del NAME`, warning (not panicking) on failure: it runs on teardown.
pub fn delete(name: &str) {
    let out = Command::new("ip").args(["netns", "del", name]).output();
    if let Ok(out) = out
        && !out.status.success()
    {
        eprintln!(
            "warning: ip netns del {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `ip -n NS ARGS`, panicking with its stderr on failure.
#[expect(
    clippy::must_use_candidate,
    reason = "most callers run it for its effect"
)]
pub fn ip(ns: &str, args: &[&str]) -> String {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// `ip netns exec NS ARGS`, panicking with its stderr on failure.
#[expect(
    clippy::must_use_candidate,
    reason = "most callers run it for its effect"
)]
pub fn exec(ns: &str, args: &[&str]) -> String {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// `ip netns exec NS` followed by a program: the start of a command to spawn.
#[must_use]
pub fn command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// Moves the calling thread into the named namespace.
///
/// # Panics
/// If the namespace cannot be opened or joined.
pub fn join(name: &str) {
    let path = format!("/run/netns/{name}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: setns(2) on a descriptor we own; it changes only this thread's
    // network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
}

/// Runs `f` on a thread that has joined the named namespace; panics propagate.
///
/// # Panics
/// If the namespace cannot be entered, or `f` panics.
pub fn enter_named<R: Send>(name: &str, f: impl FnOnce() -> R + Send) -> R {
    thread::scope(|s| {
        s.spawn(|| {
            join(name);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// The index of device `dev` in the calling thread's namespace; 0 if none.
///
/// # Panics
/// If the name holds a NUL byte.
#[must_use]
pub fn ifindex(dev: &str) -> u32 {
    let name = std::ffi::CString::new(dev).expect("a device name without NUL");
    // SAFETY: if_nametoindex(3) reads the NUL-terminated name we own.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}
