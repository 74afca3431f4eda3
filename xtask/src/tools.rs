//! What every task uses: the workspace's paths, running commands, the
//! root check, and where set-up keeps its tools. Every other module
//! imports from here; nothing here imports them.

use std::{
    env,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, atomic::AtomicBool},
};

use anyhow::{Context as _, Result, bail};

/// The nightly toolchain that builds the BPF crate.
pub const NIGHTLY: &str = "nightly";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

/// The release build of the `ovpn-lb` binary (`cargo xtask build` makes it).
pub fn release_loader() -> PathBuf {
    workspace_root().join("target/release/ovpn-lb")
}

/// A BPF object built by `cargo xtask build`.
pub fn bpf_object(name: &str) -> PathBuf {
    workspace_root()
        .join("target/bpfel-unknown-none/release")
        .join(name)
}

/// A command run from the workspace root.
pub fn cmd(program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new(program);
    c.current_dir(workspace_root());
    c
}

/// Runs `c`, failing with its command line if it exits non-zero.
pub fn exec(c: &mut Command) -> Result<()> {
    let status = c.status().with_context(|| format!("starting {c:?}"))?;
    if !status.success() {
        bail!("{c:?} failed ({status})");
    }
    Ok(())
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Where set-up keeps what it builds: `$XDG_CACHE_HOME/ovpn-lb` or `~/.cache/ovpn-lb`.
pub fn cache_dir() -> PathBuf {
    env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("ovpn-lb")
}

/// Directory holding our `bpf-linker`, to put first on `PATH` for BPF builds.
pub fn tools_bin() -> PathBuf {
    cache_dir().join("tools/bin")
}

/// A flag that SIGINT and SIGTERM raise: long tasks stop at the next step
/// and tear down what they made.
pub fn stop_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, flag.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, flag.clone())?;
    Ok(flag)
}
