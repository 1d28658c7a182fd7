//! The running checks of one service: a tokio task per server, feeding the [`Selector`] and
//! publishing the master through a `watch` channel.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::info::{self, Role};
use crate::ratelimit::RateLimit;
use crate::schedule::{Schedule, ServerHealth, ServerState, Transition};
use crate::selector::{MasterView, Selector};
use crate::sentinel::{SentinelConfig, SentinelView, Sentinels};
use crate::tcpcheck::{CheckReport, Program};

/// What the last checks of a server said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStatus {
    pub addr: SocketAddr,
    pub state: ServerState,
    pub last_ok: Option<bool>,
    pub last_reason: Option<String>,
    pub last_check: Option<SystemTime>,
    pub last_elapsed: Option<Duration>,
    /// From the INFO reply, when the check saw one.
    pub role: Option<Role>,
    pub checks_ok: u64,
    pub checks_failed: u64,
    /// Checks that could not run because of this host (see [`CheckReport::local`]): they leave
    /// the state as it was.
    pub checks_unknown: u64,
}

/// Selector counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorStats {
    pub master_changes: u64,
    pub conflicts: u64,
    pub no_master_since: Option<Instant>,
    /// Addresses a Sentinel quorum reported that are not checked: past `max_servers`.
    pub discovered_over_cap: u64,
}

struct Shared {
    service: String,
    selector: Mutex<Selector>,
    servers: Mutex<Vec<ServerStatus>>,
    tx: watch::Sender<MasterView>,
    /// Wakes a server's check loop for an immediate check (one per server, same order).
    wake: Mutex<Vec<Arc<Notify>>>,
    /// Check tasks, including those of servers discovered later; aborted with the monitor.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    program: Arc<Program>,
    schedule: Schedule,
    /// With Sentinel configured, the master is chosen by `decide_with_sentinel` instead of the
    /// selector.
    sentinel: Option<SentinelMode>,
}

struct SentinelMode {
    view: watch::Receiver<SentinelView>,
    decision: Mutex<Decision>,
    /// `servers` was configured: only those are checked and routed to, whatever the Sentinels
    /// say; nothing is discovered.
    fenced: bool,
    max_servers: usize,
    /// The forwarder's own listeners (see [`SentinelConfig::is_own`]).
    config: SentinelConfig,
    /// The decision's log lines: a flapping quorum must not fill the disk.
    log: RateLimit,
    changed_log: RateLimit,
}

#[derive(Default)]
struct Decision {
    no_master_since: Option<Instant>,
    generation: u64,
    changes: u64,
    /// Per server: passes the master check while the Sentinels name another.
    disagreeing: Vec<bool>,
    disagreements: u64,
    /// Why the Sentinels' master is not routed to, while that is so.
    note: Option<String>,
    /// Reported addresses not checked because `max_servers` is reached (the first
    /// `OVER_CAP_KEPT` of them, to count each once), and how many in all.
    over_cap: std::collections::HashSet<SocketAddr>,
    over_cap_count: u64,
}

/// Over-cap addresses remembered one by one; past this many, each report is counted again.
const OVER_CAP_KEPT: usize = 4096;

/// Health checks of one service's servers. Dropping it stops them.
pub struct Monitor {
    shared: Arc<Shared>,
    sentinels: Option<Sentinels>,
}

/// Locks, recovering from a poisoned lock: the data is plain counters and states.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Monitor {
    /// Starts checking `servers` with `program` on `schedule` (first check at once). Must be
    /// called inside a tokio runtime.
    pub fn spawn(
        service: String,
        servers: Vec<SocketAddr>,
        program: Program,
        schedule: Schedule,
    ) -> Monitor {
        Monitor::spawn_with(service, servers, program, schedule, None)
    }

    /// Like `spawn`; with `sentinel`, the master is the server a quorum of Sentinels names, once
    /// its own check passes (see `decide_with_sentinel`).
    pub fn spawn_with(
        service: String,
        servers: Vec<SocketAddr>,
        program: Program,
        schedule: Schedule,
        sentinel: Option<SentinelConfig>,
    ) -> Monitor {
        let fenced = !servers.is_empty();
        let sentinels = sentinel
            .as_ref()
            .map(|cfg| Sentinels::spawn(service.clone(), cfg.clone()));
        let (tx, _) = watch::channel(MasterView {
            generation: 0,
            master: None,
        });
        let shared = Arc::new(Shared {
            service,
            selector: Mutex::new(Selector::new(servers.clone(), Instant::now())),
            servers: Mutex::new(Vec::new()),
            tx,
            wake: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
            program: Arc::new(program),
            schedule,
            sentinel: sentinels
                .as_ref()
                .zip(sentinel)
                .map(|(s, config)| SentinelMode {
                    view: s.subscribe(),
                    decision: Mutex::new(Decision {
                        no_master_since: Some(Instant::now()),
                        ..Decision::default()
                    }),
                    fenced,
                    max_servers: config.max_servers,
                    config,
                    log: RateLimit::default(),
                    changed_log: RateLimit::default(),
                }),
        });
        for addr in servers {
            add_server(&shared, addr);
        }
        if let Some(s) = &sentinels {
            let t = tokio::spawn(follow_sentinels(
                Arc::clone(&shared),
                s.subscribe(),
                s.discovered(),
            ));
            lock(&shared.tasks).push(t);
        }
        Monitor { shared, sentinels }
    }

    /// What the Sentinels agree on, when configured.
    pub fn sentinel_view(&self) -> Option<SentinelView> {
        self.sentinels.as_ref().map(Sentinels::view)
    }

    pub fn subscribe(&self) -> watch::Receiver<MasterView> {
        self.shared.tx.subscribe()
    }

    pub fn view(&self) -> MasterView {
        *self.shared.tx.borrow()
    }

    pub fn servers(&self) -> Vec<ServerStatus> {
        lock(&self.shared.servers).clone()
    }

    pub fn stats(&self) -> MonitorStats {
        let s = lock(&self.shared.selector);
        if let Some(sm) = &self.shared.sentinel {
            let d = lock(&sm.decision);
            return MonitorStats {
                master_changes: d.changes,
                conflicts: d.disagreements,
                no_master_since: d.no_master_since,
                discovered_over_cap: d.over_cap_count,
            };
        }
        MonitorStats {
            master_changes: s.changes(),
            conflicts: s.conflicts(),
            no_master_since: s.no_master_since(),
            discovered_over_cap: 0,
        }
    }

    /// Why the master the Sentinels name is not routed to, while that is so (e.g. "the Sentinel
    /// quorum names 10.0.0.9:6379, which is not in servers: no master").
    pub fn note(&self) -> Option<String> {
        let sm = self.shared.sentinel.as_ref()?;
        lock(&sm.decision).note.clone()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        for t in lock(&self.shared.tasks).iter() {
            t.abort();
        }
    }
}

/// Starts checking `addr` (once; a known address is ignored).
fn add_server(shared: &Arc<Shared>, addr: SocketAddr) {
    let index = {
        let mut servers = lock(&shared.servers);
        if servers.iter().any(|s| s.addr == addr) {
            return;
        }
        servers.push(ServerStatus {
            addr,
            state: ServerState::Down,
            last_ok: None,
            last_reason: None,
            last_check: None,
            last_elapsed: None,
            role: None,
            checks_ok: 0,
            checks_failed: 0,
            checks_unknown: 0,
        });
        lock(&shared.wake).push(Arc::new(Notify::new()));
        servers.len() - 1
    };
    let t = tokio::spawn(check_loop(
        Arc::clone(shared),
        Arc::clone(&shared.program),
        shared.schedule,
        index,
        addr,
    ));
    lock(&shared.tasks).push(t);
}

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

async fn check_loop(
    shared: Arc<Shared>,
    program: Arc<Program>,
    schedule: Schedule,
    index: usize,
    addr: SocketAddr,
) {
    let mut health = ServerHealth::new(&schedule);
    let (local_log, flap_log) = (RateLimit::default(), RateLimit::default());
    loop {
        let report = program.run(addr, schedule.timeout).await;
        if report.local {
            // Our own shortage (EMFILE under a client flood, say) says nothing about the
            // server: its state, rise/fall and the route stay as they are.
            if let Some(s) = lock(&shared.servers).get_mut(index) {
                s.checks_unknown += 1;
                s.last_check = Some(SystemTime::now());
            }
            local_log.log(|suppressed| {
                tracing::warn!(service = %shared.service, server = %addr, suppressed,
                    reason = report.reason.as_deref().unwrap_or("-"),
                    "check could not run here; the server keeps its state");
            });
            sleep_or_wake(&shared, index, health.next_delay(&schedule)).await;
            continue;
        }
        let transition = health.observe(report.ok);
        {
            let mut servers = lock(&shared.servers);
            if let Some(s) = servers.get_mut(index) {
                s.state = health.state();
                s.last_ok = Some(report.ok);
                s.last_reason.clone_from(&report.reason);
                s.last_check = Some(SystemTime::now());
                s.last_elapsed = Some(report.elapsed);
                if let Some(role) = role_of(&report) {
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
        }
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
        if let Some(sm) = &shared.sentinel {
            decide_with_sentinel(&shared, sm);
        } else if transition.is_some() {
            let service = &shared.service;
            let update = lock(&shared.selector).update(index, health.is_up(), Instant::now());
            if let Some(other) = update.conflict {
                tracing::warn!(%service, server = %other, master = ?shared.tx.borrow().master,
                    "a second server passes the master check; keeping the current master (split brain avoided)");
            }
            if let Some(view) = update.view {
                tracing::warn!(%service, master = ?view.master, generation = view.generation, "master changed");
                shared.tx.send_replace(view);
            }
        }
        sleep_or_wake(&shared, index, health.next_delay(&schedule)).await;
    }
}

/// Waits `delay` (plus jitter) or until server `index` is woken for an immediate check.
async fn sleep_or_wake(shared: &Shared, index: usize, delay: Duration) {
    let wake = lock(&shared.wake).get(index).cloned().unwrap_or_default();
    tokio::select! {
        _ = tokio::time::sleep(delay.saturating_add(jitter(delay))) => {}
        _ = wake.notified() => {}
    }
}

/// Re-decides whenever the Sentinels' view changes, checking the newly named master at once
/// rather than at its next interval, and starts checking servers the Sentinels report.
async fn follow_sentinels(
    shared: Arc<Shared>,
    mut view: watch::Receiver<SentinelView>,
    mut discovered: watch::Receiver<Vec<SocketAddr>>,
) {
    loop {
        tokio::select! {
            r = view.changed() => if r.is_err() { return },
            r = discovered.changed() => if r.is_err() { return },
        }
        let found = discovered.borrow_and_update().clone();
        if let Some(sm) = shared.sentinel.as_ref().filter(|sm| !sm.fenced) {
            for addr in found {
                let (known, count) = {
                    let servers = lock(&shared.servers);
                    (servers.iter().any(|s| s.addr == addr), servers.len())
                };
                if known {
                    continue;
                }
                if sm.config.is_own(addr) {
                    sm.log.log(|suppressed| {
                        tracing::error!(service = %shared.service, server = %addr, suppressed,
                            "a Sentinel quorum names one of our own listeners; not checking it");
                    });
                    continue;
                }
                if count >= sm.max_servers {
                    let mut d = lock(&sm.decision);
                    let full = d.over_cap.len() >= OVER_CAP_KEPT;
                    if full || d.over_cap.insert(addr) {
                        d.over_cap_count += 1;
                        sm.log.log(|suppressed| {
                            tracing::warn!(service = %shared.service, server = %addr,
                                max_servers = sm.max_servers, suppressed,
                                "a Sentinel quorum reports more servers than max_servers; not checking this one");
                        });
                    }
                    continue;
                }
                tracing::info!(service = %shared.service, server = %addr,
                    "server discovered through Sentinel (reported by a quorum)");
                add_server(&shared, addr);
            }
        }
        let named = view.borrow_and_update().master;
        if let Some(i) = named.and_then(|m| lock(&shared.servers).iter().position(|s| s.addr == m))
        {
            if let Some(w) = lock(&shared.wake).get(i) {
                w.notify_one();
            }
        }
        if let Some(sm) = &shared.sentinel {
            decide_with_sentinel(&shared, sm);
        }
    }
}

/// The Sentinel rule: route to the server a quorum of Sentinels names while its own checks say it
/// is the master: up by rise/fall, or, for a server just named, as soon as one check passes (for
/// a Redis service: it says `role:master`), so a failover is not delayed by `rise`. A server that passes while
/// the Sentinels name another (an old master restarted, not yet demoted) is never routed to;
/// that is logged and counted once per episode. A named server that is not checked is not routed
/// to either: with `servers` configured, traffic never leaves that list.
fn decide_with_sentinel(shared: &Shared, sm: &SentinelMode) {
    let named = sm.view.borrow().master;
    let servers = lock(&shared.servers);
    let master = named.filter(|m| {
        servers
            .iter()
            .any(|s| s.addr == *m && (s.state.is_up() || s.last_ok == Some(true)))
    });
    let mut d = lock(&sm.decision);
    let unchecked = named.filter(|m| !servers.iter().any(|s| s.addr == *m));
    let note = unchecked.and_then(|m| {
        if sm.fenced {
            Some(format!(
                "the Sentinel quorum names {m}, which is not in servers: no master"
            ))
        } else if d.over_cap.contains(&m) {
            Some(format!(
                "the Sentinel quorum names {m}, which is not checked (past max_servers): no master"
            ))
        } else {
            None // reported a moment before it is discovered: it will be checked
        }
    });
    if note.is_some() && note != d.note {
        sm.log.log(|suppressed| {
            tracing::error!(service = %shared.service, suppressed, "{}", note.as_deref().unwrap_or_default());
        });
    }
    d.note = note;
    d.disagreeing.resize(servers.len(), false);
    for (i, s) in servers.iter().enumerate() {
        let disagrees = s.last_ok == Some(true) && Some(s.addr) != named;
        if disagrees && !d.disagreeing[i] {
            d.disagreements += 1;
            sm.log.log(|suppressed| {
                tracing::warn!(service = %shared.service, server = %s.addr, sentinel_master = ?named,
                    suppressed, "server passes the master check but the Sentinels name another; not routing to it");
            });
        }
        d.disagreeing[i] = disagrees;
    }
    drop(servers);
    if shared.tx.borrow().master != master {
        d.generation += 1;
        d.changes += 1;
        d.no_master_since = match master {
            Some(_) => None,
            None => Some(Instant::now()),
        };
        let view = MasterView {
            generation: d.generation,
            master,
        };
        sm.changed_log.log(|suppressed| {
            tracing::warn!(service = %shared.service, master = ?view.master,
                generation = view.generation, sentinel_master = ?named, suppressed, "master changed");
        });
        shared.tx.send_replace(view);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::RedisServer;

    fn fast() -> Schedule {
        Schedule {
            interval: Duration::from_millis(100),
            fastinter: None,
            downinter: None,
            rise: 1,
            fall: 1,
            timeout: Duration::from_millis(500),
        }
    }

    async fn wait_for(m: &Monitor, want: SocketAddr) -> MasterView {
        for _ in 0..100 {
            let v = m.view();
            if v.master == Some(want) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "master never became {want}: {:?} {:?}",
            m.view(),
            m.servers()
        );
    }

    #[tokio::test]
    async fn follows_a_manual_failover() {
        let a = RedisServer::start(&[]);
        let b = RedisServer::start(&["--replicaof", "127.0.0.1", &a.port.to_string()]);
        let m = Monitor::spawn(
            "test".into(),
            vec![b.addr(), a.addr()],
            Program::redis_master(None),
            fast(),
        );
        let v1 = wait_for(&m, a.addr()).await;
        for _ in 0..100 {
            if m.servers().iter().all(|s| s.role.is_some()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let servers = m.servers();
        assert_eq!(servers[0].role, Some(Role::Replica));
        assert_eq!(servers[1].role, Some(Role::Master));
        assert!(servers[1].checks_ok >= 1);

        b.cmd(&["REPLICAOF", "NO", "ONE"]);
        a.cmd(&["REPLICAOF", "127.0.0.1", &b.port.to_string()]);
        let v2 = wait_for(&m, b.addr()).await;
        assert!(v2.generation > v1.generation);
        assert!(m.stats().master_changes >= 2);
    }
}
