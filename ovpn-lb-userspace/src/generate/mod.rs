//! `ovpn-lb generate`: both gateways' side of N OpenVPN tunnels from a few
//! answers. For each gateway, a directory that mirrors its file system:
//! per tunnel an OpenVPN configuration (p2p, TLS with `peer-fingerprint`),
//! the gateway's certificate and key, its `ovpn-lb.toml` (the translation
//! prefixes of both gateways matching), a sysctl drop-in, the systemd unit
//! and a README saying where each file goes.
//!
//! - `plan`: the answers (`Request`) and their checked meaning (`Plan`);
//!   `addressing`: the prefix arithmetic behind it;
//! - `pki`: certificates and fingerprints; `openvpn`, `loader_config`,
//!   `system`: the files' contents (`unit`: the one text of
//!   `ovpn-lb.service`, the package's and each site's); `layout`: where they
//!   go; `output`: writing them without following links.

pub mod addressing;
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

pub use plan::{Plan, Request, Side, TunnelPlan};

use crate::{
    cli::{DeviceKind, GenerateArgs},
    config::{Net, TunnelKind, file},
};
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

/// Everything one gateway gets.
#[derive(Clone, Debug)]
pub struct GatewayFiles {
    pub side: Side,
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

/// A plan and both gateways' files.
#[derive(Clone, Debug)]
pub struct Generated {
    pub plan: Plan,
    pub gateways: [GatewayFiles; 2],
    /// Each gateway's certificate fingerprint, as the other pins it.
    pub fingerprints: [String; 2],
}

impl Generated {
    #[must_use]
    pub fn gateway(&self, side: Side) -> &GatewayFiles {
        &self.gateways[side.index()]
    }
}

/// Checks `request`, makes both gateways' certificates and every file.
///
/// # Errors
/// [`ConfigErrors`](crate::config::ConfigErrors) (one line per problem) if
/// the answers do not add up,
/// or a failure to make a key.
pub fn generate(request: &Request) -> Result<Generated> {
    let plan = request.plan()?;
    let identities = [
        Identity::generate(&Side::A.name()).context("making gateway A's certificate")?,
        Identity::generate(&Side::B.name()).context("making gateway B's certificate")?,
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
    Ok(Generated {
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
    let name = side.name();
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
        "# ovpn-lb on gateway {side} ({}): written by `ovpn-lb generate`.\n\
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
    Ok(GatewayFiles { side, files })
}

/// Gateway `side`'s `ovpn-lb.toml` as data: its LAN, the other gateway's
/// LAN as the remote prefixes, per tunnel both gateways' translation
/// prefixes and the OpenVPN management socket.
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
        ..file::File::default()
    }
}

fn path_text(path: &Path) -> String {
    path.display().to_string()
}

/// Writes both gateways' directories into `out`, which must not exist or
/// be empty unless `force` (then the two gateway directories are replaced;
/// nothing else in `out` is touched). Returns the files written.
///
/// # Errors
/// If `out` is in the way, or a file cannot be written.
pub fn write(generated: &Generated, out: &Path, force: bool) -> Result<Vec<PathBuf>> {
    let occupied = fs::read_dir(out).is_ok_and(|mut entries| entries.next().is_some());
    if occupied && !force {
        bail!(
            "{} exists and is not empty: choose another --out, or give --force to replace its gateway-a and gateway-b",
            out.display()
        );
    }
    if out.exists() && !out.is_dir() {
        bail!("{} exists and is not a directory", out.display());
    }
    let out = output::Dir::open_or_create(out)?;
    let mut written = Vec::new();
    for gateway in &generated.gateways {
        let name = gateway.side.name();
        let dir = out.path().join(&name);
        // `remove_dir_all` removes a link itself, not what it points to.
        if fs::symlink_metadata(&dir).is_ok() {
            fs::remove_dir_all(&dir)
                .or_else(|_| fs::remove_file(&dir))
                .with_context(|| format!("removing {}", dir.display()))?;
        }
        written.extend(gateway.write_into(&out.child(std::ffi::OsStr::new(&name))?)?);
    }
    Ok(written)
}

impl From<&GenerateArgs> for Request {
    fn from(a: &GenerateArgs) -> Self {
        Self {
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
    let plan = &generated.plan;
    println!(
        "{} {} tunnels between gateway A ({}) and gateway B ({}):",
        plan.tunnels.len(),
        plan.kind.name(),
        plan.site(Side::A).wan,
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
            "gateway {side}: {} (certificate SHA-256 {})",
            args.out.join(side.name()).display(),
            generated.fingerprints[side.index()]
        );
    }
    println!(
        "{} files written; each gateway's README.txt says where they go.",
        written.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests;
