//! Building the BPF object (nightly, BTF) and the userspace binaries.

use std::{env, ffi::OsString, process::Command};

use anyhow::Result;

use crate::{
    setup,
    tools::{NIGHTLY, cmd, exec, is_root, release_loader, tools_bin},
};

/// `cargo <subcommand>` for the BPF crate with the nightly toolchain, our
/// `bpf-linker` first on `PATH`, and BTF for `bpftool`'s field names.
fn nightly_bpf(subcommand: &str) -> Command {
    let mut path = OsString::from(tools_bin());
    path.push(":");
    path.push(env::var_os("PATH").unwrap_or_default());
    let mut c = cmd("rustup");
    c.args([
        "run",
        NIGHTLY,
        "cargo",
        subcommand,
        "--package",
        "ovpn-lb-ebpf",
        "--release",
    ])
    .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
    .env("PATH", path)
    .env(
        "CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS",
        "-C debuginfo=2 -C link-arg=--btf -C link-arg=--cpu-features=+allows-misaligned-mem-access",
    );
    // The outer (stable) cargo's settings must not leak into the nightly build.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "RUSTFLAGS",
    ] {
        c.env_remove(var);
    }
    c
}

/// The BPF object, `target/bpfel-unknown-none/release/ovpn-lb-ebpf`.
pub fn ebpf() -> Result<()> {
    exec(&mut nightly_bpf("build"))
}

/// Formatting and clippy (pedantic, warnings are errors) on every crate.
pub fn lint() -> Result<()> {
    exec(cmd("cargo").args(["fmt", "--all", "--check"]))?;
    exec(cmd("cargo").args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    exec(nightly_bpf("clippy").args(["--", "-D", "warnings"]))
}

pub fn userspace() -> Result<()> {
    exec(cmd("cargo").args([
        "build",
        "--package",
        "ovpn-lb-userspace",
        "--release",
        "--bins",
    ]))
}

pub fn all() -> Result<()> {
    ebpf()?;
    userspace()
}

pub fn run_loader(args: &[String]) -> Result<()> {
    setup::run()?;
    all()?;
    let binary = release_loader();
    let mut c = if is_root() {
        Command::new(&binary)
    } else {
        let mut s = Command::new("sudo");
        s.arg(&binary);
        s
    };
    exec(c.args(args))
}
