//! The daemon: turns a validated [`Config`] into running services, and stops them on a signal.

use std::sync::Arc;

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
        tokio::spawn(admin::serve(l, Arc::clone(&state), shutdown.clone()));
    }

    wait_for_signal().await?;
    tracing::info!("shutting down");
    shutdown.cancel();
    Ok(())
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
