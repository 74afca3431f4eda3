//! The benchmark's PNGs, drawn by Debian's gnuplot (`gnuplot-nox`,
//! installed by set-up) from tab-separated data files written next to their
//! scripts under `results/`, so that a figure can be redrawn or restyled with
//! `gnuplot results/NAME.gp`. `bench.png` has the per-packet and forwarding
//! ratios; the end-to-end figures are drawn with the helpers here.

use std::{fmt::Write as _, fs, path::Path, process::Command};

use anyhow::{Context as _, Result, ensure};

use super::forwarding;

pub struct Data<'a> {
    pub machine: String,
    /// (path, program / floor) from the per-packet part.
    pub per_packet: &'a [(String, f64)],
    pub forwarding: Option<&'a forwarding::Summary>,
}

/// Series colours, in order (Paul Tol's bright scheme).
pub(super) const COLORS: [&str; 6] = [
    "#4477aa", "#66ccee", "#228833", "#ccbb44", "#ee6677", "#aa3377",
];

pub(super) const STYLE: &str = "set datafile separator \"\\t\"\nset style fill solid 0.75 border -1\nset grid ytics\nset key top left\nset yrange [0:*]\nset xtics nomirror\n";

/// Writes `bench.gp`, its data files and `bench.png` into `dir`; returns the PNG's path.
pub fn draw(dir: &Path, data: &Data) -> Result<std::path::PathBuf> {
    let mut gp = String::new();
    let panels =
        usize::from(!data.per_packet.is_empty()) + 2 * usize::from(data.forwarding.is_some());
    ensure!(panels > 0, "nothing to plot");
    let (rows, cols) = if panels <= 2 { (1, panels) } else { (2, 2) };
    let png = dir.join("bench.png");
    gp.push_str(&multiplot(
        &png,
        rows,
        cols,
        &format!("cargo xtask bench: {}", data.machine),
    ));
    if let Some(f) = data.forwarding {
        forwarding_panels(dir, &mut gp, f)?;
    }
    if !data.per_packet.is_empty() {
        let mut dat = String::new();
        for (name, r) in data.per_packet {
            let _ = writeln!(dat, "{name}\t{r:.4}");
        }
        fs::write(dir.join("per-packet.dat"), dat)?;
        let _ = writeln!(
            gp,
            "reset\n{STYLE}set title \"Per packet (BPF\\\\_PROG\\\\_TEST\\\\_RUN): program time / empty tc program\"\nset ylabel \"ns per packet / floor (1 = costs nothing)\"\nset style data histogram\nset style histogram clustered gap 1\nset xtics rotate by 30 right font \",9\"\nset bmargin 9\nset arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2 lc rgb \"gray40\"\nplot \"{}\" using 2:xtic(1) notitle lc rgb \"#4477aa\"\nunset arrow",
            dir.join("per-packet.dat").display()
        );
    }
    render(dir, "bench", &gp)?;
    Ok(png)
}

/// The start of a script drawing `rows` x `cols` panels into `png`.
pub(super) fn multiplot(png: &Path, rows: usize, cols: usize, title: &str) -> String {
    format!(
        "set terminal pngcairo size {},{} font \"DejaVu Sans,11\"\nset output \"{}\"\nset multiplot layout {rows},{cols} title \"{}\" font \",13\"\n",
        cols * 820,
        rows * 560 + 40,
        png.display(),
        title.replace('"', "'")
    )
}

/// Ends the multiplot script `gp`, writes it to `dir/NAME.gp` and runs
/// gnuplot on it.
pub(super) fn render(dir: &Path, name: &str, gp: &str) -> Result<()> {
    let script = dir.join(format!("{name}.gp"));
    fs::write(&script, format!("{gp}unset multiplot\n"))?;
    let out = Command::new("gnuplot")
        .arg(&script)
        .output()
        .context("running gnuplot (Debian package gnuplot-nox)")?;
    ensure!(
        out.status.success(),
        "gnuplot {}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn forwarding_panels(dir: &Path, gp: &mut String, f: &forwarding::Summary) -> Result<()> {
    let mut dat = String::new();
    for row in &f.rows {
        let _ = write!(dat, "{}", row.label);
        for (m, lo, hi) in row.pps.iter().chain(&row.cpu) {
            let _ = write!(dat, "\t{m:.4}\t{lo:.4}\t{hi:.4}");
        }
        dat.push('\n');
    }
    let file = dir.join("forwarding.dat");
    fs::write(&file, dat)?;
    let mixes = f.mixes.len();
    for (panel, title, ylabel, first) in [
        (
            0,
            "Forwarding with trafgen on the same CPU: packets/s / plain routing",
            "ratio to plain routing (higher is better)",
            2,
        ),
        (
            1,
            "Gateway packets per CPU-second (generator's share removed) / plain routing",
            "ratio to plain routing (higher is better)",
            2 + 3 * mixes,
        ),
    ] {
        let _ = writeln!(
            gp,
            "reset\n{STYLE}set title \"{title}\"\nset ylabel \"{ylabel}\"\nset style data histogram\nset style histogram errorbars gap 1 lw 1\nset xtics rotate by 20 right font \",10\"\nset bars front\nset arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2 lc rgb \"gray40\""
        );
        if panel == 1 {
            let _ = writeln!(
                gp,
                "set arrow from graph 0, first 1.3 to graph 1, first 1.3 nohead dt 3 lc rgb \"#cc3311\"\nset label \"target for ovpn-lb tc: 1.3\" at graph 0.28, first 1.3 left offset 0,0.6 tc rgb \"#cc3311\""
            );
        }
        let mut plot = Vec::new();
        for (i, mix) in f.mixes.iter().enumerate() {
            let c = first + 3 * i;
            let xtic = if i == 0 { ":xtic(1)" } else { "" };
            plot.push(format!(
                "\"{}\" using {c}:{}:{}{xtic} title \"{mix}\" lc rgb \"{}\"",
                file.display(),
                c + 1,
                c + 2,
                COLORS[i % COLORS.len()]
            ));
        }
        let _ = writeln!(gp, "plot {}\nunset arrow\nunset label", plot.join(", "));
    }
    Ok(())
}
