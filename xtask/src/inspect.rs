//! `cargo xtask inspect`: loads the BPF object with `bpftool` in a throwaway
//! network namespace and prints each program's instruction counts.

use anyhow::{Context as _, Result, bail};

use crate::build::{self, cmd, exec, workspace_root};

const NS: &str = "ovpnlb-inspect";

pub fn run() -> Result<()> {
    build::ebpf()?;
    let object = workspace_root().join("target/bpfel-unknown-none/release/ovpn-lb-ebpf");
    exec(cmd("ip").args(["netns", "add", NS]))?;
    let script = format!(
        "mount -t bpf bpf /sys/fs/bpf && mkdir /sys/fs/bpf/inspect && \
         bpftool prog loadall {} /sys/fs/bpf/inspect type classifier && \
         for p in /sys/fs/bpf/inspect/*; do bpftool -j prog show pinned $p; echo; done",
        object.display()
    );
    let out = cmd("ip")
        .args(["netns", "exec", NS, "sh", "-c", &script])
        .output();
    let _ = cmd("ip").args(["netns", "del", NS]).status();
    let out = out.context("running bpftool")?;
    if !out.status.success() {
        bail!("bpftool failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    println!(
        "{:<22} {:>12} {:>12} {:>12}",
        "program", "xlated insns", "xlated bytes", "jited bytes"
    );
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
    {
        let field = |name: &str| -> String {
            line.split(&format!("\"{name}\":"))
                .nth(1)
                .map(|rest| {
                    rest.split([',', '}'])
                        .next()
                        .unwrap_or("")
                        .trim_matches('"')
                        .to_owned()
                })
                .unwrap_or_default()
        };
        let xlated: u64 = field("bytes_xlated").parse().unwrap_or(0);
        println!(
            "{:<22} {:>12} {:>12} {:>12}",
            field("name"),
            xlated / 8,
            xlated,
            field("bytes_jited")
        );
    }
    Ok(())
}
