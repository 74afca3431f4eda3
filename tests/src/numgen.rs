//! The kernel's own per-packet spray, which ovpn-lb is compared against: on a
//! gateway, nftables `numgen inc mod N` gives each packet from the LAN to the
//! remote prefixes a mark 1..=N, and one `fwmark` policy rule and routing
//! table per tunnel sends it into that tunnel.
//!
//! Nothing is translated. Both sites belong to the test bed and the comparison
//! needs no translation, so the real LAN addresses are routed through the
//! tunnels as they are; the far gateway sees one source arrive on every
//! tunnel, which reverse-path filtering accepts in its loose mode (the route
//! back is the main table's, through one tunnel). `install` sets loose
//! filtering and [`Numgen`]'s drop puts back what was there, with the table,
//! rules and routes.

use std::{fmt::Write as _, fs, path::Path, process::Stdio};

use crate::netns;

/// The nftables table (family `inet`: one table for both families).
const TABLE: &str = "ovpnlb_numgen";
/// Routing table of tunnel k: `ROUTE_TABLE_BASE + k`.
const ROUTE_TABLE_BASE: usize = 200;
/// Policy rule priority of tunnel k: `RULE_PREF_BASE + k`.
const RULE_PREF_BASE: usize = 1000;
const RP_FILTER: &str = "net.ipv4.conf.all.rp_filter";
/// Reverse-path filtering in its loose mode: some route back must exist.
const RP_LOOSE: &str = "2";

/// Where a gateway sprays: its LAN device, the remote prefixes, and for each
/// tunnel and family the `ip route` arguments that send into that tunnel
/// (`dev tunK`, or `via <far end> dev tapK`).
pub struct Spray<'a> {
    pub ns: &'a str,
    pub lan: &'a str,
    pub remote: &'a [&'a str],
    pub tunnels: usize,
    pub through: &'a dyn Fn(usize, bool) -> Vec<String>,
}

/// nftables numgen spraying installed on one gateway; removed on drop.
#[derive(Debug)]
pub struct Numgen {
    ns: String,
    tunnels: usize,
    /// `net.ipv4.conf.all.rp_filter` before `install`.
    rp_filter: String,
}

/// The ruleset: one `numgen` counter per family, marks 1..=N.
fn ruleset(lan: &str, remote: &[&str], tunnels: usize) -> String {
    let mut t = format!(
        "table inet {TABLE} {{\n  chain prerouting {{\n    type filter hook prerouting priority mangle; policy accept;\n"
    );
    for prefix in remote {
        let family = if prefix.contains(':') { "ip6" } else { "ip" };
        let _ = writeln!(
            t,
            "    iifname \"{lan}\" {family} daddr {prefix} meta mark set numgen inc mod {tunnels} offset 1"
        );
    }
    t.push_str("  }\n}\n");
    t
}

fn family(prefix: &str) -> &'static str {
    if prefix.contains(':') { "-6" } else { "-4" }
}

impl Numgen {
    /// Installs the spray described by `spray`; the ruleset is written to
    /// `rules_file` first (kept for reading).
    ///
    /// # Panics
    /// If a step fails; what was installed so far is removed.
    #[must_use]
    pub fn install(spray: &Spray, rules_file: &Path) -> Self {
        let ns = spray.ns;
        let rp_filter = netns::exec(ns, &["sysctl", "-n", RP_FILTER])
            .trim()
            .to_owned();
        // From here on, a panic drops `installed`, which removes the lot.
        let installed = Self {
            ns: ns.to_owned(),
            tunnels: spray.tunnels,
            rp_filter,
        };
        netns::exec(
            ns,
            &["sysctl", "-q", "-w", &format!("{RP_FILTER}={RP_LOOSE}")],
        );
        for k in 0..spray.tunnels {
            let (table, pref, mark) = (
                (ROUTE_TABLE_BASE + k).to_string(),
                (RULE_PREF_BASE + k).to_string(),
                (k + 1).to_string(),
            );
            for prefix in spray.remote {
                let family = family(prefix);
                let mut route = vec![family, "route", "replace", prefix];
                let through = (spray.through)(k, family == "-6");
                route.extend(through.iter().map(String::as_str));
                route.extend(["table", &table]);
                netns::ip(ns, &route);
            }
            for family in ["-4", "-6"] {
                netns::ip(
                    ns,
                    &[
                        family, "rule", "add", "pref", &pref, "fwmark", &mark, "table", &table,
                    ],
                );
            }
        }
        let text = ruleset(spray.lan, spray.remote, spray.tunnels);
        fs::write(rules_file, text)
            .unwrap_or_else(|e| panic!("writing {}: {e}", rules_file.display()));
        netns::exec(ns, &["nft", "-f", &rules_file.to_string_lossy()]);
        installed
    }

    /// Leaves it installed: it goes with the namespace (for a lab handed to
    /// `cargo xtask lab`, whose `down` deletes the namespaces).
    pub fn keep(self) {
        std::mem::forget(self);
    }

    /// Runs `program ARGS` in the namespace, ignoring failure: on removal
    /// something may be gone already.
    fn undo(&self, program: &str, args: &[&str]) {
        let _ = netns::command(&self.ns, program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Numgen {
    fn drop(&mut self) {
        if !Path::new("/run/netns").join(&self.ns).exists() {
            return;
        }
        self.undo("nft", &["delete", "table", "inet", TABLE]);
        for k in 0..self.tunnels {
            let (table, pref) = (
                (ROUTE_TABLE_BASE + k).to_string(),
                (RULE_PREF_BASE + k).to_string(),
            );
            for family in ["-4", "-6"] {
                self.undo("ip", &[family, "rule", "del", "pref", &pref]);
                self.undo("ip", &[family, "route", "flush", "table", &table]);
            }
        }
        let rp = format!("{RP_FILTER}={}", self.rp_filter);
        self.undo("sysctl", &["-q", "-w", &rp]);
    }
}

#[cfg(test)]
mod tests {
    use super::ruleset;

    #[test]
    fn one_mark_per_tunnel_for_each_remote_prefix() {
        let r = ruleset("lan", &["192.168.20.0/24", "fd00:b::/64"], 4);
        assert!(r.contains("hook prerouting priority mangle"));
        assert!(r.contains(
            "iifname \"lan\" ip daddr 192.168.20.0/24 meta mark set numgen inc mod 4 offset 1"
        ));
        assert!(r.contains(
            "iifname \"lan\" ip6 daddr fd00:b::/64 meta mark set numgen inc mod 4 offset 1"
        ));
    }
}
