//! Configuration: the TOML file, checked once, turned into the types the daemon runs on.
//!
//! Three stages, each in its own file, so that what the file may say, what it must satisfy and
//! what the daemon uses can each be read (and changed) alone:
//! - `raw.rs`: serde types that mirror the file key for key (unknown keys rejected), values as
//!   written;
//! - `validate.rs`: raw -> runtime, with the defaults, the ranges and the checks that span keys;
//!   `check.rs` (`[service.check]`) and `tls.rs` (the TLS keys, their files read) are its parts;
//! - here: the runtime types ([`Config`], [`Service`], [`Check`], [`Sentinel`], [`Timeouts`],
//!   ...), loading ([`Config::load`], [`Config::parse`]), rendering ([`Config::to_toml`]) and
//!   [`ConfigError`].
//!
//! Every error names the file, the key path (`service[1].timeout.connect`) and the reason, so an
//! operator can fix the file without reading code.

mod allow;
mod check;
mod names;
mod raw;
mod tls;
mod validate;

pub use allow::Allow;
pub use names::Resolved;
pub use tls::{ClientTls, ServerTls, TlsMode};

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A configuration that failed to load: where and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{key}: {reason}")]
pub struct ConfigError {
    /// The file's path, as given (`--config`, or the default path).
    pub file: String,
    /// Key path such as `service[0].timeout.connect`, or `-` when the file itself is unreadable.
    pub key: String,
    /// What is wrong and, where it helps, what would be right; one line.
    pub reason: String,
}

/// Data path mode requested in `[datapath] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// uring where this kernel (and sandbox) allows it, else userspace; never sockmap.
    Auto,
    /// The BPF redirect in the kernel; sessions that do not fit the map take uring or userspace.
    Sockmap,
    /// io_uring splices; a startup error where it cannot run.
    Uring,
    /// Copies through userspace buffers in tokio; runs everywhere.
    Userspace,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Auto => "auto",
            Mode::Sockmap => "sockmap",
            Mode::Uring => "uring",
            Mode::Userspace => "userspace",
        })
    }
}

/// What happens to established sessions when the master of their service changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnMasterChange {
    /// Close every session to the old master at once (HAProxy `on-marked-down shutdown-sessions`).
    ShutdownSessions,
    /// Leave them; only new sessions go to the new master.
    Keep,
}

// ---------------------------------------------------------------------------------------------
// Runtime types.

/// The validated configuration the daemon runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// `[datapath]`: how bytes move, for every service.
    pub datapath: Datapath,
    /// `[admin]`: the HTTP status, metrics and reload listener; `None` when there is none.
    pub admin: Option<Admin>,
    /// `[process]`: the user to run as after binding.
    pub process: Process,
    /// The `[[service]]` tables, in file order; at least one, with distinct names.
    pub service: Vec<Service>,
    /// The text it was validated from: the daemon validates it again to resolve names again
    /// (not the file, which may have changed since).
    #[serde(skip)]
    pub source: std::sync::Arc<str>,
}

/// Who the daemon runs as once its listeners are bound.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Process {
    /// Switch to this user after binding (keeping only the capabilities the data path needs).
    pub user: Option<String>,
    /// Its group; defaults to the user's primary group.
    pub group: Option<String>,
}

/// `[datapath]`: the data path and its threads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Datapath {
    /// The data path asked for; `auto` by default.
    pub mode: Mode,
    /// Data path threads; 0 in the file means one per core.
    pub workers: usize,
    /// Sessions the sockmap holds at once; more fall back to the next data path, counted.
    /// `None` in the file: the sum of the services' `maxconn` (see [`Config::sockmap_sessions`]).
    pub sockmap_sessions: Option<u32>,
}

impl Datapath {
    /// The number of threads to run: `workers`, or one per core when it is 0.
    pub fn threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// `[admin]`: the HTTP listener of `/status`, `/metrics`, the status page and `POST /reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Admin {
    /// Where it listens; must not overlap a service's listen address.
    pub listen: SocketAddr,
    /// When set, every admin request needs the token, as `Authorization: Bearer <token>` or
    /// as the password of HTTP Basic (any user), except `GET /live` and `GET /ready` (at least
    /// 16 printable ASCII characters). Never rendered by [`Config::to_toml`].
    #[serde(skip)]
    pub token: Option<String>,
    /// A second token that allows the read-only endpoints only (`GET /`, `/status`,
    /// `/metrics`); must differ from `token`. Without `token`, nothing can be changed through
    /// the listener (read-only). Never rendered.
    #[serde(skip)]
    pub read_token: Option<String>,
}

/// One `[[service]]`: a listen address forwarded to the current master of a set of servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    /// Unique among the services; letters, digits, `-`, `_` and `.` (it goes into metrics
    /// labels and logs).
    pub name: String,
    /// Where clients connect; unicast or unspecified, canonical (no IPv4-mapped IPv6).
    pub listen: SocketAddr,
    /// Let other processes listen on the same address (SO_REUSEPORT); by default a listen
    /// address another process serves is a startup (or reload) error.
    pub share_listen: bool,
    /// Known servers (names resolved, see `resolved`); with Sentinel, more are discovered
    /// (`SENTINEL replicas`).
    pub servers: Vec<SocketAddr>,
    /// Source networks and address ranges allowed to connect; empty means everyone.
    pub allow: Vec<Allow>,
    /// Sessions (queued included); for `maxconn = "auto"`, set from the descriptor budget at
    /// start (see `budget`) and 0 until then.
    pub maxconn: u32,
    /// `maxconn = "auto"` (the default): derived from the open-file limit.
    pub maxconn_auto: bool,
    /// Sessions one source address may hold at once (the guide's per-source iptables limit).
    pub maxconn_per_source: Option<u32>,
    /// What a change of master does to established sessions; `shutdown-sessions` by default.
    pub on_master_change: OnMasterChange,
    /// One `info` line per client at its end (target `forwarder::session`), HAProxy's
    /// `option tcplog`; off by default.
    pub log_sessions: bool,
    /// `[service.timeout]`.
    pub timeout: Timeouts,
    /// `[service.check]`: how each server is checked.
    pub check: Check,
    /// `[service.sentinel]`: the Sentinels that name the master; `None` to route to the one
    /// server whose check passes.
    pub sentinel: Option<Sentinel>,
    /// The servers and Sentinels written as `host:port`, with what they resolved to (the
    /// addresses in `servers` and `sentinel.addresses` are these).
    pub resolved: Vec<Resolved>,
    /// How often the daemon resolves the names again (30s by default; nothing to do without
    /// names).
    #[serde(with = "humantime_serde")]
    pub resolve_interval: Duration,
    /// `[service.tls]`: TLS from clients, terminated here.
    pub tls: Option<ClientTls>,
    /// `[service.server_tls]`: TLS towards the servers (checks always; sessions unless
    /// `passthrough`).
    pub server_tls: Option<ServerTls>,
}

/// The most sessions one service may be given, explicitly or by `"auto"`.
pub const MAX_MAXCONN: u32 = 1_000_000;

/// `[service.timeout]`: the limits of one session, each at most 24 days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    /// How long connecting to the master may take (4s by default); after a failure the client
    /// waits, within `queue`, for a newer master.
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// Idle time allowed on the client side (no byte read from or written to the client).
    #[serde(with = "humantime_serde")]
    pub client: Duration,
    /// Idle time allowed on the server side.
    #[serde(with = "humantime_serde")]
    pub server: Duration,
    /// How long a new client is held while the service has no master.
    #[serde(with = "humantime_serde")]
    pub queue: Duration,
    /// On SIGTERM/SIGINT, how long established sessions may finish before they are closed; and
    /// how long the sessions of a server an operator set to `drain` may go on.
    #[serde(with = "humantime_serde")]
    pub drain: Duration,
    /// How long a client's TLS handshake may take ([`Service::tls`]); 5s by default.
    #[serde(with = "humantime_serde")]
    pub handshake: Duration,
}

/// `check.kind`: how a server's health is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckKind {
    /// HAProxy's Redis sequence: PING/+PONG, INFO replication/role:master, QUIT/+OK.
    RedisMaster,
    /// Explicit HAProxy-style steps.
    TcpCheck,
}

/// `[service.check]`: the health check of every server of a service, HAProxy-style.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `redis-master` by default.
    pub kind: CheckKind,
    /// The steps as written (tcp-check) or as generated (redis-master, password masked).
    pub steps: Vec<String>,
    /// Between checks while the server is steadily up (HAProxy `inter`); 1s by default, at most
    /// 1h.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Between checks while the server is rising or falling; defaults to `interval`.
    #[serde(with = "humantime_serde")]
    pub fastinter: Duration,
    /// Between checks while the server is steadily down; defaults to `interval`.
    #[serde(with = "humantime_serde")]
    pub downinter: Duration,
    /// Passing checks in a row for a server to become routable (1..=1000, 2 by default).
    pub rise: u32,
    /// Failing checks in a row for a server to stop being routable (1..=1000, 3 by default).
    pub fall: u32,
    /// Limit for one whole check, connect included (HAProxy `timeout check`); defaults to
    /// `interval`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The steps, parsed, that every check runs (with the password in clear, hence not rendered).
    #[serde(skip)]
    pub program: health::Program,
    /// redis-master: the credentials the check sends, also used to read the servers'
    /// replication offsets in a switchover. Never rendered.
    #[serde(skip)]
    pub auth: Option<health::Auth>,
}

/// `[service.sentinel]`: the Sentinels whose quorum names the master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sentinel {
    /// The Sentinels, each one vote: at least one, none listed twice, none of our listeners.
    pub addresses: Vec<SocketAddr>,
    /// The name they monitor the master under (`sentinel monitor <name> ...`); one word.
    pub master_name: String,
    /// Sentinels that must agree; defaults to a majority of `addresses`.
    pub quorum: usize,
    /// Servers learnt from the Sentinels that are checked at most (more are counted, not
    /// checked).
    pub max_servers: usize,
    /// The ACL user to `AUTH` to the Sentinels as; needs `password`.
    pub user: Option<String>,
    /// The Sentinels' password (not the Redis servers'); never rendered by
    /// [`Config::to_toml`].
    #[serde(skip)]
    pub password: Option<String>,
    /// `tls = { ca, cert, key, server_name }`: TLS to the Sentinels.
    pub tls: Option<ServerTls>,
}

impl Check {
    /// The health-check schedule of this check.
    pub fn schedule(&self) -> health::Schedule {
        health::Schedule {
            interval: self.interval,
            fastinter: Some(self.fastinter),
            downinter: Some(self.downinter),
            rise: self.rise,
            fall: self.fall,
            timeout: self.timeout,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loading.

/// A configuration file larger than this is refused (it is read no further).
pub const MAX_FILE: u64 = 1 << 20;

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::parse(&read(path)?, path)
    }

    /// The admin listener (and token) of the file at `path`, for the commands that talk to a
    /// running daemon (`forwarder status`, `forwarder reload`): the services are not validated,
    /// so no name is looked up (the daemon may be needed most when DNS is down).
    pub fn load_admin(path: &Path) -> Result<Option<Admin>, ConfigError> {
        let file = path.display().to_string();
        let raw = raw::from_toml(&read(path)?, &file)?;
        raw.admin
            .map(|a| {
                let listen = a.listen.trim().parse().map_err(|_| ConfigError {
                    file: file.clone(),
                    key: "admin.listen".into(),
                    reason: format!("{:?} is not an IP:port address", a.listen),
                })?;
                Ok(Admin {
                    listen,
                    token: a.token,
                    read_token: a.read_token,
                })
            })
            .transpose()
    }
}

/// A configuration file's text: a regular file (or a character device) of at most
/// [`MAX_FILE`] bytes of UTF-8; a FIFO does not block.
fn read(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let err = |reason: String| ConfigError {
        file: path.display().to_string(),
        key: "-".into(),
        reason,
    };
    let mut bytes = Vec::new();
    // O_NONBLOCK: a FIFO must not hang the loader (a reload would block the signal task).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| err(format!("cannot read: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| err(format!("cannot read: {e}")))?;
    if !meta.is_file() && !meta.file_type().is_char_device() {
        return Err(err("not a regular file".into()));
    }
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(err(format!(
            "larger than {MAX_FILE} bytes: not a configuration file"
        )));
    }
    String::from_utf8(bytes).map_err(|_| err("not UTF-8 text".into()))
}

impl Config {
    /// Parses and validates configuration text, resolving host names; `path` is only used in
    /// error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::parse_resolving(text, path, &names::system)
    }

    fn parse_resolving(
        text: &str,
        path: &Path,
        resolve: names::Resolver<'_>,
    ) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let raw = raw::from_toml(text, &file)?;
        let mut cfg = validate::config(raw, file, resolve)?;
        cfg.source = text.into();
        Ok(cfg)
    }

    /// The effective configuration as TOML (what `forwarder check` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// This host's own addresses (for the loop checks); empty when they cannot be listed.
pub fn local_ips() -> Vec<IpAddr> {
    nix::ifaddrs::getifaddrs()
        .map(|ifs| {
            ifs.filter_map(|i| {
                let a = i.address?;
                a.as_sockaddr_in()
                    .map(|v4| IpAddr::V4(v4.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
            })
            .collect()
        })
        .unwrap_or_default()
}

impl Config {
    /// Sessions the sockmap holds: as configured, or the sum of the services' `maxconn`.
    pub fn sockmap_sessions(&self) -> u32 {
        self.datapath.sockmap_sessions.unwrap_or_else(|| {
            self.service
                .iter()
                .map(|s| s.maxconn)
                .fold(0u32, u32::saturating_add)
                .clamp(1, 1 << 20)
        })
    }
}

/// Where the configuration is read from when `--config` is not given.
pub fn default_path() -> PathBuf {
    PathBuf::from("/etc/forwarder/forwarder.toml")
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../forwarder.example.toml");

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("test.toml"))
    }

    #[test]
    fn architecture_example_loads() {
        let c = parse(EXAMPLE).expect("example loads");
        assert_eq!(c.service.len(), 2);
        assert_eq!(c.service[0].check.kind, CheckKind::RedisMaster);
        assert_eq!(c.service[0].check.rise, 1);
        assert_eq!(c.service[0].timeout.connect, Duration::from_secs(4));
        assert_eq!(c.service[1].check.kind, CheckKind::TcpCheck);
        assert_eq!(c.service[1].check.interval, Duration::from_secs(2));
        assert!(c.service[0].sentinel.is_some());
        // The effective config renders.
        assert!(c.to_toml().contains("mymaster"));
    }

    #[test]
    fn log_sessions_is_a_bool_off_by_default() {
        let base = "[[service]]\nname='a'\nlisten='127.0.0.1:1'\nservers=['127.0.0.1:2']\n";
        assert!(!parse(base).unwrap().service[0].log_sessions);
        let on = parse(&format!("{base}log_sessions = true\n")).unwrap();
        assert!(on.service[0].log_sessions);
        assert!(
            on.to_toml().contains("log_sessions = true"),
            "{}",
            on.to_toml()
        );
        let e = parse(&format!("{base}log_sessions = \"yes\"\n")).unwrap_err();
        assert_eq!(e.key, "service[0].log_sessions", "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let base = "[[service]]\nname='a'\nlisten='127.0.0.1:1'\nservers=['127.0.0.1:2']\n";
        let cases = [
            (format!("{base}bogus=1\n"), "service[0]", "unknown field"),
            (
                format!("{base}timeout={{connect='4 parsecs'}}\n"),
                "service[0].timeout.connect",
                "not a duration",
            ),
            (
                format!("{base}allow=['10.0.0.0/33']\n"),
                "service[0].allow[0]",
                "CIDR",
            ),
            (
                "[[service]]\nname='a'\nlisten='127.0.0.1:1'\nservers=[]\n".to_string(),
                "service[0].servers",
                "at least one",
            ),
        ];
        for (text, key, reason) in cases {
            let e = parse(&text).expect_err(&text);
            assert!(e.key.starts_with(key), "{e} (wanted key {key})");
            assert!(e.reason.contains(reason), "{e} (wanted {reason})");
        }
    }

    /// A resolver that knows a few made-up names.
    fn fake(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        let ips: &[&str] = match host {
            "db.example" => &["10.0.0.9", "10.0.0.3"],
            "db6.example" => &["fd00::7"],
            "twin.example" => &["10.0.0.1"],
            "zero.example" => &["0.0.0.0"],
            "self.example" => &["127.0.0.1"],
            "s1.example" => &["10.0.1.1"],
            _ => return Err(std::io::Error::other("Name or service not known")),
        };
        Ok(ips
            .iter()
            .map(|ip| SocketAddr::new(ip.parse().unwrap(), port))
            .collect())
    }

    fn parse_fake(s: &str) -> Result<Config, ConfigError> {
        Config::parse_resolving(s, Path::new("test.toml"), &fake)
    }

    #[test]
    fn names_resolve_to_the_first_sorted_address() {
        let c = parse_fake(
            "[[service]]\nname='a'\nlisten='127.0.0.1:1'\nresolve_interval='5s'\n\
             servers=['db.example:6379', '10.0.0.1:6379', 'db6.example:6380']\n\
             [service.sentinel]\nmaster_name='m'\naddresses=['s1.example:26379']\n",
        )
        .unwrap();
        let s = &c.service[0];
        let addrs: Vec<String> = s.servers.iter().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.3:6379", "10.0.0.1:6379", "[fd00::7]:6380"]);
        assert_eq!(
            s.sentinel.as_ref().unwrap().addresses[0].to_string(),
            "10.0.1.1:26379"
        );
        let keys: Vec<&str> = s.resolved.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["servers[0]", "servers[2]", "sentinel.addresses[0]"]);
        assert_eq!(s.resolved[0].name, "db.example:6379");
        assert_eq!(s.resolved[0].addresses.len(), 2);
        assert!(s.resolved[0].is_server() && !s.resolved[2].is_server());
        assert_eq!(s.resolve_interval, Duration::from_secs(5));
        // `forwarder check` shows each name and what it resolved to.
        let text = c.to_toml();
        assert!(
            text.contains("db.example:6379") && text.contains("10.0.0.9:6379"),
            "{text}"
        );
        // Without names, the interval is only a default.
        let plain =
            parse_fake("[[service]]\nname='a'\nlisten='127.0.0.1:1'\nservers=['10.0.0.1:2']\n")
                .unwrap();
        assert!(plain.service[0].resolved.is_empty());
    }

    #[test]
    fn names_that_cannot_be_used_are_errors_naming_the_key() {
        let svc = |servers: &str, extra: &str| {
            format!("[[service]]\nname='a'\nlisten='127.0.0.1:6379'\nservers=[{servers}]\n{extra}")
        };
        let cases = [
            (svc("'nowhere.example:6379'", ""), "service[0].servers[0]", "cannot resolve \"nowhere.example\""),
            (svc("'10.0.0.1:1', 'zero.example:6379'", ""), "service[0].servers[1]", "0.0.0.0 (resolved from \"zero.example:6379\") is no host"),
            (svc("'self.example:6379'", ""), "service[0].servers[0]", "own listen address (a loop)"),
            (svc("'twin.example:2', '10.0.0.1:2'", ""), "service[0].servers[1]", "listed twice"),
            (svc("'db.example:0'", ""), "service[0].servers[0]", "port 0"),
            (svc("'db_example:1'", ""), "service[0].servers[0]", "not an IP:port or host:port address"),
            (svc("'db.example:1'", "resolve_interval='500ms'\n"), "service[0].resolve_interval", "at least 1s"),
            (
                svc("'10.0.0.1:1'", "[service.sentinel]\nmaster_name='m'\naddresses=['s1.example:1', 'nowhere.example:2']\n"),
                "service[0].sentinel.addresses[1]",
                "cannot resolve",
            ),
        ];
        for (text, key, reason) in cases {
            let e = parse_fake(&text).expect_err(&text);
            assert_eq!(e.key, key, "{e}");
            assert!(e.reason.contains(reason), "{e} (wanted {reason})");
        }
    }

    #[test]
    fn allow_ranges_are_checked_and_rendered() {
        let base = "[[service]]\nname='a'\nlisten='127.0.0.1:1'\nservers=['127.0.0.1:2']\n";
        let c = parse(&format!("{base}allow=['10.0.0.5-10.0.0.9', '::1']\n")).unwrap();
        assert!(c.to_toml().contains("10.0.0.5-10.0.0.9"));
        let e = parse(&format!(
            "{base}allow=['10.0.0.0/8', '10.0.0.9-10.0.0.1']\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "service[0].allow[1]");
        assert!(e.reason.contains("ends before it starts"), "{e}");
    }
}
