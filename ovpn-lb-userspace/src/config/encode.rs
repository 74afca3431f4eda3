//! A configuration as the datapath's maps hold it.

use ovpn_lb_common::{
    SiteConfig, TunnelConfig,
    maps::{family, framing, guard, route},
};

use super::{Config, Net, TunnelKind, TunnelSpec};
use crate::netlink::LinkFacts;

/// One LPM entry: prefix length, address bytes, value.
pub type LpmEntry<const N: usize> = (u8, [u8; N], u32);

/// Entries of an IPv4 and an IPv6 LPM map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LpmEntries {
    pub v4: Vec<LpmEntry<4>>,
    pub v6: Vec<LpmEntry<16>>,
}

impl LpmEntries {
    fn push(&mut self, net: &Net, value: u32) {
        match net {
            Net::V4(p) => self.v4.push((p.prefix_len(), p.octets(), value)),
            Net::V6(p) => self.v6.push((p.prefix_len(), p.octets(), value)),
        }
    }
}

impl Config {
    /// The `SITE` entry. `lan`: the LAN device, if it exists.
    #[must_use]
    pub fn site(&self, lan: Option<&LinkFacts>) -> SiteConfig {
        let mut site = SiteConfig {
            spray: self.spray as u32,
            lan_ifindex: lan.map_or(0, |l| l.ifindex),
            lan_mac: lan.map_or([0; 6], |l| l.mac),
            ..SiteConfig::default()
        };
        if let Some(p) = self.lan.v4 {
            site.families |= family::V4;
            site.lan_v4 = p;
        }
        if let Some(p) = self.lan.v6 {
            site.families |= family::V6;
            site.lan_v6 = p;
        }
        site
    }

    /// `REMOTE_V4`/`REMOTE_V6`: remote prefixes to spray, exclusions to leave
    /// to the kernel.
    #[must_use]
    pub fn remote_entries(&self) -> LpmEntries {
        let mut e = LpmEntries::default();
        for net in &self.remote {
            e.push(net, route::SPRAY);
        }
        for net in &self.exclude {
            e.push(net, route::EXCLUDE);
        }
        e
    }
}

/// `OUR_XLAT_V4`/`OUR_XLAT_V6`: our translation prefixes, by tunnel id
/// (the position in `tunnels`).
#[must_use]
pub fn translation_entries(tunnels: &[TunnelSpec]) -> LpmEntries {
    let mut e = LpmEntries::default();
    for (id, t) in (0u32..).zip(tunnels) {
        if let Some(p) = t.xlat_v4 {
            e.push(&Net::V4(p), id);
        }
        if let Some(p) = t.xlat_v6 {
            e.push(&Net::V6(p), id);
        }
    }
    e
}

/// Every prefix whose addresses must never cross the WAN outside a tunnel,
/// with its `guard::*` kind: our LAN, the remote prefixes, and both sides'
/// translation prefixes (`tunnels`: the configuration's). The WAN guard's
/// map and the kernel path's routes both come from this one list.
#[must_use]
pub fn guarded_prefixes(config: &Config, tunnels: &[TunnelSpec]) -> Vec<(Net, u32)> {
    let mut out: Vec<(Net, u32)> = Vec::new();
    let lan = [config.lan.v4.map(Net::V4), config.lan.v6.map(Net::V6)];
    out.extend(lan.into_iter().flatten().map(|n| (n, guard::LAN)));
    out.extend(config.remote.iter().map(|n| (*n, guard::REMOTE)));
    for t in tunnels {
        let ours = [t.xlat_v4.map(Net::V4), t.xlat_v6.map(Net::V6)];
        out.extend(
            ours.into_iter()
                .flatten()
                .map(|n| (n, guard::OURS_TRANSLATED)),
        );
        let peers = [
            t.peer_v4.map(|(p, _)| Net::V4(p)),
            t.peer_v6.map(|(p, _)| Net::V6(p)),
        ];
        out.extend(
            peers
                .into_iter()
                .flatten()
                .map(|n| (n, guard::PEER_TRANSLATED)),
        );
    }
    out
}

/// `GUARD_V4`/`GUARD_V6`: [`guarded_prefixes`].
#[must_use]
pub fn guard_entries(config: &Config, tunnels: &[TunnelSpec]) -> LpmEntries {
    let mut e = LpmEntries::default();
    for (net, kind) in guarded_prefixes(config, tunnels) {
        e.push(&net, kind);
    }
    e
}

impl TunnelSpec {
    /// This tunnel's `TUNNELS` entry while its device is `link` (none:
    /// missing) and its far end's MAC is `peer_mac` (TAP only; zero while
    /// unknown).
    #[must_use]
    pub fn entry(&self, link: Option<&LinkFacts>, peer_mac: [u8; 6]) -> TunnelConfig {
        let mut t = TunnelConfig {
            ifindex: link.map_or(0, |l| l.ifindex),
            mtu: link.map_or(0, |l| l.mtu),
            ..TunnelConfig::default()
        };
        if self.kind == TunnelKind::Tap {
            t.framing = framing::TAP;
            t.mac = link.map_or([0; 6], |l| l.mac);
            t.peer_mac = peer_mac;
        }
        if let Some(p) = self.xlat_v4 {
            t.families |= family::V4;
            t.xlat_v4 = p;
        }
        if let Some(p) = self.xlat_v6 {
            t.families |= family::V6;
            t.xlat_v6 = p;
        }
        if let Some((xlat, real)) = self.peer_v4 {
            t.families |= family::PEER_V4;
            t.peer_xlat_v4 = xlat;
            t.peer_real_v4 = real;
        }
        if let Some((xlat, real)) = self.peer_v6 {
            t.families |= family::PEER_V6;
            t.peer_xlat_v6 = xlat;
            t.peer_real_v6 = real;
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use ovpn_lb_common::Prefix4;

    use super::*;
    use crate::{
        config::{
            parse,
            validate::tests::{GOOD, fake},
        },
        netlink::LinkKind,
    };

    #[test]
    fn entries_carry_prefixes_devices_and_framing() {
        let text = format!(
            "{GOOD}\n[[tunnel]]\ndevice = \"tap0\"\nkind = \"tap\"\nnext_hop = \"10.99.1.2\"\ntranslate = [\"100.64.2.0/24\", \"fd00:64:2::/64\"]\n"
        );
        let (c, _) = parse(&text, &fake()).unwrap();
        let facts = fake();
        let t0 = c.tunnels[0].entry(facts.link("tun0"), [0; 6]);
        assert_eq!((t0.ifindex, t0.mtu, t0.framing), (3, 1500, framing::TUN));
        assert_eq!(
            t0.families,
            family::V4 | family::V6 | family::PEER_V4 | family::PEER_V6
        );
        assert_eq!(t0.peer_real_v4, Prefix4::new([10, 20, 30, 0], 24));
        let tap = facts.link("tap0").unwrap();
        assert_eq!(tap.kind, LinkKind::Ethernet);
        let t1 = c.tunnels[2].entry(Some(tap), [2, 0, 0, 0, 0, 9]);
        assert_eq!(t1.framing, framing::TAP);
        assert_eq!((t1.mac, t1.peer_mac), (tap.mac, [2, 0, 0, 0, 0, 9]));
        assert_eq!(c.tunnels[2].entry(None, [0; 6]).ifindex, 0);
        let site = c.site(facts.link("eth1"));
        assert_eq!(site.families, family::V4 | family::V6);
        assert_eq!(site.lan_ifindex, 2);
        assert_eq!(site.lan_mac, facts.link("eth1").unwrap().mac);
        let remote = c.remote_entries();
        assert_eq!(
            remote.v4,
            vec![
                (24, [10, 20, 30, 0], route::SPRAY),
                (32, [10, 20, 30, 1], route::EXCLUDE)
            ]
        );
        assert_eq!(
            translation_entries(&c.tunnels).v4[1],
            (24, [100, 64, 1, 0], 1)
        );
        // Kept off the WAN: the LAN, the remote prefixes, both sides'
        // translations (tunnel 1 has no peer translation).
        let guarded = guard_entries(&c, &c.tunnels);
        assert_eq!(
            guarded.v4,
            vec![
                (24, [192, 168, 10, 0], guard::LAN),
                (24, [10, 20, 30, 0], guard::REMOTE),
                (24, [100, 64, 0, 0], guard::OURS_TRANSLATED),
                (24, [100, 65, 0, 0], guard::PEER_TRANSLATED),
                (24, [100, 64, 1, 0], guard::OURS_TRANSLATED),
                (24, [100, 64, 2, 0], guard::OURS_TRANSLATED),
            ]
        );
        assert_eq!(guarded.v6.len(), 6);
    }
}
