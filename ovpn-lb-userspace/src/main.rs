//! `ovpn-lb`: the gateway loader. Parses the command line and hands over.

use std::{path::Path, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use clap::Parser as _;
use ovpn_lb::{
    cli::{Cli, Command},
    config::{self, ConfigErrors},
    detach, doctor,
    facts::Facts,
    generate, kernel, logging,
    netlink::Netlink,
    pins::Layout,
    run::{self, Options},
    status,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init();
    let layout = Layout {
        pin_root: cli.pin_root,
        run_dir: cli.run_dir,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // What a refused configuration leaves untouched.
    let refused = match cli.command {
        Command::Generate(_) => "nothing was written",
        Command::Doctor { .. } => "",
        _ => "nothing was attached",
    };
    // Each command gives its exit code; errors are mapped below.
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run {
                config,
                detach_on_exit,
            } => run::run(&config, &layout, &Options { detach_on_exit })
                .await
                .map(|()| 0),
            Command::Check { config } => check(&config).await.map(|()| 0),
            Command::Doctor { config, json } => {
                let report = doctor::check(&config, &layout).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{}", report.render());
                }
                Ok(report.exit_code())
            }
            Command::Status { check: true, .. } => {
                let state = status::State::read(&layout).ok();
                let (code, line) = status::check(state.as_ref());
                println!("{line}");
                Ok(code)
            }
            Command::Status {
                json,
                interval,
                watch,
                all,
                ..
            } => show_status(&layout, json, interval, watch, all)
                .await
                .map(|()| 0),
            Command::Generate(args) => generate::run(&args).map(|()| 0),
            Command::Kernel => {
                let (text, works) = kernel::inspect();
                print!("{text}");
                Ok(u8::from(!works))
            }
            Command::Detach => {
                let removed = detach::stop_and_detach(&layout).await?;
                for line in &removed {
                    println!("removed {line}");
                }
                if removed.is_empty() {
                    println!("nothing to detach");
                }
                Ok(0)
            }
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if let Some(errors) = e.downcast_ref::<ConfigErrors>() {
                for line in &errors.0 {
                    eprintln!("error: {line}");
                }
                if !refused.is_empty() {
                    eprintln!("{refused}");
                }
                return ExitCode::from(2);
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn check(path: &Path) -> Result<()> {
    let netlink = Netlink::requests_only().context("opening rtnetlink")?;
    let facts = Facts::gather(&netlink).await?;
    let (c, warnings) = config::load(path, &facts)?;
    for w in warnings {
        eprintln!("warning: {}", w.0);
    }
    println!(
        "{}: valid; LAN {}, {} tunnels, {} remote prefixes, hook {}",
        path.display(),
        c.lan.interface,
        c.tunnels.len(),
        c.remote.len(),
        c.hook.name()
    );
    Ok(())
}

async fn show_status(
    layout: &Layout,
    json: bool,
    interval: f64,
    watch: bool,
    all: bool,
) -> Result<()> {
    let interval = Duration::from_secs_f64(interval.clamp(0.05, 3600.0));
    loop {
        let report = status::report(layout, interval).await?;
        let text = if json {
            serde_json::to_string_pretty(&report)?
        } else {
            status::render(&report, all)
        };
        if !watch {
            println!("{text}");
            return Ok(());
        }
        // Clear the screen and redraw, like `watch`.
        print!("\x1b[H\x1b[2J{text}");
    }
}
