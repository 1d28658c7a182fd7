//! The data paths: how a service's listeners are accepted on, and how bytes move between an
//! admitted client and the master once both sockets exist. Admission and routing decisions are
//! the service's (see `service.rs`, which knows nothing of this module); the tokio-driven paths
//! share one front (`front.rs`), uring has its own on its rings. Each path implements the same
//! contract: half-close propagated, resets propagated, idle timeouts, and the session ends at
//! once when its route's `cut` token is cancelled.

mod front;
pub mod sockmap;
pub mod tls;
pub mod uring;
pub mod userspace;

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admission::Permit;
use crate::budget::Budget;
use crate::config::{Datapath, Mode};
use crate::metrics::End;
use crate::service::ServiceRuntime;
use crate::session_log::Trace;

/// An established session: the accepted client and its connection to the master.
pub struct Session {
    /// The accepted client socket.
    pub client: TcpStream,
    /// The connected socket to the master of [`cut`](Self::cut)'s route.
    pub server: TcpStream,
    /// Cancelled when the master changes or the daemon shuts down.
    pub cut: CancellationToken,
    /// Holds the `maxconn` slot until the session ends.
    pub permit: Permit,
    /// The service's runtime (timeouts, counters, shutdown token), kept alive with its checks and
    /// router (hence the `cut` of this session) while the session lives, even after a reload
    /// replaced it.
    pub svc: Arc<ServiceRuntime>,
    /// What its log line will say; `None` unless the service has `log_sessions = true`. The
    /// path that ends the session fills in the bytes and logs it.
    pub trace: Option<Box<Trace>>,
}

/// How a session whose `cut` was cancelled ended: the daemon shut down, its drained master's
/// drain time was up, or the master changed (a planned switchover included).
fn cut_end(svc: &ServiceRuntime) -> End {
    if svc.shutdown.is_cancelled() {
        End::Shutdown
    } else if svc.router.drain_cut() {
        End::Drained
    } else {
        End::MasterChanged
    }
}

/// Makes closing `sock` send a reset (SO_LINGER 0), so that the peer does not mistake a cut,
/// timed out or failed session for a complete exchange. Errors only mean the socket is gone.
fn reset(sock: &impl AsFd) {
    let _ = SockRef::from(sock).set_linger(Some(Duration::ZERO));
}

/// Why the requested data path cannot run here.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// `mode = "uring"` was asked for and the probe or a worker failed.
    #[error("datapath mode \"uring\" cannot run here: {0}")]
    Uring(uring::UringError),
    /// `mode = "sockmap"` was asked for and the BPF program could not be loaded or attached.
    #[error("datapath mode \"sockmap\" cannot run here: {0}")]
    Sockmap(sockmap::LoadError),
}

/// The data path chosen at startup.
#[derive(Clone)]
pub enum DataPath {
    /// tokio copies the bytes through userspace buffers; runs everywhere.
    Userspace,
    /// io_uring worker threads splice the bytes through pipes, each accepting on its own listener.
    Uring(Arc<uring::Uring>),
    /// With the path a session takes when the sockmap is full.
    Sockmap(Arc<sockmap::Sockmap>, Box<DataPath>),
}

/// What `select` chose, and why it is not the best path when it had to fall back.
pub struct Selected {
    /// The path sessions take.
    pub path: DataPath,
    /// Why `auto` did not get the best path (e.g. `uring: ...`); `None` when it did, or when a
    /// mode was named.
    pub fallback: Option<String>,
}

impl DataPath {
    /// Chooses the data path for the configured mode, or says why the requested one cannot run
    /// here. `auto` takes uring where it works, else userspace, and logs why. `budget` says how
    /// many sessions the sockmap holds and how many pipes a uring worker may open.
    pub fn select(
        cfg: &Datapath,
        sockmap_sessions: u32,
        budget: &Budget,
    ) -> Result<Selected, SelectError> {
        let threads = cfg.threads();
        let pipes = budget.pipes_per_worker;
        let uring = || uring::Uring::start(threads, pipes).map(|u| DataPath::Uring(Arc::new(u)));
        // The path for sessions that do not fit the sockmap: uring where it runs.
        let second = || uring().unwrap_or(DataPath::Userspace);
        let sockmap = || {
            sockmap::Sockmap::load(sockmap_sessions)
                .map(|m| DataPath::Sockmap(Arc::new(m), Box::new(second())))
        };
        let path = |p| Selected {
            path: p,
            fallback: None,
        };
        match cfg.mode {
            Mode::Userspace => Ok(path(DataPath::Userspace)),
            Mode::Uring => uring().map(path).map_err(SelectError::Uring),
            Mode::Sockmap => sockmap().map(path).map_err(SelectError::Sockmap),
            // sockmap is not a candidate: it spends less CPU per request, but serves fewer
            // requests per second than uring (see README, "Data paths"). It runs when asked.
            Mode::Auto => match uring() {
                Ok(p) => {
                    tracing::info!("datapath auto: using uring (io_uring splice works here)");
                    Ok(path(p))
                }
                Err(e) => {
                    tracing::warn!(
                        "datapath auto: using userspace, because uring cannot run here: {e}"
                    );
                    Ok(Selected {
                        path: DataPath::Userspace,
                        fallback: Some(format!("uring: {e}")),
                    })
                }
            },
        }
    }

    /// The mode's name as in the configuration and the status page: `userspace`, `uring` or
    /// `sockmap`.
    pub fn name(&self) -> &'static str {
        match self {
            DataPath::Userspace => "userspace",
            DataPath::Uring(_) => "uring",
            DataPath::Sockmap(..) => "sockmap",
        }
    }

    /// How many sockets each service listens on (bound with SO_REUSEPORT when more than one):
    /// one per uring worker, which accepts on its own; one for the tokio front.
    pub fn listeners_needed(&self) -> usize {
        match self {
            DataPath::Uring(u) => u.workers(),
            _ => 1,
        }
    }

    /// How many sockets per service to bind before the path is chosen (and before privileges
    /// are dropped): one per uring worker where uring may run. When `auto` then falls back,
    /// the tokio front accepts on all of them.
    pub fn listeners_planned(cfg: &Datapath) -> usize {
        match cfg.mode {
            Mode::Auto | Mode::Uring => cfg.threads(),
            Mode::Userspace | Mode::Sockmap => 1,
        }
    }

    /// Starts accepting on `listeners` (the sockets of one service) until `accepting` is
    /// cancelled, each client going to the runtime current in `runtimes`: on the uring workers'
    /// rings, or in tokio.
    pub fn listen(
        &self,
        listeners: Vec<std::net::TcpListener>,
        runtimes: watch::Receiver<Arc<ServiceRuntime>>,
        accepting: CancellationToken,
    ) -> std::io::Result<()> {
        match self {
            DataPath::Uring(u) => u.listen(listeners, runtimes, accepting),
            _ => {
                for l in listeners {
                    let l = TcpListener::from_std(l)?;
                    tokio::spawn(front::serve(
                        l,
                        self.clone(),
                        runtimes.clone(),
                        accepting.clone(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Pipes the uring workers hold now, when sessions run on them.
    pub fn pipes_held(&self) -> Option<usize> {
        match self {
            DataPath::Uring(u) => Some(u.pipes_held()),
            DataPath::Sockmap(_, next) => next.pipes_held(),
            DataPath::Userspace => None,
        }
    }

    /// Kernel-side byte totals, when the path keeps them.
    pub fn bpf_totals(&self) -> Option<sockmap::Totals> {
        match self {
            DataPath::Sockmap(m, _) => Some(m.totals()),
            _ => None,
        }
    }

    /// Runs the session to its end and counts how it ended. The uring path returns at once: its
    /// worker owns the session from then on (no task per session on tokio) and counts the end.
    pub async fn run(&self, session: Session) {
        let stats = Arc::clone(&session.svc.stats);
        let end = match self {
            DataPath::Userspace => userspace::relay(session).await,
            DataPath::Uring(u) => return u.hand_off(session),
            DataPath::Sockmap(m, next) => match m.attach(&session) {
                Ok(a) => match m.relay(session, a).await {
                    Ok(end) => end,
                    // A peer fell behind: the session goes on where TCP's windows bound memory.
                    Err(spilled) => return Box::pin(next.run(spilled)).await,
                },
                Err(why) => {
                    stats
                        .sockmap_fallbacks
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    match &why {
                        sockmap::AttachError::Full => {
                            tracing::debug!("sockmap full; session runs on {}", next.name());
                        }
                        sockmap::AttachError::NotEstablished => {
                            tracing::debug!(
                                "socket no longer established; session runs on {}",
                                next.name()
                            );
                        }
                        sockmap::AttachError::Other(e) => {
                            tracing::warn!(error = %e, "cannot put the session into the sockmap; using {}", next.name());
                        }
                    }
                    return Box::pin(next.run(session)).await;
                }
            },
        };
        stats.end(end);
    }

    /// Tells the path that some route changed (a new master, a cut, shutdown). Tasks that watch
    /// their router need nothing; the uring workers then look at their sessions' cut tokens and
    /// their queued clients at once.
    pub fn routes_changed(&self) {
        match self {
            DataPath::Userspace => {}
            DataPath::Uring(u) => u.sweep(),
            DataPath::Sockmap(_, next) => next.routes_changed(),
        }
    }
}
