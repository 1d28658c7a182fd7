//! The running checks of one service: a tokio task per server, and one following the
//! Sentinels. Task plumbing only: every fact goes to the service's [`Decider`], which decides
//! who the master is; what it decides is logged here and published through a `watch` channel.
//! The check loop of each server is in [`checks`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use std::collections::HashMap;

use crate::decider::{AdminState, Counters, Decider, MasterView, Outcome, Policy};
use crate::histogram::{Histogram, Snapshot};
use crate::info::Role;
use crate::plain::OrNone;
use crate::ratelimit::RateLimit;
use crate::schedule::{Schedule, ServerHealth, ServerState};
use crate::sentinel::{SentinelConfig, SentinelReport, SentinelView, Sentinels};
use crate::tcpcheck::Program;

mod checks;
use checks::check_loop;

/// What the last checks of a server said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStatus {
    /// The server checked.
    pub addr: SocketAddr,
    /// Where the server stands in rise/fall (routable while [`ServerState::is_up`]).
    pub state: ServerState,
    /// When `state` last changed (up, down, rising, falling), or the server was added.
    pub state_since: Instant,
    /// The last check failed only in that the server answered as a replica (the reply the
    /// failed step got says `role:replica`): a healthy standby, not a broken server.
    pub standby: bool,
    /// Whether the last check that ran passed; `None` before the first one.
    pub last_ok: Option<bool>,
    /// Why the last check failed; `None` when it passed or none has run.
    pub last_reason: Option<String>,
    /// When the last check ended, counting those that could not run here.
    pub last_check: Option<SystemTime>,
    /// How long the last check that ran took.
    pub last_elapsed: Option<Duration>,
    /// From the INFO reply, when the check saw one.
    pub role: Option<Role>,
    /// Checks that passed, since the monitor started.
    pub checks_ok: u64,
    /// Checks that failed because of the server (or the path to it).
    pub checks_failed: u64,
    /// Checks that could not run because of this host (see [`CheckReport::local`](crate::tcpcheck::CheckReport::local)): they leave
    /// the state as it was.
    pub checks_unknown: u64,
    /// As the operator set it (`ready` unless told otherwise).
    pub admin: AdminState,
}

/// The decider's counters, as the admin listener shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorStats {
    /// Changes of master, to none included (see [`Counters::changes`]).
    pub master_changes: u64,
    /// Episodes of a second server passing the master check (see [`Counters::conflicts`]).
    pub conflicts: u64,
    /// Episodes without a master after having had one (see [`Counters::no_master_episodes`]).
    pub no_master_episodes: u64,
    /// Since when the service has had no master; `None` while it has one.
    pub no_master_since: Option<Instant>,
    /// Addresses a Sentinel quorum reported that are not checked: past `max_servers`.
    pub discovered_over_cap: u64,
    /// When the last new master view (a change of master, to none included) was published;
    /// `None` before the first. Carried over a reload like the counters.
    pub last_master_change: Option<SystemTime>,
}

/// The decider and the servers' statuses, in one lock so that they never disagree on the list
/// of servers (index `i` is the same server in both).
struct Inner {
    decider: Decider,
    servers: Vec<ServerStatus>,
    /// Wakes a server's check loop for an immediate check (same order).
    wake: Vec<Arc<Notify>>,
    /// Each server's rise/fall (same order), here so that a reload can seed it.
    health: Vec<ServerHealth>,
}

struct Shared {
    service: String,
    inner: Mutex<Inner>,
    tx: watch::Sender<MasterView>,
    /// When `tx` last got a new view (see [`MonitorStats::last_master_change`]).
    last_change: Mutex<Option<SystemTime>>,
    /// Check tasks, including those of servers discovered later; aborted with the monitor.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    program: Arc<Program>,
    schedule: Schedule,
    sentinel: Option<SentinelMode>,
    /// The operator's states of servers not yet known (applied when they are added).
    preset: HashMap<SocketAddr, AdminState>,
    /// How long each check that ran took, every server together.
    check_durations: Histogram,
    /// Log lines of the decisions: a flapping server or quorum must not fill the disk.
    conflict_log: RateLimit,
    changed_log: RateLimit,
    sentinel_log: RateLimit,
}

struct SentinelMode {
    view: watch::Receiver<SentinelView>,
    max_servers: usize,
    /// The forwarder's own listeners (see [`SentinelConfig::is_own`]).
    config: SentinelConfig,
}

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
    /// Starts checking `servers` with `program` on `schedule` (first check at once). Without
    /// `sentinel` the checks alone choose the master ([`Policy::Checks`]); with it, the master
    /// is the server a quorum of Sentinels names once its own check passes
    /// ([`Policy::Sentinel`]), and with `servers` empty the servers are those the quorum
    /// reports. `admin` holds the operator's states of servers (a server in `maint` is never
    /// checked). Must be called inside a tokio runtime.
    pub fn spawn(
        service: String,
        servers: Vec<SocketAddr>,
        program: Program,
        schedule: Schedule,
        sentinel: Option<SentinelConfig>,
        admin: HashMap<SocketAddr, AdminState>,
    ) -> Monitor {
        let policy = match sentinel {
            Some(_) => Policy::Sentinel {
                fenced: !servers.is_empty(),
            },
            None => Policy::Checks,
        };
        let sentinels = sentinel
            .as_ref()
            .map(|cfg| Sentinels::spawn(service.clone(), cfg.clone()));
        let (tx, _) = watch::channel(MasterView {
            generation: 0,
            master: None,
            hold: None,
        });
        let shared = Arc::new(Shared {
            service,
            inner: Mutex::new(Inner {
                decider: Decider::new(policy, Instant::now()),
                servers: Vec::new(),
                wake: Vec::new(),
                health: Vec::new(),
            }),
            tx,
            last_change: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
            program: Arc::new(program),
            schedule,
            sentinel: sentinels
                .as_ref()
                .zip(sentinel)
                .map(|(s, config)| SentinelMode {
                    view: s.subscribe(),
                    max_servers: config.max_servers,
                    config,
                }),
            preset: admin,
            check_durations: Histogram::default(),
            conflict_log: RateLimit::default(),
            changed_log: RateLimit::default(),
            sentinel_log: RateLimit::default(),
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

    /// How the Sentinels are reached, when configured.
    pub fn sentinel_config(&self) -> Option<SentinelConfig> {
        self.shared.sentinel.as_ref().map(|sm| sm.config.clone())
    }

    /// What the Sentinels agree on, when configured.
    pub fn sentinel_view(&self) -> Option<SentinelView> {
        self.sentinels.as_ref().map(Sentinels::view)
    }

    /// A receiver of the master view, updated on every change of master.
    pub fn subscribe(&self) -> watch::Receiver<MasterView> {
        self.shared.tx.subscribe()
    }

    /// The master view now.
    pub fn view(&self) -> MasterView {
        *self.shared.tx.borrow()
    }

    /// A snapshot of the servers' statuses, configured ones first, then discovered ones in the
    /// order they were found.
    pub fn servers(&self) -> Vec<ServerStatus> {
        lock(&self.shared.inner).servers.clone()
    }

    /// A snapshot of the decider's counters.
    pub fn stats(&self) -> MonitorStats {
        let inner = lock(&self.shared.inner);
        let c = inner.decider.counters();
        MonitorStats {
            master_changes: c.changes,
            conflicts: c.conflicts,
            no_master_episodes: c.no_master_episodes,
            no_master_since: inner.decider.no_master_since(),
            discovered_over_cap: c.over_cap,
            last_master_change: *lock(&self.shared.last_change),
        }
    }

    /// Each configured Sentinel's last query result (empty without Sentinels).
    pub fn sentinels(&self) -> Vec<SentinelReport> {
        self.sentinels
            .as_ref()
            .map(Sentinels::reports)
            .unwrap_or_default()
    }

    /// Takes over the counters of `old`, the monitor this one replaces (a reload that changed
    /// servers, checks or Sentinels), so that they never go back: the decider's, and the check
    /// counts of every server both know. Finding `old`'s master again is not a change.
    /// With `seed` (the check is the same, so its results mean the same), each server both know
    /// also starts where it stood: up stays up, and the master is chosen at once.
    pub fn carry_counts(&self, old: &Monitor, seed: bool) {
        let (c, master, counts): (Counters, _, Vec<_>) = {
            let o = lock(&old.shared.inner);
            let counts = o
                .servers
                .iter()
                .zip(&o.health)
                .map(|(s, h)| (s.clone(), h.state()))
                .collect();
            let conflicts = o.decider.in_conflict();
            (
                o.decider.counters(),
                (o.decider.view().master, conflicts),
                counts,
            )
        };
        let mut inner = lock(&self.shared.inner);
        inner.decider.carry(c, master.0, &master.1);
        let now = Instant::now();
        for (old, state) in counts {
            let Some(i) = inner.servers.iter().position(|s| s.addr == old.addr) else {
                continue;
            };
            let s = &mut inner.servers[i];
            s.checks_ok += old.checks_ok;
            s.checks_failed += old.checks_failed;
            s.checks_unknown += old.checks_unknown;
            if !seed || s.admin == AdminState::Maint || old.last_ok.is_none() {
                continue;
            }
            s.state = state;
            s.state_since = old.state_since;
            s.standby = old.standby;
            s.last_ok = old.last_ok;
            s.last_reason = old.last_reason;
            s.role = old.role;
            inner.health[i] = ServerHealth::resume(&self.shared.schedule, state);
            let up = inner.health[i].is_up();
            let out = inner.decider.checked(i, up, old.last_ok == Some(true), now);
            publish(&self.shared, out);
        }
        drop(inner);
        self.shared.check_durations.add(&old.check_durations());
        let old_change = *lock(&old.shared.last_change);
        let mut mine = lock(&self.shared.last_change);
        if mine.is_none() {
            *mine = old_change;
        }
    }

    /// How long the checks that ran took (those that could not run here are not counted).
    pub fn check_durations(&self) -> Snapshot {
        self.shared.check_durations.snapshot()
    }

    /// The operator sets `server` to `state`; returns the state it had, or `None` when the
    /// server is not one of this service's (configured or discovered).
    pub fn set_admin(&self, server: SocketAddr, state: AdminState) -> Option<AdminState> {
        let mut inner = lock(&self.shared.inner);
        let i = inner.servers.iter().position(|s| s.addr == server)?;
        let was = inner.servers[i].admin;
        inner.servers[i].admin = state;
        if state == AdminState::Maint && inner.servers[i].state != ServerState::Down {
            inner.servers[i].state = ServerState::Down;
            inner.servers[i].state_since = Instant::now();
        }
        let out = inner.decider.set_admin(i, state, Instant::now());
        if was == AdminState::Maint && state != AdminState::Maint {
            inner.wake[i].notify_one(); // its checks resume now
        }
        if was != state {
            let service = &self.shared.service;
            tracing::warn!(%service, %server, state = state.as_str(), was = was.as_str(),
                "server state set by the operator");
        }
        publish(&self.shared, out);
        Some(was)
    }

    /// Starts a planned switchover away from the current master (`true`: it takes no new
    /// sessions and its sessions are cut until another server is the master), or gives it up
    /// (`false`). Returns `false` when starting without a master or while one runs.
    pub fn switchover(&self, start: bool) -> bool {
        let mut inner = lock(&self.shared.inner);
        let (ok, out) = inner.decider.switchover(start, Instant::now());
        publish(&self.shared, out);
        ok
    }

    /// Why the master the Sentinels name is not routed to, while that is so (e.g. "the Sentinel
    /// quorum names 10.0.0.9:6379, which is not in servers: no master").
    pub fn note(&self) -> Option<String> {
        lock(&self.shared.inner).decider.note().map(str::to_string)
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
        let mut inner = lock(&shared.inner);
        let Some(index) = inner.decider.add(addr) else {
            return;
        };
        inner.servers.push(ServerStatus {
            addr,
            state: ServerState::Down,
            state_since: Instant::now(),
            standby: false,
            last_ok: None,
            last_reason: None,
            last_check: None,
            last_elapsed: None,
            role: None,
            checks_ok: 0,
            checks_failed: 0,
            checks_unknown: 0,
            admin: AdminState::Ready,
        });
        inner.wake.push(Arc::new(Notify::new()));
        inner.health.push(ServerHealth::new(&shared.schedule));
        if let Some(state) = shared.preset.get(&addr) {
            inner.servers[index].admin = *state;
            let out = inner.decider.set_admin(index, *state, Instant::now());
            publish(shared, out);
        }
        index
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

/// Logs what the decider decided and publishes a new view. Called with the lock held, so that
/// views are published in the order of their generations.
fn publish(shared: &Shared, out: Outcome) {
    let service = &shared.service;
    let named = shared.sentinel.as_ref().map(|sm| sm.view.borrow().master);
    for server in out.conflicts {
        shared.conflict_log.log(|suppressed| match named {
            None => tracing::warn!(%service, %server, master = %OrNone(shared.tx.borrow().master), suppressed,
                "a second server passes the master check; keeping the current master (split brain avoided)"),
            Some(named) => tracing::warn!(%service, %server, sentinel_master = %OrNone(named), suppressed,
                "server passes the master check but the Sentinels name another; not routing to it"),
        });
    }
    if let Some(note) = out.note {
        shared.sentinel_log.log(|suppressed| {
            tracing::error!(%service, suppressed, "{note}");
        });
    }
    if let Some(view) = out.view {
        if shared.tx.borrow().master != view.master {
            shared.changed_log.log(|suppressed| {
                tracing::warn!(%service, master = %OrNone(view.master), generation = view.generation,
                    sentinel_master = %OrNone(named.flatten()), suppressed, "master changed");
            });
            *lock(&shared.last_change) = Some(SystemTime::now());
        }
        if view.hold != shared.tx.borrow().hold {
            tracing::info!(%service, master = %OrNone(view.master),
                hold = view.hold.map_or("none", |h| h.as_str()), "master takes new sessions: {}",
                if view.hold.is_some() { "no (held)" } else { "yes" });
        }
        shared.tx.send_replace(view);
    }
}

/// Tells the decider whom the Sentinels name whenever their view changes, checking the newly
/// named master at once rather than at its next interval, and starts checking servers the
/// Sentinels report (unless `servers` was configured).
async fn follow_sentinels(
    shared: Arc<Shared>,
    mut view: watch::Receiver<SentinelView>,
    mut discovered: watch::Receiver<Vec<SocketAddr>>,
) {
    let Some(sm) = &shared.sentinel else {
        return;
    };
    loop {
        let found = discovered.borrow_and_update().clone();
        let fenced = matches!(
            lock(&shared.inner).decider.policy(),
            Policy::Sentinel { fenced: true }
        );
        if !fenced {
            for addr in found {
                discover(&shared, sm, addr);
            }
        }
        let named = view.borrow_and_update().master;
        {
            let mut inner = lock(&shared.inner);
            if let Some(i) = named.and_then(|m| inner.servers.iter().position(|s| s.addr == m)) {
                inner.wake[i].notify_one();
            }
            let out = inner.decider.named(named, Instant::now());
            publish(&shared, out);
        }
        tokio::select! {
            r = view.changed() => if r.is_err() { return },
            r = discovered.changed() => if r.is_err() { return },
        }
    }
}

/// A server a Sentinel quorum reports: checked from now on, unless it is known, one of our own
/// listeners, or past `max_servers`.
fn discover(shared: &Arc<Shared>, sm: &SentinelMode, addr: SocketAddr) {
    let service = &shared.service;
    let count = {
        let mut inner = lock(&shared.inner);
        if inner.decider.knows(addr) {
            return;
        }
        if sm.config.is_own(addr) {
            shared.sentinel_log.log(|suppressed| {
                tracing::error!(%service, server = %addr, suppressed,
                    "a Sentinel quorum names one of our own listeners; not checking it");
            });
            return;
        }
        if inner.decider.len() >= sm.max_servers {
            if inner.decider.over_cap(addr) {
                shared.sentinel_log.log(|suppressed| {
                    tracing::warn!(%service, server = %addr, max_servers = sm.max_servers, suppressed,
                        "a Sentinel quorum reports more servers than max_servers; not checking this one");
                });
            }
            return;
        }
        inner.decider.len()
    };
    tracing::info!(%service, server = %addr, servers = count + 1,
        "server discovered through Sentinel (reported by a quorum)");
    add_server(shared, addr);
}

#[cfg(test)]
mod tests {
    use super::*;
    use harness::Redis;

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
        let a = Redis::start();
        let b = Redis::start_with(&["--replicaof", "127.0.0.1", &a.port.to_string()]);
        let m = Monitor::spawn(
            "test".into(),
            vec![b.addr(), a.addr()],
            Program::redis_master(None),
            fast(),
            None,
            HashMap::new(),
        );
        let before = SystemTime::now();
        assert_eq!(m.stats().last_master_change, None, "no master yet");
        let v1 = wait_for(&m, a.addr()).await;
        let first = m
            .stats()
            .last_master_change
            .expect("recorded with the first master");
        assert!(first >= before);
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

        b.replicaof(None);
        a.replicaof(Some(&b));
        let v2 = wait_for(&m, b.addr()).await;
        assert!(v2.generation > v1.generation);
        assert!(m.stats().master_changes >= 2);
        assert!(m.stats().last_master_change.unwrap() >= first);
    }
}
