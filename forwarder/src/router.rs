//! Where a new session goes: the current master of the service, as chosen by `health`.
//!
//! The router turns the decider's [`health::MasterView`] into a [`Route`]: the master's address,
//! its generation, and a cancellation token shared by every session routed to it. When the master
//! changes, the token of the old route is cancelled (`on_master_change = "shutdown-sessions"`), which
//! cuts all of its sessions at once in whatever data path they live. Who the master is, and how
//! often it changed, is health's business (`health::decider`): the router neither decides nor
//! counts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use health::decider::Hold;
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
    /// Set while the route's sessions were cut because the drain time of a drained master was
    /// up (so that they end as `drained`, not `master_changed`).
    drain_cut: Arc<AtomicBool>,
    /// The last view the router has acted on (published its route, cut what it had to).
    applied: watch::Receiver<Option<health::MasterView>>,
}

impl Router {
    /// Starts following `views`. `shutdown` is the parent of every route's token; `on_change`
    /// runs after every change of route (a cut included). While the master is held
    /// ([`health::decider::Hold`]) new sessions see no route: `Drain` lets its sessions run for
    /// `drain`, then cuts them; `Switchover` cuts them at once. When the hold ends on the same
    /// master, its route comes back (with a new cut token if the old one was cut).
    pub fn spawn(
        service: String,
        mut views: watch::Receiver<health::MasterView>,
        policy: OnMasterChange,
        drain: Duration,
        shutdown: CancellationToken,
        on_change: Arc<dyn Fn() + Send + Sync>,
    ) -> Router {
        let (tx, rx) = watch::channel(None::<Route>);
        let (applied_tx, applied) = watch::channel(None);
        let drain_flag = Arc::new(AtomicBool::new(false));
        let drain_cut_flag = Arc::clone(&drain_flag);
        tokio::spawn(async move {
            // The master's route, published or held.
            let mut route: Option<Route> = None;
            let mut drain_cut: Option<Instant> = None;
            loop {
                let view = *views.borrow_and_update();
                let mut changed = false;
                if view.master != route.as_ref().map(|r| r.master) {
                    if let Some(old) = route.take() {
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
                    route = view.master.map(|master| Route {
                        master,
                        generation: view.generation,
                        cut: shutdown.child_token(),
                    });
                    drain_cut = None;
                    changed = true;
                }
                match (view.hold, &mut route) {
                    (Some(Hold::Switchover), Some(r)) if !r.cut.is_cancelled() => {
                        tracing::info!(%service, master = %r.master,
                            "switchover: cutting the sessions to the master, holding new ones");
                        r.cut.cancel();
                    }
                    (Some(Hold::Drain), Some(_)) if drain_cut.is_none() => {
                        drain_cut = Some(Instant::now() + drain);
                    }
                    (None, Some(r)) if r.cut.is_cancelled() && !shutdown.is_cancelled() => {
                        r.cut = shutdown.child_token(); // the hold ended: a fresh route
                    }
                    _ => {}
                }
                if view.hold != Some(Hold::Drain) {
                    drain_cut = None;
                    drain_flag.store(false, Ordering::Relaxed);
                }
                let published = route.clone().filter(|_| view.hold.is_none());
                let was = tx.borrow().as_ref().map(|r| (r.master, r.generation));
                if changed || was != published.as_ref().map(|r| (r.master, r.generation)) {
                    tx.send_replace(published);
                    // Data paths outside tokio look at their cut tokens and queued clients now.
                    on_change();
                } else if view.hold == Some(Hold::Switchover) {
                    on_change(); // a cut without a change of route
                }
                applied_tx.send_replace(Some(view));
                let until = drain_cut.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
                tokio::select! {
                    changed = views.changed() => if changed.is_err() { break },
                    _ = tokio::time::sleep_until(until), if drain_cut.is_some() => {
                        if let Some(r) = &route {
                            tracing::warn!(%service, master = %r.master, ?drain,
                                "drain time is up: cutting the sessions left on the drained master");
                            drain_flag.store(true, Ordering::Relaxed);
                            r.cut.cancel();
                            on_change();
                        }
                        drain_cut = Some(Instant::now() + Duration::from_secs(86_400 * 365));
                    }
                    _ = shutdown.cancelled() => break,
                }
            }
        });
        Router {
            routes: rx,
            drain_cut: drain_cut_flag,
            applied,
        }
    }

    /// Waits (2 s at most) until the router has acted on `view` or a later one: new sessions
    /// see its route or hold, and the sessions it cuts are told. An operator's request answers
    /// after this, so that once it says "drain", no new session reaches the server.
    pub async fn caught_up(&self, view: health::MasterView) {
        let mut rx = self.applied.clone();
        let done = |v: &Option<health::MasterView>| {
            v.is_some_and(|v| v == view || v.generation > view.generation)
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), rx.wait_for(done)).await;
    }

    /// Whether a session cut just now was cut because its drained master's drain time was up.
    pub fn drain_cut(&self) -> bool {
        self.drain_cut.load(Ordering::Relaxed)
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
