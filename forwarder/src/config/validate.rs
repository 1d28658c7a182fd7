//! From the raw file types to the runtime types: defaults filled in, every value parsed and
//! range-checked, and the checks that span keys (duplicate names, overlapping listeners, a
//! server that is one of our own listeners, quorum against the number of Sentinels).
//!
//! The second of the three stages (raw -> validated -> runtime). The first error wins, and it
//! reads `file:key: reason`: the key path as the operator would write it
//! (`service[1].check.steps[2]`) and what is wrong, so the file can be fixed without the code.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::names::{self, Resolved, Resolver};
use super::raw::{RawConfig, RawMaxconn, RawProcess, RawSentinel, RawService};
use super::{
    local_ips, Admin, Allow, Config, ConfigError, Datapath, Mode, OnMasterChange, Process,
    Sentinel, Service, Timeouts, MAX_MAXCONN,
};

/// Validates `raw`, read from `file` (which only goes into error messages), resolving host names
/// with `resolve`.
pub(super) fn config(raw: RawConfig, file: String, resolve: Resolver<'_>) -> Res<Config> {
    Validator { file, resolve }.config(raw)
}

/// Makes the errors (it knows the file they are about) and resolves names.
pub(super) struct Validator<'a> {
    pub(super) file: String,
    resolve: Resolver<'a>,
}

pub(super) type Res<T> = Result<T, ConfigError>;

const DEFAULT_CONNECT: Duration = Duration::from_secs(4);
const DEFAULT_IDLE: Duration = Duration::from_secs(30);
const DEFAULT_QUEUE: Duration = Duration::from_secs(5);
const DEFAULT_DRAIN: Duration = Duration::from_secs(10);
const DEFAULT_HANDSHAKE: Duration = Duration::from_secs(5);
/// The longest duration any key accepts (HAProxy's limit too: 2^31 ms, about 24.8 days), so that
/// no deadline computed from one can overflow.
const MAX_DURATION: Duration = Duration::from_secs(24 * 24 * 3600);
/// The longest check interval (and check timeout): a server checked less often is not checked.
pub(super) const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
/// The default cap on servers learnt from Sentinels.
const DEFAULT_MAX_DISCOVERED: usize = 32;
/// How often host names are resolved again by default.
const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

impl Validator<'_> {
    pub(super) fn err(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
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
            Some(a) => {
                let token = self.token("admin.token", a.token)?;
                let read_token = self.token("admin.read_token", a.read_token)?;
                if read_token.is_some() && read_token == token {
                    return Err(self.err("admin.read_token", "must differ from admin.token"));
                }
                Some(Admin {
                    listen: self.listen_addr("admin.listen", &a.listen)?,
                    token,
                    read_token,
                })
            }
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
            source: std::sync::Arc::from(""),
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
        let mut resolved = Vec::new();
        let mut servers = Vec::with_capacity(s.servers.len());
        for (j, srv) in s.servers.iter().enumerate() {
            let addr = self.peer(key, &format!("servers[{j}]"), srv, &mut resolved)?;
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
            allow.push(self.allow(&format!("{key}.allow[{j}]"), cidr)?);
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
            handshake: self.dur(
                &format!("{key}.timeout.handshake"),
                &t.handshake,
                DEFAULT_HANDSHAKE,
            )?,
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
        let tls = s
            .tls
            .map(|t| self.client_tls(&format!("{key}.tls"), t))
            .transpose()?;
        let server_tls = s
            .server_tls
            .map(|t| self.server_tls(&format!("{key}.server_tls"), t, true))
            .transpose()?;
        if tls.is_some() && server_tls.as_ref().is_some_and(|t| t.passthrough) {
            return Err(self.err(
                format!("{key}.server_tls.passthrough"),
                "passthrough forwards the clients' TLS untouched, [service.tls] terminates it: \
                 choose one",
            ));
        }
        let mut check = self.check(&format!("{key}.check"), s.check)?;
        check.program = check
            .program
            .with_tls(server_tls.as_ref().map(|t| t.connector.clone()));
        let sentinel = match s.sentinel {
            Some(raw) => Some(self.sentinel(key, raw, &mut resolved)?),
            None => None,
        };
        let resolve_interval = self.dur(
            &format!("{key}.resolve_interval"),
            &s.resolve_interval,
            DEFAULT_RESOLVE_INTERVAL,
        )?;
        if resolve_interval < Duration::from_secs(1) {
            return Err(self.err(format!("{key}.resolve_interval"), "at least 1s"));
        }
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
            log_sessions: s.log_sessions.unwrap_or(false),
            timeout,
            check,
            sentinel,
            resolved,
            resolve_interval,
            tls,
            server_tls,
        })
    }

    /// `[service.sentinel]` of the service at `service` (its key, `service[0]`).
    fn sentinel(
        &self,
        service: &str,
        s: RawSentinel,
        resolved: &mut Vec<Resolved>,
    ) -> Res<Sentinel> {
        let key = &format!("{service}.sentinel");
        if s.addresses.is_empty() {
            return Err(self.err(
                format!("{key}.addresses"),
                "at least one Sentinel is required",
            ));
        }
        let mut addresses = Vec::new();
        for (j, a) in s.addresses.iter().enumerate() {
            let addr = self.peer(service, &format!("sentinel.addresses[{j}]"), a, resolved)?;
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
        let tls = s
            .tls
            .map(|t| self.server_tls(&format!("{key}.tls"), t, false))
            .transpose()?;
        Ok(Sentinel {
            tls,
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

    /// An admin token: at least 16 printable ASCII characters, no spaces.
    fn token(&self, key: &str, t: Option<String>) -> Res<Option<String>> {
        match t {
            Some(t) if t.chars().count() < 16 => Err(self.err(key, "at least 16 characters")),
            Some(t) if !t.bytes().all(|b| b.is_ascii_graphic()) => Err(self.err(
                key,
                "printable ASCII only, no spaces or control characters (it is sent as \
                 `Authorization: Bearer <token>`)",
            )),
            t => Ok(t),
        }
    }

    /// An address to listen on: unicast (or unspecified, for every address).
    fn listen_addr(&self, key: &str, s: &str) -> Res<SocketAddr> {
        let a = self.addr(key, s)?;
        if a.ip().is_multicast() || a.ip() == Ipv4Addr::BROADCAST {
            return Err(self.err(key, format!("{} is not a unicast address", a.ip())));
        }
        Ok(a)
    }

    /// An address to connect to, `IP:port` or `host:port` (resolved now, recorded in
    /// `resolved`): a unicast address of one host. `key` is the key within the service at
    /// `service`.
    fn peer(
        &self,
        service: &str,
        key: &str,
        s: &str,
        resolved: &mut Vec<Resolved>,
    ) -> Res<SocketAddr> {
        let full = format!("{service}.{key}");
        let text = s.trim();
        let a = match text.parse::<SocketAddr>() {
            Ok(_) => self.addr(&full, text)?,
            Err(_) => {
                let (host, port) = names::split(text).map_err(|why| {
                    self.err(
                        &full,
                        format!(
                            "{s:?} is not an IP:port or host:port address ({why}); e.g. \
                             \"10.0.0.3:6379\", \"[::1]:6379\", \"redis-1.example.com:6379\""
                        ),
                    )
                })?;
                if port == 0 {
                    return Err(self.err(&full, "port 0 is not a port to use"));
                }
                let addresses =
                    names::resolve(self.resolve, host, port).map_err(|why| self.err(&full, why))?;
                resolved.push(Resolved {
                    key: key.to_string(),
                    name: text.to_string(),
                    address: addresses[0],
                    addresses,
                });
                resolved[resolved.len() - 1].address
            }
        };
        let what = |a: SocketAddr| match resolved.last().filter(|r| r.key == key) {
            Some(r) => format!("{} (resolved from {:?})", a.ip(), r.name),
            None => a.ip().to_string(),
        };
        if a.ip().is_multicast() || a.ip() == Ipv4Addr::BROADCAST {
            return Err(self.err(&full, format!("{} is not a unicast address", what(a))));
        }
        if a.ip().is_unspecified() {
            return Err(self.err(&full, format!("{} is no host to connect to", what(a))));
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

    fn allow(&self, key: &str, s: &str) -> Res<Allow> {
        Allow::parse(s).map_err(|reason| self.err(key, reason))
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
    pub(super) fn dur(&self, key: &str, v: &Option<String>, default: Duration) -> Res<Duration> {
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
