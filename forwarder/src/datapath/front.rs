//! The front of the tokio-driven paths (userspace, sockmap): accepts on a service's listener,
//! admits, queues while there is no master, connects, and hands the session to the data path.
//! The uring path has its own front on its worker rings (`uring/front.rs`); both ask the same
//! questions of the [`ServiceRuntime`].

use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{DataPath, Session};
use crate::admission::Permit;
use crate::metrics::Reject;
use crate::service::{Next, RateLimit, ServiceRuntime, ACCEPT_PAUSE};
use crate::session_log::Admitted;

/// Accepts clients until `accepting` is cancelled (drain, or the service removed by a reload);
/// the listener is closed on return. Each client goes to the runtime current when it arrives: a
/// reload swaps the runtime without closing the listener or touching established sessions.
pub async fn serve(
    listener: TcpListener,
    path: DataPath,
    runtimes: watch::Receiver<Arc<ServiceRuntime>>,
    accepting: CancellationToken,
) {
    let path = Arc::new(path);
    let accept_log = RateLimit::default();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = accepting.cancelled() => return,
        };
        let svc = Arc::clone(&runtimes.borrow());
        match accepted {
            Ok((client, peer)) => match svc.gate.admit(peer) {
                Ok(permit) => {
                    let path = Arc::clone(&path);
                    let admitted = Admitted::now(peer);
                    tokio::spawn(
                        async move { connection(client, admitted, permit, svc, &path).await },
                    );
                }
                Err(why) => svc.refused(peer, why),
            },
            Err(e) => {
                svc.accept_failed(&accept_log, &e);
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
        }
    }
}

/// Routes, connects, and hands the session to the data path.
async fn connection(
    client: TcpStream,
    admitted: Admitted,
    permit: Permit,
    svc: Arc<ServiceRuntime>,
    path: &DataPath,
) {
    let deadline = svc.queue_deadline();
    let mut after = None;
    let (route, server, started) = loop {
        let route = match svc.next(after, deadline) {
            Next::Connect(r) => r,
            Next::Wait => {
                svc.router.wait(after, deadline.into()).await;
                continue;
            }
            Next::GiveUp(why) => return svc.give_up(admitted, why),
        };
        let started = Instant::now();
        match tokio::time::timeout(svc.timeouts.connect, TcpStream::connect(route.master)).await {
            Ok(Ok(server)) => break (route, server, started),
            Ok(Err(e)) => {
                tracing::debug!(service = %svc.name, master = %route.master, error = %e, "connect failed");
            }
            Err(_) => {
                tracing::debug!(service = %svc.name, master = %route.master, "connect timed out");
            }
        }
        after = Some(route.generation);
    };
    let trace = svc.connected(admitted, route.master, started);
    if !svc.still_routed(&route) {
        return svc.session_ended(trace.as_deref(), Reject::ConnectFailed.as_str());
    }
    // Redis is request/response: never hold a small reply back for Nagle.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let session = Session {
        client,
        server,
        cut: route.cut,
        permit,
        svc,
        trace,
    };
    path.run(session).await;
}
