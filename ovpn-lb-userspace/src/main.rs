//! `ovpn-lb`: the gateway loader.

use clap::Parser;

/// Packet-level load balancer for N `OpenVPN` tunnels.
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!("ovpn-lb: the loader's commands are not implemented yet (see issue 3)");
    std::process::exit(2);
}
