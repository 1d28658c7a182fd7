//! The data paths: how bytes move between an admitted client and the master once both sockets
//! exist. Admission, routing and connecting are shared (see `service.rs`); each path implements
//! the same contract: half-close propagated, resets propagated, idle timeouts, and the session
//! ends at once when its route's `cut` token is cancelled.

pub mod uring;
pub mod userspace;

use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::admission::Permit;
use crate::config::{Mode, Timeouts};
use crate::metrics::{End, ServiceStats};

/// An established session: the accepted client and its connection to the master.
pub struct Session {
    pub client: TcpStream,
    pub server: TcpStream,
    pub timeouts: Timeouts,
    /// Cancelled when the master changes or the daemon shuts down.
    pub cut: CancellationToken,
    /// The daemon's shutdown token, to tell a shutdown from a master change.
    pub shutdown: CancellationToken,
    pub stats: Arc<ServiceStats>,
    /// Holds the `maxconn` slot until the session ends.
    pub permit: Permit,
}

/// The data path chosen at startup.
#[derive(Clone)]
pub enum DataPath {
    Userspace,
    Uring(Arc<uring::Uring>),
}

/// What `select` chose, and why it is not the best path when it had to fall back.
pub struct Selected {
    pub path: DataPath,
    pub fallback: Option<String>,
}

impl DataPath {
    /// Chooses the data path for `mode` with `workers` threads where the path has its own, or
    /// says why the requested one cannot run here. `auto` picks the best that works and logs why.
    pub fn select(mode: Mode, workers: usize) -> Result<Selected, String> {
        match mode {
            Mode::Userspace => Ok(Selected {
                path: DataPath::Userspace,
                fallback: None,
            }),
            Mode::Uring => uring::Uring::start(workers)
                .map(|u| Selected {
                    path: DataPath::Uring(Arc::new(u)),
                    fallback: None,
                })
                .map_err(|e| format!("datapath mode \"uring\" cannot run here: {e}")),
            Mode::Auto => match uring::Uring::start(workers) {
                Ok(u) => {
                    tracing::info!(workers, "datapath auto: using uring (io_uring splice works here)");
                    Ok(Selected {
                        path: DataPath::Uring(Arc::new(u)),
                        fallback: None,
                    })
                }
                Err(e) => {
                    tracing::warn!("datapath auto: using userspace, because uring cannot run here: {e}");
                    Ok(Selected {
                        path: DataPath::Userspace,
                        fallback: Some(format!("uring: {e}")),
                    })
                }
            },
            Mode::Sockmap => Err(
                "datapath mode \"sockmap\" is not available in this build; use \"auto\", \"uring\" or \"userspace\""
                    .to_string(),
            ),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            DataPath::Userspace => "userspace",
            DataPath::Uring(_) => "uring",
        }
    }

    /// Runs the session to its end.
    pub async fn relay(&self, session: Session) -> End {
        match self {
            DataPath::Userspace => userspace::relay(session).await,
            DataPath::Uring(u) => u.relay(session).await,
        }
    }
}
