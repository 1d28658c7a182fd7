//! The check loop of one server: run the program, feed rise/fall, the status and the decider,
//! wait (less while rising or falling), pause while the server is in `maint`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::{lock, publish, Shared};
use crate::decider::AdminState;
use crate::info::{self, Role};
use crate::ratelimit::RateLimit;
use crate::schedule::{Schedule, ServerHealth, Transition};
use crate::tcpcheck::{CheckReport, Program};

/// Up to 10% of `d`, so the checks of many servers do not run in lockstep.
fn jitter(d: Duration) -> Duration {
    let max = u64::try_from(d.as_micros() / 10).unwrap_or(u64::MAX);
    if max == 0 {
        return Duration::ZERO;
    }
    Duration::from_micros(rand::random_range(0..max))
}

/// The role named in a check's replies: a whole `INFO replication` reply (the redis-master
/// check waits for one); for a replica, the failed step's data.
fn role_of(report: &CheckReport) -> Option<Role> {
    report
        .replies
        .iter()
        .chain(std::iter::once(&report.partial))
        .find_map(|bytes| info::reply_role(bytes).ok())
}

pub(super) async fn check_loop(
    shared: Arc<Shared>,
    program: Arc<Program>,
    schedule: Schedule,
    index: usize,
    addr: SocketAddr,
) {
    let (local_log, flap_log) = (RateLimit::default(), RateLimit::default());
    let delay = |shared: &Shared| {
        lock(&shared.inner)
            .health
            .get(index)
            .map_or(schedule.interval, |h| h.next_delay(&schedule))
    };
    loop {
        if admin_of(&shared, index) == AdminState::Maint {
            // Not checked while in maintenance; down (needing `rise`) when it comes back.
            let wake = {
                let mut inner = lock(&shared.inner);
                if let Some(h) = inner.health.get_mut(index) {
                    *h = ServerHealth::new(&schedule);
                }
                inner.wake.get(index).cloned()
            };
            if let Some(w) = wake {
                w.notified().await;
            }
            continue;
        }
        let report = program.run(addr, schedule.timeout).await;
        if admin_of(&shared, index) == AdminState::Maint {
            continue; // set to maint while this check ran: its result says nothing
        }
        if report.local {
            // Our own shortage (EMFILE under a client flood, say) says nothing about the
            // server: its state, rise/fall and the route stay as they are.
            if let Some(s) = lock(&shared.inner).servers.get_mut(index) {
                s.checks_unknown += 1;
                s.last_check = Some(SystemTime::now());
            }
            local_log.log(|suppressed| {
                tracing::warn!(service = %shared.service, server = %addr, suppressed,
                    reason = report.reason.as_deref().unwrap_or("-"),
                    "check could not run here; the server keeps its state");
            });
            sleep_or_wake(&shared, index, delay(&shared)).await;
            continue;
        }
        shared.check_durations.record(report.elapsed);
        if !observe(&shared, index, addr, &report, &flap_log) {
            return;
        }
        sleep_or_wake(&shared, index, delay(&shared)).await;
    }
}

/// Feeds one check result (that ran) into server `index`'s rise/fall, status and the decider;
/// `false` when the server is gone.
fn observe(
    shared: &Shared,
    index: usize,
    addr: SocketAddr,
    report: &CheckReport,
    flap_log: &RateLimit,
) -> bool {
    let mut inner = lock(&shared.inner);
    let Some(health) = inner.health.get_mut(index) else {
        return false;
    };
    let transition = health.observe(report.ok);
    let (state, up) = (health.state(), health.is_up());
    if let Some(t) = transition {
        let service = &shared.service;
        flap_log.log(|suppressed| match t {
            Transition::WentUp => {
                tracing::info!(%service, server = %addr, suppressed, "server is UP")
            }
            Transition::WentDown => tracing::warn!(%service, server = %addr, suppressed,
                reason = report.reason.as_deref().unwrap_or("-"), "server is DOWN"),
        });
    }
    if let Some(s) = inner.servers.get_mut(index) {
        if s.state.as_str() != state.as_str() {
            s.state_since = Instant::now();
        }
        s.state = state;
        s.standby =
            !report.ok && info::reply_role(&report.partial).is_ok_and(|r| r == Role::Replica);
        s.last_ok = Some(report.ok);
        s.last_reason.clone_from(&report.reason);
        s.last_check = Some(SystemTime::now());
        s.last_elapsed = Some(report.elapsed);
        if let Some(role) = role_of(report) {
            s.role = Some(role);
        } else if !report.ok && report.failed_step == Some(0) {
            s.role = None;
        }
        if report.ok {
            s.checks_ok += 1;
        } else {
            s.checks_failed += 1;
        }
    }
    let out = inner.decider.checked(index, up, report.ok, Instant::now());
    publish(shared, out);
    true
}

/// The operator's state of server `index`.
fn admin_of(shared: &Shared, index: usize) -> AdminState {
    lock(&shared.inner)
        .servers
        .get(index)
        .map_or(AdminState::Ready, |s| s.admin)
}

/// Waits `delay` (plus jitter) or until server `index` is woken for an immediate check.
async fn sleep_or_wake(shared: &Shared, index: usize, delay: Duration) {
    let wake = lock(&shared.inner)
        .wake
        .get(index)
        .cloned()
        .unwrap_or_default();
    tokio::select! {
        _ = tokio::time::sleep(delay.saturating_add(jitter(delay))) => {}
        _ = wake.notified() => {}
    }
}
