//! One service at run time: its listener, admission, router, and the life of each connection
//! up to the point where the data path takes over.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admission::{Gate, Permit};
use crate::config::{Service, Timeouts};
use crate::datapath::{DataPath, Session};
use crate::metrics::{GlobalStats, Reject, ServiceStats};
use crate::router::{deadline_after, Router};

/// Everything a connection of one service needs.
pub struct ServiceRuntime {
    pub name: String,
    pub timeouts: Timeouts,
    pub gate: Gate,
    pub router: Router,
    pub stats: Arc<ServiceStats>,
    pub global: Arc<GlobalStats>,
    pub datapath: DataPath,
    pub shutdown: CancellationToken,
    reject_log: RateLimit,
}

impl ServiceRuntime {
    pub fn new(
        cfg: &Service,
        router: Router,
        stats: Arc<ServiceStats>,
        global: Arc<GlobalStats>,
        datapath: DataPath,
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
            datapath,
            shutdown,
            reject_log: RateLimit::default(),
        }
    }
}

/// Binds a service's listening socket (SO_REUSEADDR, a deep backlog), non-blocking. Needs no
/// runtime, so it can run before privileges are dropped.
pub fn bind_std(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    Ok(sock.into())
}

/// `bind_std`, registered with the tokio runtime.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::from_std(bind_std(addr)?)
}

/// Accepts clients until `accepting` is cancelled (drain, or the service removed by a reload);
/// the listener is closed on return. Each client goes to the runtime current when it arrives: a
/// reload swaps the runtime without closing the listener or touching established sessions.
pub async fn serve(
    listener: TcpListener,
    runtimes: watch::Receiver<Arc<ServiceRuntime>>,
    accepting: CancellationToken,
) {
    let accept_log = RateLimit::default();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = accepting.cancelled() => return,
        };
        let svc = Arc::clone(&runtimes.borrow());
        match accepted {
            Ok((client, peer)) => match svc.gate.admit(peer) {
                Ok(permit) => {
                    tokio::spawn(async move { connection(client, peer, permit, svc).await });
                }
                Err(why) => {
                    // Closing the socket is the whole answer; the rejection is counted.
                    svc.reject_log.log(|n| {
                        tracing::warn!(service = %svc.name, %peer, reason = why.as_str(),
                            suppressed = n, "client rejected");
                    });
                }
            },
            Err(e) => {
                // EMFILE and friends: the pending connection stays queued, so retrying at once
                // would spin. Pause, count, and log at most once a second.
                svc.global.accept_errors.fetch_add(1, Ordering::Relaxed);
                accept_log.log(|n| {
                    tracing::error!(service = %svc.name, error = %e, suppressed = n,
                        "accept failed; pausing 100ms");
                });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Routes, connects, and hands the session to the data path.
async fn connection(client: TcpStream, peer: SocketAddr, permit: Permit, svc: Arc<ServiceRuntime>) {
    let deadline = deadline_after(svc.timeouts.queue);
    let mut after = None;
    let (route, server) = loop {
        // Hold the client while there is no master (a failover looks like a pause), and after a
        // failed connect wait for a newer master rather than failing at once.
        let route = match svc.router.current() {
            Some(r) if after.is_none_or(|g| r.generation > g) => r,
            _ => match svc.router.wait(after, deadline).await {
                Some(r) => r,
                None => {
                    let why = if after.is_some() {
                        Reject::ConnectFailed
                    } else {
                        Reject::NoMaster
                    };
                    svc.stats.reject(why);
                    svc.reject_log.log(|n| {
                        tracing::warn!(service = %svc.name, %peer, reason = why.as_str(),
                            suppressed = n, "client closed");
                    });
                    return;
                }
            },
        };
        match tokio::time::timeout(svc.timeouts.connect, TcpStream::connect(route.master)).await {
            Ok(Ok(server)) => break (route, server),
            Ok(Err(e)) => {
                tracing::debug!(service = %svc.name, master = %route.master, error = %e, "connect failed");
            }
            Err(_) => {
                tracing::debug!(service = %svc.name, master = %route.master, "connect timed out");
            }
        }
        after = Some(route.generation);
    };
    // A master change may have raced with the connect.
    if route.cut.is_cancelled() {
        svc.stats.reject(Reject::ConnectFailed);
        return;
    }
    // Redis is request/response: never hold a small reply back for Nagle.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let session = Session {
        client,
        server,
        timeouts: svc.timeouts,
        cut: route.cut,
        shutdown: svc.shutdown.clone(),
        stats: Arc::clone(&svc.stats),
        permit,
        owner: Arc::clone(&svc) as Arc<dyn std::any::Any + Send + Sync>,
    };
    svc.datapath.run(session).await;
}

/// At most one log line a second per site, saying how many were suppressed in between.
#[derive(Default)]
struct RateLimit {
    last_sec: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    fn log(&self, emit: impl FnOnce(u64)) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_sec.load(Ordering::Relaxed);
        if now != last
            && self
                .last_sec
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            emit(self.suppressed.swap(0, Ordering::Relaxed));
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}
