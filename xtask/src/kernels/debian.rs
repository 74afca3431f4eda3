//! Debian's and Ubuntu's kernel packages, fetched with `apt-get download`
//! through a private apt configuration in the tool cache (its own sources,
//! lists and archives: the host's apt state is never touched), extracted
//! there, and indexed with `depmod` so that `modprobe` works in a guest.
//!
//! Debian's archive is the one this machine's apt already uses (its `URIs`
//! for Debian and for Debian's security archive), so a mirror set up here is
//! followed. Ubuntu's is Ubuntu's own, signed by a key whose fingerprint is
//! pinned here (Debian 12 packages no Ubuntu keyring): the keyring the
//! archive publishes is fetched and only that key kept.

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
const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Ubuntu's archive and its security archive.
const UBUNTU_ARCHIVE: &str = "http://archive.ubuntu.com/ubuntu";
const UBUNTU_SECURITY: &str = "http://security.ubuntu.com/ubuntu";
/// Where Ubuntu's archive publishes its keyring, and the fingerprint of the
/// key that signs its suites since 18.04 ("Ubuntu Archive Automatic
/// Signing Key (2018)"): the only key kept from it.
const UBUNTU_KEYRING_URL: &str =
    "http://archive.ubuntu.com/ubuntu/project/ubuntu-archive-keyring.gpg";
const UBUNTU_KEY: &str = "F6ECB3762474EDA9D21B7022871920D1991BC93C";

/// Whose archive a kernel comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distribution {
    Debian,
    Ubuntu,
}

impl Distribution {
    /// The metapackage whose dependency names a suite's current kernel.
    fn metapackage(self) -> &'static str {
        match self {
            Distribution::Debian => "linux-image-amd64",
            Distribution::Ubuntu => "linux-image-generic",
        }
    }

    /// The packages a kernel needs besides its image package: Ubuntu's
    /// modules (9p, overlay, veth, `cls_bpf`) are a package of their own.
    fn companions(self, image: &str) -> Vec<String> {
        match self {
            Distribution::Debian => Vec::new(),
            Distribution::Ubuntu => {
                vec![image.replacen("linux-image-", "linux-modules-", 1)]
            }
        }
    }
}

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

/// Ubuntu's key alone, in a keyring under `dir`: the archive's published
/// keyring fetched, and the key with the pinned fingerprint exported from
/// it (a keyring without it is refused).
fn ubuntu_keyring(dir: &Path) -> Result<PathBuf> {
    let keyring = dir.join("ubuntu-archive.gpg");
    if keyring.exists() {
        return Ok(keyring);
    }
    fs::create_dir_all(dir)?;
    let published = dir.join("published.gpg");
    exec(
        Command::new("curl")
            .args(["-fsSL", "--retry", "3", "-o"])
            .arg(&published)
            .arg(UBUNTU_KEYRING_URL),
    )?;
    let home = dir.join("gnupg");
    fs::create_dir_all(&home)?;
    // gpg warns of a home others may read.
    fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let gpg = |args: &[&str]| {
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", &home)
            .args(["--batch", "--quiet"])
            .args(args);
        c
    };
    exec(gpg(&["--import"]).arg(&published))?;
    let out = gpg(&["--export", UBUNTU_KEY])
        .output()
        .context("running gpg (Debian package gpg)")?;
    if out.stdout.is_empty() {
        bail!("{UBUNTU_KEYRING_URL} holds no key {UBUNTU_KEY}");
    }
    fs::write(&keyring, &out.stdout)?;
    fs::remove_dir_all(&home)?;
    fs::remove_file(&published)?;
    Ok(keyring)
}

impl Apt {
    fn new(dir: &Path, distribution: Distribution, suites: &[&str]) -> Result<Self> {
        for sub in [
            "lists/partial",
            "archives/partial",
            "etc/apt.conf.d",
            "etc/preferences.d",
        ] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let (main, security, keyring) = match distribution {
            Distribution::Debian => {
                let a = archives()?;
                (a.main, a.security, PathBuf::from(DEBIAN_KEYRING))
            }
            Distribution::Ubuntu => (
                UBUNTU_ARCHIVE.to_owned(),
                UBUNTU_SECURITY.to_owned(),
                ubuntu_keyring(&dir.join("keyring"))?,
            ),
        };
        let mut sources = String::new();
        for suite in suites {
            let uri = if suite.ends_with("-security") {
                &security
            } else {
                &main
            };
            let _ = writeln!(
                sources,
                "deb [signed-by={}] {uri} {suite} main",
                keyring.display()
            );
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

    /// The image package the metapackage depends on: the suites' current
    /// kernel.
    fn current_kernel(&self, metapackage: &str) -> Result<String> {
        let out = self
            .command("apt-cache")
            .args(["depends", metapackage])
            .output()
            .context("running apt-cache")?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .map(str::trim)
            .find(|p| p.starts_with("linux-image-") && p != &metapackage)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("apt-cache depends {metapackage} named no kernel package"))
    }
}

/// A suite's current kernel, from the cache or else fetched, extracted and
/// indexed under `dir`. `refresh` asks the archive again for the suite's
/// current kernel.
pub fn kernel(
    dir: &Path,
    distribution: Distribution,
    suites: &[&str],
    refresh: bool,
) -> Result<Kernel> {
    let current = dir.join("current");
    if !refresh && let Ok(package) = fs::read_to_string(&current) {
        let root = dir.join(package.trim());
        if let Ok(kernel) = extracted(&root) {
            return Ok(kernel);
        }
    }
    let apt = Apt::new(&dir.join("apt"), distribution, suites)?;
    eprintln!("kernels: apt-get update for {}", suites.join(", "));
    exec(apt.command("apt-get").args(["update", "-q"]))?;
    let package = apt.current_kernel(distribution.metapackage())?;
    let root = dir.join(&package);
    if let Ok(kernel) = extracted(&root) {
        fs::write(&current, &package)?;
        return Ok(kernel);
    }
    let packages: Vec<String> = std::iter::once(package.clone())
        .chain(distribution.companions(&package))
        .collect();
    eprintln!("kernels: downloading {}", packages.join(", "));
    let downloads = dir.join("debs");
    fs::create_dir_all(&downloads)?;
    exec(
        apt.command("apt-get")
            .args(["download", "-q"])
            .args(&packages)
            .current_dir(&downloads),
    )?;
    let debs = packages
        .iter()
        .map(|p| {
            fs::read_dir(&downloads)?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|d| {
                    d.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{p}_")))
                        && d.extension().is_some_and(|e| e == "deb")
                })
                .ok_or_else(|| anyhow!("apt-get download left no {p}_*.deb"))
        })
        .collect::<Result<Vec<_>>>()?;
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    for deb in &debs {
        exec(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
    }
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
    for deb in &debs {
        fs::remove_file(deb)?;
    }
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
