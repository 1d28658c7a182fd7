//! The daemon: turns a validated [`Config`] into running services, and stops them on a signal.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::config::{Config, Service};
use crate::datapath::DataPath;
use crate::metrics::{GlobalStats, ServiceStats};
use crate::router::Router;
use crate::service::{self, ServiceRuntime};

/// A running service as the admin listener sees it.
pub struct ServiceHandle {
    pub config: Service,
    pub runtime: Arc<ServiceRuntime>,
    pub monitor: health::Monitor,
}

/// Runs until SIGTERM or SIGINT. Fails before serving anything if a listener cannot be bound or
/// the requested data path cannot run here.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let selected = DataPath::select(&cfg.datapath).map_err(anyhow::Error::msg)?;
    let datapath = selected.path;
    let shutdown = CancellationToken::new();
    let global = Arc::new(GlobalStats::default());

    // Bind everything first: a port in use is a startup error, not a half-started daemon.
    let mut listeners = Vec::with_capacity(cfg.service.len());
    for (i, svc) in cfg.service.iter().enumerate() {
        let l = service::bind(svc.listen).with_context(|| {
            format!(
                "service[{i}].listen: cannot listen on {} (service {:?})",
                svc.listen, svc.name
            )
        })?;
        listeners.push(l);
    }
    let admin_listener = match &cfg.admin {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a.listen)
                .await
                .with_context(|| format!("admin.listen: cannot listen on {}", a.listen))?,
        ),
        None => None,
    };

    let mut handles = Vec::with_capacity(cfg.service.len());
    for (svc, listener) in cfg.service.iter().zip(listeners) {
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
        });
        let monitor = health::Monitor::spawn_with(
            svc.name.clone(),
            svc.servers.clone(),
            svc.check.program.clone(),
            svc.check.schedule(),
            sentinel,
        );
        let stats = Arc::new(ServiceStats::default());
        let router = Router::spawn(
            svc.name.clone(),
            monitor.subscribe(),
            svc.on_master_change,
            Arc::clone(&stats),
            shutdown.clone(),
        );
        let runtime = Arc::new(ServiceRuntime::new(
            svc,
            router,
            stats,
            Arc::clone(&global),
            datapath.clone(),
            shutdown.clone(),
        ));
        tracing::info!(service = %svc.name, listen = %svc.listen, servers = ?svc.servers,
            datapath = datapath.name(), "listening");
        tokio::spawn(service::serve(listener, Arc::clone(&runtime)));
        handles.push(ServiceHandle {
            config: svc.clone(),
            runtime,
            monitor,
        });
    }

    let state = Arc::new(admin::State {
        services: handles,
        global,
        datapath,
        fallback: selected.fallback,
    });
    if let Some(l) = admin_listener {
        tracing::info!(listen = %l.local_addr()?, "admin listening");
        let token = cfg.admin.as_ref().and_then(|a| a.token.clone());
        tokio::spawn(admin::serve(l, Arc::clone(&state), token, shutdown.clone()));
    }

    // systemd (Type=notify): ready now that every listener is bound and the checks run. Without
    // NOTIFY_SOCKET these are no-ops.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "systemd readiness notification failed");
    }
    if let Some(period) = sd_notify::watchdog_enabled() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period / 2);
            loop {
                tick.tick().await;
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
        });
    }

    wait_for_signal().await?;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    drain(&state.services).await;
    shutdown.cancel();
    // Cut sessions end at once; give their tasks a moment to close the sockets.
    let active = || total_active(&state.services);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while active() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!("stopped");
    Ok(())
}

fn total_active(services: &[ServiceHandle]) -> u64 {
    services
        .iter()
        .map(|h| h.runtime.stats.active.load(Ordering::Relaxed))
        .sum()
}

/// Stops accepting on every listener, then lets sessions finish for up to the longest
/// `timeout.drain`; what is left is cut by the caller.
async fn drain(services: &[ServiceHandle]) {
    let limit = services
        .iter()
        .map(|h| h.config.timeout.drain)
        .max()
        .unwrap_or_default();
    for h in services {
        h.runtime.accepting.cancel();
    }
    let start = tokio::time::Instant::now();
    let active = total_active(services);
    tracing::info!(active, drain = ?limit, "stopping: listeners closed, draining sessions");
    while total_active(services) > 0 && start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = total_active(services);
    if left > 0 {
        tracing::warn!(left, "drain time is up: closing the remaining sessions");
    } else {
        tracing::info!(took = ?start.elapsed(), "all sessions drained");
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}
