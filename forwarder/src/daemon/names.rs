//! Following host names: the servers and Sentinels written as `host:port` are resolved again
//! every `resolve_interval`, and sooner (at most every [`AFTER_DOWN`]) while one of a service's
//! named servers is down or one of its named Sentinels unreachable — the usual sign that the
//! name moved.
//!
//! Resolving again is validating the configuration text the daemon runs again (not the file,
//! which may have changed since): the new addresses pass the same rules as at start. A service
//! whose names now resolve differently is changed by [`Daemon::apply`], exactly as a reload
//! that changes its `servers` would: new clients get the new address, established sessions keep
//! their route, counters carry over. A name that no longer resolves changes nothing (logged
//! once until it resolves again).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{lock, Daemon, ReloadError};
use crate::budget;
use crate::config::{Config, Service};

/// The shortest time between two resolutions of one service's names when they are resolved
/// early (a named server down).
pub(super) const AFTER_DOWN: Duration = Duration::from_secs(5);

/// Resolves names again when they are due, until shutdown.
pub(super) async fn follow(daemon: Arc<Daemon>) {
    let mut last: HashMap<String, Instant> = HashMap::new();
    let mut last_error: Option<String> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = daemon.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let due = due(&daemon, &mut last);
        if due.is_empty() {
            continue;
        }
        match daemon.resolve_again(&due).await {
            Ok(()) => last_error = None,
            Err(e) => {
                let e = e.to_string();
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!(services = ?due, "resolving names again failed, addresses kept: {e}");
                    last_error = Some(e);
                }
            }
        }
    }
}

/// The services whose names are due, marked as resolved now in `last`. A service seen for the
/// first time was resolved just now (at start or by a reload).
fn due(daemon: &Daemon, last: &mut HashMap<String, Instant>) -> Vec<String> {
    let now = Instant::now();
    let live = lock(&daemon.live);
    last.retain(|name, _| live.iter().any(|l| &l.handle.config.name == name));
    let mut due = Vec::new();
    for l in live.iter() {
        let svc = &l.handle.config;
        if svc.resolved.is_empty() {
            continue;
        }
        let since = now - *last.entry(svc.name.clone()).or_insert(now);
        let early = since >= AFTER_DOWN && named_peer_down(svc, &l.handle.monitor);
        if since >= svc.resolve_interval || early {
            last.insert(svc.name.clone(), now);
            due.push(svc.name.clone());
        }
    }
    due
}

/// Whether a server written as a name failed its last check while down, or a Sentinel written
/// as a name did not answer.
fn named_peer_down(svc: &Service, monitor: &health::Monitor) -> bool {
    let server_down = monitor.servers().iter().any(|s| {
        s.state == health::ServerState::Down
            && s.last_ok == Some(false)
            && svc
                .resolved
                .iter()
                .any(|r| r.is_server() && r.address == s.addr)
    });
    let named_sentinels = svc.resolved.iter().any(|r| !r.is_server());
    server_down
        || (named_sentinels
            && monitor
                .sentinel_view()
                .is_some_and(|v| v.reachable < v.configured))
}

impl Daemon {
    /// Validates the running configuration's text again (resolving its names) and applies what
    /// changed for the services in `due`.
    async fn resolve_again(&self, due: &[String]) -> Result<(), ReloadError> {
        let _one = self.reloading.lock().await;
        let source = lock(&self.config).source.clone();
        let path = self.path.clone();
        let mut fresh = tokio::task::spawn_blocking(move || Config::parse(&source, &path))
            .await
            .map_err(|e| ReloadError::Task(e.to_string()))??;
        budget::plan(&mut fresh, self.budget.limit)?;
        let mut next = lock(&self.config).clone();
        let mut changed = false;
        for svc in next.service.iter_mut().filter(|s| due.contains(&s.name)) {
            if let Some(f) = fresh.service.iter().find(|f| f.name == svc.name) {
                if f.resolved != svc.resolved {
                    *svc = f.clone();
                    changed = true;
                }
            }
        }
        if changed {
            self.apply(next, "names resolved again")?;
        }
        Ok(())
    }
}

/// Logs what the names of `new` resolve to that `old` (the same service before, if any) did
/// not: a new name, a new address, several addresses (which one is used).
pub(super) fn log_changes(old: Option<&Service>, new: &Service) {
    for r in &new.resolved {
        let before = old.and_then(|o| {
            o.resolved
                .iter()
                .find(|b| b.key == r.key && b.name == r.name)
        });
        match before {
            None => tracing::info!(service = %new.name, name = %r.name, address = %r.address,
                "name resolved"),
            Some(b) if b.address != r.address => tracing::info!(service = %new.name,
                name = %r.name, old = %b.address, new = %r.address,
                "name resolves to a new address: the service changes as by a reload"),
            Some(_) => {}
        }
        if r.addresses.len() > 1 && before.is_none_or(|b| b.addresses != r.addresses) {
            tracing::info!(service = %new.name, name = %r.name, addresses = ?r.addresses,
                using = %r.address, "name has several addresses; using the first");
        }
    }
}
