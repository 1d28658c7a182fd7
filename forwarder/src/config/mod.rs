//! Configuration: the TOML file, checked once, turned into the types the daemon runs on.
//!
//! Three stages, each in its own file, so that what the file may say, what it must satisfy and
//! what the daemon uses can each be read (and changed) alone:
//! - `raw.rs`: serde types that mirror the file key for key (unknown keys rejected), values as
//!   written;
//! - `validate.rs`: raw -> runtime, with the defaults, the ranges and the checks that span keys;
//! - here: the runtime types ([`Config`], [`Service`], [`Check`], [`Sentinel`], [`Timeouts`],
//!   ...), loading ([`Config::load`], [`Config::parse`]), rendering ([`Config::to_toml`]) and
//!   [`ConfigError`].
//!
//! Every error names the file, the key path (`service[1].timeout.connect`) and the reason, so an
//! operator can fix the file without reading code.

mod raw;
mod validate;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
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
    /// Known servers; with Sentinel, more are discovered (`SENTINEL replicas`).
    pub servers: Vec<SocketAddr>,
    /// Source networks allowed to connect; empty means everyone.
    pub allow: Vec<IpNet>,
    /// Sessions (queued included); for `maxconn = "auto"`, set from the descriptor budget at
    /// start (see `budget`) and 0 until then.
    pub maxconn: u32,
    /// `maxconn = "auto"` (the default): derived from the open-file limit.
    pub maxconn_auto: bool,
    /// Sessions one source address may hold at once (the guide's per-source iptables limit).
    pub maxconn_per_source: Option<u32>,
    /// What a change of master does to established sessions; `shutdown-sessions` by default.
    pub on_master_change: OnMasterChange,
    /// `[service.timeout]`.
    pub timeout: Timeouts,
    /// `[service.check]`: how each server is checked.
    pub check: Check,
    /// `[service.sentinel]`: the Sentinels that name the master; `None` to route to the one
    /// server whose check passes.
    pub sentinel: Option<Sentinel>,
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
    /// On SIGTERM/SIGINT, how long established sessions may finish before they are closed.
    #[serde(with = "humantime_serde")]
    pub drain: Duration,
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
        let text = String::from_utf8(bytes).map_err(|_| err("not UTF-8 text".into()))?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let raw = raw::from_toml(text, &file)?;
        validate::config(raw, file)
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
}
