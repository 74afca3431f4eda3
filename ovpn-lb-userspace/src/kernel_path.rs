//! The kernel path: nothing LAN-related leaves outside a tunnel, whoever
//! sends it. Some remote-bound LAN packets are handed to the kernel
//! untranslated instead of being sprayed: those over the tunnel MTU (the
//! kernel fragments them, or answers ICMP "fragmentation needed" / "packet
//! too big" so the sender learns the path MTU), those whose TTL is about to
//! expire, and those to excluded addresses. The gateway itself sends to the
//! far LAN too: ICMP errors about restored packets (a far traceroute's TTL
//! expiring here, a LAN host down, a packet too big for the LAN), and its
//! own traffic. And a LAN host answers the peer's translated addresses when a
//! packet reached it unrestored (a tunnel device recreated while no loader
//! ran). Routed by the main table, all of these would leave by the WAN in the
//! clear. So ovpn-lb owns policy rules that send LAN and local traffic for
//! the remote prefixes and the peer's translation prefixes to a table of its
//! own, whose only route leads into a tunnel in the rotation, with an
//! `unreachable` rule behind them: when no tunnel is left the sender gets
//! ICMP unreachable, and nothing falls through to the main table. The main
//! table itself gets an `unreachable` route (ovpn-lb's protocol number,
//! the largest metric) for every remote and translation prefix, for
//! whatever else would look them up there (traffic from other interfaces).
//! The tunnel's egress program translates LAN sources of what the kernel
//! sends, as the LAN program would have; the WAN guard (`wan_egress`) drops
//! whatever still tries to leave in the clear.
//!
//! ```text
//! priority P    iif LAN to <remote | peer translation>   lookup T  (T: default dev tunK)
//! priority P    iif lo  to <remote | peer translation>   lookup T  (the gateway's own)
//! priority P+1  the same                                 unreachable
//! main          unreachable <remote | our and the peer's translations> proto 79 metric max
//! ```

use std::net::IpAddr;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use ovpn_lb_common::maps::guard;

use crate::{
    config::{Config, Net, TunnelKind, TunnelSpec, guarded_prefixes},
    netlink::{KernelRoute, Netlink, RouteTarget, Rule, RuleAction},
    tunnel::Tunnel,
};

/// The main routing table.
const MAIN_TABLE: u32 = 254;
/// How policy rules name locally generated packets.
const LOCAL: &str = "lo";

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

    /// Priorities ovpn-lb's rules may have (P - 1 held exclusions once:
    /// such rules from an older run are removed as stale).
    fn band(&self) -> std::ops::RangeInclusive<u32> {
        self.priority - 1..=self.priority + 1
    }

    /// Whether `rule` (in the band) is one of ovpn-lb's.
    fn owns(&self, rule: &Rule) -> bool {
        rule.iif == self.lan || rule.iif == LOCAL
    }

    fn serves(&self, net: &Net) -> bool {
        match net {
            Net::V4(_) => self.v4,
            Net::V6(_) => self.v6,
        }
    }
}

/// What ovpn-lb keeps in the kernel for its path: rules and the main
/// table's `unreachable` routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub rules: Vec<Rule>,
    pub unreachable: Vec<Net>,
}

/// The rules and routes ovpn-lb wants (`tunnels`: the configuration's), in
/// the order they are added.
#[must_use]
pub fn wanted(config: &Config, tunnels: &[TunnelSpec]) -> Wanted {
    let owned = Owned::of(config);
    let guarded: Vec<(Net, u32)> = guarded_prefixes(config, tunnels)
        .into_iter()
        .filter(|(net, _)| owned.serves(net))
        .collect();
    let mut rules = Vec::new();
    for iif in [owned.lan.as_str(), LOCAL] {
        for (net, _) in guarded
            .iter()
            .filter(|(_, k)| *k == guard::REMOTE || *k == guard::PEER_TRANSLATED)
        {
            let rule = |priority, action| Rule {
                priority,
                iif: iif.to_owned(),
                to: net.addr(),
                to_len: net.prefix_len(),
                action,
            };
            rules.push(rule(owned.priority + 1, RuleAction::Unreachable));
            rules.push(rule(owned.priority, RuleAction::Lookup(owned.table)));
        }
    }
    let unreachable = guarded
        .iter()
        .filter(|(_, k)| *k != guard::LAN)
        .map(|(net, _)| *net)
        .collect();
    Wanted { rules, unreachable }
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

/// Makes the kernel's rules in ovpn-lb's band exactly `wanted.rules`
/// (for the LAN interface and local traffic) and the main table's
/// `unreachable` routes of ovpn-lb's exactly `wanted.unreachable`: stale
/// ones (an older configuration) go, missing ones are added, the
/// `unreachable` fallback before the lookup it backs.
///
/// # Errors
/// If netlink fails.
pub async fn install(netlink: &Netlink, owned: &Owned, wanted: &Wanted) -> Result<()> {
    for v6 in [false, true] {
        let present: Vec<Rule> = netlink
            .rules(v6, owned.band())
            .await
            .context("listing policy rules")?
            .into_iter()
            .filter(|r| owned.owns(r))
            .collect();
        for stale in present.iter().filter(|r| !wanted.rules.contains(r)) {
            netlink
                .delete_rule(stale)
                .await
                .with_context(|| format!("deleting stale rule {stale:?}"))?;
        }
        for rule in wanted
            .rules
            .iter()
            .filter(|r| r.to.is_ipv6() == v6 && !present.contains(r))
        {
            netlink
                .add_rule(rule)
                .await
                .with_context(|| format!("adding rule {rule:?}"))?;
        }
        let routes = netlink
            .own_unreachable_routes(MAIN_TABLE, v6)
            .await
            .context("listing the main table's routes")?;
        let want: Vec<(IpAddr, u8)> = wanted
            .unreachable
            .iter()
            .filter(|n| matches!(n, Net::V6(_)) == v6)
            .map(|n| (n.addr(), n.prefix_len()))
            .collect();
        for &(addr, len) in routes.iter().filter(|r| !want.contains(r)) {
            netlink
                .delete_unreachable(MAIN_TABLE, addr, len)
                .await
                .with_context(|| format!("deleting stale route unreachable {addr}/{len}"))?;
        }
        for &(addr, len) in want.iter().filter(|r| !routes.contains(r)) {
            netlink
                .add_unreachable(MAIN_TABLE, addr, len)
                .await
                .with_context(|| format!("adding route unreachable {addr}/{len} to main"))?;
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

/// Removes ovpn-lb's rules and routes, the main table's `unreachable`
/// ones included; returns what it removed.
///
/// # Errors
/// If netlink fails.
pub async fn remove(netlink: &Netlink, owned: &Owned) -> Result<Vec<String>> {
    let mut removed = remove_except(netlink, owned, &[], false).await?;
    for v6 in [false, true] {
        for (addr, len) in netlink.own_unreachable_routes(MAIN_TABLE, v6).await? {
            netlink.delete_unreachable(MAIN_TABLE, addr, len).await?;
            removed.push(format!("route unreachable {addr}/{len} in main"));
        }
    }
    Ok(removed)
}

/// Removes what an earlier configuration's kernel path (`old`) left that
/// the current one (`now`, its rules `wanted`) does not use: its rules,
/// and its table's routes unless the table is still ours. (The main
/// table's `unreachable` routes are the current one's to keep: `install`
/// makes them what it wants.)
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
            .filter(|r| owned.owns(r) && !keep.contains(r))
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
peer_translate = ["100.65.0.0/24"]
"#;

    #[test]
    fn lan_and_local_traffic_for_the_far_side_goes_to_our_table_or_nowhere() {
        let (c, _) = parse(TEXT, &fake()).unwrap();
        let w = wanted(&c, &c.tunnels);
        // The LAN has no IPv6 prefix: no IPv6 rules. Per source (LAN, the
        // gateway itself): the remote prefix and the peer's translation,
        // each a lookup and its unreachable fallback.
        assert!(w.rules.iter().all(|r| r.to.is_ipv4()), "{:?}", w.rules);
        assert_eq!(w.rules.len(), 2 * 2 * 2);
        for iif in ["eth1", "lo"] {
            for (to, len) in [("10.20.30.0", 24), ("100.65.0.0", 24)] {
                let rule = |priority, action| Rule {
                    priority,
                    iif: iif.into(),
                    to: to.parse().unwrap(),
                    to_len: len,
                    action,
                };
                assert!(w.rules.contains(&rule(7600, RuleAction::Lookup(7600))));
                assert!(w.rules.contains(&rule(7601, RuleAction::Unreachable)));
            }
        }
        // Excluded addresses follow the remote prefix: into a tunnel.
        assert!(covers(&w.rules, "10.20.30.1".parse().unwrap(), 7600));
        assert!(covers(&w.rules, "10.20.30.77".parse().unwrap(), 7600));
        assert!(covers(&w.rules, "100.65.0.9".parse().unwrap(), 7600));
        assert!(!covers(&w.rules, "10.20.31.1".parse().unwrap(), 7600));
        // The main table refuses the far side and both translations.
        let main: Vec<String> = w.unreachable.iter().map(ToString::to_string).collect();
        assert_eq!(main, ["10.20.30.0/24", "100.64.0.0/24", "100.65.0.0/24"]);
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
