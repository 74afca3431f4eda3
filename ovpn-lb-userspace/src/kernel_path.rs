//! The kernel path. Some remote-bound LAN packets are handed to the kernel
//! untranslated instead of being sprayed: those over the tunnel MTU (the
//! kernel fragments them, or answers ICMP "fragmentation needed" / "packet too
//! big" so the sender learns the path MTU) and those whose TTL is about to
//! expire. Routed by the main table, they could leave by the WAN in the clear.
//! So ovpn-lb owns policy rules that send LAN traffic for the remote prefixes
//! to a table of its own, whose only route leads into a tunnel in the
//! rotation, with an `unreachable` rule behind it: when no tunnel is left the
//! sender gets ICMP unreachable, and nothing ever falls through to the main
//! table. The tunnel's egress program translates the source of what the
//! kernel sends, as the LAN program would have.
//!
//! ```text
//! priority P-1  iif LAN to <exclusion>      lookup main
//! priority P    iif LAN to <remote prefix>  lookup T   (T: default dev tunK)
//! priority P+1  iif LAN to <remote prefix>  unreachable
//! ```

use std::net::IpAddr;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{
    config::{Config, Net, TunnelKind},
    netlink::{KernelRoute, Netlink, RouteTarget, Rule, RuleAction},
    tunnel::Tunnel,
};

/// The main routing table.
const MAIN_TABLE: u32 = 254;

/// What `detach` needs to find ovpn-lb's rules and routes again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owned {
    pub lan: String,
    pub table: u32,
    pub priority: u32,
    pub v4: bool,
    pub v6: bool,
}

impl Owned {
    #[must_use]
    pub fn of(config: &Config) -> Self {
        Self {
            lan: config.lan.interface.clone(),
            table: config.kernel_route.table,
            priority: config.kernel_route.priority,
            v4: config.lan.v4.is_some(),
            v6: config.lan.v6.is_some(),
        }
    }

    fn band(&self) -> std::ops::RangeInclusive<u32> {
        self.priority - 1..=self.priority + 1
    }
}

/// The rules ovpn-lb wants, in the order they are added.
#[must_use]
pub fn rules(config: &Config) -> Vec<Rule> {
    let owned = Owned::of(config);
    let rule = |net: &Net, priority, action| Rule {
        priority,
        iif: owned.lan.clone(),
        to: net.addr(),
        to_len: net.prefix_len(),
        action,
    };
    let family_served = |net: &Net| match net {
        Net::V4(_) => owned.v4,
        Net::V6(_) => owned.v6,
    };
    let mut out = Vec::new();
    for net in config.exclude.iter().filter(|n| family_served(n)) {
        out.push(rule(
            net,
            owned.priority - 1,
            RuleAction::Lookup(MAIN_TABLE),
        ));
    }
    for net in config.remote.iter().filter(|n| family_served(n)) {
        out.push(rule(net, owned.priority + 1, RuleAction::Unreachable));
        out.push(rule(net, owned.priority, RuleAction::Lookup(owned.table)));
    }
    out
}

/// Where the table's route should lead for each family: the first tunnel
/// in the rotation that can carry that family's packets.
#[must_use]
pub fn targets(tunnels: &[Tunnel]) -> (Option<RouteTarget>, Option<RouteTarget>) {
    let target = |v6: bool| {
        tunnels.iter().find_map(|t| {
            let link = t.link.as_ref()?;
            let carries = if v6 {
                t.spec.xlat_v6.is_some()
            } else {
                t.spec.xlat_v4.is_some()
            };
            if !t.health.in_rotation || !carries {
                return None;
            }
            Some(match (t.spec.kind, t.spec.next_hop) {
                (TunnelKind::Tap, Some(via)) => RouteTarget::Via(via, link.ifindex),
                _ => RouteTarget::Device(link.ifindex),
            })
        })
    };
    (target(false), target(true))
}

/// Makes the kernel's rules in ovpn-lb's band exactly `wanted` (for the
/// LAN interface): stale ones (an older configuration) go, missing ones
/// are added, the `unreachable` fallback before the lookup it backs.
///
/// # Errors
/// If netlink fails.
pub async fn install(netlink: &Netlink, owned: &Owned, wanted: &[Rule]) -> Result<()> {
    for v6 in [false, true] {
        let present: Vec<Rule> = netlink
            .rules(v6, owned.band())
            .await
            .context("listing policy rules")?
            .into_iter()
            .filter(|r| r.iif == owned.lan)
            .collect();
        for stale in present.iter().filter(|r| !wanted.contains(r)) {
            netlink
                .delete_rule(stale)
                .await
                .with_context(|| format!("deleting stale rule {stale:?}"))?;
        }
        for rule in wanted
            .iter()
            .filter(|r| r.to.is_ipv6() == v6 && !present.contains(r))
        {
            netlink
                .add_rule(rule)
                .await
                .with_context(|| format!("adding rule {rule:?}"))?;
        }
    }
    Ok(())
}

/// Points the table's default routes at `targets` (v4, v6); `None` removes
/// the route, leaving the `unreachable` rule to answer.
///
/// # Errors
/// If netlink fails.
pub async fn route(
    netlink: &Netlink,
    owned: &Owned,
    targets: (Option<RouteTarget>, Option<RouteTarget>),
) -> Result<()> {
    for (v6, served, target) in [(false, owned.v4, targets.0), (true, owned.v6, targets.1)] {
        if !served {
            continue;
        }
        match target {
            Some(target) => netlink
                .set_default_route(KernelRoute {
                    table: owned.table,
                    v6,
                    target,
                })
                .await
                .with_context(|| format!("routing table {} into {target:?}", owned.table))?,
            None => netlink
                .clear_default_route(owned.table, v6)
                .await
                .with_context(|| format!("clearing table {}", owned.table))?,
        }
    }
    Ok(())
}

/// Removes ovpn-lb's rules and routes; returns what it removed.
///
/// # Errors
/// If netlink fails.
pub async fn remove(netlink: &Netlink, owned: &Owned) -> Result<Vec<String>> {
    remove_except(netlink, owned, &[], false).await
}

/// Removes what an earlier configuration's kernel path (`old`) left that
/// the current one (`now`, its rules `wanted`) does not use: its rules,
/// and its table's routes unless the table is still ours.
///
/// # Errors
/// If netlink fails.
pub async fn retire(
    netlink: &Netlink,
    old: &Owned,
    now: &Owned,
    wanted: &[Rule],
) -> Result<Vec<String>> {
    remove_except(netlink, old, wanted, old.table == now.table).await
}

async fn remove_except(
    netlink: &Netlink,
    owned: &Owned,
    keep: &[Rule],
    keep_table: bool,
) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for v6 in [false, true] {
        for rule in netlink
            .rules(v6, owned.band())
            .await?
            .into_iter()
            .filter(|r| r.iif == owned.lan && !keep.contains(r))
        {
            netlink.delete_rule(&rule).await?;
            removed.push(format!(
                "rule priority {} iif {} to {}/{}",
                rule.priority, rule.iif, rule.to, rule.to_len
            ));
        }
        if !keep_table {
            netlink.clear_default_route(owned.table, v6).await?;
        }
    }
    if !removed.is_empty() && !keep_table {
        removed.push(format!("routes of table {}", owned.table));
    }
    Ok(removed)
}

/// True when `addr` is covered by a rule in `rules` sending it to `table`.
#[must_use]
pub fn covers(rules: &[Rule], addr: IpAddr, table: u32) -> bool {
    rules.iter().any(|r| {
        r.action == RuleAction::Lookup(table)
            && match (r.to, addr) {
                (IpAddr::V4(net), IpAddr::V4(a)) => {
                    let bits = u32::from(r.to_len);
                    bits == 0 || (u32::from(net) >> (32 - bits)) == (u32::from(a) >> (32 - bits))
                }
                (IpAddr::V6(net), IpAddr::V6(a)) => {
                    let bits = u32::from(r.to_len);
                    bits == 0
                        || (u128::from(net) >> (128 - bits)) == (u128::from(a) >> (128 - bits))
                }
                _ => false,
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, validate::tests::fake};

    const TEXT: &str = r#"
remote_prefixes = ["10.20.30.0/24", "fd00:20::/64"]
exclude = ["10.20.30.1/32"]
[lan]
interface = "eth1"
prefixes = ["192.168.10.0/24"]
[[tunnel]]
device = "tun0"
translate = ["100.64.0.0/24"]
"#;

    #[test]
    fn lan_traffic_for_remote_prefixes_goes_to_our_table_or_nowhere() {
        let (c, _) = parse(TEXT, &fake()).unwrap();
        let r = rules(&c);
        // The LAN has no IPv6 prefix: no IPv6 rules.
        assert!(r.iter().all(|r| r.to.is_ipv4()), "{r:?}");
        assert_eq!(r.len(), 3);
        assert_eq!(
            r[0],
            Rule {
                priority: 7599,
                iif: "eth1".into(),
                to: "10.20.30.1".parse().unwrap(),
                to_len: 32,
                action: RuleAction::Lookup(MAIN_TABLE),
            }
        );
        assert!(r.contains(&Rule {
            priority: 7601,
            iif: "eth1".into(),
            to: "10.20.30.0".parse().unwrap(),
            to_len: 24,
            action: RuleAction::Unreachable,
        }));
        assert!(covers(&r, "10.20.30.77".parse().unwrap(), 7600));
        assert!(!covers(&r, "10.20.31.1".parse().unwrap(), 7600));
    }

    #[test]
    fn the_route_follows_the_first_tunnel_in_rotation() {
        let (c, _) = parse(TEXT, &fake()).unwrap();
        let facts = fake();
        let mut t = Tunnel::new(crate::tunnel::TunnelId::new(0), c.tunnels[0].clone());
        assert_eq!(targets(std::slice::from_ref(&t)), (None, None));
        t.link = facts.link("tun0").cloned();
        t.health.set_link(true, std::time::Instant::now());
        t.health.admit_now();
        assert_eq!(
            targets(std::slice::from_ref(&t)),
            (Some(RouteTarget::Device(3)), None)
        );
    }
}
