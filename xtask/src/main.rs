//! `cargo xtask`: everything the project needs, from a fresh machine on.

mod bench;
mod build;
mod deb;
mod inspect;
mod kernels;
mod lab;
mod setup;
mod test;
mod tools;
mod vm;

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
    /// Install what building and testing need (idempotent, quick when done),
    /// as root also the Debian root the booted-systemd test's containers boot.
    Setup,
    /// Build the BPF object and the userspace binaries.
    Build,
    /// Print each BPF program's instruction counts as the kernel loads them.
    Inspect,
    /// Formatting and clippy checks on every crate, the BPF one included.
    Lint,
    /// Build the Debian package (cargo-deb): the release binary as
    /// /usr/sbin/ovpn-lb, ovpn-lb.service, the example configuration and the
    /// man pages. Prints the package's path.
    Deb,
    /// Set up, build, lint, build the Debian package, then run every test (host
    /// unit tests, the package's, and as root the BPF and network-namespace
    /// tests).
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// With no ARGS: bring up the built-in lab (N real OpenVPN tunnels in
    /// network namespaces, ovpn-lb on both gateways), run a traffic demo and
    /// show live counters until Ctrl-C, which tears it all down. With ARGS:
    /// build and run the `ovpn-lb` loader with them.
    Run {
        #[command(flatten)]
        lab: lab::LabArgs,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Boot the kernels operators run (Debian 11, 12 and 13, Ubuntu 22.04 and 24.04) in QEMU guests over
    /// this tree and run there what `ovpn-lb kernel` detects, the datapath
    /// fixtures, the loader tests and a lab flow through real OpenVPN
    /// tunnels; the running kernel runs the same in place. Prints the table.
    Kernels(kernels::KernelsArgs),
    /// Benchmarks (root): ratios against a baseline in the same run.
    Bench(bench::BenchArgs),
    /// The built-in lab, for manual work (`lab --pairs 2` is `lab up --pairs 2`).
    #[command(args_conflicts_with_subcommands = true)]
    Lab {
        #[command(subcommand)]
        action: Option<LabAction>,
        #[command(flatten)]
        args: lab::LabArgs,
    },
}

#[derive(Subcommand)]
enum LabAction {
    /// Bring the lab up and leave it running.
    Up(lab::LabArgs),
    /// Tear down everything the lab made.
    Down,
    /// What is up, and each gateway's `ovpn-lb status`.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run().and_then(|()| setup::for_tests()),
        Command::Build => setup::run().and_then(|()| build::all()),
        Command::Inspect => setup::run().and_then(|()| inspect::run()),
        Command::Lint => setup::run().and_then(|()| build::lint()),
        Command::Deb => deb::run(),
        Command::Test { args } => test::run(&args),
        Command::Run { args, lab } if args.is_empty() => lab::demo(&lab),
        Command::Run { args, .. } => build::run_loader(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Kernels(args) => kernels::run(&args),
        Command::Lab {
            action: Some(LabAction::Up(args)),
            ..
        }
        | Command::Lab { action: None, args } => lab::up(&args),
        Command::Lab {
            action: Some(LabAction::Down),
            ..
        } => lab::down(),
        Command::Lab {
            action: Some(LabAction::Status),
            ..
        } => lab::status(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
