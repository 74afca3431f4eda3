//! `cargo xtask deb`: the Debian package, made by cargo-deb from
//! `[package.metadata.deb]` in `ovpn-lb-userspace/Cargo.toml`. Before it
//! runs, this writes what the package needs besides the release binary
//! (which embeds the BPF object, so `build::all` comes first): the generic
//! `ovpn-lb.service` (the same text `ovpn-lb generate` writes per site) and
//! the man pages (`man`).

mod man;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    build, setup,
    tools::{cmd, exec, tools_bin, workspace_root},
};

/// Where the package's generated files are written. cargo-deb resolves
/// `target/release/` in asset paths to the real target directory, so the
/// manifest names them under it.
fn assets_dir() -> PathBuf {
    workspace_root().join("target/release/deb-assets")
}

/// Where the package is written.
pub fn output_dir() -> PathBuf {
    workspace_root().join("target/debian")
}

/// The generated files: the unit and the gzipped man pages.
fn write_assets(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let unit = dir.join("ovpn-lb.service");
    fs::write(&unit, ovpn_lb::generate::unit::packaged())
        .with_context(|| format!("writing {}", unit.display()))?;
    man::write(&dir.join("man"))?;
    Ok(())
}

/// Where the upgrade test's package is written: the next revision, of a
/// build whose map layout differs.
pub fn upgrade_dir() -> PathBuf {
    output_dir().join("upgrade")
}

/// Runs cargo-deb on the release build as it is into `out_dir`, with
/// revision `revision`; returns the package's path.
fn cargo_deb(out_dir: &Path, revision: &str) -> Result<PathBuf> {
    fs::create_dir_all(out_dir)?;
    let mut c = cmd(tools_bin().join("cargo-deb"));
    c.args(["--package", "ovpn-lb-userspace", "--no-build"])
        .args(["--deb-revision", revision, "--output"])
        .arg(out_dir)
        .stderr(Stdio::inherit());
    let out = c.output().with_context(|| format!("starting {c:?}"))?;
    if !out.status.success() {
        bail!("{c:?} failed ({})", out.status);
    }
    // cargo-deb prints the package's path on success.
    let printed = String::from_utf8_lossy(&out.stdout);
    let path = printed
        .lines()
        .map(str::trim)
        .map(PathBuf::from)
        .rfind(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("cargo-deb printed no package path: {printed}"))?;
    Ok(path)
}

/// Builds everything and the package; prints and returns its path.
pub fn package() -> Result<PathBuf> {
    build::all()?;
    write_assets(&assets_dir())?;
    let deb = cargo_deb(&output_dir(), "1")?;
    println!("package: {}", deb.display());
    Ok(deb)
}

/// The booted-systemd test's upgrade: revision 2 of this version, built
/// with `OVPN_LB_UPGRADE_TEST_LAYOUT` (one map one entry larger), so that
/// installing it over revision 1 replaces a datapath of another layout.
/// Built before [`package`], which then leaves the release binary as it
/// should be.
pub fn upgrade_package() -> Result<PathBuf> {
    build::ebpf()?;
    exec(
        cmd("cargo")
            .args([
                "build",
                "--package",
                "ovpn-lb-userspace",
                "--release",
                "--bins",
            ])
            .env("OVPN_LB_UPGRADE_TEST_LAYOUT", "1"),
    )?;
    write_assets(&assets_dir())?;
    let deb = cargo_deb(&upgrade_dir(), "2")?;
    println!("upgrade test package: {}", deb.display());
    Ok(deb)
}

/// `cargo xtask deb`.
pub fn run() -> Result<()> {
    setup::run()?;
    package().map(|_| ())
}
