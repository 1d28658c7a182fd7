//! Servers and Sentinels written as `host:port`: the syntax of a name, and resolving it.
//!
//! A name is resolved when the file is validated (at start, by `forwarder check`, on reload):
//! one that does not resolve is an error naming its key, as HAProxy's default `init-addr` makes
//! it. A name with several addresses takes the first in sorted order (IPv4 before IPv6, then by
//! value), so the choice is stable across lookups; the others are kept in [`Resolved`] for the
//! log and `forwarder check`. The daemon resolves again every `resolve_interval` by validating
//! the same text again (see `daemon::names`), so the resolved addresses pass the same rules as
//! written ones.

use std::net::{SocketAddr, ToSocketAddrs};

use serde::Serialize;

/// A server or Sentinel written as a name, and what it resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolved {
    /// Where it is written in its service: `servers[1]` or `sentinel.addresses[0]`.
    pub key: String,
    /// As written: `host:port`.
    pub name: String,
    /// The address the service uses: the first of `addresses`.
    pub address: SocketAddr,
    /// Every address the name resolved to, sorted.
    pub addresses: Vec<SocketAddr>,
}

impl Resolved {
    /// Whether this name is one of the service's `servers` (not a Sentinel).
    pub fn is_server(&self) -> bool {
        self.key.starts_with("servers[")
    }
}

/// Looks a host up: every address of `host`, with `port`. Given to validation so that tests can
/// resolve without the system's resolver.
pub(super) type Resolver<'a> = &'a dyn Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>>;

/// The system's resolver (getaddrinfo: `/etc/hosts`, then DNS, as `/etc/nsswitch.conf` says).
pub(super) fn system(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    Ok((host, port).to_socket_addrs()?.collect())
}

/// `host:port` split, when `s` has that shape: a DNS name (letters, digits, `-`, `.`; labels of
/// 1 to 63 characters not starting or ending with `-`; not all digits and dots, which would be a
/// mistyped address) and a port. The error says what is wrong with it.
pub(super) fn split(s: &str) -> Result<(&str, u16), String> {
    let (host, port) = s.rsplit_once(':').ok_or("no :port")?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} is not a port"))?;
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return Err("no host name".into());
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("{host:?} is not an IP address"));
    }
    for label in host.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!("{host:?} is not a host name"));
        }
    }
    Ok((host, port))
}

/// Resolves `host`, sorted and canonical (no IPv4-mapped IPv6), duplicates dropped; an error
/// when it has no address.
pub(super) fn resolve(
    resolver: Resolver<'_>,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, String> {
    let mut all: Vec<SocketAddr> = resolver(host, port)
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .into_iter()
        .map(|a| SocketAddr::new(a.ip().to_canonical(), port))
        .collect();
    all.sort();
    all.dedup();
    if all.is_empty() {
        return Err(format!("cannot resolve {host:?}: no address"));
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_and_bad_ones_say_why() {
        assert_eq!(
            split("redis-1.example.com:6379"),
            Ok(("redis-1.example.com", 6379))
        );
        assert_eq!(split("localhost.:1"), Ok(("localhost", 1)));
        for (s, reason) in [
            ("redis", "no :port"),
            ("redis:http", "not a port"),
            (":6379", "no host name"),
            ("10.0.0.300:6379", "not an IP address"),
            ("bad_name:6379", "not a host name"),
            ("-a.example:6379", "not a host name"),
            ("a..b:6379", "not a host name"),
            ("[::1]x:6379", "not a host name"),
        ] {
            let e = split(s).expect_err(s);
            assert!(e.contains(reason), "{s}: {e}");
        }
    }

    #[test]
    fn several_addresses_sort_ipv4_first_and_dedup() {
        let r = |_: &str, p: u16| {
            Ok(vec![
                SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], p)),
                SocketAddr::from(([10, 0, 0, 9], p)),
                SocketAddr::from(([10, 0, 0, 3], p)),
                SocketAddr::from(([10, 0, 0, 9], p)),
            ])
        };
        let all = resolve(&r, "db", 7).unwrap();
        let want: Vec<SocketAddr> = ["10.0.0.3:7", "10.0.0.9:7", "[::1]:7"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(all, want);
        let none = |_: &str, _: u16| Ok(Vec::new());
        assert!(resolve(&none, "db", 7).unwrap_err().contains("no address"));
    }
}
