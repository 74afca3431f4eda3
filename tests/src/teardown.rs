//! What a test bed made, recorded before it is made, and torn down in one
//! place: processes (by the PIDs they wrote), namespaces, cgroups, bpffs
//! mounts. A record can be saved to a file, so that `cargo xtask lab down`
//! tears down a lab that outlived the process that built it.

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{bpffs, netns, process};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    pub namespaces: Vec<String>,
    pub mounts: Vec<PathBuf>,
    pub cgroups: Vec<PathBuf>,
    /// PID files of processes the test bed started.
    pub pid_files: Vec<PathBuf>,
}

impl Record {
    /// Reads a record saved by [`Teardown::save_to`]; empty if there is none.
    #[must_use]
    pub fn load(path: &Path) -> Self {
        fs::read_to_string(path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default()
    }

    /// Kills the processes, then removes namespaces, cgroups and mounts.
    /// Safe to call twice.
    pub fn tear_down(&self) {
        let mut killed = false;
        for pid_file in &self.pid_files {
            if let Some(pid) = process::pid_in(pid_file) {
                process::signal(pid, libc::SIGKILL);
                killed = true;
            }
            let _ = fs::remove_file(pid_file);
        }
        if killed {
            // Give killed processes a moment to release devices and mounts.
            thread::sleep(Duration::from_millis(200));
        }
        for ns in &self.namespaces {
            if Path::new("/run/netns").join(ns).exists() {
                netns::delete(ns);
            }
        }
        for group in &self.cgroups {
            process::wait_until(Duration::from_secs(1), Duration::from_millis(50), || {
                fs::remove_dir(group).is_ok() || !group.exists()
            });
        }
        for mount in &self.mounts {
            bpffs::unmount(mount);
        }
    }
}

/// A record kept current (and, when given a file, saved) as things are made.
#[derive(Debug, Default)]
pub struct Teardown {
    record: Record,
    file: Option<PathBuf>,
}

impl Teardown {
    /// A record saved to `file` after every addition.
    #[must_use]
    pub fn save_to(file: &Path) -> Self {
        Self {
            record: Record::default(),
            file: Some(file.to_path_buf()),
        }
    }

    #[must_use]
    pub fn record(&self) -> &Record {
        &self.record
    }

    fn save(&self) {
        if let Some(file) = &self.file {
            let text = serde_json::to_string_pretty(&self.record).unwrap_or_default();
            fs::write(file, text).unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
        }
    }

    /// Records, then makes, the namespace `name`.
    pub fn namespace(&mut self, name: &str) {
        self.record.namespaces.push(name.to_owned());
        self.save();
        netns::add(name);
    }

    /// Records, then mounts, a private bpffs on `path`.
    pub fn bpffs(&mut self, path: &Path) {
        self.record.mounts.push(path.to_path_buf());
        self.save();
        bpffs::mount(path);
    }

    /// Records a cgroup about to be made.
    pub fn cgroup(&mut self, path: &Path) {
        if !self.record.cgroups.iter().any(|g| g == path) {
            self.record.cgroups.push(path.to_path_buf());
            self.save();
        }
    }

    /// Records the PID file of a process about to be started.
    pub fn pid_file(&mut self, path: &Path) {
        if !self.record.pid_files.iter().any(|p| p == path) {
            self.record.pid_files.push(path.to_path_buf());
            self.save();
        }
    }

    /// Tears everything down now; the record is left empty.
    pub fn tear_down(&mut self) {
        std::mem::take(&mut self.record).tear_down();
    }

    /// Leaves everything running: the record (and its file) outlive this.
    pub fn keep(&mut self) {
        self.record = Record::default();
        self.file = None;
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        self.tear_down();
    }
}
