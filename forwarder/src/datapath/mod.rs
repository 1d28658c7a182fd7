//! The data paths: how bytes move between an admitted client and the master once both sockets
//! exist. Admission, routing and connecting are shared (see `service.rs`); each path implements
//! the same contract: half-close propagated, resets propagated, idle timeouts, and the session
//! ends at once when its route's `cut` token is cancelled.

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPath {
    Userspace,
}

impl DataPath {
    /// Chooses the data path for `mode`, or says why the requested one cannot run here.
    /// `auto` picks the best that works and logs why.
    pub fn select(mode: Mode) -> Result<DataPath, String> {
        match mode {
            Mode::Userspace => Ok(DataPath::Userspace),
            Mode::Auto => {
                tracing::info!(
                    "datapath auto: using userspace (this build has no uring or sockmap data path yet)"
                );
                Ok(DataPath::Userspace)
            }
            Mode::Uring | Mode::Sockmap => Err(format!(
                "datapath mode {mode:?} is not available in this build; use \"auto\" or \"userspace\""
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DataPath::Userspace => "userspace",
        }
    }

    /// Runs the session to its end.
    pub async fn relay(self, session: Session) -> End {
        match self {
            DataPath::Userspace => userspace::relay(session).await,
        }
    }
}
