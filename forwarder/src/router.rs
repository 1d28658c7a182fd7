//! Where a new session goes: the current master of the service, as chosen by `health`.
//!
//! The router turns the decider's [`health::MasterView`] into a [`Route`]: the master's address,
//! its generation, and a cancellation token shared by every session routed to it. When the master
//! changes, the token of the old route is cancelled (`on_master_change = "shutdown-sessions"`), which
//! cuts all of its sessions at once in whatever data path they live. Who the master is, and how
//! often it changed, is health's business (`health::decider`): the router neither decides nor
//! counts.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::OnMasterChange;

/// The master a session is sent to.
#[derive(Debug, Clone)]
pub struct Route {
    /// Where new sessions connect: the master's address.
    pub master: SocketAddr,
    /// health's count of master changes when this master was chosen; grows with every change.
    pub generation: u64,
    /// Cancelled when this master stops being the master (or the daemon shuts down).
    pub cut: CancellationToken,
}

/// Follows the master of one service.
#[derive(Debug, Clone)]
pub struct Router {
    routes: watch::Receiver<Option<Route>>,
}

impl Router {
    /// Starts following `views`. `shutdown` is the parent of every route's token; `on_change`
    /// runs after every change of route (a cut included).
    pub fn spawn(
        service: String,
        mut views: watch::Receiver<health::MasterView>,
        policy: OnMasterChange,
        shutdown: CancellationToken,
        on_change: Arc<dyn Fn() + Send + Sync>,
    ) -> Router {
        let (tx, rx) = watch::channel(None::<Route>);
        tokio::spawn(async move {
            loop {
                let view = *views.borrow_and_update();
                let current = tx.borrow().as_ref().map(|r| r.master);
                if view.master != current {
                    let old = tx.borrow().clone();
                    let new = view.master.map(|master| Route {
                        master,
                        generation: view.generation,
                        cut: shutdown.child_token(),
                    });
                    tx.send_replace(new);
                    if let Some(old) = old {
                        match policy {
                            OnMasterChange::ShutdownSessions => {
                                tracing::info!(%service, old = %old.master,
                                    "cutting the sessions to the old master");
                                old.cut.cancel();
                            }
                            OnMasterChange::Keep => {
                                tracing::info!(%service, old = %old.master,
                                    "keeping the sessions to the old master");
                            }
                        }
                    }
                    // Data paths outside tokio look at their cut tokens and queued clients now.
                    on_change();
                }
                tokio::select! {
                    changed = views.changed() => if changed.is_err() { break },
                    _ = shutdown.cancelled() => break,
                }
            }
        });
        Router { routes: rx }
    }

    /// The current route, if the service has a master.
    pub fn current(&self) -> Option<Route> {
        self.routes.borrow().clone()
    }

    /// Waits up to `deadline` for a route whose generation is newer than `after` (any route when
    /// `after` is `None`). Used to hold clients while there is no master, and to retry after a
    /// failed connect once a different master is known.
    pub async fn wait(&self, after: Option<u64>, deadline: Instant) {
        let mut rx = self.routes.clone();
        let usable = |r: &Option<Route>| {
            r.as_ref()
                .is_some_and(|r| after.is_none_or(|g| r.generation > g))
        };
        // Either way the caller looks at the route again.
        let _ = tokio::time::timeout_at(deadline, rx.wait_for(usable)).await;
    }
}
