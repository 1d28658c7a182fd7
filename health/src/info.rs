//! `INFO replication` parsed into a typed struct. Unknown fields are ignored; a malformed reply is
//! an error that says what is wrong.

use crate::resp::{self, Reply};

/// The `role:` of a Redis server in `INFO replication`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Redis says `role:master`: it accepts writes (unless it is misconfigured).
    Master,
    /// Redis says `role:slave`.
    Replica,
}

impl Role {
    /// `master` or `replica`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Replica => "replica",
        }
    }
}

/// A replica's `master_link_status:`, its replication link to its master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkStatus {
    /// `up`: the replica is synchronised and streaming from its master.
    Up,
    /// `down`: not connected, or still in the initial sync.
    Down,
}

/// One `slaveN:` line of a master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaveInfo {
    /// The address the replica announced (`replica-announce-ip` or `REPLCONF ip-address`),
    /// verbatim: any client can claim one, so it is not proof of anything.
    pub ip: String,
    /// The port the replica announced (its listening port, not the connection's).
    pub port: u16,
    /// The master's view of the sync, e.g. `online`, `wait_bgsave`, `send_bulk`.
    pub state: String,
    /// The replication offset the replica last acknowledged, in bytes of the stream.
    pub offset: i64,
    /// Seconds since the replica's last acknowledgement; `None` when Redis omits it.
    pub lag: Option<i64>,
}

/// The fields of `INFO replication` the forwarder uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replication {
    /// The `role:` field, which every reply has (else [`InfoError::NoRole`]).
    pub role: Role,
    /// How many replicas are connected; `None` when the field is absent.
    pub connected_slaves: Option<u32>,
    /// The `slaveN:` lines, in reply order (a master's; empty on a replica without replicas).
    pub slaves: Vec<SlaveInfo>,
    /// The master a replica follows, as configured; `None` on a master.
    pub master_host: Option<String>,
    /// The port of [`master_host`](Self::master_host); `None` on a master.
    pub master_port: Option<u16>,
    /// A replica's link to its master; `None` on a master.
    pub master_link_status: Option<LinkStatus>,
    /// This server's replication offset, in bytes of the replication stream.
    pub master_repl_offset: Option<i64>,
    /// The replication ID of the history this server's data belongs to.
    pub master_replid: Option<String>,
    /// A replica's `slave_read_only:` (`true` for `1`); `None` on a master.
    pub slave_read_only: Option<bool>,
}

/// Why an `INFO replication` reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InfoError {
    /// No `role:` field (in the first `# Replication` section, for the role-only readers).
    #[error("no role field in INFO replication")]
    NoRole,
    /// A `role:` other than `master`, `slave` or `replica`: the value.
    #[error("unknown role {0:?}")]
    BadRole(String),
    /// A known field whose value does not parse (a number, or a link status).
    #[error("field {field}: {value:?} is not valid")]
    BadField {
        /// The field's name, e.g. `master_port`.
        field: String,
        /// Its value, verbatim.
        value: String,
    },
    /// A `slaveN:` line without `ip`, `port`, `state` and `offset`, or with a bad number: the line.
    #[error("malformed slave line {0:?}")]
    BadSlave(String),
    /// The reply is RESP but not a bulk string (e.g. `-NOAUTH`): what it is, or its start.
    #[error("reply is not a bulk string: {0}")]
    NotBulk(String),
    /// The reply has not all arrived.
    #[error("reply is incomplete")]
    Incomplete,
    /// The bytes are not RESP.
    #[error("reply is not valid RESP: {0}")]
    Resp(#[from] resp::RespError),
}

fn num<T: std::str::FromStr>(field: &str, value: &str) -> Result<T, InfoError> {
    value.parse().map_err(|_| InfoError::BadField {
        field: field.to_string(),
        value: value.to_string(),
    })
}

fn slave(line: &str, value: &str) -> Result<SlaveInfo, InfoError> {
    let bad = || InfoError::BadSlave(line.to_string());
    let (mut ip, mut port, mut state, mut offset, mut lag) = (None, None, None, None, None);
    for kv in value.split(',') {
        let (k, v) = kv.split_once('=').ok_or_else(bad)?;
        match k {
            "ip" => ip = Some(v.to_string()),
            "port" => port = Some(v.parse::<u16>().map_err(|_| bad())?),
            "state" => state = Some(v.to_string()),
            "offset" => offset = Some(v.parse::<i64>().map_err(|_| bad())?),
            "lag" => lag = Some(v.parse::<i64>().map_err(|_| bad())?),
            _ => {}
        }
    }
    Ok(SlaveInfo {
        ip: ip.ok_or_else(bad)?,
        port: port.ok_or_else(bad)?,
        state: state.ok_or_else(bad)?,
        offset: offset.ok_or_else(bad)?,
        lag,
    })
}

/// Parses the text of `INFO replication` (`key:value` lines, `#` headers, blank lines).
pub fn parse_replication(text: &str) -> Result<Replication, InfoError> {
    let mut r = Replication {
        role: Role::Master,
        connected_slaves: None,
        slaves: Vec::new(),
        master_host: None,
        master_port: None,
        master_link_status: None,
        master_repl_offset: None,
        master_replid: None,
        slave_read_only: None,
    };
    let mut role = None;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        match k {
            "role" => {
                role = Some(match v {
                    "master" => Role::Master,
                    "slave" | "replica" => Role::Replica,
                    other => return Err(InfoError::BadRole(other.to_string())),
                })
            }
            "connected_slaves" => r.connected_slaves = Some(num(k, v)?),
            "master_host" => r.master_host = Some(v.to_string()),
            "master_port" => r.master_port = Some(num(k, v)?),
            "master_link_status" => {
                r.master_link_status = Some(match v {
                    "up" => LinkStatus::Up,
                    "down" => LinkStatus::Down,
                    _ => {
                        return Err(InfoError::BadField {
                            field: k.into(),
                            value: v.into(),
                        })
                    }
                })
            }
            "master_repl_offset" => r.master_repl_offset = Some(num(k, v)?),
            "master_replid" => r.master_replid = Some(v.to_string()),
            "slave_read_only" => r.slave_read_only = Some(v == "1"),
            k if k.starts_with("slave")
                && k[5..].chars().all(|c| c.is_ascii_digit())
                && k.len() > 5 =>
            {
                r.slaves.push(slave(line, v)?)
            }
            _ => {}
        }
    }
    r.role = role.ok_or(InfoError::NoRole)?;
    Ok(r)
}

/// The role in the text of `INFO replication`: the first `role:` field of its first
/// `# Replication` section. Redis writes `role:` first in that section, before anything a peer
/// can influence; what follows can quote the words: a sub-replica announcing the IP
/// "role:master", or any client that says `REPLCONF ip-address "x\r\nrole:slave"` to the master
/// (Redis prints that value verbatim in its `slaveN:` line). So only the first one counts: a
/// replica quoting `role:master` is still a replica, a master quoting `role:slave` is still a
/// master, and a malformed line elsewhere cannot fail a master's check.
pub fn replication_role(text: &str) -> Result<Role, InfoError> {
    let mut in_section = false;
    for line in text.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(name) = line.strip_prefix('#') {
            if in_section {
                break; // the next section: no role in the first Replication section
            }
            in_section = name.trim() == "Replication";
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some(v) = line.strip_prefix("role:") {
            return match v {
                "master" => Ok(Role::Master),
                "slave" | "replica" => Ok(Role::Replica),
                other => Err(InfoError::BadRole(other.to_string())),
            };
        }
    }
    Err(InfoError::NoRole)
}

/// The role in a raw RESP reply to `INFO replication`: a complete bulk string (see
/// [`replication_role`]).
pub fn reply_role(bytes: &[u8]) -> Result<Role, InfoError> {
    match resp::parse(bytes)? {
        Some((Reply::Bulk(Some(body)), _)) => replication_role(&String::from_utf8_lossy(&body)),
        Some((other, _)) => Err(InfoError::NotBulk(format!("{other:?}"))),
        None => Err(InfoError::Incomplete),
    }
}

/// Longest `INFO replication` reply read to its end (any client can lengthen a master's by
/// posing as replicas: a `slaveN:` line each).
pub const MAX_INFO: usize = 64 << 20;

/// The role in an `INFO replication` reply of which only the first `kept.len()` bytes were kept
/// and `discarded` more were received: `None` while the bulk string is not all in (by its
/// length header), else its role, read from the kept start (Redis writes `role:` first).
pub fn reply_role_streamed(kept: &[u8], discarded: usize) -> Option<Result<Role, InfoError>> {
    if discarded == 0 {
        return match reply_role(kept) {
            Err(InfoError::Incomplete) => None,
            r => Some(r),
        };
    }
    let not_bulk = || {
        Some(Err(InfoError::NotBulk(
            String::from_utf8_lossy(&kept[..kept.len().min(20)]).into_owned(),
        )))
    };
    let Some(end) = kept.windows(2).position(|w| w == b"\r\n") else {
        return not_bulk();
    };
    let Some(n) = kept[..end]
        .strip_prefix(b"$")
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|d| d.parse::<usize>().ok())
        .filter(|n| *n <= MAX_INFO)
    else {
        return not_bulk();
    };
    if kept.len() + discarded < end + 2 + n + 2 {
        return None;
    }
    Some(replication_role(&String::from_utf8_lossy(&kept[end + 2..])))
}

/// Parses the raw RESP reply to `INFO replication` (`$N\r\n...\r\n`), as captured by a check;
/// bytes after the reply are ignored.
pub fn parse_info_reply(bytes: &[u8]) -> Result<Replication, InfoError> {
    match resp::parse(bytes)? {
        Some((Reply::Bulk(Some(body)), _)) => parse_replication(&String::from_utf8_lossy(&body)),
        Some((other, _)) => Err(InfoError::NotBulk(format!("{other:?}"))),
        None => Err(InfoError::Incomplete),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Verbatim from redis-server 7.0.15 (`redis-cli info replication`), CRLF as sent.
    const MASTER: &str = "# Replication\r\nrole:master\r\nconnected_slaves:1\r\nslave0:ip=127.0.0.1,port=7778,state=wait_bgsave,offset=0,lag=0\r\nmaster_failover_state:no-failover\r\nmaster_replid:cec974fc23c64605626d26e270d1536b7607c83d\r\nmaster_replid2:0000000000000000000000000000000000000000\r\nmaster_repl_offset:0\r\nsecond_repl_offset:-1\r\nrepl_backlog_active:1\r\nrepl_backlog_size:1048576\r\nrepl_backlog_first_byte_offset:1\r\nrepl_backlog_histlen:0\r\n";
    const REPLICA: &str = "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nmaster_port:7777\r\nmaster_link_status:down\r\nmaster_last_io_seconds_ago:-1\r\nmaster_sync_in_progress:0\r\nslave_read_repl_offset:1\r\nslave_repl_offset:1\r\nmaster_link_down_since_seconds:-1\r\nslave_priority:100\r\nslave_read_only:1\r\nreplica_announced:1\r\nconnected_slaves:0\r\nmaster_failover_state:no-failover\r\nmaster_replid:2c59e703ddce1ec7a526487f562e4ca77617c186\r\nmaster_replid2:0000000000000000000000000000000000000000\r\nmaster_repl_offset:0\r\nsecond_repl_offset:-1\r\nrepl_backlog_active:0\r\nrepl_backlog_size:1048576\r\nrepl_backlog_first_byte_offset:0\r\nrepl_backlog_histlen:0\r\n";

    #[test]
    fn a_reply_too_large_to_keep_is_read_to_its_end_and_judged_by_its_start() {
        let body = format!(
            "{MASTER}{}",
            "slave9:ip=xxxxxxxxxx,port=1,state=online,offset=0,lag=0\r\n".repeat(2000)
        );
        let whole = format!("${}\r\n{body}\r\n", body.len()).into_bytes();
        let keep = 64 * 1024;
        assert!(whole.len() > keep);
        assert_eq!(
            reply_role_streamed(&whole[..keep], 10),
            None,
            "not all in yet"
        );
        let rest = whole.len() - keep;
        assert_eq!(
            reply_role_streamed(&whole[..keep], rest),
            Some(Ok(Role::Master))
        );
        let replica = format!("{REPLICA}{}", "x".repeat(100_000));
        let whole = format!("${}\r\n{replica}\r\n", replica.len()).into_bytes();
        assert_eq!(
            reply_role_streamed(&whole[..keep], whole.len() - keep),
            Some(Ok(Role::Replica))
        );
        assert!(matches!(reply_role_streamed(&[b'x'; 100], 5), Some(Err(_))));
        assert_eq!(reply_role_streamed(&whole[..100], 0), None);
    }

    #[test]
    fn the_role_is_the_replication_sections_own_field() {
        let bulk = |t: &str| format!("${}\r\n{t}\r\n", t.len()).into_bytes();
        assert_eq!(reply_role(&bulk(MASTER)), Ok(Role::Master));
        assert_eq!(reply_role(&bulk(REPLICA)), Ok(Role::Replica));
        // A replica whose sub-replica announces the IP "role:master".
        let quoted = REPLICA.replace(
            "connected_slaves:0\r\n",
            "connected_slaves:1\r\nslave0:ip=role:master,port=1,state=online,offset=0,lag=0\r\n",
        );
        assert!(quoted.contains("role:master"));
        assert_eq!(reply_role(&bulk(&quoted)), Ok(Role::Replica));
        // A master with a sub-replica line that does not parse is still a master.
        let odd = MASTER.replace("slave0:ip=127.0.0.1,", "slave0:ip=a,b,");
        assert_eq!(reply_role(&bulk(&odd)), Ok(Role::Master));
        // A client's `REPLCONF ip-address "x\r\nrole:slave"` printed in the master's INFO.
        let injected = MASTER.replace(
            "slave0:ip=127.0.0.1,",
            "slave0:ip=x\r\nrole:slave\r\n# Replication\r\nrole:slave,",
        );
        assert_eq!(reply_role(&bulk(&injected)), Ok(Role::Master));
        // Outside the Replication section, or cut short: no role.
        let other = "# Server\r\nrole:master\r\n";
        assert_eq!(reply_role(&bulk(other)), Err(InfoError::NoRole));
        let later = "# Replication\r\nconnected_slaves:0\r\n# Server\r\nrole:master\r\n";
        assert_eq!(reply_role(&bulk(later)), Err(InfoError::NoRole));
        let full = bulk(MASTER);
        assert_eq!(
            reply_role(&full[..full.len() - 3]),
            Err(InfoError::Incomplete)
        );
        // Not a bulk string at all (a server that just says the words).
        assert!(reply_role(b"+role:master\r\n").is_err());
    }

    #[test]
    fn real_master() {
        let r = parse_replication(MASTER).unwrap();
        assert_eq!(r.role, Role::Master);
        assert_eq!(r.connected_slaves, Some(1));
        assert_eq!(
            r.slaves,
            vec![SlaveInfo {
                ip: "127.0.0.1".into(),
                port: 7778,
                state: "wait_bgsave".into(),
                offset: 0,
                lag: Some(0)
            }]
        );
        assert_eq!(r.master_repl_offset, Some(0));
        assert_eq!(
            r.master_replid.as_deref(),
            Some("cec974fc23c64605626d26e270d1536b7607c83d")
        );
    }

    #[test]
    fn real_replica() {
        let r = parse_replication(REPLICA).unwrap();
        assert_eq!(r.role, Role::Replica);
        assert_eq!(r.master_host.as_deref(), Some("127.0.0.1"));
        assert_eq!(r.master_port, Some(7777));
        assert_eq!(r.master_link_status, Some(LinkStatus::Down));
        assert_eq!(r.slave_read_only, Some(true));
        assert!(r.slaves.is_empty());
    }

    #[test]
    fn from_the_resp_reply() {
        let raw = format!("${}\r\n{}\r\n+OK\r\n", MASTER.len(), MASTER);
        assert_eq!(parse_info_reply(raw.as_bytes()).unwrap().role, Role::Master);
        assert_eq!(
            parse_info_reply(b"$10\r\nrole:m"),
            Err(InfoError::Incomplete)
        );
        assert!(matches!(
            parse_info_reply(b"-ERR no\r\n"),
            Err(InfoError::NotBulk(_))
        ));
    }

    #[test]
    fn malformed_is_an_error_not_a_panic() {
        assert_eq!(parse_replication("# Replication\n"), Err(InfoError::NoRole));
        assert!(matches!(
            parse_replication("role:boss\n"),
            Err(InfoError::BadRole(_))
        ));
        assert!(matches!(
            parse_replication("role:master\nslave0:ip=1.2.3.4,port=x\n"),
            Err(InfoError::BadSlave(_))
        ));
        assert!(matches!(
            parse_replication("role:master\nconnected_slaves:-3\n"),
            Err(InfoError::BadField { .. })
        ));
        // Unknown fields and lines without a colon are ignored; \n alone works.
        assert_eq!(
            parse_replication("role:master\nfuture_field:1\ngarbage\n")
                .unwrap()
                .role,
            Role::Master
        );
    }
}
