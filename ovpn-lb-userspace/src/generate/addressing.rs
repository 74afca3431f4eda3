//! Prefix arithmetic for the generator: carving per-tunnel prefixes out of
//! a larger one. Pure functions, unit tested.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ovpn_lb_common::{Prefix4, Prefix6};

use crate::config::Net;

/// Address width of the prefix's family, in bits.
fn width(net: &Net) -> u8 {
    match net {
        Net::V4(_) => 32,
        Net::V6(_) => 128,
    }
}

/// The prefix's first address as a number.
fn value(net: &Net) -> u128 {
    match net.addr() {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address numbered `value` in the family of `like`.
fn address(like: &Net, value: u128) -> IpAddr {
    match like {
        // A value derived from a v4 prefix stays below 2^32.
        Net::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(value).unwrap_or(u32::MAX))),
        Net::V6(_) => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

fn prefix(addr: IpAddr, len: u8) -> Net {
    match addr {
        IpAddr::V4(a) => Net::V4(Prefix4::new(a.octets(), len)),
        IpAddr::V6(a) => Net::V6(Prefix6::new(a.octets(), len)),
    }
}

/// How many prefixes of length `len` fit into `parent` (saturating at
/// `u128::MAX`); 0 when `len` is shorter than the parent or too long.
#[must_use]
pub fn capacity(parent: &Net, len: u8) -> u128 {
    if len < parent.prefix_len() || len > width(parent) {
        return 0;
    }
    1u128
        .checked_shl(u32::from(len - parent.prefix_len()))
        .unwrap_or(u128::MAX)
}

/// The `index`-th prefix of length `len` inside `parent`, counting from 0.
#[must_use]
pub fn subnet(parent: &Net, len: u8, index: u128) -> Option<Net> {
    if index >= capacity(parent, len) {
        return None;
    }
    let step = 1u128
        .checked_shl(u32::from(width(parent) - len))
        .unwrap_or(0);
    let start = value(parent) + index * step;
    Some(prefix(address(parent, start), len))
}

/// The `n`-th address of `net` (0 is the prefix's own address).
#[must_use]
pub fn host(net: &Net, n: u128) -> IpAddr {
    address(net, value(net) + n)
}

/// The first (`second == false`) or second half of `pool`.
#[must_use]
pub fn half(pool: &Net, second: bool) -> Option<Net> {
    subnet(pool, pool.prefix_len() + 1, u128::from(second))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Net {
        Net::parse("test", text).unwrap()
    }

    #[test]
    fn subnets_are_counted_from_the_start_and_end_at_the_parent() {
        let pool = net("100.64.0.0/16");
        assert_eq!(subnet(&pool, 24, 0), Some(net("100.64.0.0/24")));
        assert_eq!(subnet(&pool, 24, 7), Some(net("100.64.7.0/24")));
        assert_eq!(subnet(&pool, 24, 255), Some(net("100.64.255.0/24")));
        assert_eq!(subnet(&pool, 24, 256), None);
        assert_eq!(subnet(&pool, 30, 3), Some(net("100.64.0.12/30")));
        assert_eq!(subnet(&pool, 15, 0), None, "longer than the parent");
        assert_eq!(
            subnet(&net("fd64::/16"), 64, 5),
            Some(net("fd64:0:0:5::/64"))
        );
        assert_eq!(subnet(&net("10.0.0.0/8"), 33, 0), None);
    }

    #[test]
    fn capacity_counts_and_saturates() {
        assert_eq!(capacity(&net("100.64.0.0/15"), 24), 512);
        assert_eq!(capacity(&net("100.64.0.0/15"), 15), 1);
        assert_eq!(capacity(&net("100.64.0.0/15"), 14), 0);
        assert_eq!(capacity(&net("::/0"), 128), u128::MAX);
    }

    #[test]
    fn halves_and_hosts() {
        let pool = net("100.64.0.0/15");
        assert_eq!(half(&pool, false), Some(net("100.64.0.0/16")));
        assert_eq!(half(&pool, true), Some(net("100.65.0.0/16")));
        assert_eq!(half(&net("fd64::/15"), true), Some(net("fd65::/16")));
        assert_eq!(half(&net("10.0.0.1/32"), false), None);
        assert_eq!(host(&net("10.99.3.0/30"), 2).to_string(), "10.99.3.2");
        assert_eq!(
            host(&net("fd99:0:0:3::/64"), 1).to_string(),
            "fd99:0:0:3::1"
        );
    }
}
