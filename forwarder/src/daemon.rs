//! The daemon: turns a validated [`Config`] into running services, applies new configurations
//! (SIGHUP, `POST /reload`) without dropping sessions, and drains on SIGTERM/SIGINT. What the
//! admin listener may ask of it (status, readiness, server states, switchovers) is in
//! [`control`]; host names in the configuration are resolved again in [`names`]; the
//! operator's server states, kept across reloads, are in [`states`].

mod control;
mod names;
mod signals;
mod states;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::budget::{self, Budget};
use crate::config::{Config, ConfigError, Service};
use crate::datapath::DataPath;
use crate::metrics::GlobalStats;
use crate::router::Router;
use crate::service::{self, ServiceRuntime};
use health::plain::Joined;

/// Why a reload was refused; the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file cannot be read, or is not a valid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The new configuration does not fit the open-file limit the daemon started with.
    #[error(transparent)]
    Budget(#[from] budget::BudgetError),
    /// New listen addresses that cannot be served, one line each (nothing was changed).
    #[error("{}", .0.join("; "))]
    Listen(Vec<String>),
    /// The blocking task that read the file (resolving its names) did not finish.
    #[error("reading the configuration failed: {0}")]
    Task(String),
}

/// A running service: its configuration, runtime and checks.
pub struct ServiceHandle {
    /// The service as configured (after budgeting, so `maxconn` is the effective one).
    pub config: Service,
    /// What its connections use now: admission, router, counters, timeouts.
    pub runtime: Arc<ServiceRuntime>,
    /// Shared with the next runtime when a reload leaves servers, checks and Sentinels as they
    /// were: a reload then starts no new checks and forgets no master (the Sentinels may be
    /// unreachable just then).
    pub monitor: Arc<health::Monitor>,
}

/// A service with its listener: the accept loop reads the runtime from `runtime`, so a reload
/// can swap it without closing the listener.
struct Live {
    handle: Arc<ServiceHandle>,
    runtime: watch::Sender<Arc<ServiceRuntime>>,
    accepting: CancellationToken,
}

/// Everything that runs, and what a reload changes.
pub struct Daemon {
    path: PathBuf,
    /// The descriptor plan; a reloaded configuration must fit the same limit.
    budget: Budget,
    config: Mutex<Config>,
    datapath: DataPath,
    /// Why the data path is not the best one `auto` knows, when it fell back.
    fallback: Option<String>,
    global: Arc<GlobalStats>,
    shutdown: CancellationToken,
    live: Mutex<Vec<Live>>,
    /// Services replaced or removed by a reload, kept (with their checks and router, so their
    /// sessions are still cut on a master change) until their last session ends.
    retiring: Mutex<Vec<Arc<ServiceHandle>>>,
    /// One reload at a time; a planned switchover holds it too (no reload while one runs).
    reloading: Arc<tokio::sync::Mutex<()>>,
    /// The operator's server states: they outlive the monitors a reload replaces.
    admin_states: Mutex<states::AdminStates>,
    /// When the daemon started (the uptime in `/status`).
    started: std::time::Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Daemon {
    /// The runtime of `svc`. With `previous` (a reload), its counters carry over, and so do its
    /// checks and routes when servers, checks and Sentinels are unchanged: no new checks start,
    /// no master is forgotten (the Sentinels may be unreachable just then), and old and new
    /// sessions share the route whose cut ends them.
    fn build(&self, svc: &Service, previous: Option<&ServiceHandle>) -> ServiceHandle {
        let stats = previous.map_or_else(Arc::default, |p| Arc::clone(&p.runtime.stats));
        let same_health = |old: &Service| {
            (&old.servers, &old.check, &old.sentinel) == (&svc.servers, &svc.check, &svc.sentinel)
        };
        let kept = previous.filter(|p| same_health(&p.config));
        let sentinel = svc.sentinel.as_ref().map(|s| health::SentinelConfig {
            addresses: s.addresses.clone(),
            master_name: s.master_name.clone(),
            quorum: s.quorum,
            auth: s.password.as_ref().map(|p| health::Auth {
                user: s.user.clone(),
                password: p.clone(),
            }),
            timeout: svc.check.timeout,
            interval: svc.check.interval,
            max_servers: s.max_servers,
            own: self.own_listeners(),
            tls: s.tls.as_ref().map(|t| t.connector.clone()),
        });
        let monitor = kept.map_or_else(
            || {
                let admin = lock(&self.admin_states).of(&svc.name);
                let m = health::Monitor::spawn(
                    svc.name.clone(),
                    svc.servers.clone(),
                    svc.check.program.clone(),
                    svc.check.schedule(),
                    sentinel,
                    admin,
                );
                if let Some(p) = previous {
                    m.carry_counts(&p.monitor, p.config.check == svc.check);
                }
                Arc::new(m)
            },
            |p| Arc::clone(&p.monitor),
        );
        let router = match kept {
            Some(p)
                if p.config.on_master_change == svc.on_master_change
                    && p.config.timeout.drain == svc.timeout.drain =>
            {
                p.runtime.router.clone()
            }
            _ => {
                let datapath = self.datapath.clone();
                Router::spawn(
                    svc.name.clone(),
                    monitor.subscribe(),
                    svc.on_master_change,
                    svc.timeout.drain,
                    self.shutdown.clone(),
                    Arc::new(move || datapath.routes_changed()),
                )
            }
        };
        let runtime = Arc::new(ServiceRuntime::new(
            svc,
            router,
            stats,
            Arc::clone(&self.global),
            self.shutdown.clone(),
        ));
        ServiceHandle {
            config: svc.clone(),
            runtime,
            monitor,
        }
    }

    /// Every address this daemon listens on (services and admin; a wildcard listener on each of
    /// this host's addresses), which no Sentinel may name.
    fn own_listeners(&self) -> Vec<std::net::SocketAddr> {
        let cfg = lock(&self.config);
        let listens: Vec<std::net::SocketAddr> = cfg
            .service
            .iter()
            .map(|s| s.listen)
            .chain(cfg.admin.as_ref().map(|a| a.listen))
            .collect();
        let local = crate::config::local_ips();
        let mut own = listens.clone();
        for l in listens.iter().filter(|l| l.ip().is_unspecified()) {
            own.extend(
                local
                    .iter()
                    .map(|ip| std::net::SocketAddr::new(*ip, l.port())),
            );
        }
        own
    }

    /// Starts accepting on `listeners` (the sockets of one service) for `handle`, the way the
    /// data path accepts.
    fn start(
        &self,
        listeners: Vec<std::net::TcpListener>,
        handle: ServiceHandle,
    ) -> std::io::Result<Live> {
        let handle = Arc::new(handle);
        let (tx, rx) = watch::channel(Arc::clone(&handle.runtime));
        let accepting = CancellationToken::new();
        // TLS done here runs in tokio whatever the data path (see `datapath::tls`).
        let tls = handle.config.tls_mode();
        let path = if tls.in_userspace() {
            &DataPath::Userspace
        } else {
            &self.datapath
        };
        path.listen(listeners, rx, accepting.clone())?;
        tracing::info!(service = %handle.config.name, listen = %handle.config.listen,
            servers = %Joined(&handle.config.servers), datapath = path.name(),
            tls = tls.as_str(), "listening");
        Ok(Live {
            handle,
            runtime: tx,
            accepting,
        })
    }

    /// Re-reads the configuration file and applies it: services added, removed or changed
    /// without dropping sessions; every new listener is bound before anything changes.
    /// systemd (`Type=notify`) is told `RELOADING=1` with the time before, and `READY=1` with a
    /// `STATUS=` saying how it went after, so `systemctl reload` waits for the reload to end.
    pub async fn reload(&self) -> Result<String, ReloadError> {
        let _one = self.reloading.lock().await;
        let mut begin = vec![sd_notify::NotifyState::Reloading];
        match sd_notify::NotifyState::monotonic_usec_now() {
            Ok(now) => begin.push(now),
            Err(e) => tracing::warn!(error = %e, "reading CLOCK_MONOTONIC for systemd"),
        }
        notify(&begin);
        // Off the runtime's threads: validating resolves host names.
        let path = self.path.clone();
        let result = match tokio::task::spawn_blocking(move || Config::load(&path)).await {
            Ok(loaded) => loaded.map_err(ReloadError::from).and_then(|mut cfg| {
                budget::plan(&mut cfg, self.budget.limit)?;
                self.apply(cfg, "reloaded")
            }),
            Err(e) => Err(ReloadError::Task(e.to_string())),
        };
        let status = match &result {
            Ok(_) => "configuration reloaded".to_string(),
            Err(e) => format!("reload refused, the running configuration stays: {e}"),
        };
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&status),
        ]);
        result
    }

    /// Applies a new configuration: services added, removed (their listener closes, their
    /// sessions go on), or changed (servers, checks, Sentinel, allow list, limits, timeouts: a new
    /// runtime takes the next clients; established sessions keep theirs). Every listener is
    /// bound before anything changes, so a port in use refuses the whole reload. The data path
    /// and the admin listener need a restart. `what` starts the summary (`reloaded`).
    fn apply(&self, new: Config, what: &str) -> Result<String, ReloadError> {
        warn_certificates(&new);
        let old = lock(&self.config).clone();
        let mut notes = Vec::new();
        if new.datapath != old.datapath {
            notes.push("[datapath] changes need a restart; kept".to_string());
        }
        if new.admin != old.admin {
            notes.push("[admin] changes need a restart; kept".to_string());
        }
        let mut live = lock(&self.live);
        // Plan, and bind what is new.
        enum Step {
            Keep(usize),
            Swap(usize),
            Add(Vec<std::net::TcpListener>),
        }
        let mut steps = Vec::with_capacity(new.service.len());
        let mut errors = Vec::new();
        for (i, svc) in new.service.iter().enumerate() {
            let cur = live.iter().position(|l| l.handle.config.name == svc.name);
            match cur {
                Some(j) if live[j].handle.config.listen == svc.listen => {
                    let was = live[j].handle.config.tls_mode();
                    if matches!(self.datapath, DataPath::Uring(_))
                        && was.in_userspace() != svc.tls_mode().in_userspace()
                    {
                        errors.push(format!(
                            "service[{i}]: TLS {} -> {}: a service whose TLS is done here is \
                             accepted in tokio, the others on the uring rings; this change \
                             needs a new listen address or a restart",
                            was.as_str(),
                            svc.tls_mode().as_str()
                        ));
                        continue;
                    }
                    if live[j].handle.config == *svc {
                        steps.push(Step::Keep(j));
                    } else {
                        steps.push(Step::Swap(j));
                    }
                }
                _ => {
                    // A new service, or a new address for one. The old listener may hold the
                    // address another service moves to: then it is free only after the swap.
                    let taken = live.iter().any(|l| l.handle.config.listen == svc.listen);
                    if taken {
                        errors.push(format!(
                            "service[{i}].listen: {} is still used by another running service; \
                             move it in two reloads",
                            svc.listen
                        ));
                        continue;
                    }
                    match service::bind_std(
                        svc.listen,
                        self.datapath.listeners_needed(),
                        svc.share_listen,
                    ) {
                        Ok(l) => steps.push(Step::Add(l)),
                        Err(e) => errors.push(format!(
                            "service[{i}].listen: cannot listen on {}: {e}",
                            svc.listen
                        )),
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(ReloadError::Listen(errors));
        }
        // Apply (the new runtimes already know the new set of listeners).
        for svc in &new.service {
            names::log_changes(old.service.iter().find(|o| o.name == svc.name), svc);
        }
        *lock(&self.config) = new.clone();
        lock(&self.admin_states).reload(&old, &new);
        let mut next = Vec::with_capacity(steps.len());
        let mut taken = vec![false; live.len()];
        let mut old_live: Vec<Option<Live>> = live.drain(..).map(Some).collect();
        let (mut kept, mut swapped, mut added) = (0, 0, 0);
        for (step, svc) in steps.into_iter().zip(&new.service) {
            match step {
                Step::Keep(j) => {
                    taken[j] = true;
                    next.push(old_live[j].take().expect("each service once"));
                    kept += 1;
                }
                Step::Swap(j) => {
                    taken[j] = true;
                    let l = old_live[j].take().expect("each service once");
                    // Counters (and the maxconn count of established sessions) carry over.
                    let handle = Arc::new(self.build(svc, Some(&l.handle)));
                    l.runtime.send_replace(Arc::clone(&handle.runtime));
                    lock(&self.retiring).push(Arc::clone(&l.handle));
                    tracing::info!(service = %svc.name, "service reconfigured; established sessions keep their route");
                    next.push(Live {
                        handle,
                        runtime: l.runtime,
                        accepting: l.accepting,
                    });
                    swapped += 1;
                }
                Step::Add(listeners) => {
                    let handle = self.build(svc, None);
                    match self.start(listeners, handle) {
                        Ok(l) => {
                            next.push(l);
                            added += 1;
                        }
                        Err(e) => notes.push(format!("service {:?} not started: {e}", svc.name)),
                    }
                }
            }
        }
        let mut removed = 0;
        for l in old_live.into_iter().flatten() {
            tracing::info!(service = %l.handle.config.name, "service removed: listener closed, sessions go on");
            l.accepting.cancel();
            lock(&self.retiring).push(l.handle);
            removed += 1;
        }
        *live = next;
        drop(live);
        let summary = format!(
            "{what}: {kept} unchanged, {swapped} changed, {added} added, {removed} removed{}",
            notes.iter().map(|n| format!("; {n}")).collect::<String>()
        );
        tracing::info!("{summary}");
        Ok(summary)
    }

    /// Drops retired services whose last session has ended.
    fn reap(&self) {
        lock(&self.retiring).retain(|h| Arc::strong_count(&h.runtime) > 1);
    }

    fn total_active(&self) -> u64 {
        lock(&self.live)
            .iter()
            .map(|l| l.handle.runtime.stats.active.load(Ordering::Relaxed))
            .sum()
    }
}

/// The listening sockets, bound before the runtime starts and privileges are dropped.
pub struct Bound {
    /// Per service, its sockets (one per uring worker when uring may run).
    services: Vec<Vec<std::net::TcpListener>>,
    admin: Option<std::net::TcpListener>,
}

/// Binds every listener: a port in use is a startup error, not a half-started daemon.
pub fn bind(cfg: &Config) -> anyhow::Result<Bound> {
    let mut services = Vec::with_capacity(cfg.service.len());
    let count = DataPath::listeners_planned(&cfg.datapath);
    for (i, svc) in cfg.service.iter().enumerate() {
        let l = service::bind_std(svc.listen, count, svc.share_listen).with_context(|| {
            format!(
                "service[{i}].listen: cannot listen on {} (service {:?})",
                svc.listen, svc.name
            )
        })?;
        services.push(l);
    }
    let admin = match &cfg.admin {
        Some(a) => {
            let l = std::net::TcpListener::bind(a.listen)
                .with_context(|| format!("admin.listen: cannot listen on {}", a.listen))?;
            l.set_nonblocking(true)?;
            Some(l)
        }
        None => None,
    };
    Ok(Bound { services, admin })
}

/// Logs a warning for each certificate expired or expiring within 14 days.
fn warn_certificates(cfg: &Config) {
    for w in cfg.tls_report(std::time::SystemTime::now()).1 {
        tracing::warn!("{w}");
    }
}

/// Runs until SIGTERM or SIGINT; SIGHUP reloads `path`. Fails before serving anything if the
/// requested data path cannot run here.
pub async fn run(cfg: Config, budget: Budget, path: PathBuf, bound: Bound) -> anyhow::Result<()> {
    let sig = signals::Signals::install()?;
    warn_certificates(&cfg);
    let selected = DataPath::select(&cfg.datapath, cfg.sockmap_sessions(), &budget)?;
    let shutdown = CancellationToken::new();
    let admin_listener = bound.admin.map(TcpListener::from_std).transpose()?;

    let daemon = Arc::new(Daemon {
        path,
        budget,
        config: Mutex::new(cfg.clone()),
        datapath: selected.path,
        fallback: selected.fallback,
        global: Arc::new(GlobalStats::default()),
        shutdown: shutdown.clone(),
        live: Mutex::new(Vec::new()),
        retiring: Mutex::new(Vec::new()),
        reloading: Arc::new(tokio::sync::Mutex::new(())),
        admin_states: Mutex::new(states::AdminStates::default()),
        started: std::time::Instant::now(),
    });
    for svc in &cfg.service {
        names::log_changes(None, svc);
    }
    let live = cfg
        .service
        .iter()
        .zip(bound.services)
        .map(|(svc, l)| daemon.start(l, daemon.build(svc, None)))
        .collect::<Result<Vec<Live>, _>>()?;
    *lock(&daemon.live) = live;

    if let Some(l) = admin_listener {
        tracing::info!(listen = %l.local_addr()?, "admin listening");
        let tokens = admin::auth::Tokens {
            full: cfg.admin.as_ref().and_then(|a| a.token.clone()),
            read: cfg.admin.as_ref().and_then(|a| a.read_token.clone()),
        };
        let global = Arc::clone(&daemon.global);
        tokio::spawn(admin::serve(
            l,
            Arc::clone(&daemon),
            global,
            tokens,
            shutdown.clone(),
        ));
    }
    {
        let daemon = Arc::clone(&daemon);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                daemon.reap();
            }
        });
    }
    tokio::spawn(names::follow(Arc::clone(&daemon)));

    // systemd (Type=notify): ready now that every listener is bound and the checks run. Without
    // NOTIFY_SOCKET these are no-ops.
    notify(&[sd_notify::NotifyState::Ready]);
    if let Some(period) = sd_notify::watchdog_enabled() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period / 2);
            loop {
                tick.tick().await;
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
        });
    }

    signals::wait(&daemon, sig).await?;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    drain(&daemon).await;
    shutdown.cancel();
    daemon.datapath.routes_changed();
    // Cut sessions end at once; give their tasks a moment to close the sockets.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while daemon.total_active() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match daemon.total_active() {
        0 => tracing::info!("stopped: every session closed"),
        left => tracing::warn!(
            left,
            "stopped with sessions still open: the exit closes them"
        ),
    }
    Ok(())
}

/// Tells systemd (a no-op without `NOTIFY_SOCKET`); a failure is logged, never fatal.
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "systemd notification failed");
    }
}

/// Stops accepting on every listener, then lets sessions finish for up to the longest
/// `timeout.drain`; what is left is cut by the caller.
async fn drain(daemon: &Daemon) {
    let limit = {
        let live = lock(&daemon.live);
        for l in live.iter() {
            l.accepting.cancel();
        }
        live.iter()
            .map(|l| l.handle.config.timeout.drain)
            .max()
            .unwrap_or_default()
    };
    let start = tokio::time::Instant::now();
    let active = daemon.total_active();
    tracing::info!(
        active,
        drain_ms = limit.as_millis(),
        "stopping: listeners closed, draining sessions"
    );
    while daemon.total_active() > 0 && start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = daemon.total_active();
    if left > 0 {
        tracing::warn!(left, "drain time is up: closing the remaining sessions");
    } else {
        tracing::info!(
            took_ms = start.elapsed().as_millis(),
            "all sessions drained"
        );
    }
}
