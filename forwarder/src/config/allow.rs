//! One entry of a service's `allow` list: a network (`10.0.0.0/8`, `::1/128`, a bare address) or
//! an inclusive range of addresses (`10.0.0.5-10.0.0.9`, `fd00::1-fd00::9`).
//!
//! Matching is what admission does for every client, so it stays cheap: a network is a mask and
//! a compare, a range two compares (`IpAddr` orders every IPv4 address before every IPv6 one, so
//! an address of the other family is never inside a range).

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Serialize, Serializer};

/// A set of source addresses allowed to connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allow {
    /// A CIDR network; a bare address is its one-host network.
    Net(IpNet),
    /// Every address from `first` to `last`, both included; same family, `first <= last`.
    Range {
        /// The lowest address in the range.
        first: IpAddr,
        /// The highest address in the range.
        last: IpAddr,
    },
}

impl Allow {
    /// Whether `ip` (canonical: an IPv4 client as `a.b.c.d`, not `::ffff:a.b.c.d`) is in it.
    #[inline]
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match self {
            Allow::Net(net) => net.contains(ip),
            Allow::Range { first, last } => first <= ip && ip <= last,
        }
    }

    /// Parses one entry as written in the file; the error is the reason, for `file:key: reason`.
    pub fn parse(s: &str) -> Result<Allow, String> {
        let s = s.trim();
        if let Some((a, b)) = s.split_once('-') {
            let ip = |t: &str| {
                t.trim()
                    .parse::<IpAddr>()
                    .map(|ip| ip.to_canonical())
                    .map_err(|_| {
                        format!(
                            "{s:?}: {:?} is not an IP address (a range is written \
                             \"10.0.0.5-10.0.0.9\" or \"fd00::1-fd00::9\")",
                            t.trim()
                        )
                    })
            };
            let (first, last) = (ip(a)?, ip(b)?);
            if first.is_ipv4() != last.is_ipv4() {
                return Err(format!("{s:?}: a range cannot mix IPv4 and IPv6"));
            }
            if first > last {
                return Err(format!("{s:?}: the range ends before it starts"));
            }
            return Ok(Allow::Range { first, last });
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Allow::Net(IpNet::from(ip.to_canonical())));
        }
        s.parse::<IpNet>()
            .map(canonical)
            .map(Allow::Net)
            .map_err(|_| {
                format!(
                "{s:?} is not a CIDR network (e.g. \"10.0.0.0/8\", \"::1/128\"), an address or a \
                 range (\"10.0.0.5-10.0.0.9\")"
            )
            })
    }
}

/// An IPv4-mapped network (`::ffff:10.0.0.0/104`) as the IPv4 network it covers: clients are
/// matched by their canonical address (`10.0.0.1`, never `::ffff:10.0.0.1`), so as written it
/// would match nobody.
fn canonical(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        _ => net,
    }
}

impl fmt::Display for Allow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Allow::Net(net) => net.fmt(f),
            Allow::Range { first, last } => write!(f, "{first}-{last}"),
        }
    }
}

impl Serialize for Allow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_include_both_ends_and_nothing_of_the_other_family() {
        let r = Allow::parse("10.0.0.5 - 10.0.0.9").unwrap();
        assert_eq!(r.to_string(), "10.0.0.5-10.0.0.9");
        for (a, inside) in [
            ("10.0.0.4", false),
            ("10.0.0.5", true),
            ("10.0.0.7", true),
            ("10.0.0.9", true),
            ("10.0.0.10", false),
            ("::1", false),
        ] {
            assert_eq!(r.contains(&ip(a)), inside, "{a}");
        }
        let v6 = Allow::parse("fd00::1-fd00::9").unwrap();
        assert!(v6.contains(&ip("fd00::9")));
        assert!(!v6.contains(&ip("fd00::a")));
        assert!(!v6.contains(&ip("10.0.0.5")));
        // One address is a range of one.
        assert!(Allow::parse("10.0.0.5-10.0.0.5")
            .unwrap()
            .contains(&ip("10.0.0.5")));
        // IPv4-mapped ends are their IPv4 addresses.
        assert_eq!(
            Allow::parse("::ffff:10.0.0.1-10.0.0.2").unwrap(),
            Allow::parse("10.0.0.1-10.0.0.2").unwrap()
        );
    }

    #[test]
    fn networks_and_addresses_still_parse() {
        assert!(Allow::parse("10.0.0.0/8")
            .unwrap()
            .contains(&ip("10.200.0.1")));
        assert!(Allow::parse("::1").unwrap().contains(&ip("::1")));
        assert_eq!(
            Allow::parse(" 127.0.0.1 ").unwrap().to_string(),
            "127.0.0.1/32"
        );
        // An IPv4-mapped network covers the IPv4 clients it names.
        let mapped = Allow::parse("::ffff:10.0.0.0/104").unwrap();
        assert!(mapped.contains(&ip("10.1.2.3")), "{mapped}");
        assert!(!mapped.contains(&ip("11.0.0.1")), "{mapped}");
        assert_eq!(mapped.to_string(), "10.0.0.0/8");
    }

    #[test]
    fn bad_ranges_say_why() {
        for (s, reason) in [
            ("10.0.0.9-10.0.0.1", "ends before it starts"),
            ("10.0.0.1-::1", "cannot mix IPv4 and IPv6"),
            ("10.0.0.1-", "is not an IP address"),
            ("10.0.0.1-10.0.0.0/8", "is not an IP address"),
            ("-10.0.0.1", "is not an IP address"),
            ("10.0.0.0/33", "CIDR"),
        ] {
            let e = Allow::parse(s).expect_err(s);
            assert!(e.contains(reason), "{s}: {e}");
        }
    }
}
