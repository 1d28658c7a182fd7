//! What the admin listener may ask of the daemon ([`admin::Control`]): its status, whether it is
//! ready, a server's operator state, a planned switchover, a reload.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{lock, Daemon, ReloadError};
use crate::admin::{self, ControlError};
use crate::metrics::AdminReject;
use crate::status::{BpfTotals, BuildInfo, ProcessStats, ServiceStatus, Status};

/// How long the replicas may take to reach the master's offset in a switchover (no write
/// reaches the master meanwhile, so on a healthy link this is one round trip).
const CATCH_UP: Duration = Duration::from_secs(3);
/// How long the Sentinels may take to promote a replica and the checks to confirm it. The
/// whole switchover ends within `CATCH_UP + FAILOVER` (plus at most a few `REQUEST`s), below
/// the admin listener's 30 s connection limit, so that its answer is always read.
const FAILOVER: Duration = Duration::from_secs(20);
/// The longest one request of a switchover may take (the check's timeout when shorter): a
/// Sentinel that does not answer must not use up the switchover's time.
const REQUEST: Duration = Duration::from_secs(2);

impl admin::Control for Daemon {
    fn status(&self) -> Status {
        let services = lock(&self.live)
            .iter()
            .map(|l| {
                let h = &l.handle;
                ServiceStatus::of(&h.config, &h.runtime.stats, &h.monitor)
            })
            .collect();
        let not_ready = self.readiness().err().unwrap_or_default();
        Status {
            build: BuildInfo::current(),
            process: ProcessStats::read(),
            uptime_ms: self.started.elapsed().as_millis(),
            ready: not_ready.is_empty(),
            not_ready,
            datapath: self.datapath.name().to_string(),
            datapath_fallback: self.fallback.clone(),
            bpf: self.datapath.bpf_totals().map(|t| BpfTotals {
                redirected_bytes: t.redirected_bytes,
                passed_bytes: t.passed_bytes,
                trimmed_bytes: t.trimmed_bytes,
                faults: t.faults,
                spills: t.spills,
            }),
            pipes_held: self.datapath.pipes_held(),
            accept_errors: self.global.accept_errors.load(Ordering::Relaxed),
            admin_rejected: AdminReject::ALL
                .iter()
                .map(|r| {
                    let n = self.global.admin_rejected[*r as usize].load(Ordering::Relaxed);
                    (r.as_str().to_string(), n)
                })
                .collect(),
            services,
        }
    }

    type ReloadError = ReloadError;

    async fn reload(&self) -> Result<String, ReloadError> {
        Daemon::reload(self).await
    }

    fn readiness(&self) -> Result<(), Vec<String>> {
        let configured: Vec<String> = lock(&self.config)
            .service
            .iter()
            .map(|s| s.name.clone())
            .collect();
        let live = lock(&self.live);
        let mut why = Vec::new();
        for name in configured {
            let Some(l) = live.iter().find(|l| l.handle.config.name == name) else {
                why.push(format!("service {name}: not listening"));
                continue;
            };
            let view = l.handle.monitor.view();
            match (view.master, view.hold) {
                (None, _) => {
                    let note = l.handle.monitor.note().map(|n| format!(" ({n})"));
                    why.push(format!(
                        "service {name}: no master{}",
                        note.unwrap_or_default()
                    ));
                }
                (Some(m), Some(hold)) => why.push(format!(
                    "service {name}: master {m} takes no new sessions ({})",
                    hold.as_str()
                )),
                (Some(_), None) => {}
            }
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why)
        }
    }

    async fn set_server_state(
        &self,
        service: &str,
        server: &str,
        state: health::AdminState,
    ) -> Result<String, ControlError> {
        let addr: SocketAddr = server
            .parse()
            .map_err(|_| ControlError::Invalid(format!("server {server:?}: expected ip:port")))?;
        let (was, routers) = {
            // Under the lock of the running services: a reload cannot build the service's next
            // monitor between the map and the monitor (it would miss the state), nor can two
            // requests interleave and leave the map and the monitor disagreeing.
            let live = lock(&self.live);
            let handle = live
                .iter()
                .find(|l| l.handle.config.name == service)
                .map(|l| &l.handle)
                .ok_or_else(|| ControlError::NotFound(format!("no service {service:?}")))?;
            let mut states = lock(&self.admin_states);
            let Some(was) = handle.monitor.set_admin(addr, state) else {
                return Err(ControlError::NotFound(format!(
                    "server {addr} is not one of service {service:?}'s (configured or discovered)"
                )));
            };
            let mut routers = vec![(handle.runtime.router.clone(), handle.monitor.view())];
            // The runtimes a reload replaced still hold their queued clients and established
            // sessions, on their own monitors: they follow the operator too.
            for old in lock(&self.retiring)
                .iter()
                .filter(|h| h.config.name == service)
            {
                if !std::sync::Arc::ptr_eq(&old.monitor, &handle.monitor) {
                    old.monitor.set_admin(addr, state);
                }
                routers.push((old.runtime.router.clone(), old.monitor.view()));
            }
            states.set(service, addr, state);
            (was, routers)
        };
        // Answered once every router acts on the new state: after "drain", no new session.
        for (router, view) in routers {
            router.caught_up(view).await;
        }
        Ok(format!(
            "service {service}: server {addr} is {} (was {})",
            state.as_str(),
            was.as_str()
        ))
    }

    async fn switchover(&self, service: &str) -> Result<String, ControlError> {
        // No reload (nor name re-resolution) while it runs: one would replace the monitor that
        // holds the master, and the new one would route new clients to it again while the
        // replicas are caught up and the Sentinels promote one (writes acknowledged, then lost).
        // A reload asked for meanwhile waits for the switchover to end.
        let Ok(no_reload) = std::sync::Arc::clone(&self.reloading).try_lock_owned() else {
            return Err(ControlError::Conflict(format!(
                "service {service}: a reload or another switchover is running; try again"
            )));
        };
        let (monitor, router, stats, auth, tls, request) = {
            let live = lock(&self.live);
            let l = live
                .iter()
                .find(|l| l.handle.config.name == service)
                .ok_or_else(|| ControlError::NotFound(format!("no service {service:?}")))?;
            (
                std::sync::Arc::clone(&l.handle.monitor),
                l.handle.runtime.router.clone(),
                std::sync::Arc::clone(&l.handle.runtime.stats),
                l.handle.config.check.auth.clone(),
                l.handle.config.check.program.tls().cloned(),
                l.handle.config.check.timeout,
            )
        };
        // The runtimes a reload replaced keep sessions to the master on their own routers (and,
        // when the reload changed the checks, their own monitors): they are held and cut too.
        let retired: Vec<_> = lock(&self.retiring)
            .iter()
            .filter(|h| h.config.name == service)
            .map(|h| {
                let own = !std::sync::Arc::ptr_eq(&h.monitor, &monitor);
                (
                    std::sync::Arc::clone(&h.monitor),
                    h.runtime.router.clone(),
                    own,
                )
            })
            .collect();
        let limits = health::switchover::Limits {
            catch_up: CATCH_UP,
            failover: FAILOVER,
            request: request.min(REQUEST),
        };
        tracing::warn!(%service, "planned switchover requested");
        // Its own task: once the Sentinels may have been asked to fail over, the master must
        // stay held until the switchover ends, whether or not the client that asked for it
        // (curl, `forwarder switchover`) is still there to read the answer.
        let service = service.to_string();
        let task = tokio::spawn(async move {
            let _no_reload = no_reload;
            // The master's offset is read once every router has cut its sessions.
            let (router, retired) = (&router, &retired);
            let enacted = |view| async move {
                for (m, _, own) in retired {
                    if *own {
                        m.switchover(true);
                    }
                }
                router.caught_up(view).await;
                for (m, r, _) in retired {
                    r.caught_up(m.view()).await;
                }
            };
            let done =
                health::switchover::run(&monitor, auth.as_ref(), tls.as_ref(), limits, enacted)
                    .await;
            for (m, _, own) in retired {
                if *own {
                    m.switchover(false);
                }
            }
            match done {
                Ok(r) => {
                    let ms = u64::try_from(r.paused.as_millis()).unwrap_or(u64::MAX);
                    stats.switchovers.fetch_add(1, Ordering::Relaxed);
                    stats.last_switchover_ms.store(ms, Ordering::Relaxed);
                    tracing::warn!(%service, from = %r.from, to = %r.to, paused_ms = ms,
                        sentinel = %r.sentinel, "planned switchover done");
                    let others = match &r.others_not_paused {
                        None => "writes of its other clients paused until it was a replica".into(),
                        Some(why) => format!("writes of its other clients NOT paused: {why}"),
                    };
                    Ok(format!(
                        "service {service}: switched over from {} to {} (new clients held {ms} \
                         ms; failover by Sentinel {}; {others})",
                        r.from, r.to, r.sentinel
                    ))
                }
                Err(e) => {
                    use health::switchover::SwitchoverError as E;
                    stats.switchovers_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%service, error = %e, "planned switchover not done");
                    let text = format!("service {service}: {e}");
                    Err(match e {
                        E::NoSentinel | E::NoMaster | E::Running | E::NotReady(..) => {
                            ControlError::Conflict(text)
                        }
                        _ => ControlError::Failed(text),
                    })
                }
            }
        });
        task.await
            .unwrap_or_else(|e| Err(ControlError::Failed(format!("switchover task: {e}"))))
    }
}
