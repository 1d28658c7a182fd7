//! Parsers of the Sentinel replies: `SENTINEL get-master-addr-by-name`, `SENTINEL replicas`, the
//! pub/sub pushes and the `+switch-master` payload.
//!
//! They are pure functions of one reply, apart from the I/O, because every byte comes from a
//! Sentinel that may be hostile: each is fuzzed here and property-tested in
//! `health/tests/parser_properties.rs`, and an address is accepted only when it names one server.

use std::net::{IpAddr, SocketAddr};

use crate::resp::Reply;

/// Why a Sentinel's reply is not an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The Sentinel answered with an error (e.g. `NOAUTH`, or an unknown master name for
    /// `SENTINEL replicas`): its text.
    #[error("Sentinel error: {0}")]
    Sentinel(String),
    /// The reply is not the array the command answers with; holds what it is (`kind`).
    #[error("expected an array, got {0}")]
    NotArray(&'static str),
    /// The address array is not two bulk strings `[ip, port]`; holds its length.
    #[error("expected [ip, port], got an array of {0} elements")]
    NotIpPort(usize),
    /// The IP bulk string is not UTF-8.
    #[error("IP is not UTF-8")]
    IpNotUtf8,
    /// The port bulk string is not UTF-8.
    #[error("port is not UTF-8")]
    PortNotUtf8,
    /// The IP does not parse as an IPv4 or IPv6 address (a hostname, say): the text.
    #[error("{0:?} is not an IP address (hostnames from announce-hostnames are not supported)")]
    NotIp(String),
    /// The port is not plain decimal digits in 0..=65535: the text.
    #[error("{0:?} is not a port")]
    NotPort(String),
    /// Port 0, which no server listens on.
    #[error("port 0")]
    PortZero,
    /// An unspecified (`0.0.0.0`, `::`) or multicast address, which does not name one server.
    #[error("{0} is not the address of one server")]
    NotOneServer(IpAddr),
    /// An element of the `SENTINEL replicas` array is not a field/value array; holds what it is.
    #[error("expected a replica's fields, got {0}")]
    NotReplica(&'static str),
    /// A replica's fields lack `ip` or `port` (or they are not UTF-8).
    #[error("a replica without ip or port")]
    ReplicaWithoutAddr,
    /// A `+switch-master` for another master the Sentinel monitors: not ours to follow.
    #[error("+switch-master for {got:?}, not {want:?}")]
    OtherMaster {
        /// The master name in the payload.
        got: String,
        /// The name configured for this service.
        want: String,
    },
    /// A `+switch-master` payload that is not `<name> <old ip> <old port> <new ip> <new port>`:
    /// the payload.
    #[error("malformed +switch-master payload {0:?}")]
    MalformedSwitch(String),
    /// A push on the subscription that is not an array; holds what it is.
    #[error("expected a pub/sub array, got {0}")]
    NotPubSub(&'static str),
    /// A `message` push whose channel or payload is not a bulk string; holds what it is.
    #[error("expected a bulk string, got {0}")]
    NotBulk(&'static str),
    /// A pub/sub array that is neither a `message` nor a (un)subscribe confirmation; holds its
    /// length.
    #[error("unexpected pub/sub push of {0} elements")]
    UnexpectedPush(usize),
}

/// `SENTINEL get-master-addr-by-name` reply: `[ip, port]`, or a null array for an unknown name.
pub fn parse_master_addr(reply: &Reply) -> Result<Option<SocketAddr>, ReplyError> {
    match reply {
        Reply::Array(None) => Ok(None),
        Reply::Array(Some(items)) => match items.as_slice() {
            [Reply::Bulk(Some(ip)), Reply::Bulk(Some(port))] => {
                let ip = std::str::from_utf8(ip).map_err(|_| ReplyError::IpNotUtf8)?;
                let port = std::str::from_utf8(port).map_err(|_| ReplyError::PortNotUtf8)?;
                addr(ip, port).map(Some)
            }
            _ => Err(ReplyError::NotIpPort(items.len())),
        },
        Reply::Error(e) => Err(ReplyError::Sentinel(e.clone())),
        other => Err(ReplyError::NotArray(kind(other))),
    }
}

fn addr(ip: &str, port: &str) -> Result<SocketAddr, ReplyError> {
    let ip: IpAddr = ip.parse().map_err(|_| ReplyError::NotIp(ip.to_string()))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|_| port.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| ReplyError::NotPort(port.to_string()))?;
    if port == 0 {
        return Err(ReplyError::PortZero);
    }
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(ReplyError::NotOneServer(ip));
    }
    Ok(SocketAddr::new(ip.to_canonical(), port))
}

/// `SENTINEL replicas` reply: an array of flat field/value arrays; the `ip` and `port` fields of
/// each.
pub fn parse_replicas(reply: &Reply) -> Result<Vec<SocketAddr>, ReplyError> {
    let items = match reply {
        Reply::Array(Some(items)) => items,
        Reply::Array(None) => return Ok(Vec::new()),
        Reply::Error(e) => return Err(ReplyError::Sentinel(e.clone())),
        other => return Err(ReplyError::NotArray(kind(other))),
    };
    items
        .iter()
        .map(|r| {
            let Reply::Array(Some(fields)) = r else {
                return Err(ReplyError::NotReplica(kind(r)));
            };
            let field = |name: &str| {
                fields.chunks(2).find_map(|kv| match kv {
                    [Reply::Bulk(Some(k)), Reply::Bulk(Some(v))] if k == name.as_bytes() => {
                        std::str::from_utf8(v).ok()
                    }
                    _ => None,
                })
            };
            match (field("ip"), field("port")) {
                (Some(ip), Some(port)) => addr(ip, port),
                _ => Err(ReplyError::ReplicaWithoutAddr),
            }
        })
        .collect()
}

/// `+switch-master` payload: `<name> <old ip> <old port> <new ip> <new port>`.
pub fn parse_switch_master(payload: &str, name: &str) -> Result<SocketAddr, ReplyError> {
    let parts: Vec<&str> = payload.split(' ').collect();
    match parts.as_slice() {
        [n, _, _, ip, port] if *n == name => addr(ip, port),
        [n, ..] if *n != name => Err(ReplyError::OtherMaster {
            got: n.to_string(),
            want: name.to_string(),
        }),
        _ => Err(ReplyError::MalformedSwitch(payload.to_string())),
    }
}

/// A pub/sub push: `Some((channel, payload))` for a `message`, `None` for (un)subscribe
/// confirmations.
pub fn parse_message(reply: &Reply) -> Result<Option<(String, String)>, ReplyError> {
    let Reply::Array(Some(items)) = reply else {
        return Err(ReplyError::NotPubSub(kind(reply)));
    };
    let text = |r: &Reply| match r {
        Reply::Bulk(Some(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
        other => Err(ReplyError::NotBulk(kind(other))),
    };
    match items.as_slice() {
        [Reply::Bulk(Some(k)), channel, payload] if k.as_slice() == b"message" => {
            Ok(Some((text(channel)?, text(payload)?)))
        }
        [Reply::Bulk(Some(k)), _, Reply::Integer(_)]
            if k.as_slice() == b"subscribe" || k.as_slice() == b"unsubscribe" =>
        {
            Ok(None)
        }
        _ => Err(ReplyError::UnexpectedPush(items.len())),
    }
}

pub(super) fn kind(r: &Reply) -> &'static str {
    match r {
        Reply::Simple(_) => "a simple string",
        Reply::Error(_) => "an error",
        Reply::Integer(_) => "an integer",
        Reply::Bulk(_) => "a bulk string",
        Reply::Array(_) => "an array",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp;

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(Some(s.as_bytes().to_vec()))
    }

    #[test]
    fn master_addr_replies() {
        let ok = Reply::Array(Some(vec![bulk("127.0.0.1"), bulk("6380")]));
        assert_eq!(
            parse_master_addr(&ok),
            Ok(Some("127.0.0.1:6380".parse().unwrap()))
        );
        let v6 = Reply::Array(Some(vec![bulk("::1"), bulk("6380")]));
        assert_eq!(
            parse_master_addr(&v6),
            Ok(Some("[::1]:6380".parse().unwrap()))
        );
        assert_eq!(parse_master_addr(&Reply::Array(None)), Ok(None));
        for bad in [
            Reply::Array(Some(vec![bulk("127.0.0.1")])),
            Reply::Array(Some(vec![bulk("redis-1.example"), bulk("6380")])),
            Reply::Array(Some(vec![bulk("127.0.0.1"), bulk("70000")])),
            Reply::Array(Some(vec![bulk("127.0.0.1"), bulk("0")])),
            Reply::Array(Some(vec![bulk("127.0.0.1"), Reply::Integer(6380)])),
            Reply::Array(Some(vec![Reply::Bulk(Some(vec![0xff])), bulk("1")])),
            Reply::Error("ERR unknown command".into()),
            Reply::Simple("OK".into()),
            Reply::Bulk(None),
        ] {
            assert!(parse_master_addr(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn replicas_replies() {
        let replica = |ip: &str, port: &str| {
            Reply::Array(Some(vec![
                bulk("name"),
                bulk("x"),
                bulk("ip"),
                bulk(ip),
                bulk("port"),
                bulk(port),
                bulk("flags"),
                bulk("slave"),
            ]))
        };
        let ok = Reply::Array(Some(vec![
            replica("127.0.0.1", "6381"),
            replica("::1", "6382"),
        ]));
        assert_eq!(
            parse_replicas(&ok),
            Ok(vec![
                "127.0.0.1:6381".parse().unwrap(),
                "[::1]:6382".parse().unwrap()
            ])
        );
        assert_eq!(parse_replicas(&Reply::Array(Some(vec![]))), Ok(vec![]));
        assert!(parse_replicas(&Reply::Array(Some(vec![replica("host", "1")]))).is_err());
        assert!(parse_replicas(&Reply::Array(Some(vec![Reply::Integer(1)]))).is_err());
        assert!(
            parse_replicas(&Reply::Array(Some(vec![Reply::Array(Some(vec![bulk(
                "ip"
            )]))])))
            .is_err()
        );
        assert!(parse_replicas(&Reply::Integer(3)).is_err());
    }

    #[test]
    fn switch_master_payloads() {
        assert_eq!(
            parse_switch_master("mymaster 127.0.0.1 6380 127.0.0.1 6381", "mymaster"),
            Ok("127.0.0.1:6381".parse().unwrap())
        );
        assert!(parse_switch_master("other 127.0.0.1 6380 127.0.0.1 6381", "mymaster").is_err());
        assert!(parse_switch_master("mymaster 127.0.0.1 6380 127.0.0.1", "mymaster").is_err());
        assert!(parse_switch_master("mymaster 1 2 x 6381", "mymaster").is_err());
        assert!(parse_switch_master("", "mymaster").is_err());
    }

    #[test]
    fn pubsub_pushes() {
        let msg = Reply::Array(Some(vec![
            bulk("message"),
            bulk("+sdown"),
            bulk("master m 1 2"),
        ]));
        assert_eq!(
            parse_message(&msg),
            Ok(Some(("+sdown".into(), "master m 1 2".into())))
        );
        let sub = Reply::Array(Some(vec![
            bulk("subscribe"),
            bulk("+sdown"),
            Reply::Integer(1),
        ]));
        assert_eq!(parse_message(&sub), Ok(None));
        assert!(parse_message(&Reply::Integer(1)).is_err());
        assert!(parse_message(&Reply::Array(Some(vec![bulk("message")]))).is_err());
    }

    /// The texts are those of the log lines and of the tests that read them.
    #[test]
    fn error_texts() {
        let arr = |v: Vec<Reply>| Reply::Array(Some(v));
        let addr = |ip: &str, port: &str| arr(vec![bulk(ip), bulk(port)]);
        let cases = [
            (
                parse_master_addr(&Reply::Error("ERR x".into())).unwrap_err(),
                "Sentinel error: ERR x",
            ),
            (
                parse_master_addr(&Reply::Integer(1)).unwrap_err(),
                "expected an array, got an integer",
            ),
            (
                parse_master_addr(&arr(vec![bulk("127.0.0.1")])).unwrap_err(),
                "expected [ip, port], got an array of 1 elements",
            ),
            (
                parse_master_addr(&arr(vec![Reply::Bulk(Some(vec![0xff])), bulk("1")]))
                    .unwrap_err(),
                "IP is not UTF-8",
            ),
            (
                parse_master_addr(&addr("redis-1", "1")).unwrap_err(),
                "\"redis-1\" is not an IP address (hostnames from announce-hostnames are not \
                 supported)",
            ),
            (
                parse_master_addr(&addr("127.0.0.1", "+1")).unwrap_err(),
                "\"+1\" is not a port",
            ),
            (
                parse_master_addr(&addr("127.0.0.1", "0")).unwrap_err(),
                "port 0",
            ),
            (
                parse_master_addr(&addr("0.0.0.0", "1")).unwrap_err(),
                "0.0.0.0 is not the address of one server",
            ),
            (
                parse_replicas(&arr(vec![Reply::Integer(1)])).unwrap_err(),
                "expected a replica's fields, got an integer",
            ),
            (
                parse_replicas(&arr(vec![arr(vec![bulk("ip"), bulk("::1")])])).unwrap_err(),
                "a replica without ip or port",
            ),
            (
                parse_switch_master("other 1 2 3 4", "m").unwrap_err(),
                "+switch-master for \"other\", not \"m\"",
            ),
            (
                parse_switch_master("m 1", "m").unwrap_err(),
                "malformed +switch-master payload \"m 1\"",
            ),
            (
                parse_message(&Reply::Integer(1)).unwrap_err(),
                "expected a pub/sub array, got an integer",
            ),
            (
                parse_message(&arr(vec![bulk("message"), Reply::Integer(1), bulk("x")]))
                    .unwrap_err(),
                "expected a bulk string, got an integer",
            ),
            (
                parse_message(&arr(vec![bulk("message")])).unwrap_err(),
                "unexpected pub/sub push of 1 elements",
            ),
        ];
        for (err, text) in cases {
            assert_eq!(err.to_string(), text);
        }
    }

    /// Random bytes through the RESP parser and the Sentinel parsers: errors, never panics.
    /// (cargo-fuzz needs nightly, which this project does not use; this runs on stable.)
    #[test]
    fn hostile_replies_never_panic() {
        let seeds: [&[u8]; 6] = [
            b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n",
            b"*3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n$38\r\nmymaster 127.0.0.1 6380 127.0.0.1 6381\r\n",
            b"*-1\r\n",
            b"-ERR no\r\n",
            b"*1\r\n*1\r\n*1\r\n:1\r\n",
            b"$-1\r\n",
        ];
        let mut rng_state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            rng_state
        };
        for _ in 0..20_000 {
            let seed = seeds[(next() % seeds.len() as u64) as usize];
            let mut input = seed.to_vec();
            for _ in 0..(next() % 4) {
                let pos = (next() % input.len() as u64) as usize;
                match next() % 3 {
                    0 => input[pos] = next() as u8,
                    1 => input.truncate(pos),
                    _ => input.insert(pos, next() as u8),
                }
                if input.is_empty() {
                    break;
                }
            }
            if let Ok(Some((reply, _))) = resp::parse(&input) {
                let _ = parse_master_addr(&reply);
                let _ = parse_replicas(&reply);
                if let Ok(Some((_, payload))) = parse_message(&reply) {
                    let _ = parse_switch_master(&payload, "mymaster");
                }
            }
        }
    }
}
