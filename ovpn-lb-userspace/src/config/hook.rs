//! Which hook the programs attach with: native XDP where the kernel allows
//! it, tc everywhere else. Pure logic; the facts come from the drivers'
//! xdp-features.
//!
//! - tun devices (`dev tun`) have no Ethernet header and no native XDP: a
//!   native `XDP_REDIRECT` into one fails with EOPNOTSUPP. Generic (skb-mode)
//!   XDP reaches them but drops the checksum-offload state of the socket
//!   buffer, so TCP from a LAN host with transmit offload (the default) breaks.
//!   tun tunnels therefore always use tc.
//! - TAP devices (`dev tap`) take native XDP redirects, so with a LAN driver
//!   that runs XDP natively the whole path can be XDP. Generic XDP is never
//!   chosen.

use super::{Hook, TunnelKind};
use crate::netlink::netdev::{BASIC, NDO_XMIT, REDIRECT, describe};

/// The configuration's `hook`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requested {
    Auto,
    Tc,
    Xdp,
}

/// One tunnel device, as `choose` needs it.
pub struct TunnelDevice {
    pub name: String,
    pub kind: TunnelKind,
    pub xdp_features: Option<u64>,
}

/// The decision and the one line that explains it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub hook: Hook,
    pub reason: String,
}

const TUN_LIMIT: &str = "Linux refuses native XDP on tun devices and native XDP redirects into them (EOPNOTSUPP), and generic XDP loses offloaded TCP checksums";

/// Decides the hook.
///
/// # Errors
/// `mode = "xdp"` where native XDP cannot work, naming the device and why.
pub fn choose(
    requested: Requested,
    lan: &str,
    lan_features: Option<u64>,
    tunnels: &[TunnelDevice],
) -> Result<Choice, String> {
    let blocker = xdp_blocker(lan, lan_features, tunnels);
    match (requested, blocker) {
        (Requested::Tc, _) => Ok(Choice {
            hook: Hook::Tc,
            reason: "tc: hook = \"tc\"".to_owned(),
        }),
        (Requested::Xdp, Some(why)) => Err(format!(
            "hook = \"xdp\": {why}; use hook = \"tc\" or \"auto\""
        )),
        (Requested::Auto, Some(why)) => Ok(Choice {
            hook: Hook::Tc,
            reason: format!("tc: {why}"),
        }),
        (Requested::Xdp | Requested::Auto, None) => Ok(Choice {
            hook: Hook::Xdp,
            reason: format!(
                "native XDP: every tunnel is TAP and {lan}'s driver runs XDP natively (xdp-features: {})",
                describe(lan_features.unwrap_or(0))
            ),
        }),
    }
}

/// Why native XDP cannot carry this configuration, if it cannot.
fn xdp_blocker(lan: &str, lan_features: Option<u64>, tunnels: &[TunnelDevice]) -> Option<String> {
    if let Some(t) = tunnels.iter().find(|t| t.kind == TunnelKind::Tun) {
        return Some(format!("{} is a tun device: {TUN_LIMIT}", t.name));
    }
    let Some(lan_features) = lan_features else {
        return Some(format!(
            "the kernel does not report {lan}'s XDP features (Linux 6.3+ does)"
        ));
    };
    if lan_features & (BASIC | REDIRECT) != BASIC | REDIRECT {
        return Some(format!(
            "{lan}'s driver cannot run and redirect native XDP (xdp-features: {})",
            describe(lan_features)
        ));
    }
    if let Some(t) = tunnels
        .iter()
        .find(|t| t.xdp_features.is_none_or(|f| f & NDO_XMIT == 0))
    {
        return Some(format!(
            "{} does not take XDP redirects (xdp-features: {})",
            t.name,
            t.xdp_features.map_or("unknown".to_owned(), describe)
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const NATIVE: u64 = BASIC | REDIRECT;
    const TAP: u64 = BASIC | REDIRECT | NDO_XMIT;

    fn dev(name: &str, kind: TunnelKind, f: u64) -> TunnelDevice {
        TunnelDevice {
            name: name.to_owned(),
            kind,
            xdp_features: Some(f),
        }
    }

    #[test]
    fn auto_takes_xdp_only_for_all_tap_on_a_native_lan() {
        let taps = [
            dev("tap0", TunnelKind::Tap, TAP),
            dev("tap1", TunnelKind::Tap, TAP),
        ];
        let c = choose(Requested::Auto, "eth1", Some(NATIVE), &taps).unwrap();
        assert_eq!(c.hook, Hook::Xdp);
        assert!(c.reason.contains("eth1"), "{}", c.reason);
    }

    #[test]
    fn auto_takes_tc_for_tun_and_cites_the_kernel() {
        let mixed = [
            dev("tap0", TunnelKind::Tap, TAP),
            dev("tun1", TunnelKind::Tun, 0),
        ];
        let c = choose(Requested::Auto, "eth1", Some(NATIVE), &mixed).unwrap();
        assert_eq!(c.hook, Hook::Tc);
        assert!(
            c.reason.contains("tun1") && c.reason.contains("EOPNOTSUPP"),
            "{}",
            c.reason
        );
        assert!(c.reason.contains("generic XDP"), "{}", c.reason);
    }

    #[test]
    fn auto_takes_tc_without_native_lan_xdp() {
        let taps = [dev("tap0", TunnelKind::Tap, TAP)];
        for lan in [None, Some(0)] {
            let c = choose(Requested::Auto, "eth1", lan, &taps).unwrap();
            assert_eq!(c.hook, Hook::Tc);
            assert!(c.reason.contains("eth1"), "{}", c.reason);
        }
    }

    #[test]
    fn xdp_where_it_cannot_work_is_an_error() {
        let tun = [dev("tun0", TunnelKind::Tun, 0)];
        let e = choose(Requested::Xdp, "eth1", Some(NATIVE), &tun).unwrap_err();
        assert!(e.starts_with("hook = \"xdp\": tun0 is a tun device"), "{e}");
        let taps = [dev("tap0", TunnelKind::Tap, TAP)];
        let e = choose(Requested::Xdp, "eth1", Some(BASIC), &taps).unwrap_err();
        assert!(e.contains("eth1's driver"), "{e}");
    }

    #[test]
    fn tc_is_always_possible() {
        let taps = [dev("tap0", TunnelKind::Tap, TAP)];
        let c = choose(Requested::Tc, "eth1", Some(NATIVE), &taps).unwrap();
        assert_eq!(c.hook, Hook::Tc);
    }
}
