//! bpffs for tests: a pin directory on the machine's bpffs, or a private
//! bpffs mounted on a directory of the test's own; both removed on drop.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::process::{run, wait_until};

const BPFFS: &str = "/sys/fs/bpf";

pub struct PinDir {
    pub path: PathBuf,
}

impl PinDir {
    /// Creates `/sys/fs/bpf/ovpnlb-test-<tag>-<pid>`, mounting bpffs first if
    /// the machine has none (as the loader does).
    ///
    /// # Panics
    /// If bpffs cannot be mounted or the directory created.
    #[must_use]
    pub fn new(tag: &str) -> Self {
        let mounted = fs::read_to_string("/proc/mounts")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(BPFFS) && l.contains(" bpf "));
        if !mounted {
            run("mount", &["-t", "bpf", "bpf", BPFFS]);
        }
        let path = PathBuf::from(format!("{BPFFS}/ovpnlb-test-{tag}-{}", std::process::id()));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        // Pins are files on bpffs: unlinking them drops the references.
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("warning: removing {}: {e}", self.path.display());
        }
    }
}

/// Mounts a private bpffs on `path` (created), so a loader's pins stay out
/// of `/sys/fs/bpf`.
///
/// # Panics
/// If the directory cannot be made or the mount fails.
pub fn mount(path: &Path) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    run("mount", &["-t", "bpf", "bpf", &path.to_string_lossy()]);
}

/// Unmounts `path`, lazily if a loader that just exited still holds it.
pub fn unmount(path: &Path) {
    let unmounted = wait_until(Duration::from_secs(1), Duration::from_millis(50), || {
        Command::new("umount")
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !unmounted {
        let _ = Command::new("umount").arg("-l").arg(path).status();
    }
}
