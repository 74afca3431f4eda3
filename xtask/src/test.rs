//! `cargo xtask test`: set-up, the BPF object, lint, the Debian packages
//! (this build and the upgrade test's), the containers' Debian root, every
//! test in the workspace (the booted-systemd test installs the packages in
//! containers), then the same on the kernels operators run (`cargo xtask
//! kernels`) where this machine has `/dev/kvm`.

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
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!(
            "xtask test: no /dev/kvm here: the kernels operators run were not booted (`cargo xtask kernels` boots them)"
        );
        return Ok(());
    }
    if !is_root() {
        eprintln!("xtask test: not root: the kernels operators run were not booted");
        return Ok(());
    }
    // The running kernel has just run every test.
    let started = std::time::Instant::now();
    kernels::run(&kernels::KernelsArgs {
        no_running: true,
        ..kernels::KernelsArgs::default()
    })?;
    eprintln!(
        "xtask test: the kernels operators run: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
