//! Prerequisites, each checked before it is installed so a second run is quick:
//! Debian packages, `rust-src` for the nightly toolchain, a `bpf-linker`
//! built against that nightly's own LLVM, and `cargo-deb` (`cargo xtask deb`).

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
    // Gateway pairs: FRR (bgpd, bfdd, staticd, vtysh) on the lab's routers
    // and gateways, keepalived for the VRRP variant.
    "frr",
    "keepalived",
];

/// Debian's way to keep a package's install from starting its service:
/// FRR's and keepalived's would run on the machine itself, outside any lab
/// namespace.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

const BPF_LINKER_VERSION: &str = "0.13.0";
/// 3.8.0 declares rust-version 1.85, so the stable toolchain builds it.
const CARGO_DEB_VERSION: &str = "3.8.0";

pub fn run() -> Result<()> {
    debian_packages()?;
    rust_src()?;
    bpf_linker()?;
    cargo_deb()?;
    Ok(())
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
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

/// Whether `binary --version` runs and names `version`.
fn works(binary: &Path, version: &str) -> bool {
    Command::new(binary)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(version))
}
