//! The end-to-end figures: goodput against N per mode, one panel per
//! condition (`end-to-end.png`), and the backlog traces, a row per condition
//! and a panel per mode (`backlog.png`).

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use super::{
    results::Measured,
    variant::{Variant, spray_label},
};
use crate::{
    bench::plot::{COLORS, STYLE, multiplot, render},
    lab::spray_name,
};
use anyhow::Result;

/// Rows and columns for `panels` panels, at most two columns.
fn layout(panels: usize) -> (usize, usize) {
    let cols = panels.clamp(1, 2);
    (panels.div_ceil(cols), cols)
}

/// Writes `end-to-end.png` (and its script and data); returns its path.
pub fn goodput(dir: &Path, machine: &str, measured: &[Measured]) -> Result<PathBuf> {
    let png = dir.join("end-to-end.png");
    let (rows, cols) = layout(measured.len());
    let mut gp = multiplot(
        &png,
        rows,
        cols,
        &format!("One TCP flow through N OpenVPN tunnels\\n{machine}"),
    );
    for m in measured {
        goodput_panel(dir, &mut gp, m)?;
    }
    render(dir, "end-to-end", &gp)?;
    Ok(png)
}

fn goodput_panel(dir: &Path, gp: &mut String, m: &Measured) -> Result<()> {
    // Each sprayed mode and LAN setting is a series (a gnuplot index).
    let mut series: Vec<Variant> = Vec::new();
    for v in m.variants.iter().filter(|v| !v.is_baseline()) {
        if !series
            .iter()
            .any(|s| s.mode == v.mode && s.hosts == v.hosts)
        {
            series.push(*v);
        }
    }
    let mut dat = String::new();
    for s in &series {
        for (i, v) in m.variants.iter().enumerate() {
            if v.mode == s.mode
                && v.hosts == s.hosts
                && let Some(g) = m.stat(i, |r| r.mbit_per_s)
            {
                let _ = writeln!(
                    dat,
                    "{}\t{:.3}\t{:.3}\t{:.3}",
                    v.tunnels, g.median, g.min, g.max
                );
            }
        }
        dat.push_str("\n\n");
    }
    let counts: BTreeSet<usize> = m.variants.iter().map(|v| v.tunnels).chain([1]).collect();
    // The ideal per LAN setting measured, each a gnuplot index after the series.
    let lan = m.hosts();
    for &hosts in &lan {
        for &n in &counts {
            if let Some(ideal) = m.ideal(n, hosts) {
                let _ = writeln!(dat, "{n}\t{ideal:.3}");
            }
        }
        dat.push_str("\n\n");
    }
    let file = dir.join(format!("end-to-end-{}.dat", m.condition.name()));
    fs::write(&file, dat)?;
    let max = counts.last().copied().unwrap_or(1);
    let _ = writeln!(
        gp,
        "reset\n{STYLE}set title \"{}\"\nset xlabel \"tunnels N\"\nset ylabel \"goodput, Mbit/s (median, min-max)\"\nset xrange [0.5:{max}.5]\nset xtics 1\nset key below font \",9\" maxrows 4",
        m.condition.name()
    );
    let mut plot: Vec<String> = series
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let colour = COLORS[i % COLORS.len()];
            let dash = lan.iter().position(|&h| h == s.hosts).unwrap_or(0) + 1;
            format!(
                "\"{}\" index {i} using 1:2:3:4 with yerrorlines lw 2 pt 7 dt {dash} lc rgb \"{colour}\" title \"{}\"",
                file.display(),
                s.mode_name()
            )
        })
        .collect();
    let ideal = if m.condition.unequal() {
        "sum of the N single tunnels"
    } else {
        "N x one tunnel"
    };
    for (i, &hosts) in lan.iter().enumerate() {
        let grey = if i == 0 { "gray40" } else { "gray70" };
        let what = hosts.suffix();
        plot.push(format!(
            "\"{}\" index {} using 1:2 with linespoints dt 3 lw 2 pt 4 lc rgb \"{grey}\" title \"{ideal}{what}\"",
            file.display(),
            series.len() + i
        ));
    }
    let _ = writeln!(gp, "plot {}", plot.join(", "));
    Ok(())
}

/// Writes `backlog.png` (and its script and data) when any condition was
/// traced; returns its path.
pub fn backlog(dir: &Path, machine: &str, measured: &[Measured]) -> Result<Option<PathBuf>> {
    let traced: Vec<&Measured> = measured.iter().filter(|m| !m.traces.is_empty()).collect();
    let cols = traced.iter().map(|m| m.traces.len()).max().unwrap_or(0);
    if cols == 0 {
        return Ok(None);
    }
    let png = dir.join("backlog.png");
    let mut gp = multiplot(
        &png,
        traced.len(),
        cols,
        &format!("Backlog of gateway A's tunnel rings during one flow\\n{machine}"),
    );
    for m in traced {
        for (spray, trace) in &m.traces {
            let name = spray_label(*spray);
            let mut dat = String::new();
            for s in &trace.samples {
                let _ = write!(dat, "{:.3}", s.t);
                for r in &s.rings {
                    let _ = write!(dat, "\t{:.0}", r.bytes);
                }
                for r in &s.rings {
                    let _ = write!(dat, "\t{:.0}", r.packets);
                }
                dat.push('\n');
            }
            let file = dir.join(format!(
                "backlog-{}-{}.dat",
                m.condition.name(),
                spray_name(*spray)
            ));
            fs::write(&file, dat)?;
            let tunnels = trace.samples.first().map_or(0, |s| s.rings.len());
            let _ = writeln!(
                gp,
                "reset\n{STYLE}set title \"{}: ovpn-lb {name}, {tunnels} tunnels, {}, {:.1} Mbit/s\"\nset xlabel \"time, s\"\nset ylabel \"backlog, KB\"\nset yrange [*:*]\nset key top right",
                m.condition.name(),
                trace.hosts.describe(),
                trace.run.mbit_per_s
            );
            let lines: Vec<String> = (0..tunnels)
                .map(|k| {
                    format!(
                        "\"{}\" using 1:(column({})/1000) with lines lw 1.5 lc rgb \"{}\" title \"tun{k}\"",
                        file.display(),
                        k + 2,
                        COLORS[k % COLORS.len()]
                    )
                })
                .collect();
            let _ = writeln!(gp, "plot {}", lines.join(", "));
        }
    }
    render(dir, "backlog", &gp)?;
    Ok(Some(png))
}
