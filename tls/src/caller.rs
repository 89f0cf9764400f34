//! Which callers share a per-address limit.
//!
//! One IPv4 address is one caller. In IPv6 a single host is commonly given a
//! whole /64 and may pick any of its 2^64 addresses for each connection, so
//! counting per address would give it as many places as it likes: IPv6
//! callers are counted per /64 prefix. An IPv4 address carried in IPv6 (a
//! dual-stack listener's `::ffff:a.b.c.d`) is the IPv4 caller it is.

use std::net::{IpAddr, Ipv6Addr};

/// The key under which `address` is counted against per-address limits:
/// the IPv4 address itself, or the /64 prefix of an IPv6 one (its last 64
/// bits zero).
pub fn limit_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> String {
        limit_key(text.parse().unwrap()).to_string()
    }

    #[test]
    fn ipv6_callers_are_counted_per_64_and_ipv4_per_address() {
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::1"), "::");
    }
}
