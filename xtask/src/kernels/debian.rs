//! Debian kernel packages, fetched with `apt-get download` through a private
//! apt configuration in the tool cache (its own sources, lists and
//! archives: the host's apt state is never touched), extracted there, and
//! indexed with `depmod` so that `modprobe` works in a guest.
//!
//! The archive is the one this machine's apt already uses (its `URIs` for
//! Debian and for Debian's security archive), so a mirror set up here is
//! followed.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{tools::exec, vm::Kernel};

/// The keyring that signs Debian's suites (Debian 12's
/// `debian-archive-keyring` holds the keys of Debian 11 to 13).
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// The metapackage whose dependency names a suite's current kernel.
const METAPACKAGE: &str = "linux-image-amd64";

/// Where this machine's apt fetches Debian and its security updates.
struct Archives {
    main: String,
    security: String,
}

fn archives() -> Result<Archives> {
    let mut text = String::new();
    for path in ["/etc/apt/sources.list"]
        .into_iter()
        .map(PathBuf::from)
        .chain(
            fs::read_dir("/etc/apt/sources.list.d")
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "sources" || e == "list")),
        )
    {
        if let Ok(t) = fs::read_to_string(&path) {
            text.push_str(&t);
            text.push('\n');
        }
    }
    let uris: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| {
            l.split_whitespace()
                .filter(|w| w.starts_with("http://") || w.starts_with("https://"))
        })
        .collect();
    let find = |tail: &str| {
        uris.iter()
            .map(|u| u.trim_end_matches('/'))
            .find(|u| u.ends_with(tail))
            .map(str::to_owned)
    };
    Ok(Archives {
        main: find("/debian").ok_or_else(|| {
            anyhow!("this machine's apt sources name no Debian archive (a URI ending in /debian)")
        })?,
        security: find("/debian-security").ok_or_else(|| {
            anyhow!("this machine's apt sources name no Debian security archive (/debian-security)")
        })?,
    })
}

/// A private apt configuration: `apt-get`/`apt-cache` with `APT_CONFIG`
/// pointing at it read only its own sources and state.
struct Apt {
    dir: PathBuf,
}

impl Apt {
    fn new(dir: &Path, suites: &[&str]) -> Result<Self> {
        let archives = archives()?;
        for sub in [
            "lists/partial",
            "archives/partial",
            "etc/apt.conf.d",
            "etc/preferences.d",
        ] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let mut sources = String::new();
        for suite in suites {
            let uri = if suite.ends_with("-security") {
                &archives.security
            } else {
                &archives.main
            };
            let _ = writeln!(sources, "deb [signed-by={KEYRING}] {uri} {suite} main");
        }
        fs::write(dir.join("etc/sources.list"), sources)?;
        let d = dir.display();
        fs::write(
            dir.join("apt.conf"),
            format!(
                "Dir::Etc \"{d}/etc\";\nDir::Etc::sourcelist \"{d}/etc/sources.list\";\n\
                 Dir::Etc::sourceparts \"{d}/etc/sources.list.d\";\n\
                 Dir::State::Lists \"{d}/lists\";\nDir::State::status \"/dev/null\";\n\
                 Dir::Cache \"{d}\";\nDir::Cache::archives \"{d}/archives\";\n\
                 Debug::NoLocking \"true\";\nAcquire::Languages \"none\";\n\
                 APT::Sandbox::User \"root\";\n\
                 APT::Architecture \"amd64\";\nAPT::Architectures {{ \"amd64\"; }};\n"
            ),
        )?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("APT_CONFIG", self.dir.join("apt.conf"))
            .env("DEBIAN_FRONTEND", "noninteractive");
        c
    }

    /// The package `linux-image-amd64` depends on: the suites' current kernel.
    fn current_kernel(&self) -> Result<String> {
        let out = self
            .command("apt-cache")
            .args(["depends", METAPACKAGE])
            .output()
            .context("running apt-cache")?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .map(str::trim)
            .find(|p| p.starts_with("linux-image-") && p != &METAPACKAGE)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("apt-cache depends {METAPACKAGE} named no kernel package"))
    }
}

/// A Debian suite's current kernel, from the cache or else fetched,
/// extracted and indexed under `dir`. `refresh` asks the archive again for
/// the suite's current kernel.
pub fn kernel(dir: &Path, suites: &[&str], refresh: bool) -> Result<Kernel> {
    let current = dir.join("current");
    if !refresh && let Ok(package) = fs::read_to_string(&current) {
        let root = dir.join(package.trim());
        if let Ok(kernel) = extracted(&root) {
            return Ok(kernel);
        }
    }
    let apt = Apt::new(&dir.join("apt"), suites)?;
    eprintln!("kernels: apt-get update for {}", suites.join(", "));
    exec(apt.command("apt-get").args(["update", "-q"]))?;
    let package = apt.current_kernel()?;
    let root = dir.join(&package);
    if let Ok(kernel) = extracted(&root) {
        fs::write(&current, &package)?;
        return Ok(kernel);
    }
    eprintln!("kernels: downloading {package}");
    let downloads = dir.join("debs");
    fs::create_dir_all(&downloads)?;
    exec(
        apt.command("apt-get")
            .args(["download", "-q", &package])
            .current_dir(&downloads),
    )?;
    let deb = fs::read_dir(&downloads)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")))
                && p.extension().is_some_and(|e| e == "deb")
        })
        .ok_or_else(|| anyhow!("apt-get download left no {package}_*.deb"))?;
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    exec(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    // Debian 13's packages put modules under usr/lib (merged /usr): the
    // tools look in lib/.
    if !root.join("lib").exists() && root.join("usr/lib/modules").exists() {
        std::os::unix::fs::symlink("usr/lib", root.join("lib"))?;
    }
    let kernel = image(&root)?;
    exec(
        Command::new("depmod")
            .arg("-b")
            .arg(&root)
            .arg(&kernel.release),
    )?;
    fs::write(root.join(".ready"), "")?;
    // The extracted tree is all a guest needs.
    fs::remove_file(&deb)?;
    fs::write(&current, &package)?;
    Ok(kernel)
}

/// The kernel extracted at `root`, if extraction finished.
fn extracted(root: &Path) -> Result<Kernel> {
    if !root.join(".ready").exists() {
        bail!("{} is not extracted", root.display());
    }
    image(root)
}

fn image(root: &Path) -> Result<Kernel> {
    let release = fs::read_dir(root.join("boot"))
        .with_context(|| format!("{} has no boot/", root.display()))?
        .filter_map(Result::ok)
        .find_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_owned)
        })
        .ok_or_else(|| anyhow!("{}/boot has no vmlinuz-*", root.display()))?;
    Ok(Kernel {
        release,
        root: root.to_path_buf(),
    })
}
