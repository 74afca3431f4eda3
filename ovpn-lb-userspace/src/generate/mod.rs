//! `ovpn-lb generate`: both gateways' side of N OpenVPN tunnels from a few
//! answers, for one gateway pair or several. For each gateway, a directory
//! that mirrors its file system: per tunnel an OpenVPN configuration (p2p,
//! TLS with `peer-fingerprint`), the gateway's certificate and key, its
//! `ovpn-lb.toml` (the translation prefixes of both gateways matching), a
//! sysctl drop-in, the systemd unit and a README saying where each file
//! goes; with pairs behind a router (`--ha bgp`) FRR's `frr.conf` and
//! `daemons`, and per site the router's part; with `--ha vrrp`
//! `keepalived.conf`.
//!
//! - `plan`: the answers (`Request`) and their checked meaning (a `Plan`
//!   per pair); `addressing`: the prefix arithmetic behind it; `ha`: the
//!   routing between the pairs;
//! - `pki`: certificates and fingerprints; `openvpn`, `loader_config`,
//!   `system`, `frr`, `keepalived`: the files' contents (`unit`: the one
//!   text of `ovpn-lb.service`, the package's and each site's); `layout`:
//!   where they go; `output`: writing them without following links.

pub mod addressing;
pub mod frr;
pub mod ha;
mod keepalived;
pub mod layout;
mod openvpn;
mod output;
pub mod pki;
pub mod plan;
mod system;
pub mod unit;

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

pub use plan::{Plan, Request, Side, TunnelPlan, gateway_name};

use crate::{
    cli::{DeviceKind, GenerateArgs, HaArg},
    config::{Net, TunnelKind, file},
};
use ha::{HaKind, Routing};
use pki::Identity;

/// Private keys and passwords: readable by root only.
const SECRET: u32 = 0o600;
const PUBLIC: u32 = 0o644;
/// Every directory written.
const DIRECTORY: u32 = 0o755;

/// One file of a gateway's directory.
#[derive(Clone, Debug)]
pub struct OutputFile {
    /// Relative to the gateway's root, e.g. `etc/openvpn/tun0.conf`.
    pub path: PathBuf,
    pub contents: String,
    pub mode: u32,
}

/// Everything one gateway gets (or, for a site's router, `files`
/// relative to the site's directory).
#[derive(Clone, Debug)]
pub struct GatewayFiles {
    pub side: Side,
    /// Its directory in the output: `gateway-a`, `gateway-a2`, `site-a`.
    pub name: String,
    pub files: Vec<OutputFile>,
}

impl GatewayFiles {
    /// The file at `path` (relative), if generated.
    #[must_use]
    pub fn file(&self, path: impl AsRef<Path>) -> Option<&OutputFile> {
        self.files.iter().find(|f| f.path == path.as_ref())
    }

    /// Writes every file under `dir` (created if missing), with its mode.
    /// Below `dir` nothing is followed: a symbolic link where a directory or
    /// file goes is an error, an existing file is replaced (unlinked, then
    /// created afresh), and directories get mode 0755 and files their own
    /// whatever the caller's umask. So a root `generate` into a directory
    /// someone else can write cannot be turned onto other files.
    ///
    /// # Errors
    /// If a directory or file cannot be written, or a link is in the way.
    pub fn write_under(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        self.write_into(&output::Dir::open_or_create(dir)?)
    }

    fn write_into(&self, dir: &output::Dir) -> Result<Vec<PathBuf>> {
        let mut written = Vec::new();
        for file in &self.files {
            dir.write(&file.path, file.contents.as_bytes(), file.mode)?;
            written.push(dir.path().join(&file.path));
        }
        Ok(written)
    }
}

/// One pair's plan and both its gateways' files.
#[derive(Clone, Debug)]
pub struct Pair {
    pub plan: Plan,
    pub gateways: [GatewayFiles; 2],
    /// Each gateway's certificate fingerprint, as the other pins it.
    pub fingerprints: [String; 2],
}

impl Pair {
    #[must_use]
    pub fn gateway(&self, side: Side) -> &GatewayFiles {
        &self.gateways[side.index()]
    }
}

/// Every pair's files, and each site router's (`--ha bgp`).
#[derive(Clone, Debug)]
pub struct Generated {
    pub pairs: Vec<Pair>,
    /// Per site, the router's part (`site-a`, `site-b`); empty unless BGP.
    pub sites: Vec<GatewayFiles>,
}

impl Generated {
    /// The first pair's plan (the only one of a site with one pair).
    #[must_use]
    pub fn plan(&self) -> &Plan {
        &self.pairs[0].plan
    }

    /// The first pair's gateway on `side`.
    #[must_use]
    pub fn gateway(&self, side: Side) -> &GatewayFiles {
        self.pairs[0].gateway(side)
    }

    /// Every directory written, gateways first.
    pub fn directories(&self) -> impl Iterator<Item = &GatewayFiles> {
        self.pairs
            .iter()
            .flat_map(|p| p.gateways.iter())
            .chain(&self.sites)
    }
}

/// Checks `request`, makes every gateway's certificate and every file.
///
/// # Errors
/// [`ConfigErrors`](crate::config::ConfigErrors) (one line per problem) if
/// the answers do not add up,
/// or a failure to make a key.
pub fn generate(request: &Request) -> Result<Generated> {
    let plans = request.plans()?;
    let mut pairs = Vec::new();
    for plan in plans {
        pairs.push(pair_files(plan)?);
    }
    let sites = match pairs[0].plan.ha.as_ref() {
        Some(ha) if ha.kind == HaKind::Bgp => {
            let plans: Vec<Plan> = pairs.iter().map(|p| p.plan.clone()).collect();
            Side::BOTH
                .iter()
                .map(|&side| GatewayFiles {
                    side,
                    name: format!("site-{}", side.letter()),
                    files: vec![
                        OutputFile {
                            path: layout::ROUTER_FRR.into(),
                            contents: frr::router_conf(&plans, side, &ha.sites[side.index()]),
                            mode: PUBLIC,
                        },
                        OutputFile {
                            path: layout::ROUTER_SYSCTL.into(),
                            contents: frr::router_sysctl(side),
                            mode: PUBLIC,
                        },
                    ],
                })
                .collect()
        }
        _ => Vec::new(),
    };
    Ok(Generated { pairs, sites })
}

/// One pair: both gateways' certificates and files.
fn pair_files(plan: Plan) -> Result<Pair> {
    let identities = [
        Identity::generate(&plan.gateway_name(Side::A))
            .context("making gateway A's certificate")?,
        Identity::generate(&plan.gateway_name(Side::B))
            .context("making gateway B's certificate")?,
    ];
    let passwords = if plan.management_password {
        Some([pki::password()?, pki::password()?])
    } else {
        None
    };
    let [a, b] = Side::BOTH.map(|side| {
        gateway_files(
            &plan,
            side,
            &identities[side.index()],
            &identities[side.other().index()].fingerprint,
            passwords.as_ref().map(|p| p[side.index()].as_str()),
        )
    });
    let gateways = [a?, b?];
    Ok(Pair {
        fingerprints: identities.map(|i| i.fingerprint),
        plan,
        gateways,
    })
}

fn gateway_files(
    plan: &Plan,
    side: Side,
    me: &Identity,
    peer_fingerprint: &str,
    password: Option<&str>,
) -> Result<GatewayFiles> {
    let file = |path: PathBuf, contents: String, mode| OutputFile {
        path,
        contents,
        mode,
    };
    let name = plan.gateway_name(side);
    let mut files = vec![file(
        layout::README.into(),
        system::readme(plan, side),
        PUBLIC,
    )];
    for tunnel in &plan.tunnels {
        files.push(file(
            layout::openvpn_config(&tunnel.device),
            openvpn::config(plan, tunnel, side, peer_fingerprint),
            PUBLIC,
        ));
    }
    files.push(file(
        layout::certificate(&name),
        me.cert_pem.clone(),
        PUBLIC,
    ));
    files.push(file(layout::private_key(&name), me.key_pem.clone(), SECRET));
    if let Some(password) = password {
        files.push(file(
            layout::PASSWORD.into(),
            format!("{password}\n"),
            SECRET,
        ));
    }
    let here = plan.site(side);
    let header = format!(
        "# ovpn-lb on {name} ({}): written by `ovpn-lb generate`.\n\
         # ovpn-lb.example.toml explains every key. Check it with\n\
         # `ovpn-lb check --config {}`.\n",
        here.wan,
        here.installed(layout::LOADER_CONFIG).display()
    );
    let toml = loader_config(plan, side)
        .to_toml()
        .context("writing ovpn-lb.toml")?;
    files.push(file(layout::LOADER_CONFIG.into(), header + &toml, PUBLIC));
    files.push(file(
        layout::SYSCTL.into(),
        system::sysctl(plan, side),
        PUBLIC,
    ));
    files.push(file(layout::UNIT.into(), system::unit(plan, side), PUBLIC));
    if let Some(ha) = &plan.ha {
        let routing = &ha.sites[side.index()];
        match ha.kind {
            HaKind::Bgp => {
                files.push(file(
                    layout::FRR_CONF.into(),
                    frr::gateway_conf(plan, side, routing),
                    PUBLIC,
                ));
                files.push(file(
                    layout::FRR_DAEMONS.into(),
                    frr::daemons(plan, side),
                    PUBLIC,
                ));
            }
            HaKind::Vrrp => files.push(file(
                layout::KEEPALIVED_CONF.into(),
                keepalived::conf(
                    plan,
                    side,
                    routing,
                    &here.installed(layout::HEALTH),
                    &plan.binary,
                ),
                PUBLIC,
            )),
        }
    }
    Ok(GatewayFiles { side, name, files })
}

/// Gateway `side`'s `ovpn-lb.toml` as data: its LAN, the other gateway's
/// LAN as the remote prefixes, per tunnel both gateways' translation
/// prefixes and the OpenVPN management socket; `[announce]` where pairs
/// share a site (BGP or VRRP).
#[must_use]
pub fn loader_config(plan: &Plan, side: Side) -> file::File {
    let (me, peer) = (plan.site(side), plan.site(side.other()));
    let strings = |nets: &[Net]| nets.iter().map(ToString::to_string).collect();
    file::File {
        remote_prefixes: strings(&peer.lan),
        lan: file::Lan {
            interface: me.lan_interface.clone(),
            prefixes: strings(&me.lan),
        },
        wan: me.wan_interface.as_ref().map(|w| file::Wan {
            interfaces: vec![w.clone()],
        }),
        tunnels: plan
            .tunnels
            .iter()
            .map(|t| file::Tunnel {
                kind: match plan.kind {
                    TunnelKind::Tun => file::Kind::Tun,
                    TunnelKind::Tap => file::Kind::Tap,
                },
                next_hop: (plan.kind == TunnelKind::Tap)
                    .then(|| t.link_address(side.other()).to_string()),
                peer_translate: strings(&t.translate[side.other().index()]),
                management: Some(path_text(
                    &me.installed(layout::management_socket(&t.device)),
                )),
                management_password_file: plan
                    .management_password
                    .then(|| path_text(&me.installed(layout::PASSWORD))),
                ..file::Tunnel::new(&t.device, strings(&t.translate[side.index()]))
            })
            .collect(),
        announce: plan.ha.as_ref().map(|_| file::Announce {
            maintenance_file: path_text(&me.installed(layout::MAINTENANCE)),
            health_file: Some(path_text(&me.installed(layout::HEALTH))),
            ..file::Announce::default()
        }),
        ..file::File::default()
    }
}

fn path_text(path: &Path) -> String {
    path.display().to_string()
}

/// Writes every gateway's directory (and each site's, with BGP) into `out`,
/// which must not exist or be empty unless `force` (then those directories
/// are replaced; nothing else in `out` is touched). Returns the files
/// written.
///
/// # Errors
/// If `out` is in the way, or a file cannot be written.
pub fn write(generated: &Generated, out: &Path, force: bool) -> Result<Vec<PathBuf>> {
    let occupied = fs::read_dir(out).is_ok_and(|mut entries| entries.next().is_some());
    if occupied && !force {
        bail!(
            "{} exists and is not empty: choose another --out, or give --force to replace its gateway directories",
            out.display()
        );
    }
    if out.exists() && !out.is_dir() {
        bail!("{} exists and is not a directory", out.display());
    }
    let out = output::Dir::open_or_create(out)?;
    let mut written = Vec::new();
    for gateway in generated.directories() {
        let name = &gateway.name;
        let dir = out.path().join(name);
        // `remove_dir_all` removes a link itself, not what it points to.
        if fs::symlink_metadata(&dir).is_ok() {
            fs::remove_dir_all(&dir)
                .or_else(|_| fs::remove_file(&dir))
                .with_context(|| format!("removing {}", dir.display()))?;
        }
        written.extend(gateway.write_into(&out.child(std::ffi::OsStr::new(name))?)?);
    }
    Ok(written)
}

impl From<&GenerateArgs> for Request {
    fn from(a: &GenerateArgs) -> Self {
        Self {
            pairs: a.pairs,
            wan: [a.wan_a.clone(), a.wan_b.clone()],
            lan_interface: [a.lan_interface_a.clone(), a.lan_interface_b.clone()],
            wan_interface: [a.wan_interface_a.clone(), a.wan_interface_b.clone()],
            lan: [a.lan_a.clone(), a.lan_b.clone()],
            tunnels: a.tunnels,
            first_port: a.port,
            kind: match a.kind {
                DeviceKind::Tun => TunnelKind::Tun,
                DeviceKind::Tap => TunnelKind::Tap,
            },
            tun_mtu: a.tun_mtu,
            link_v4: a.link_v4.clone(),
            link_v6: a.link_v6.clone(),
            translate_pool_v4: a.translate_pool_v4.clone(),
            translate_pool_v6: a.translate_pool_v6.clone(),
            root: [a.root_a.clone(), a.root_b.clone()],
            management_password: a.management_password,
            binary: a.binary.clone(),
            routing: Routing {
                ha: a.ha.map(|h| match h {
                    HaArg::Bgp => HaKind::Bgp,
                    HaArg::Vrrp => HaKind::Vrrp,
                }),
                gateways: [a.gateway_a.clone(), a.gateway_b.clone()],
                router: [a.router_a.clone(), a.router_b.clone()],
                asn: [a.asn_a, a.asn_b],
                router_asn: [a.router_asn_a, a.router_asn_b],
                vip: [a.vip_a.clone(), a.vip_b.clone()],
            },
        }
    }
}

/// `ovpn-lb generate`: writes both directories and prints the plan.
///
/// # Errors
/// [`ConfigErrors`](crate::config::ConfigErrors) for bad answers; anything
/// that stops the writing.
pub fn run(args: &GenerateArgs) -> Result<()> {
    let generated = generate(&Request::from(args))?;
    let written = write(&generated, &args.out, args.force)?;
    for pair in &generated.pairs {
        print_pair(pair, &args.out);
    }
    if let Some(ha) = &generated.plan().ha {
        println!(
            "{}: {}",
            ha.kind.name(),
            match ha.kind {
                HaKind::Bgp => format!(
                    "each gateway announces the far site's prefixes to its site's router while healthy (frr.conf); the routers' part is in {}",
                    generated
                        .sites
                        .iter()
                        .map(|s| args.out.join(&s.name).display().to_string())
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
                HaKind::Vrrp =>
                    "the gateways of each site share its virtual address(es) (keepalived.conf)"
                        .to_owned(),
            }
        );
    }
    println!(
        "{} files written; each gateway's README.txt says where they go.",
        written.len()
    );
    Ok(())
}

/// One pair's tunnels and where its gateways' files are.
fn print_pair(pair: &Pair, out: &Path) {
    let plan = &pair.plan;
    let gateways = Side::BOTH.map(|side| {
        if plan.pairs == 1 {
            format!("gateway {side}")
        } else {
            plan.gateway_name(side)
        }
    });
    println!(
        "{} {} tunnels between {} ({}) and {} ({}):",
        plan.tunnels.len(),
        plan.kind.name(),
        gateways[0],
        plan.site(Side::A).wan,
        gateways[1],
        plan.site(Side::B).wan
    );
    println!(
        "  tunnel device  port  {:<22} {:<34} B translates into",
        "link A - B", "A translates into"
    );
    for t in &plan.tunnels {
        let nets = |side: Side| {
            t.translate[side.index()]
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "  {:<6} {:<6} {:>5}  {:<22} {:<34} {}",
            t.index,
            t.device,
            t.port,
            format!("{} - {}", t.link_address(Side::A), t.link_address(Side::B)),
            nets(Side::A),
            nets(Side::B)
        );
    }
    for side in Side::BOTH {
        println!(
            "{}: {} (certificate SHA-256 {})",
            gateways[side.index()],
            out.join(plan.gateway_name(side)).display(),
            pair.fingerprints[side.index()]
        );
    }
}

#[cfg(test)]
mod tests;
