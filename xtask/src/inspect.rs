//! `cargo xtask inspect`: loads the freshly built BPF object (nothing
//! attached) and prints each program's instruction counts as the kernel
//! reports them.

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    programs::{SchedClassifier, Xdp},
};
use ovpn_lb_common::maps::programs;

use crate::{build, tools::bpf_object};

pub fn run() -> Result<()> {
    build::ebpf()?;
    let object = bpf_object("ovpn-lb-ebpf");
    let mut ebpf =
        Ebpf::load_file(&object).with_context(|| format!("loading {}", object.display()))?;
    println!(
        "{:<22} {:>12} {:>12} {:>12}",
        "program", "xlated insns", "xlated bytes", "jited bytes"
    );
    for &name in programs::TC.iter().chain(programs::XDP) {
        let program = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("the object has no program {name}"))?;
        let info = if programs::XDP.contains(&name) {
            let p: &mut Xdp = program.try_into()?;
            p.load()?;
            p.info()?
        } else {
            let p: &mut SchedClassifier = program.try_into()?;
            p.load()?;
            p.info()?
        };
        let xlated = info.size_translated().unwrap_or(0);
        println!(
            "{name:<22} {:>12} {xlated:>12} {:>12}",
            xlated / 8,
            info.size_jitted()
        );
    }
    Ok(())
}
