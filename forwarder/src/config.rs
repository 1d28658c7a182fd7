//! Configuration: TOML -> serde "raw" types (unknown keys rejected) -> validated runtime types.
//!
//! Every error names the file, the key path (`service[1].timeout.connect`) and the reason, so an
//! operator can fix the file without reading code.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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
// Raw (file) types.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    datapath: RawDatapath,
    admin: Option<RawAdmin>,
    #[serde(default)]
    process: RawProcess,
    #[serde(default)]
    service: Vec<RawService>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    user: Option<String>,
    group: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatapath {
    mode: Option<Mode>,
    workers: Option<usize>,
    sockmap_sessions: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: String,
    token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    listen: String,
    share_listen: Option<bool>,
    #[serde(default)]
    servers: Vec<String>,
    allow: Option<Vec<String>>,
    maxconn: Option<RawMaxconn>,
    maxconn_per_source: Option<u32>,
    on_master_change: Option<OnMasterChange>,
    #[serde(default)]
    timeout: RawTimeouts,
    #[serde(default)]
    check: RawCheck,
    sentinel: Option<RawSentinel>,
}

/// `maxconn = 4000` or `maxconn = "auto"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawMaxconn {
    Number(i64),
    Word(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    connect: Option<String>,
    client: Option<String>,
    server: Option<String>,
    queue: Option<String>,
    drain: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    kind: Option<CheckKind>,
    steps: Option<Vec<String>>,
    interval: Option<String>,
    fastinter: Option<String>,
    downinter: Option<String>,
    rise: Option<u32>,
    fall: Option<u32>,
    timeout: Option<String>,
    user: Option<String>,
    password: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSentinel {
    addresses: Vec<String>,
    master_name: String,
    quorum: Option<usize>,
    max_servers: Option<usize>,
    user: Option<String>,
    password: Option<String>,
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
    /// When set, every admin request needs `Authorization: Bearer <token>` (at least 16
    /// printable ASCII characters). Never rendered by [`Config::to_toml`].
    #[serde(skip)]
    pub token: Option<String>,
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
        let de = toml::Deserializer::new(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let mut reason = match inner.message().trim() {
                "" => "invalid TOML".to_string(),
                m => m.replace('\n', "; "),
            };
            if let Some(span) = inner.span() {
                let (line, col) = line_col(text, span.start);
                reason = format!("{reason} (line {line}, column {col})");
            }
            ConfigError {
                file: file.clone(),
                key: if key == "." { "-".into() } else { key },
                reason,
            }
        })?;
        Validator { file }.config(raw)
    }

    /// The effective configuration as TOML (what `forwarder check` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

struct Validator {
    file: String,
}

type Res<T> = Result<T, ConfigError>;

const DEFAULT_CONNECT: Duration = Duration::from_secs(4);
const DEFAULT_IDLE: Duration = Duration::from_secs(30);
const DEFAULT_QUEUE: Duration = Duration::from_secs(5);
const DEFAULT_DRAIN: Duration = Duration::from_secs(10);
/// The most sessions one service may be given, explicitly or by `"auto"`.
pub const MAX_MAXCONN: u32 = 1_000_000;
/// The longest duration any key accepts (HAProxy's limit too: 2^31 ms, about 24.8 days), so that
/// no deadline computed from one can overflow.
const MAX_DURATION: Duration = Duration::from_secs(24 * 24 * 3600);
/// The longest check interval (and check timeout): a server checked less often is not checked.
const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
/// The default cap on servers learnt from Sentinels.
const DEFAULT_MAX_DISCOVERED: usize = 32;
/// A configuration file larger than this is refused (it is read no further).
pub const MAX_FILE: u64 = 1 << 20;

impl Validator {
    fn err(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    fn config(&self, raw: RawConfig) -> Res<Config> {
        let workers = raw.datapath.workers.unwrap_or(0);
        if workers > 1024 {
            return Err(self.err("datapath.workers", "at most 1024 (0 means one per core)"));
        }
        let admin = match raw.admin {
            Some(a) => Some(Admin {
                listen: self.listen_addr("admin.listen", &a.listen)?,
                token: match a.token {
                    Some(t) if t.chars().count() < 16 => {
                        return Err(self.err("admin.token", "at least 16 characters"))
                    }
                    Some(t) if !t.bytes().all(|b| b.is_ascii_graphic()) => {
                        return Err(self.err(
                            "admin.token",
                            "printable ASCII only, no spaces or control characters (it is sent as \
                             `Authorization: Bearer <token>`)",
                        ))
                    }
                    t => t,
                },
            }),
            None => None,
        };
        if raw.service.is_empty() {
            return Err(self.err("service", "at least one [[service]] is required"));
        }
        let mut names = HashSet::new();
        let mut listens: Vec<SocketAddr> = Vec::new();
        let mut services = Vec::with_capacity(raw.service.len());
        for (i, s) in raw.service.into_iter().enumerate() {
            let key = format!("service[{i}]");
            let svc = self.service(&key, s)?;
            if !names.insert(svc.name.clone()) {
                return Err(self.err(
                    format!("{key}.name"),
                    format!("duplicate service name {:?}", svc.name),
                ));
            }
            if let Some(other) = listens.iter().find(|l| overlap(l, &svc.listen)) {
                return Err(self.err(
                    format!("{key}.listen"),
                    format!(
                        "{} overlaps {other}, the listen address of another service",
                        svc.listen
                    ),
                ));
            }
            listens.push(svc.listen);
            if let Some(a) = admin.as_ref().filter(|a| overlap(&a.listen, &svc.listen)) {
                return Err(self.err(
                    format!("{key}.listen"),
                    format!(
                        "{} overlaps the admin listen address {}",
                        svc.listen, a.listen
                    ),
                ));
            }
            services.push(svc);
        }
        let sockmap_sessions = match raw.datapath.sockmap_sessions {
            Some(0) => return Err(self.err("datapath.sockmap_sessions", "must be at least 1")),
            Some(n) if n > 1 << 20 => {
                return Err(self.err("datapath.sockmap_sessions", "at most 1048576"))
            }
            n => n,
        };
        self.no_loops(&admin, &services)?;
        Ok(Config {
            datapath: Datapath {
                mode: raw.datapath.mode.unwrap_or(Mode::Auto),
                workers,
                sockmap_sessions,
            },
            admin,
            process: self.process(raw.process)?,
            service: services,
        })
    }

    fn process(&self, p: RawProcess) -> Res<Process> {
        if p.group.is_some() && p.user.is_none() {
            return Err(self.err("process.group", "needs process.user"));
        }
        for (key, v) in [("process.user", &p.user), ("process.group", &p.group)] {
            if v.as_deref().is_some_and(|s| s.trim().is_empty()) {
                return Err(self.err(key, "must not be empty"));
            }
        }
        Ok(Process {
            user: p.user,
            group: p.group,
        })
    }

    fn service(&self, key: &str, s: RawService) -> Res<Service> {
        let name = s.name.trim().to_string();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(self.err(
                format!("{key}.name"),
                format!(
                    "{:?} is not a valid name: use letters, digits, '-', '_' or '.'",
                    s.name
                ),
            ));
        }
        let listen = self.listen_addr(&format!("{key}.listen"), &s.listen)?;
        if s.servers.is_empty() && s.sentinel.is_none() {
            return Err(self.err(
                format!("{key}.servers"),
                "at least one server is required (or a [service.sentinel] to discover them)",
            ));
        }
        let mut servers = Vec::with_capacity(s.servers.len());
        for (j, srv) in s.servers.iter().enumerate() {
            let addr = self.peer_addr(&format!("{key}.servers[{j}]"), srv)?;
            if servers.contains(&addr) {
                return Err(self.err(
                    format!("{key}.servers[{j}]"),
                    format!("{addr} is listed twice"),
                ));
            }
            if addr == listen {
                return Err(self.err(
                    format!("{key}.servers[{j}]"),
                    format!("{addr} is the service's own listen address (a loop)"),
                ));
            }
            servers.push(addr);
        }
        let mut allow = Vec::new();
        for (j, cidr) in s.allow.unwrap_or_default().iter().enumerate() {
            allow.push(self.cidr(&format!("{key}.allow[{j}]"), cidr)?);
        }
        let (maxconn, maxconn_auto) = match s.maxconn {
            None => (0, true),
            Some(RawMaxconn::Word(w)) if w == "auto" => (0, true),
            Some(RawMaxconn::Number(n)) if (1..=i64::from(MAX_MAXCONN)).contains(&n) => {
                (n as u32, false)
            }
            Some(_) => {
                return Err(self.err(
                    format!("{key}.maxconn"),
                    format!(
                        "must be at least 1 (and at most {MAX_MAXCONN}), or \"auto\" (from the \
                         open-file limit)"
                    ),
                ))
            }
        };
        let t = &s.timeout;
        let timeout = Timeouts {
            connect: self.dur(
                &format!("{key}.timeout.connect"),
                &t.connect,
                DEFAULT_CONNECT,
            )?,
            client: self.dur(&format!("{key}.timeout.client"), &t.client, DEFAULT_IDLE)?,
            server: self.dur(&format!("{key}.timeout.server"), &t.server, DEFAULT_IDLE)?,
            queue: self.dur_or_zero(&format!("{key}.timeout.queue"), &t.queue, DEFAULT_QUEUE)?,
            drain: self.dur_or_zero(&format!("{key}.timeout.drain"), &t.drain, DEFAULT_DRAIN)?,
        };
        let maxconn_per_source = match s.maxconn_per_source {
            Some(0) => {
                return Err(self.err(format!("{key}.maxconn_per_source"), "must be at least 1"))
            }
            Some(n) if !maxconn_auto && n > maxconn => {
                return Err(self.err(
                    format!("{key}.maxconn_per_source"),
                    format!("{n} is more than maxconn ({maxconn})"),
                ))
            }
            n => n,
        };
        let check = self.check(&format!("{key}.check"), s.check)?;
        let sentinel = match s.sentinel {
            Some(raw) => Some(self.sentinel(&format!("{key}.sentinel"), raw)?),
            None => None,
        };
        Ok(Service {
            name,
            listen,
            share_listen: s.share_listen.unwrap_or(false),
            servers,
            allow,
            maxconn,
            maxconn_auto,
            maxconn_per_source,
            on_master_change: s
                .on_master_change
                .unwrap_or(OnMasterChange::ShutdownSessions),
            timeout,
            check,
            sentinel,
        })
    }

    fn check(&self, key: &str, c: RawCheck) -> Res<Check> {
        let kind = c.kind.unwrap_or(CheckKind::RedisMaster);
        let interval = self.dur(
            &format!("{key}.interval"),
            &c.interval,
            Duration::from_secs(1),
        )?;
        let fastinter = self.dur(&format!("{key}.fastinter"), &c.fastinter, interval)?;
        let downinter = self.dur(&format!("{key}.downinter"), &c.downinter, interval)?;
        // HAProxy: `timeout check` defaults to the interval.
        let timeout = self.dur(&format!("{key}.timeout"), &c.timeout, interval)?;
        for (k, v) in [
            ("interval", interval),
            ("fastinter", fastinter),
            ("downinter", downinter),
            ("timeout", timeout),
        ] {
            if v > MAX_CHECK_INTERVAL {
                return Err(self.err(format!("{key}.{k}"), "at most 1h"));
            }
            if v < Duration::from_millis(1) {
                return Err(self.err(format!("{key}.{k}"), "at least 1ms"));
            }
        }
        // HAProxy's defaults: rise 2, fall 3.
        let rise = c.rise.unwrap_or(2);
        let fall = c.fall.unwrap_or(3);
        for (k, v) in [("rise", rise), ("fall", fall)] {
            if !(1..=1000).contains(&v) {
                return Err(self.err(format!("{key}.{k}"), "must be between 1 and 1000"));
            }
        }
        let (steps, program) = match kind {
            CheckKind::RedisMaster => {
                if c.steps.is_some() {
                    return Err(self.err(
                        format!("{key}.steps"),
                        "steps are only for kind = \"tcp-check\"; redis-master has its own",
                    ));
                }
                let auth = match (c.user, c.password) {
                    (user, Some(password)) => Some(health::Auth { user, password }),
                    (Some(_), None) => {
                        return Err(self.err(format!("{key}.user"), "a user needs a password"))
                    }
                    (None, None) => None,
                };
                let program = health::Program::redis_master(auth.as_ref());
                // As the program runs them, with the AUTH password masked.
                let steps = program
                    .steps()
                    .iter()
                    .map(|step| match step {
                        health::Step::Send(d) if d.starts_with(b"*") => "send AUTH ***".into(),
                        other => other.to_string(),
                    })
                    .collect();
                (steps, program)
            }
            CheckKind::TcpCheck => {
                if c.user.is_some() || c.password.is_some() {
                    return Err(self.err(
                        format!("{key}.password"),
                        "user/password are for kind = \"redis-master\"; write AUTH as a send step",
                    ));
                }
                let steps = c.steps.unwrap_or_else(|| vec!["connect".to_string()]);
                let mut parsed = Vec::with_capacity(steps.len());
                for (j, s) in steps.iter().enumerate() {
                    let step = s
                        .parse::<health::Step>()
                        .map_err(|e| self.err(format!("{key}.steps[{j}]"), e.to_string()))?;
                    parsed.push(step);
                }
                let program = health::Program::new(parsed)
                    .map_err(|e| self.err(format!("{key}.steps"), e.to_string()))?;
                (steps, program)
            }
        };
        Ok(Check {
            kind,
            steps,
            interval,
            fastinter,
            downinter,
            rise,
            fall,
            timeout,
            program,
        })
    }

    fn sentinel(&self, key: &str, s: RawSentinel) -> Res<Sentinel> {
        if s.addresses.is_empty() {
            return Err(self.err(
                format!("{key}.addresses"),
                "at least one Sentinel is required",
            ));
        }
        let mut addresses = Vec::new();
        for (j, a) in s.addresses.iter().enumerate() {
            let addr = self.peer_addr(&format!("{key}.addresses[{j}]"), a)?;
            // One Sentinel listed twice would count twice toward the quorum.
            if addresses.contains(&addr) {
                return Err(self.err(
                    format!("{key}.addresses[{j}]"),
                    format!("{addr} is listed twice (each Sentinel is one vote)"),
                ));
            }
            addresses.push(addr);
        }
        let max_servers = s.max_servers.unwrap_or(DEFAULT_MAX_DISCOVERED);
        if !(1..=1024).contains(&max_servers) {
            return Err(self.err(format!("{key}.max_servers"), "between 1 and 1024"));
        }
        if s.master_name.is_empty() || s.master_name.chars().any(|c| c.is_whitespace()) {
            return Err(self.err(
                format!("{key}.master_name"),
                "one word, as in `sentinel monitor <name>` (no spaces)",
            ));
        }
        let majority = addresses.len() / 2 + 1;
        let quorum = match s.quorum {
            None => majority,
            Some(q) if q < majority || q > addresses.len() => {
                return Err(self.err(
                    format!("{key}.quorum"),
                    format!(
                        "must be between a majority ({majority}) and the number of Sentinels ({}): \
                         fewer could let two groups of Sentinels each name a master",
                        addresses.len()
                    ),
                ))
            }
            Some(q) => q,
        };
        if s.user.is_some() && s.password.is_none() {
            return Err(self.err(format!("{key}.password"), "required when user is set"));
        }
        Ok(Sentinel {
            addresses,
            master_name: s.master_name,
            quorum,
            max_servers,
            user: s.user,
            password: s.password,
        })
    }

    /// An `IP:port`, normalised (`[::ffff:10.0.0.1]:1` is `10.0.0.1:1`), port not 0.
    fn addr(&self, key: &str, s: &str) -> Res<SocketAddr> {
        let a: SocketAddr = s.trim().parse().map_err(|_| {
            self.err(
                key,
                format!(
                    "{s:?} is not an IP:port address (e.g. \"127.0.0.1:6379\" or \"[::1]:6379\")"
                ),
            )
        })?;
        if a.port() == 0 {
            return Err(self.err(key, "port 0 is not a port to use"));
        }
        Ok(SocketAddr::new(a.ip().to_canonical(), a.port()))
    }

    /// An address to listen on: unicast (or unspecified, for every address).
    fn listen_addr(&self, key: &str, s: &str) -> Res<SocketAddr> {
        let a = self.addr(key, s)?;
        if a.ip().is_multicast() || a.ip() == Ipv4Addr::BROADCAST {
            return Err(self.err(key, format!("{} is not a unicast address", a.ip())));
        }
        Ok(a)
    }

    /// An address to connect to: a unicast address of one host.
    fn peer_addr(&self, key: &str, s: &str) -> Res<SocketAddr> {
        let a = self.listen_addr(key, s)?;
        if a.ip().is_unspecified() {
            return Err(self.err(key, format!("{} is no host to connect to", a.ip())));
        }
        Ok(a)
    }

    /// No server or Sentinel is one of our own listeners (written differently, e.g. a service on
    /// `0.0.0.0:P` and a server `127.0.0.1:P`): the forwarder would connect to itself, and every
    /// connection would open another.
    fn no_loops(&self, admin: &Option<Admin>, services: &[Service]) -> Res<()> {
        let local = local_ips();
        let ours = services
            .iter()
            .map(|s| {
                (
                    s.listen,
                    format!("the listen address of service {:?}", s.name),
                )
            })
            .chain(
                admin
                    .iter()
                    .map(|a| (a.listen, "the admin listen address".to_string())),
            );
        let ours: Vec<(SocketAddr, String)> = ours.collect();
        let reaches = |listen: &SocketAddr, peer: &SocketAddr| {
            listen.port() == peer.port()
                && (listen.ip() == peer.ip()
                    || (listen.ip().is_unspecified()
                        && (peer.ip().is_loopback() || local.contains(&peer.ip()))))
        };
        for (i, s) in services.iter().enumerate() {
            let peers = s
                .servers
                .iter()
                .enumerate()
                .map(|(j, a)| (format!("service[{i}].servers[{j}]"), a));
            let sentinels = s.sentinel.iter().flat_map(|st| {
                st.addresses
                    .iter()
                    .enumerate()
                    .map(move |(j, a)| (format!("service[{i}].sentinel.addresses[{j}]"), a))
            });
            for (key, peer) in peers.chain(sentinels) {
                if let Some((l, what)) = ours.iter().find(|(l, _)| reaches(l, peer)) {
                    return Err(self.err(
                        key,
                        format!("{peer} is {what} ({l}): the forwarder would connect to itself"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn cidr(&self, key: &str, s: &str) -> Res<IpNet> {
        let s = s.trim();
        // A bare address means that one host.
        if let Ok(ip) = s.parse::<std::net::IpAddr>() {
            return Ok(IpNet::from(ip));
        }
        s.parse::<IpNet>().map_err(|_| {
            self.err(
                key,
                format!(
                    "{s:?} is not a CIDR network (e.g. \"10.0.0.0/8\", \"::1/128\") or address"
                ),
            )
        })
    }

    fn parse_dur(&self, key: &str, s: &str) -> Res<Duration> {
        let d = humantime::parse_duration(s.trim()).map_err(|e| {
            self.err(
                key,
                format!("{s:?} is not a duration ({e}); write e.g. \"250ms\", \"4s\", \"1m\""),
            )
        })?;
        if d > MAX_DURATION {
            return Err(self.err(key, "at most 24 days"));
        }
        Ok(d)
    }

    /// A duration that must be positive.
    fn dur(&self, key: &str, v: &Option<String>, default: Duration) -> Res<Duration> {
        match v {
            None => Ok(default),
            Some(s) => {
                let d = self.parse_dur(key, s)?;
                if d.is_zero() {
                    return Err(self.err(key, "must be greater than zero"));
                }
                Ok(d)
            }
        }
    }

    /// A duration where zero is meaningful (e.g. no queueing).
    fn dur_or_zero(&self, key: &str, v: &Option<String>, default: Duration) -> Res<Duration> {
        match v {
            None => Ok(default),
            Some(s) => self.parse_dur(key, s),
        }
    }
}

/// Whether two listen addresses take the same port: the same, or either the wildcard address.
fn overlap(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
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

    const EXAMPLE: &str = include_str!("../../forwarder.example.toml");

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
