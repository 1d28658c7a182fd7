//! The front of the tokio-driven paths (userspace, sockmap): accepts on a service's listener,
//! admits, queues while there is no master, connects, and hands the session to the data path.
//! The uring path has its own front on its worker rings (`uring/front.rs`); both ask the same
//! questions of the [`ServiceRuntime`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{tls, DataPath, Session};
use crate::admission::Permit;
use crate::metrics::Reject;
use crate::router::Route;
use crate::service::{Next, RateLimit, ServiceRuntime, ACCEPT_PAUSE};
use crate::session_log::{Admitted, Trace};

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
    if svc.tls_mode.in_userspace() {
        return tls_connection(client, admitted, permit, svc).await;
    }
    let limit = svc.timeouts.connect;
    let connect = |master| async move {
        tokio::time::timeout(limit, TcpStream::connect(master))
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")))
    };
    let Some((route, server, trace)) = to_master(&svc, admitted, connect).await else {
        return;
    };
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

/// [`connection`] for a service whose TLS is done here: the client's handshake first (before it
/// is queued: a client that cannot finish one takes no master's time), then the connect with
/// TLS to the master, then the TLS relay.
async fn tls_connection(
    client: TcpStream,
    admitted: Admitted,
    permit: Permit,
    svc: Arc<ServiceRuntime>,
) {
    let _ = client.set_nodelay(true);
    let Some(client) = tls::accept(&svc, client, admitted.peer).await else {
        return svc.never_connected(admitted, "tls_handshake");
    };
    let connect = |master| tls::connect(&svc, master);
    let Some((route, server, trace)) = to_master(&svc, admitted, connect).await else {
        return;
    };
    let stats = Arc::clone(&svc.stats);
    let end = tls::relay(tls::TlsSession {
        client,
        server,
        cut: route.cut,
        permit,
        svc,
        trace,
    })
    .await;
    stats.end(end);
}

/// Waits for a master (within `timeout.queue`) and connects to it with `connect`, trying the
/// next master after a failure. `None` when the client was given up or the master changed
/// meanwhile (counted and logged); else the route, the connection and the session's trace.
async fn to_master<S, F>(
    svc: &ServiceRuntime,
    admitted: Admitted,
    connect: impl Fn(SocketAddr) -> F,
) -> Option<(Route, S, Option<Box<Trace>>)>
where
    F: Future<Output = io::Result<S>>,
{
    let deadline = svc.queue_deadline();
    let mut after = None;
    let (route, server, started) = loop {
        let route = match svc.next(after, deadline) {
            Next::Connect(r) => r,
            Next::Wait => {
                svc.router.wait(after, deadline.into()).await;
                continue;
            }
            Next::GiveUp(why) => {
                svc.give_up(admitted, why);
                return None;
            }
        };
        let started = Instant::now();
        match connect(route.master).await {
            Ok(server) => break (route, server, started),
            Err(e) => {
                tracing::debug!(service = %svc.name, master = %route.master, error = %e, "connect failed");
            }
        }
        after = Some(route.generation);
    };
    let trace = svc.connected(admitted, route.master, started);
    if !svc.still_routed(&route) {
        svc.session_ended(trace.as_deref(), Reject::ConnectFailed.as_str());
        return None;
    }
    Some((route, server, trace))
}
