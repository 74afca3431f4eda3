//! Embeds the BPF object built by `cargo xtask build`.
//!
//! Without it the crate still compiles (so `cargo clippy` and the host unit tests
//! work on a machine without the BPF toolchain); loading then fails with a clear
//! message instead.

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let object = env::var_os("OVPN_LB_BPF_OBJECT").map_or_else(
        || manifest.join("../target/bpfel-unknown-none/release/ovpn-lb-ebpf"),
        PathBuf::from,
    );
    println!("cargo:rerun-if-env-changed=OVPN_LB_BPF_OBJECT");
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("ovpn-lb-ebpf.o");
    let bytes = fs::read(&object).unwrap_or_default();
    fs::write(&out, bytes).expect("write the embedded BPF object");
}
