//! Prerequisites, each checked before it is installed so a second run is quick:
//! Debian packages, `rust-src` for the nightly toolchain, a `bpf-linker`
//! built against that nightly's own LLVM, `cargo-deb` (`cargo xtask deb`),
//! and for the booted-systemd test the Debian 12 root its containers boot
//! ([`container_root`]).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::tools::{NIGHTLY, cache_dir, cmd, exec, is_root, tools_bin};

/// Debian packages the tests and the benchmark use.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "bpftool",
    "iproute2",
    "iputils-ping",
    "prometheus",
    "openvpn",
    "tcpdump",
    "iperf3",
    "ethtool",
    // `cargo xtask deb`: dpkg-shlibdeps for the package's dependencies.
    "dpkg-dev",
    // The benchmark: trafgen, the nftables variants, the plot.
    "netsniff-ng",
    "nftables",
    "gnuplot-nox",
    "fonts-dejavu-core",
    // The benchmark's MPTCP peer: hosts running iperf3 as MPTCP.
    "mptcpize",
    // The booted-systemd test: its gateways are systemd-nspawn containers on
    // a Debian root that debootstrap makes.
    "systemd-container",
    "debootstrap",
    // Gateway pairs: FRR (bgpd, bfdd, staticd, vtysh) on the lab's routers
    // and gateways, keepalived for the VRRP variant.
    "frr",
    "keepalived",
];

/// The Debian release the containers run, and what their root holds
/// besides a minimal base: a booting systemd, and what the test runs in it.
const CONTAINER_SUITE: &str = "bookworm";
const CONTAINER_PACKAGES: &str = "systemd,systemd-sysv,dbus,iproute2,iputils-ping,procps";
/// Downloaded into the root's apt cache, for `apt-get install` to find
/// offline inside the containers (their network is the lab's).
const CONTAINER_DOWNLOADS: &[&str] = &["openvpn"];
const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";

/// Debian's way to keep a package's install from starting its service:
/// FRR's and keepalived's would run on the machine itself, outside any lab
/// namespace.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

const BPF_LINKER_VERSION: &str = "0.13.0";
/// 3.8.0 declares rust-version 1.85, so the stable toolchain builds it.
const CARGO_DEB_VERSION: &str = "3.8.0";

pub fn run() -> Result<()> {
    debian_packages(DEBIAN_PACKAGES)?;
    rust_src()?;
    bpf_linker()?;
    cargo_deb()?;
    Ok(())
}

/// Installs those of `packages` that are missing (root only).
///
/// # Errors
/// If one is missing and cannot be installed.
pub fn debian_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    if !is_root() {
        bail!(
            "Debian packages {} are missing and installing them needs root",
            missing.join(" ")
        );
    }
    exec(cmd("apt-get").arg("update").arg("-q"))?;
    // No service starts while we install (unless the machine already says so).
    let ours = !Path::new(POLICY_RC_D).exists();
    if ours {
        fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# cargo xtask setup: no service starts during the install\nexit 101\n",
        )?;
        fs::set_permissions(
            POLICY_RC_D,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
    }
    let installed = exec(
        cmd("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    if ours {
        fs::remove_file(POLICY_RC_D)?;
    }
    installed
}

fn rust_src() -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", NIGHTLY])
        .output()
        .context("running rustup: is rustup installed?")?;
    if !out.status.success() {
        bail!(
            "the `{NIGHTLY}` toolchain is not installed; install it with `rustup toolchain install {NIGHTLY}`"
        );
    }
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the {NIGHTLY} toolchain");
    exec(cmd("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
}

/// The nightly's `libLLVM.so.<major>.<minor>-rust-...` and its major version.
fn nightly_llvm() -> Result<(PathBuf, String)> {
    let out = Command::new("rustc")
        .args([&format!("+{NIGHTLY}"), "--print", "sysroot"])
        .output()
        .context("running rustc +nightly")?;
    let lib = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("lib");
    for entry in fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(version) = name.strip_prefix("libLLVM.so.") {
            let major = version.split('.').next().unwrap_or_default().to_owned();
            return Ok((lib.join(&name), major));
        }
    }
    bail!(
        "no libLLVM.so.* in {}: the nightly toolchain looks incomplete",
        lib.display()
    )
}

fn bpf_linker() -> Result<()> {
    let (libllvm, major) = nightly_llvm()?;
    let prefix = cache_dir().join(format!("llvm-{major}"));
    let link = prefix.join("lib/libLLVM.so");
    let binary = tools_bin().join("bpf-linker");
    let linked_to = fs::read_link(&link).ok();
    if linked_to.as_deref() == Some(libllvm.as_path()) && works(&binary, BPF_LINKER_VERSION) {
        return Ok(());
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against the {NIGHTLY} LLVM {major} (a few minutes, once)"
    );
    // The build links against `libLLVM.so`; the binary then loads the soname
    // through its rpath (this folder), so both names point at the nightly's file.
    let soname = link.with_file_name(libllvm.file_name().expect("a file"));
    fs::create_dir_all(link.parent().expect("has a parent"))?;
    for name in [&link, &soname] {
        let _ = fs::remove_file(name);
        std::os::unix::fs::symlink(&libllvm, name)
            .with_context(|| format!("linking {}", name.display()))?;
    }
    let features = format!("llvm-{major}");
    let mut install = cargo_install(
        "bpf-linker",
        BPF_LINKER_VERSION,
        &["--no-default-features", "--features", &features],
    );
    exec(install.env("LLVM_PREFIX", &prefix))
}

fn cargo_deb() -> Result<()> {
    if works(&tools_bin().join("cargo-deb"), CARGO_DEB_VERSION) {
        return Ok(());
    }
    eprintln!("setup: building cargo-deb {CARGO_DEB_VERSION} (a minute or two, once)");
    exec(&mut cargo_install("cargo-deb", CARGO_DEB_VERSION, &[]))
}

/// `cargo install` of exactly `version` of `name`, locked, into our tool
/// directory.
fn cargo_install(name: &str, version: &str, extra: &[&str]) -> Command {
    let mut c = cmd("cargo");
    c.args(["install", "--locked", "--force", "--root"])
        .arg(cache_dir().join("tools"))
        .args([name, "--version", &format!("={version}")])
        .args(extra);
    c
}

/// What only the tests need besides [`run`]'s: the containers' root, as
/// root (without root the tests that would use it skip).
pub fn for_tests() -> Result<()> {
    if is_root() {
        container_root()?;
    }
    Ok(())
}

/// Where the containers' root lives: `cache_dir()/containers/debian-12`
/// (the tests find it there, or at `$OVPN_LB_CONTAINER_ROOT`).
pub fn container_root_dir() -> PathBuf {
    cache_dir().join("containers/debian-12")
}

/// The Debian 12 root the booted-systemd test's containers boot: made once
/// with debootstrap (about 250 MB, a minute or two), with `openvpn` and its
/// dependencies in its apt cache. Each container runs on a throw-away
/// overlay of it, so it stays as made; a stamp names what it holds, and a
/// root whose stamp differs is made again.
pub fn container_root() -> Result<PathBuf> {
    let root = container_root_dir();
    let stamp = format!(
        "{CONTAINER_SUITE} {CONTAINER_PACKAGES} downloads:{}\n",
        CONTAINER_DOWNLOADS.join(",")
    );
    let stamp_file = root.join("etc/ovpn-lb-test-root");
    if fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp) {
        return Ok(root);
    }
    if !is_root() {
        bail!("making the containers' root needs root (debootstrap)");
    }
    eprintln!(
        "setup: making the containers' Debian {CONTAINER_SUITE} root in {} (a minute or two, once)",
        root.display()
    );
    // Made beside, then moved into place: an interrupted run leaves no half root.
    let building = root.with_extension("building");
    let _ = fs::remove_dir_all(&building);
    fs::create_dir_all(building.parent().expect("has a parent"))?;
    exec(
        cmd("debootstrap")
            .args([
                "--variant=minbase",
                &format!("--include={CONTAINER_PACKAGES}"),
            ])
            .args([CONTAINER_SUITE])
            .arg(&building)
            .arg(DEBIAN_MIRROR),
    )?;
    fs::write(
        building.join("etc/apt/sources.list"),
        format!(
            "deb {DEBIAN_MIRROR} {CONTAINER_SUITE} main\n\
             deb {DEBIAN_MIRROR} {CONTAINER_SUITE}-updates main\n\
             deb http://deb.debian.org/debian-security {CONTAINER_SUITE}-security main\n"
        ),
    )?;
    fs::copy("/etc/resolv.conf", building.join("etc/resolv.conf"))
        .context("copying /etc/resolv.conf into the root for apt")?;
    let chroot = |args: &[&str]| {
        let mut c = cmd("chroot");
        c.arg(&building)
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        exec(&mut c)
    };
    chroot(&["apt-get", "update", "-q"])?;
    chroot(&["apt-get", "upgrade", "-y", "-q"])?;
    // The cache keeps what the containers install, nothing else.
    chroot(&["apt-get", "clean"])?;
    let mut download = vec!["apt-get", "install", "-y", "-q", "--download-only"];
    download.extend(CONTAINER_DOWNLOADS);
    chroot(&download)?;
    // Each container's own hostname (nspawn --hostname), not the host's.
    let _ = fs::remove_file(building.join("etc/hostname"));
    // No timer runs apt while a test runs.
    for timer in ["apt-daily.timer", "apt-daily-upgrade.timer"] {
        let mask = building.join("etc/systemd/system").join(timer);
        let _ = fs::remove_file(&mask);
        std::os::unix::fs::symlink("/dev/null", &mask)?;
    }
    fs::write(building.join("etc/ovpn-lb-test-root"), stamp)?;
    let _ = fs::remove_dir_all(&root);
    fs::rename(&building, &root)
        .with_context(|| format!("moving {} into place", building.display()))?;
    Ok(root)
}

/// Whether `binary --version` runs and names `version`.
fn works(binary: &Path, version: &str) -> bool {
    Command::new(binary)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(version))
}
