//! `cargo xtask`: everything the project needs, from a fresh machine on.

mod build;
mod inspect;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "ovpn-lb project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (idempotent, quick when done).
    Setup,
    /// Build the BPF object and the userspace binaries.
    Build,
    /// Print each BPF program's instruction counts as the kernel loads them.
    Inspect,
    /// Formatting and clippy checks on every crate, the BPF one included.
    Lint,
    /// Set up, build, lint, then run every test (host unit tests and, as root, the
    /// BPF and network-namespace tests).
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, build, then run the `ovpn-lb` loader with ARGS.
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Build => setup::run().and_then(|()| build::all()),
        Command::Inspect => setup::run().and_then(|()| inspect::run()),
        Command::Lint => setup::run().and_then(|()| build::lint()),
        Command::Test { args } => test::run(&args),
        Command::Run { args } => build::run_loader(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
