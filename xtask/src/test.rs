//! `cargo xtask test`: set-up, the BPF object, lint, the Debian packages
//! (this build and the upgrade test's), the containers' Debian root, every
//! test in the workspace (the booted-systemd test installs the packages in
//! containers), then the kernels operators run, booted in QEMU guests
//! (`kernels::for_tests`: all of `cargo xtask kernels` where KVM runs them,
//! a named subset under emulation).

use anyhow::Result;

use crate::{
    build, deb, kernels, setup,
    tools::{cmd, exec, is_root},
};

pub fn run_all(extra: &[String]) -> Result<()> {
    // The loader tests run the real binary.
    exec(cmd("cargo").args(["build", "--package", "ovpn-lb-userspace", "--bins"]))?;
    // Every test binary runs even after one fails: one run shows every failure.
    exec(
        cmd("cargo")
            .args(["test", "--workspace", "--no-fail-fast"])
            .args(extra),
    )
}

pub fn run(extra: &[String]) -> Result<()> {
    setup::run()?;
    build::ebpf()?;
    build::lint()?;
    let packaging = std::time::Instant::now();
    // The upgrade test's build first: the release binary ends as it should.
    deb::upgrade_package()?;
    deb::package()?;
    eprintln!(
        "xtask test: release builds and Debian packages: {:.0} s",
        packaging.elapsed().as_secs_f64()
    );
    setup::for_tests()?;
    if !is_root() {
        eprintln!(
            "xtask test: not root: BPF, namespace and container tests will be skipped (CI=true makes that a failure)"
        );
    }
    run_all(extra)?;
    if !is_root() {
        eprintln!(
            "xtask test: not root: the kernels operators run were not booted (`cargo xtask kernels` as root boots them)"
        );
        return Ok(());
    }
    let started = std::time::Instant::now();
    kernels::for_tests()?;
    eprintln!(
        "xtask test: the kernels operators run: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
