//! The way of one client through a service, timed, for the queue-wait and connect histograms
//! (which `ServiceRuntime::connected` and `never_connected` record for every data path) and,
//! with `log_sessions = true`, one `info` line per client at its end, HAProxy's `option
//! tcplog`, with the tracing target `forwarder::session` (so
//! `RUST_LOG=info,forwarder::session=off` silences it alone).
//!
//! The line's fields are plain values: `service`, `client` and `server` (`ip:port`; `server` is
//! empty for a client that never got one), `queue_ms` (admitted -> the connect that gave it its
//! session started), `connect_ms`, `duration_ms` (admitted -> end), `bytes_in` (client to
//! server), `bytes_out` (server to client), and `end`: how the session ended
//! ([`End::as_str`]) or why the client was closed before it had one ([`Reject::as_str`]).
//!
//! [`End::as_str`]: crate::metrics::End::as_str
//! [`Reject::as_str`]: crate::metrics::Reject::as_str
//!
//! With the log off, a session carries no [`Trace`] (`None`, a null pointer): the data paths then
//! skip their per-session byte counts on a single check.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// An admitted client on its way to a session: who, and since when.
#[derive(Debug, Clone, Copy)]
pub struct Admitted {
    /// The client's address.
    pub peer: SocketAddr,
    /// When the gate let it in.
    pub at: Instant,
}

impl Admitted {
    /// `peer`, admitted now.
    pub fn now(peer: SocketAddr) -> Admitted {
        Admitted {
            peer,
            at: Instant::now(),
        }
    }
}

/// What the log line of a session will say, kept with the session while it runs (only when the
/// service logs sessions).
#[derive(Debug)]
pub struct Trace {
    admitted: Admitted,
    /// `None` for a client that never got a session.
    server: Option<SocketAddr>,
    queue: Duration,
    connect: Duration,
    /// Bytes forwarded client -> server (0) and server -> client (1), counted by the data path.
    pub bytes: [u64; 2],
}

/// Whole milliseconds, saturating.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Trace {
    /// The trace of `client`, which waited `queue` for the connect to `server` (`None`: it got
    /// none) that took `connect`.
    pub fn new(
        client: Admitted,
        server: Option<SocketAddr>,
        queue: Duration,
        connect: Duration,
    ) -> Trace {
        Trace {
            admitted: client,
            server,
            queue,
            connect,
            bytes: [0, 0],
        }
    }

    /// Logs the line of the session of `service`, which ended `end`, now.
    pub fn log(&self, service: &str, end: &str) {
        let server = self.server.map(|s| s.to_string()).unwrap_or_default();
        tracing::info!(target: "forwarder::session", service, client = %self.admitted.peer,
            server, queue_ms = ms(self.queue), connect_ms = ms(self.connect),
            duration_ms = ms(self.admitted.at.elapsed()), bytes_in = self.bytes[0],
            bytes_out = self.bytes[1], end, "session");
    }
}
