//! Which callers share a per-address limit.
//!
//! One IPv4 address is one caller. In IPv6 a single host is commonly given a
//! whole /64 and may pick any of its 2^64 addresses for each connection, so
//! counting per address would give it as many places as it likes: IPv6
//! callers are counted per prefix, /64 unless the server's configuration
//! says otherwise (`ipv6_limit_prefix`; 128 counts each address, for a
//! network where more clients than one address's share of connections sit
//! in one /64). An IPv4 address carried in IPv6 (a dual-stack listener's
//! `::ffff:a.b.c.d`) is the IPv4 caller it is.

use std::net::{IpAddr, Ipv6Addr};

/// The IPv6 prefix length callers are counted by unless configured.
pub const DEFAULT_IPV6_LIMIT_PREFIX: u8 = 64;

/// The key under which `address` is counted against per-address limits:
/// the IPv4 address itself, or the first `ipv6_prefix` bits of an IPv6 one
/// with the rest zero (128 or more keeps the whole address).
pub fn limit_key(address: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(ipv6_prefix.min(128)))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> String {
        limit_key(text.parse().unwrap(), DEFAULT_IPV6_LIMIT_PREFIX).to_string()
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

    #[test]
    fn the_prefix_can_be_set_down_to_each_address() {
        let host: IpAddr = "2001:db8:1:2:aaaa:bbbb:cccc:dddd".parse().unwrap();
        assert_eq!(limit_key(host, 128), host);
        assert_eq!(limit_key(host, 200), host);
        assert_eq!(limit_key(host, 48).to_string(), "2001:db8:1::");
        assert_eq!(limit_key(host, 0).to_string(), "::");
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(limit_key(v4, 128), v4);
    }
}
