//! A pin directory on bpffs owned by a test, removed with everything in it.

use std::{fs, path::PathBuf};

use crate::netns::run;

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
