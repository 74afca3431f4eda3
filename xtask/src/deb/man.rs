//! Man pages from the command line's own definitions (`ovpn_lb::cli::Cli`),
//! rendered by `clap_mangen`: `ovpn-lb.1` and one page per subcommand
//! (`ovpn-lb-run.1`, ...), each gzipped as Debian keeps them.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;
use clap_mangen::Man;

use crate::tools::{cmd, exec};

/// Writes every page into `dir` (emptied first) as `NAME.1.gz`; returns
/// their paths.
pub fn write(dir: &Path) -> Result<Vec<PathBuf>> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut top = ovpn_lb::cli::Cli::command().disable_help_subcommand(true);
    // Gives each subcommand its display name (`ovpn-lb-run`) and the usage
    // line its full command (`ovpn-lb run`).
    top.build();
    let source = format!("ovpn-lb {}", top.get_version().unwrap_or_default());
    let mut commands = vec![top.clone()];
    commands.extend(top.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
    let mut pages = Vec::new();
    for command in commands {
        let man = Man::new(command)
            .source(source.clone())
            .manual("ovpn-lb manual");
        let page = dir.join(man.get_filename());
        let mut roff = Vec::new();
        man.render(&mut roff)?;
        fs::write(&page, roff).with_context(|| format!("writing {}", page.display()))?;
        // -n: no name or time stamp inside, so the same page gives the same bytes.
        exec(cmd("gzip").args(["-9", "-n", "-f"]).arg(&page))?;
        let mut gz = page.into_os_string();
        gz.push(".gz");
        pages.push(PathBuf::from(gz));
    }
    Ok(pages)
}
