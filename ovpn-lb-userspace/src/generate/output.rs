//! Writing a gateway's files below a directory without following symbolic
//! links: each step opens the next directory relative to the one before it
//! (`openat` with `O_NOFOLLOW`), so nothing below the output directory can
//! redirect a write, and modes are set on the open descriptors, never by
//! path and never left to the umask.

use std::{
    ffi::CString,
    fs::File,
    io::{self, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{
            ffi::OsStrExt as _,
            fs::{DirBuilderExt as _, PermissionsExt as _},
        },
    },
    path::{Component, Path},
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::DIRECTORY;

/// An open directory files are written below.
pub struct Dir {
    fd: OwnedFd,
    /// For messages.
    path: std::path::PathBuf,
}

fn c_name(name: &std::ffi::OsStr) -> Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| anyhow!("{} holds a NUL byte", name.to_string_lossy()))
}

/// `openat(parent, name, flags, mode)`, owned.
fn open_at(parent: &OwnedFd, name: &CString, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: `parent` is an open descriptor and `name` a NUL-terminated
    // string, both alive for the call; the result is owned at once.
    let fd = unsafe {
        libc::openat(
            parent.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            mode,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Dir {
    /// Opens `path`, made first (mode 0755, its missing parents too) if
    /// missing. The path itself is the caller's: links in it are followed.
    ///
    /// # Errors
    /// If it cannot be made, or is not a directory.
    pub fn open_or_create(path: &Path) -> Result<Self> {
        if !path.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIRECTORY)
                .create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(DIRECTORY))
                .with_context(|| format!("setting the mode of {}", path.display()))?;
        }
        Self::open(path)
    }

    /// Where it is, for messages and the list of files written.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        if !file.metadata()?.is_dir() {
            bail!("{} is not a directory", path.display());
        }
        Ok(Self {
            fd: file.into(),
            path: path.to_path_buf(),
        })
    }

    /// The subdirectory `name`, made (mode 0755) if missing; a link there
    /// is refused.
    ///
    /// # Errors
    /// If it cannot be made or opened.
    pub fn child(&self, name: &std::ffi::OsStr) -> Result<Self> {
        let path = self.path.join(name);
        let c = c_name(name)?;
        // SAFETY: an open directory descriptor and a NUL-terminated name.
        let made = unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), DIRECTORY) } == 0;
        if !made {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(e).with_context(|| format!("creating {}", path.display()));
            }
        }
        let fd = open_at(&self.fd, &c, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(|e| {
            anyhow!(
                "{}: {e}; a symbolic link (or a file) is in the way, and generate follows none",
                path.display()
            )
        })?;
        if made {
            File::from(fd.try_clone()?)
                .set_permissions(std::fs::Permissions::from_mode(DIRECTORY))
                .with_context(|| format!("setting the mode of {}", path.display()))?;
        }
        Ok(Self { fd, path })
    }

    /// Writes `contents` to `relative` (plain names only), mode `mode`,
    /// making the directories on the way.
    ///
    /// # Errors
    /// If a component is a link, or anything cannot be written.
    pub fn write(&self, relative: &Path, contents: &[u8], mode: u32) -> Result<()> {
        let mut names = Vec::new();
        for c in relative.components() {
            match c {
                Component::Normal(n) => names.push(n),
                _ => bail!("{}: not a plain relative path", relative.display()),
            }
        }
        let Some((file, dirs)) = names.split_last() else {
            bail!("an empty path");
        };
        let mut here = None;
        for name in dirs {
            let next = here.as_ref().unwrap_or(self).child(name)?;
            here = Some(next);
        }
        let dir = here.as_ref().unwrap_or(self);
        let path = dir.path.join(file);
        let c = c_name(file)?;
        // Whatever is there goes (a link itself, not what it points to).
        // SAFETY: an open directory descriptor and a NUL-terminated name.
        if unsafe { libc::unlinkat(dir.fd.as_raw_fd(), c.as_ptr(), 0) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOENT) {
                return Err(e).with_context(|| format!("replacing {}", path.display()));
            }
        }
        let fd = open_at(
            &dir.fd,
            &c,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            mode,
        )
        .with_context(|| format!("writing {}", path.display()))?;
        let mut f = File::from(fd);
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
        f.write_all(contents)
            .with_context(|| format!("writing {}", path.display()))
    }
}
