//! Where ovpn-lb keeps its state outside the process: pins on bpffs and a small
//! state file. `detach` removes exactly these.

use std::{
    fs, io,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The bpffs mount point.
pub const BPFFS: &str = "/sys/fs/bpf";
/// Default root for ovpn-lb's pins.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/ovpn-lb";
/// Default directory for the state file `status` reads.
pub const DEFAULT_RUN_DIR: &str = "/run/ovpn-lb";

/// The paths of one ovpn-lb instance.
#[derive(Clone, Debug)]
pub struct Layout {
    pub pin_root: PathBuf,
    pub run_dir: PathBuf,
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            pin_root: PathBuf::from(DEFAULT_PIN_ROOT),
            run_dir: PathBuf::from(DEFAULT_RUN_DIR),
        }
    }
}

impl Layout {
    #[must_use]
    pub fn maps(&self) -> PathBuf {
        self.pin_root.join("maps")
    }

    #[must_use]
    pub fn links(&self) -> PathBuf {
        self.pin_root.join("links")
    }

    /// Pin of the tcx link attaching a program to `iface`'s ingress.
    #[must_use]
    pub fn link(&self, iface: &str) -> PathBuf {
        self.links().join(format!("{iface}-ingress"))
    }

    /// Pin of the tcx link attaching a program to `iface`'s egress.
    #[must_use]
    pub fn egress_link(&self, iface: &str) -> PathBuf {
        self.links().join(format!("{iface}-egress"))
    }

    /// Pin of the native XDP link on `iface`.
    #[must_use]
    pub fn xdp_link(&self, iface: &str) -> PathBuf {
        self.links().join(format!("{iface}-xdp"))
    }

    /// Pin of the link of tracing program `program` (the ring accounting).
    #[must_use]
    pub fn tracing_link(&self, program: &str) -> PathBuf {
        self.links().join(format!("{program}-raw_tp"))
    }

    #[must_use]
    pub fn state_file(&self) -> PathBuf {
        self.run_dir.join("state.json")
    }

    #[must_use]
    pub fn lock_file(&self) -> PathBuf {
        self.run_dir.join("run.lock")
    }

    /// Makes sure the pin root is on a bpffs, mounting one if missing (on
    /// `/sys/fs/bpf` for the default root, on the root itself otherwise), and
    /// creates the pin and run directories. Returns the bpffs it mounted, if
    /// any, so that `detach` unmounts only what ovpn-lb mounted.
    ///
    /// # Errors
    /// If bpffs cannot be mounted or a directory created.
    pub fn prepare(&self) -> Result<Option<PathBuf>> {
        let mut mounted = None;
        if self.pin_root.starts_with(BPFFS) {
            if !is_bpffs_mount(Path::new(BPFFS)) {
                mount_bpffs(Path::new(BPFFS))?;
                mounted = Some(PathBuf::from(BPFFS));
            }
        } else {
            fs::create_dir_all(&self.pin_root)
                .with_context(|| format!("creating {}", self.pin_root.display()))?;
            if !on_bpffs(&self.pin_root) {
                mount_bpffs(&self.pin_root)?;
                mounted = Some(self.pin_root.clone());
            }
        }
        for dir in [self.maps(), self.links(), self.run_dir.clone()] {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(mounted)
    }
}

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;

/// True when `path` lies on a bpffs.
#[must_use]
pub fn on_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs into a zeroed struct we own.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &raw mut st) == 0 && st.f_type == BPF_FS_MAGIC
    }
}

/// True when `path` is itself a mount point of bpffs.
#[must_use]
pub fn is_bpffs_mount(path: &Path) -> bool {
    let target = path.to_string_lossy();
    fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let mut f = l.split_whitespace();
            let (_, mount, kind) = (f.next(), f.next(), f.next());
            mount == Some(&target) && kind == Some("bpf")
        })
}

fn mount_bpffs(at: &Path) -> Result<()> {
    let status = Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(at)
        .status()
        .context("running mount")?;
    if !status.success() {
        bail!(
            "could not mount bpffs on {} (mount -t bpf bpf {})",
            at.display(),
            at.display()
        );
    }
    Ok(())
}

/// Removes a file or an empty directory, treating "not there" as done.
///
/// # Errors
/// Any other failure.
pub fn remove_if_present(path: &Path) -> io::Result<()> {
    let result = if path.is_dir() {
        fs::remove_dir(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// What a bpffs pin holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pinned {
    Link,
    Program,
    Map,
}

impl Pinned {
    /// From the anonymous inode a BPF object's descriptor shows in
    /// `/proc/self/fd` (`anon_inode:bpf-link`, `anon_inode:bpf-prog`,
    /// `anon_inode:bpf-map`; older kernels name links `bpf_link`, 6.18 `bpf-link`).
    #[must_use]
    pub fn from_inode_name(name: &str) -> Option<Self> {
        match name.strip_prefix("anon_inode:")? {
            "bpf_link" | "bpf-link" => Some(Pinned::Link),
            "bpf-prog" => Some(Pinned::Program),
            "bpf-map" => Some(Pinned::Map),
            _ => None,
        }
    }

    /// What is pinned at `path`, if anything BPF is. The kernel answers an
    /// info query on any BPF descriptor with the info of what it is, and
    /// aya opens any pin as a link, so neither tells a link from a program
    /// (a legacy tc filter's program is pinned where a tcx link would be).
    #[must_use]
    pub fn at(path: &Path) -> Option<Self> {
        const BPF_OBJ_GET: libc::c_long = 7;
        #[repr(C)]
        struct ObjGet {
            pathname: u64,
            bpf_fd: u32,
            file_flags: u32,
        }
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
        let mut attr = ObjGet {
            pathname: c.as_ptr() as u64,
            bpf_fd: 0,
            file_flags: 0,
        };
        // SAFETY: BPF_OBJ_GET reads the NUL-terminated path `attr` points
        // to (alive across the call) and returns a new descriptor or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_OBJ_GET,
                &raw mut attr,
                std::mem::size_of::<ObjGet>(),
            )
        };
        let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
        // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let target = fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ))
        .ok()?;
        Self::from_inode_name(&target.to_string_lossy())
    }
}

/// Unpins the link pinned at `path`, which detaches it unless someone else
/// holds it; a pin that is not a link is just removed. Absent is fine.
///
/// # Errors
/// If the pin exists but cannot be removed.
pub fn drop_link(path: &Path) -> Result<bool> {
    if !path.exists() {
        return Ok(false);
    }
    // Removing the pin drops the pin's reference either way.
    remove_if_present(path).with_context(|| format!("removing {}", path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_told_apart_by_their_descriptors_inode() {
        // Linux 6.18 names a link's inode `bpf-link`, older ones `bpf_link`.
        for link in ["anon_inode:bpf_link", "anon_inode:bpf-link"] {
            assert_eq!(Pinned::from_inode_name(link), Some(Pinned::Link));
        }
        assert_eq!(
            Pinned::from_inode_name("anon_inode:bpf-prog"),
            Some(Pinned::Program)
        );
        assert_eq!(
            Pinned::from_inode_name("anon_inode:bpf-map"),
            Some(Pinned::Map)
        );
        assert_eq!(Pinned::from_inode_name("/sys/fs/bpf/x"), None);
        assert_eq!(Pinned::at(Path::new("/nonexistent/pin")), None);
    }
}
