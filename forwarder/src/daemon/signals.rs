//! The signals the daemon answers: SIGTERM and SIGINT stop it, SIGHUP reloads its configuration.

use anyhow::Context;

use super::Daemon;

/// The handlers of SIGTERM, SIGINT and SIGHUP, installed before anything is served: a SIGHUP
/// that came between the admin answering and the handler (a reload right after start) would
/// otherwise kill the daemon.
pub(super) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub(super) fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
        })
    }
}

/// Waits for SIGTERM or SIGINT, reloading on every SIGHUP meanwhile.
pub(super) async fn wait(daemon: &Daemon, mut sig: Signals) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = sig.term.recv() => return Ok(()),
            _ = sig.int.recv() => return Ok(()),
            _ = sig.hup.recv() => {
                tracing::info!(path = %daemon.path.display(), "SIGHUP: reloading the configuration");
                if let Err(e) = daemon.reload().await {
                    tracing::error!("reload refused, the running configuration stays: {e}");
                }
            }
        }
    }
}
