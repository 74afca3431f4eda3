//! The ways of forwarding that are measured, and setting each up on a
//! topology (nftables rulesets, policy rules, the ovpn-lb loader).

use std::{
    fmt::Write as _, fs, path::Path, process::Stdio, sync::atomic::Ordering, thread, time::Duration,
};

use anyhow::Result;
use ovpn_lb::{config::file, datapath::rings::ACCOUNT_ENV, pins::Layout};
use ovpn_lb_tests::{
    loader::{self, Loader},
    netns,
};

use super::{
    READ_EVERY,
    network::{
        DeviceKind, EXPECT_LAN_SOURCE, EXPECT_NOTHING, EXPECT_TRANSLATED, LAN_DEV, LAN_V4, LAN_V6,
        REMOTE_V4, REMOTE_V6, RULE_PREF_BASE, TABLE_BASE, Topology, next_hops, xlat,
    },
};

/// How a variant gets packets from `lan0` to the devices.
pub enum Setup {
    /// Calibration: nftables netdev ingress drops everything on `lan0`, so
    /// what is left is the generator's and the veth's cost.
    IngressDrop,
    /// The kernel routes the remote prefixes to device 0.
    PlainRouting,
    /// nftables prerouting: `numgen inc mod N` picks k, stateless
    /// `ip saddr set` translates into k's prefix and sets fwmark k+1; one
    /// `ip rule` per mark looks up a table whose default route is device k.
    NftNumgen,
    /// nftables netdev ingress on `lan0`: `numgen inc mod N`, the same
    /// stateless translation, `fwd ip to <next hop> device "devK"`.
    NftNetdevFwd,
    /// `ovpn-lb run` with this configuration (see [`ovpn_lb_config`]);
    /// `account_rings`: the ring accounting under any spray
    /// ([`ACCOUNT_ENV`]), not packet spray's alone.
    OvpnLb {
        config: Box<file::File>,
        account_rings: bool,
    },
}

impl Setup {
    /// Whether packets leave with their source translated into the device's prefix.
    pub(super) fn translates(&self) -> bool {
        !matches!(self, Self::PlainRouting | Self::IngressDrop)
    }
}

/// One way of forwarding, measured against the first variant of the list.
pub struct Variant {
    /// Row name in the table.
    pub name: String,
    /// Label in the plot.
    pub short: String,
    pub device: DeviceKind,
    pub setup: Setup,
}

/// The variants: the calibration row first, then the baseline (plain
/// routing); to add one, push it here with its device kind and
/// configuration. The XDP variant puts `lan0` (a veth) into NAPI mode; that
/// still runs on CPU 0 inside trafgen's send, so the accounting holds, but a
/// veth hands its XDP program socket buffers converted to XDP frames (a copy
/// when the skb's head cannot be reused), which a NIC driver would not: on
/// veth, native XDP saves no receive work.
pub fn variants(n: usize) -> Vec<Variant> {
    let variant = |name: String, short: &str, device, setup| Variant {
        name,
        short: short.to_owned(),
        device,
        setup,
    };
    let ovpn_lb = |device, hook| Setup::OvpnLb {
        config: Box::new(ovpn_lb_config(device, hook, n)),
        account_rings: false,
    };
    let round_robin = |account_rings| Setup::OvpnLb {
        config: Box::new(file::File {
            spray: file::Spray::RoundRobin,
            ..ovpn_lb_config(DeviceKind::Tun, "tc", n)
        }),
        account_rings,
    };
    let (tun, tap) = (DeviceKind::Tun, DeviceKind::Tap);
    vec![
        variant(
            "(calibration) generator only: drop at lan0 ingress".into(),
            "drop",
            tun,
            Setup::IngressDrop,
        ),
        variant(
            "plain routing to 1 tun".into(),
            "plain routing",
            tun,
            Setup::PlainRouting,
        ),
        variant(
            format!("nftables numgen + saddr + fwmark rules, {n} tun"),
            "nft numgen+fwmark",
            tun,
            Setup::NftNumgen,
        ),
        variant(
            format!("nftables netdev ingress fwd, {n} tun"),
            "nft netdev fwd",
            tun,
            Setup::NftNetdevFwd,
        ),
        variant(
            format!("ovpn-lb tc, {n} tun"),
            "ovpn-lb tc",
            tun,
            ovpn_lb(tun, "tc"),
        ),
        variant(
            format!("ovpn-lb tc, {n} tun, round robin"),
            "ovpn-lb tc RR",
            tun,
            // The baseline spray: no ring accounting (its hooks run for
            // every packet a tun device queues and OpenVPN reads).
            round_robin(false),
        ),
        variant(
            format!("ovpn-lb tc, {n} tun, round robin + accounting"),
            "ovpn-lb tc RR+acct",
            tun,
            // Packet spray's hooks without its pick: what the accounting
            // costs on its own.
            round_robin(true),
        ),
        variant(
            format!("ovpn-lb tc, {n} tap"),
            "ovpn-lb tc tap",
            tap,
            ovpn_lb(tap, "tc"),
        ),
        variant(
            format!("ovpn-lb native XDP, {n} tap"),
            "ovpn-lb XDP tap",
            tap,
            ovpn_lb(tap, "xdp"),
        ),
    ]
}

/// The ovpn-lb configuration for the topology's `lan0` and devices, with
/// the hook ("tc", "xdp"); TAP tunnels name the next hop the topology gives
/// a permanent neighbour entry.
pub fn ovpn_lb_config(kind: DeviceKind, hook: &str, n: usize) -> file::File {
    file::File {
        remote_prefixes: vec![REMOTE_V4.into(), REMOTE_V6.into()],
        up_delay_ms: 0,
        hook: Some(hook.into()),
        lan: file::Lan {
            interface: LAN_DEV.into(),
            prefixes: vec![LAN_V4.into(), LAN_V6.into()],
        },
        tunnels: (0..n)
            .map(|k| file::Tunnel {
                kind: if kind == DeviceKind::Tap {
                    file::Kind::Tap
                } else {
                    file::Kind::Tun
                },
                next_hop: (kind == DeviceKind::Tap).then(|| next_hops(k)[0].clone()),
                ..file::Tunnel::new(&kind.device(k), xlat(k).to_vec())
            })
            .collect(),
        ..file::File::default()
    }
}

/// A variant set up on a topology; taken down on drop.
pub(super) enum Active<'a> {
    Nothing,
    Nft {
        topo: &'a Topology,
        tables: Vec<&'static str>,
        rules: bool,
    },
    Loader {
        site: loader::Site,
        loader: Option<Loader>,
        _topo: &'a Topology,
    },
}

pub(super) fn nft_numgen(n: usize) -> String {
    let mut t = String::new();
    for v6 in [false, true] {
        let (family, match_, set) = if v6 {
            (
                "ip6",
                format!("ip6 saddr {LAN_V6} ip6 daddr {REMOTE_V6}"),
                "ip6 saddr set ip6 saddr & ::ffff:ffff:ffff:ffff |",
            )
        } else {
            (
                "ip",
                format!("ip saddr {LAN_V4} ip daddr {REMOTE_V4}"),
                "ip saddr set ip saddr & 0.0.0.255 |",
            )
        };
        let _ = writeln!(
            t,
            "table {family} ofwd_numgen {{\n  chain pre {{\n    type filter hook prerouting priority mangle; policy accept;\n    iifname \"{LAN_DEV}\" {match_} numgen inc mod {n} vmap {{ {} }}\n  }}",
            vmap(n)
        );
        for k in 0..n {
            let prefix = &xlat(k)[usize::from(v6)];
            let base = prefix.split('/').next().unwrap_or_default();
            let _ = writeln!(
                t,
                "  chain t{k} {{\n    meta mark set {} {set} {base}\n  }}",
                k + 1
            );
        }
        let _ = writeln!(t, "}}");
    }
    t
}

pub(super) fn vmap(n: usize) -> String {
    (0..n)
        .map(|k| format!("{k} : jump t{k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `fwd to "devK"` would be shorter, but it transmits the frame as received,
/// Ethernet header included, which on a tun device lands inside the IP packet
/// (checked: tcpdump on the tun shows the MAC addresses). `fwd ip to` goes
/// through the neighbour layer like a routed packet and decrements the TTL.
pub(super) fn nft_netdev_fwd(kind: DeviceKind, n: usize) -> String {
    let mut t = format!(
        "table netdev ofwd_fwd {{\n  chain ingress {{\n    type filter hook ingress device \"{LAN_DEV}\" priority 0; policy accept;\n    ip saddr {LAN_V4} ip daddr {REMOTE_V4} numgen inc mod {n} vmap {{ {} }}\n    ip6 saddr {LAN_V6} ip6 daddr {REMOTE_V6} numgen inc mod {n} vmap {{ {} }}\n  }}\n",
        vmap(n),
        vmap(n).replace(" t", " s")
    );
    for k in 0..n {
        let dev = kind.device(k);
        let [b4, b6] = xlat(k);
        let [hop4, hop6] = next_hops(k);
        let (b4, b6) = (
            b4.split('/').next().unwrap_or_default(),
            b6.split('/').next().unwrap_or_default(),
        );
        let _ = writeln!(
            t,
            "  chain t{k} {{\n    ip saddr set ip saddr & 0.0.0.255 | {b4} fwd ip to {hop4} device \"{dev}\"\n  }}\n  chain s{k} {{\n    ip6 saddr set ip6 saddr & ::ffff:ffff:ffff:ffff | {b6} fwd ip6 to {hop6} device \"{dev}\"\n  }}"
        );
    }
    t.push_str("}\n");
    t
}

impl<'a> Active<'a> {
    pub(super) fn up(topo: &'a Topology, variant: &Variant, bin: &Path) -> Result<Self> {
        let expect = match variant.setup {
            Setup::IngressDrop => EXPECT_NOTHING,
            _ if variant.setup.translates() => EXPECT_TRANSLATED,
            _ => EXPECT_LAN_SOURCE,
        };
        let generation = (topo.expect.load(Ordering::Relaxed) >> 8) + 1;
        topo.expect
            .store(generation << 8 | u32::from(expect), Ordering::Relaxed);
        // Let every reader drop what the last variant left queued.
        thread::sleep(READ_EVERY * 3);
        match &variant.setup {
            Setup::PlainRouting => Ok(Self::Nothing),
            Setup::IngressDrop => {
                let active = Self::Nft {
                    topo,
                    tables: vec!["netdev ofwd_drop"],
                    rules: false,
                };
                load_nft(
                    topo,
                    &format!(
                        "table netdev ofwd_drop {{\n  chain ingress {{\n    type filter hook ingress device \"{LAN_DEV}\" priority 0; policy drop;\n  }}\n}}\n"
                    ),
                )?;
                Ok(active)
            }
            Setup::NftNumgen => {
                let active = Self::Nft {
                    topo,
                    tables: vec!["ip ofwd_numgen", "ip6 ofwd_numgen"],
                    rules: true,
                };
                for k in 0..topo.n {
                    let (mark, table, pref) = (
                        (k + 1).to_string(),
                        (TABLE_BASE + 1 + k).to_string(),
                        (RULE_PREF_BASE + k).to_string(),
                    );
                    for family in ["-4", "-6"] {
                        topo.gw(&[
                            family, "rule", "add", "pref", &pref, "fwmark", &mark, "table", &table,
                        ]);
                    }
                }
                load_nft(topo, &nft_numgen(topo.n))?;
                Ok(active)
            }
            Setup::NftNetdevFwd => {
                let active = Self::Nft {
                    topo,
                    tables: vec!["netdev ofwd_fwd"],
                    rules: false,
                };
                load_nft(topo, &nft_netdev_fwd(topo.kind, topo.n))?;
                Ok(active)
            }
            Setup::OvpnLb {
                config,
                account_rings,
            } => Self::loader(topo, config, *account_rings, bin),
        }
    }

    pub(super) fn loader(
        topo: &'a Topology,
        config: &file::File,
        account_rings: bool,
        bin: &Path,
    ) -> Result<Self> {
        let config_path = topo.dir.join("ovpn-lb.toml");
        fs::write(&config_path, config.to_toml()?)?;
        let site = loader::Site {
            ns: topo.gw_ns.clone(),
            bin: bin.to_path_buf(),
            layout: Layout {
                pin_root: topo.dir.join("bpf/ovpn-lb"),
                run_dir: topo.dir.join("run"),
            },
        };
        // Said either way: the bench's own environment must not account
        // the rings of a row that is priced without them.
        let env = [(ACCOUNT_ENV, if account_rings { "1" } else { "0" })];
        // Its own process group: Ctrl-C reaches the benchmark, which tears down.
        let loader =
            site.start_with_env(&config_path, &[], &env, &topo.dir.join("ovpn-lb.log"), true);
        Ok(Self::Loader {
            site,
            loader: Some(loader),
            _topo: topo,
        })
    }
}

pub(super) fn load_nft(topo: &Topology, ruleset: &str) -> Result<()> {
    let file = topo.dir.join("ruleset.nft");
    fs::write(&file, ruleset)?;
    netns::exec(&topo.gw_ns, &["nft", "-f", &file.to_string_lossy()]);
    Ok(())
}

/// Runs `program ARGS` in the gateway namespace, ignoring failure: for
/// taking a variant down, where something may already be gone.
pub(super) fn undo(topo: &Topology, program: &str, args: &[&str]) {
    let _ = netns::command(&topo.gw_ns, program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        match self {
            Self::Nothing => {}
            Self::Nft {
                topo,
                tables,
                rules,
            } => {
                for t in tables.iter() {
                    let mut args = vec!["delete", "table"];
                    args.extend(t.split(' '));
                    undo(topo, "nft", &args);
                }
                if *rules {
                    for k in 0..topo.n {
                        let pref = (RULE_PREF_BASE + k).to_string();
                        for family in ["-4", "-6"] {
                            undo(topo, "ip", &[family, "rule", "del", "pref", &pref]);
                        }
                    }
                }
            }
            Self::Loader { site, loader, .. } => {
                if let Some(loader) = loader.take() {
                    loader.terminate(Duration::from_secs(5));
                }
                let out = site.ovpn_lb(&["detach"]);
                if !out.status.success() {
                    eprintln!(
                        "warning: ovpn-lb detach in {}: {}",
                        site.ns,
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
    }
}
