//! One service at run time: admission, router, counters, and the decisions every data path's
//! front asks of it (where an admitted client goes now, when it gives up, how a refused or failed
//! one is counted and logged). It binds listeners but knows nothing of how they are accepted on
//! or how bytes move: that is `datapath`, which depends on this, never the other way round.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::admission::Gate;
use crate::config::{Service, Timeouts, TlsMode};
use crate::metrics::{GlobalStats, Reject, ServiceStats};
use crate::router::{Route, Router};
use crate::session_log::{Admitted, Trace};
pub use health::RateLimit;

/// Everything a connection of one service needs.
pub struct ServiceRuntime {
    /// The service's name, as in the configuration (`[[service]] name`), for logs and metrics.
    pub name: String,
    /// Connect, queue and idle limits of its sessions.
    pub timeouts: Timeouts,
    /// Who may open a session.
    pub gate: Gate,
    /// Where an admitted client goes.
    pub router: Router,
    /// The service's counters; shared with the next runtime across a reload.
    pub stats: Arc<ServiceStats>,
    /// The daemon-wide counters.
    pub global: Arc<GlobalStats>,
    /// The daemon's shutdown token, to tell a shutdown from a master change.
    pub shutdown: CancellationToken,
    /// `log_sessions`: one log line per client at its end (see `session_log`).
    pub log_sessions: bool,
    /// How its sessions use TLS.
    pub tls_mode: TlsMode,
    /// `[service.tls]`: the clients' TLS is terminated with this.
    pub tls_accept: Option<Arc<rustls::ServerConfig>>,
    /// `[service.server_tls]` without `passthrough`: sessions speak TLS to the master with this.
    pub tls_origin: Option<health::tls::Connector>,
    reject_log: RateLimit,
}

impl ServiceRuntime {
    /// The runtime of `cfg`, routing with `router` and counting into `stats` (the service's,
    /// kept across reloads) and `global`.
    pub fn new(
        cfg: &Service,
        router: Router,
        stats: Arc<ServiceStats>,
        global: Arc<GlobalStats>,
        shutdown: CancellationToken,
    ) -> ServiceRuntime {
        ServiceRuntime {
            name: cfg.name.clone(),
            timeouts: cfg.timeout,
            gate: Gate::new(
                cfg.allow.clone(),
                cfg.maxconn,
                cfg.maxconn_per_source,
                Arc::clone(&stats),
            ),
            router,
            stats,
            global,
            shutdown,
            log_sessions: cfg.log_sessions,
            tls_mode: cfg.tls_mode(),
            tls_accept: cfg.tls.as_ref().map(|t| Arc::clone(&t.acceptor.config)),
            tls_origin: cfg
                .server_tls
                .as_ref()
                .filter(|t| !t.passthrough)
                .map(|t| t.connector.clone()),
            reject_log: RateLimit::default(),
        }
    }
}

/// Binds a service's listening sockets, non-blocking, with SO_REUSEADDR and a deep backlog:
/// `count` of them on the same address (SO_REUSEPORT when more than one, so that each uring
/// worker accepts on its own socket and the kernel spreads clients across them). Needs no
/// runtime, so it can run before privileges are dropped.
///
/// Unless `shared`, the address must be free: SO_REUSEPORT would otherwise let a second
/// forwarder (or anything of the same user) join a running one silently and take half its
/// clients to its own idea of the master. A probe socket without SO_REUSEPORT binds first; any
/// listener on the address (or on the wildcard address of its port) makes that fail.
pub fn bind_std(
    addr: SocketAddr,
    count: usize,
    shared: bool,
) -> io::Result<Vec<std::net::TcpListener>> {
    let socket = |at: SocketAddr| {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(at),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        sock.set_reuse_address(true)?;
        io::Result::Ok(sock)
    };
    if !shared {
        let probe = socket(addr)?;
        if let Err(e) = probe.bind(&addr.into()) {
            if e.kind() == io::ErrorKind::AddrInUse {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{addr} is already in use by another process (another forwarder?); \
                         set share_listen = true to share it on purpose"
                    ),
                ));
            }
            return Err(e);
        }
    }
    let mut out: Vec<std::net::TcpListener> = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let sock = socket(addr)?;
        if count > 1 || shared {
            sock.set_reuse_port(true)?;
        }
        sock.set_nonblocking(true)?;
        sock.bind(&addr.into())?;
        sock.listen(4096)?;
        out.push(sock.into());
    }
    if !shared {
        // The probe and the binds are not one step: a second forwarder started at the same
        // moment may have joined our SO_REUSEPORT group in between. Then both refuse to run.
        let ours: Vec<u64> = out
            .iter()
            .filter_map(|l| rustix::fs::fstat(l).ok().map(|st| st.st_ino))
            .collect();
        let foreign = listeners_on(addr)?
            .into_iter()
            .filter(|ino| !ours.contains(ino))
            .count();
        if foreign > 0 {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "{addr} is already in use by another process as well ({foreign} foreign \
                     listening sockets, started at the same moment?); set share_listen = true \
                     to share it on purpose"
                ),
            ));
        }
    }
    Ok(out)
}

/// The inodes of the listening TCP sockets (of any process) that take `addr`'s port on its
/// address or a wildcard, from /proc/net/tcp and tcp6.
fn listeners_on(addr: SocketAddr) -> io::Result<Vec<u64>> {
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match std::fs::read_to_string(table) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // no IPv6
            Err(e) => return Err(e),
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(&"0A"), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue; // not LISTEN
            };
            let Some((ip, port)) = local.split_once(':') else {
                continue;
            };
            let (Ok(port), Some(ip)) = (u16::from_str_radix(port, 16), proc_ip(ip)) else {
                continue;
            };
            let ip = ip.to_canonical();
            let overlaps = ip == addr.ip() || ip.is_unspecified() || addr.ip().is_unspecified();
            if port == addr.port() && overlaps {
                if let Ok(ino) = inode.parse() {
                    found.push(ino);
                }
            }
        }
    }
    Ok(found)
}

/// An address as /proc/net/tcp writes it: hex, in 32-bit words of host order (the kernel prints
/// the network-order bytes as a native u32: "0100007F" is 127.0.0.1 on little-endian machines).
fn proc_ip(hex: &str) -> Option<std::net::IpAddr> {
    let word = |i: usize| {
        hex.get(i * 8..i * 8 + 8)
            .and_then(|w| u32::from_str_radix(w, 16).ok())
            .map(u32::to_ne_bytes)
    };
    match hex.len() {
        8 => Some(std::net::Ipv4Addr::from(word(0)?).into()),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(std::net::Ipv6Addr::from(b).into())
        }
        _ => None,
    }
}

/// How long accepting pauses after it failed (EMFILE and friends: the pending connection stays
/// queued, so retrying at once would spin).
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// What an admitted client does next.
pub enum Next {
    /// Connect to this master.
    Connect(Route),
    /// No usable master yet: wait for one (a failover looks like a pause to the client).
    Wait,
    /// The queue time is up: close the client, for this reason.
    GiveUp(Reject),
}

impl ServiceRuntime {
    /// Where an admitted client goes now. `after` is the generation of the last master it failed
    /// to connect to: then only a newer master will do.
    pub fn next(&self, after: Option<u64>, deadline: Instant) -> Next {
        match self.router.current() {
            Some(r) if after.is_none_or(|g| r.generation > g) => Next::Connect(r),
            _ if Instant::now() >= deadline => Next::GiveUp(if after.is_some() {
                Reject::ConnectFailed
            } else {
                Reject::NoMaster
            }),
            _ => Next::Wait,
        }
    }

    /// The deadline of a client admitted now: `timeout.queue` from now.
    pub fn queue_deadline(&self) -> Instant {
        let now = Instant::now();
        now.checked_add(self.timeouts.queue)
            .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
    }

    /// Closes a client the gate refused (already counted there); logs at most once a second.
    pub fn refused(&self, peer: SocketAddr, why: Reject) {
        self.reject_log.log(|n| {
            tracing::warn!(service = %self.name, %peer, reason = why.as_str(),
                suppressed = n, "client rejected");
        });
    }

    /// Counts and logs a client closed after waiting (`Next::GiveUp`).
    pub fn give_up(&self, client: Admitted, why: Reject) {
        self.stats.reject(why);
        self.never_connected(client, why.as_str());
        let peer = client.peer;
        self.reject_log.log(|n| {
            tracing::warn!(service = %self.name, %peer, reason = why.as_str(),
                suppressed = n, "client closed");
        });
    }

    /// A connect to `server` that started at `started` has succeeded: records the client's queue
    /// wait and the connect time; returns the session's trace when the service logs sessions.
    pub fn connected(
        &self,
        client: Admitted,
        server: SocketAddr,
        started: Instant,
    ) -> Option<Box<Trace>> {
        let queue = started.saturating_duration_since(client.at);
        let connect = started.elapsed();
        self.stats.queue_wait.record(queue);
        self.stats.connect.record(connect);
        self.log_sessions
            .then(|| Box::new(Trace::new(client, Some(server), queue, connect)))
    }

    /// A client closed before it had a session (given up, or the daemon stopped while it
    /// waited): records how long it was held and logs its line with `end`.
    pub fn never_connected(&self, client: Admitted, end: &str) {
        let held = client.at.elapsed();
        self.stats.queue_wait.record(held);
        if self.log_sessions {
            Trace::new(client, None, held, Duration::ZERO).log(&self.name, end);
        }
    }

    /// A session has ended `end` (`End::as_str`; `Reject::as_str` for a connect that lost a
    /// race with a master change): logs its line, when it has a trace.
    pub fn session_ended(&self, trace: Option<&Trace>, end: &str) {
        if let Some(t) = trace {
            t.log(&self.name, end);
        }
    }

    /// Counts and logs a failed accept.
    pub fn accept_failed(&self, log: &RateLimit, e: &io::Error) {
        self.global.accept_errors.fetch_add(1, Ordering::Relaxed);
        log.log(|n| {
            tracing::error!(service = %self.name, error = %e, suppressed = n,
                "accept failed; pausing 100ms");
        });
    }

    /// Whether a session just connected to `route` may start: a master change may have raced
    /// with the connect (then it is counted as a failed connect).
    pub fn still_routed(&self, route: &Route) -> bool {
        if route.cut.is_cancelled() {
            self.stats.reject(Reject::ConnectFailed);
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_addresses_parse() {
        assert_eq!(proc_ip("0100007F"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(proc_ip("00000000"), Some("0.0.0.0".parse().unwrap()));
        assert_eq!(
            proc_ip("00000000000000000000000001000000"),
            Some("::1".parse().unwrap())
        );
        assert_eq!(proc_ip("0100007"), None);
        assert_eq!(proc_ip("zz00007F"), None);
    }

    #[test]
    fn our_own_listener_is_found_and_not_foreign() {
        let l = bind_std("127.0.0.1:0".parse().unwrap(), 1, true).unwrap();
        let addr = l[0].local_addr().unwrap();
        let ino = rustix::fs::fstat(&l[0]).unwrap().st_ino;
        assert_eq!(listeners_on(addr).unwrap(), vec![ino]);
    }
}
