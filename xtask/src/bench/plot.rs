//! The benchmark's PNG: ratios per variant and goodput against N, drawn by
//! Debian's gnuplot (`gnuplot-nox`, installed by set-up) from tab-separated
//! data files written next to the script under `results/`, so the figure can
//! be redrawn or restyled with `gnuplot results/bench.gp`.

use std::{fmt::Write as _, fs, path::Path, process::Command};

use anyhow::{Context as _, Result, ensure};

use super::forwarding;

/// Goodput of one TCP flow against the number of tunnels.
pub struct Goodput {
    /// One tunnel, plain routing (Mbit/s, median).
    pub base: f64,
    /// Sprayed by ovpn-lb: (N, median, min, max) Mbit/s.
    pub sprayed: Vec<(usize, f64, f64, f64)>,
    /// Flow mode: (N, median, min, max) Mbit/s.
    pub flow: Option<(usize, f64, f64, f64)>,
    /// Each OpenVPN's CPU quota, percent.
    pub quota: u32,
}

pub struct Data<'a> {
    pub machine: String,
    /// (path, program / floor) from the per-packet part.
    pub per_packet: &'a [(String, f64)],
    pub forwarding: Option<&'a forwarding::Summary>,
    pub goodput: Option<&'a Goodput>,
}

const STYLE: &str = "set datafile separator \"\\t\"\nset style fill solid 0.75 border -1\nset grid ytics\nset key top left\nset yrange [0:*]\nset xtics nomirror\n";

/// Writes `bench.gp`, its data files and `bench.png` into `dir`; returns the PNG's path.
pub fn draw(dir: &Path, data: &Data) -> Result<std::path::PathBuf> {
    let mut gp = String::new();
    let panels = usize::from(!data.per_packet.is_empty())
        + 2 * usize::from(data.forwarding.is_some())
        + usize::from(data.goodput.is_some());
    ensure!(panels > 0, "nothing to plot");
    let (rows, cols) = if panels <= 2 { (1, panels) } else { (2, 2) };
    let png = dir.join("bench.png");
    let _ = writeln!(
        gp,
        "set terminal pngcairo size {},{} font \"DejaVu Sans,11\"\nset output \"{}\"\nset multiplot layout {rows},{cols} title \"cargo xtask bench: {}\" font \",13\"",
        cols * 820,
        rows * 560 + 40,
        png.display(),
        data.machine.replace('"', "'")
    );
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
    if let Some(g) = data.goodput {
        goodput_panel(dir, &mut gp, g)?;
    }
    gp.push_str("unset multiplot\n");
    let script = dir.join("bench.gp");
    fs::write(&script, &gp)?;
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
    Ok(png)
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
    let colors = [
        "#4477aa", "#66ccee", "#228833", "#ccbb44", "#ee6677", "#aa3377",
    ];
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
                colors[i % colors.len()]
            ));
        }
        let _ = writeln!(gp, "plot {}\nunset arrow\nunset label", plot.join(", "));
    }
    Ok(())
}

fn goodput_panel(dir: &Path, gp: &mut String, g: &Goodput) -> Result<()> {
    let mut dat = String::new();
    for (n, m, lo, hi) in &g.sprayed {
        #[expect(clippy::cast_precision_loss, reason = "small counts")]
        let ideal = *n as f64 * g.base;
        let _ = writeln!(dat, "{n}\t{m:.2}\t{lo:.2}\t{hi:.2}\t{ideal:.2}");
    }
    let sprayed = dir.join("goodput.dat");
    fs::write(&sprayed, dat)?;
    let max_n = g
        .sprayed
        .iter()
        .map(|s| s.0)
        .chain(g.flow.map(|f| f.0))
        .max()
        .unwrap_or(1);
    let _ = writeln!(
        gp,
        "reset\n{STYLE}set title \"One TCP flow through N OpenVPN tunnels, each held to {}% of a CPU\"\nset xlabel \"tunnels N\"\nset ylabel \"goodput, Mbit/s\"\nset xrange [0.5:{}.5]\nset xtics 1",
        g.quota, max_n
    );
    let mut plot = vec![
        format!(
            "\"{}\" using 1:2:3:4 with yerrorlines lw 2 pt 7 lc rgb \"#4477aa\" title \"ovpn-lb packet spray (median, min-max)\"",
            sprayed.display()
        ),
        format!(
            "\"{}\" using 1:5 with lines dt 2 lw 2 lc rgb \"gray40\" title \"N x one tunnel with plain routing ({:.0} Mbit/s)\"",
            sprayed.display(),
            g.base
        ),
    ];
    if let Some((n, m, lo, hi)) = g.flow {
        let flow = dir.join("goodput-flow.dat");
        fs::write(&flow, format!("{n}\t{m:.2}\t{lo:.2}\t{hi:.2}\n"))?;
        plot.push(format!(
            "\"{}\" using 1:2:3:4 with yerrorbars pt 5 ps 1.5 lc rgb \"#ee6677\" title \"ovpn-lb flow mode\"",
            flow.display()
        ));
    }
    let _ = writeln!(gp, "plot {}", plot.join(", "));
    Ok(())
}
