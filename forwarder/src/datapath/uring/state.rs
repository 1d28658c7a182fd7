//! What a uring worker keeps, as plain data: its listeners, the clients queued for a master or
//! connecting to it, and its sessions with their two directions. `front.rs` (accept, admit,
//! connect) and `session.rs` (moving bytes, teardown) act on it; `worker.rs` owns it.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use io_uring::types;
use socket2::SockAddr;

use super::direction::Flow;
use super::pipes::Pipe;
use super::{Job, Listen};
use crate::admission::Permit;
use crate::metrics::End;
use crate::router::Route;
use crate::service::ServiceRuntime;
use crate::session_log::Admitted;

/// A listener on this worker's ring.
pub(super) struct Listener {
    pub(super) listen: Listen,
    /// Its multishot accept is in flight.
    pub(super) armed: bool,
    /// Accepting failed (EMFILE...): re-armed at the first tick after this.
    pub(super) paused_until: Option<Instant>,
    /// Being closed: once `armed` is false, the listener is dropped.
    pub(super) closing: bool,
}

/// A client accepted and admitted, waiting for a master or connecting to it.
pub(super) struct Queued {
    pub(super) client: OwnedFd,
    pub(super) admitted: Admitted,
    pub(super) permit: Permit,
    pub(super) svc: Arc<ServiceRuntime>,
    pub(super) deadline: Instant,
    /// Generation of the last master it failed to reach.
    pub(super) after: Option<u64>,
    pub(super) dial: Option<Dial>,
}

/// A connect in flight.
pub(super) struct Dial {
    pub(super) server: OwnedFd,
    /// When the connect was submitted.
    pub(super) started: Instant,
    pub(super) route: Route,
    /// Read by the kernel while the `CONNECT` and `LINK_TIMEOUT` are prepared; kept until the
    /// connect completes all the same.
    pub(super) _addr: Box<SockAddr>,
    pub(super) _timeout: Box<types::Timespec>,
}

/// A received buffer of a message-mode direction, not yet sent on in full.
#[derive(Debug, Clone, Copy)]
pub(super) struct Held {
    /// Its id in the worker's buffer ring.
    pub(super) bid: u16,
    /// Bytes received into it.
    pub(super) len: u32,
    /// Bytes of it sent so far.
    pub(super) sent: u32,
}

/// One direction of a session: in message mode `src` -> provided buffers -> `dst` (multishot
/// `RECV`, then `SEND`); in pipe mode `src` -> pipe (or spill) -> `dst`.
#[derive(Default)]
pub(super) struct Dir {
    /// Received buffers in order, the oldest (being sent) first; at most `bufring::HOLD_MAX`.
    pub(super) held: VecDeque<Held>,
    /// The direction leaves message mode when its receive has ended and `held` is sent: it is a
    /// stream, or the buffer ring was empty.
    pub(super) to_pipe: bool,
    /// Its multishot receive reported EOF: half-close once `held` is sent.
    pub(super) eof: bool,
    pub(super) pipe: Option<Pipe>,
    /// Bytes read without a pipe (see `copy_inline`) and not yet written: then `flow.pending`
    /// counts these, and the direction holds no pipe.
    pub(super) spill: Vec<u8>,
    pub(super) flow: Flow,
}

/// A session on this worker: both directions and what is in flight.
pub(super) struct Conn {
    /// The sockets, limits and tokens handed over; dropped (sockets closed, permit given back)
    /// when the session is freed.
    pub(super) job: Job,
    pub(super) dirs: [Dir; 2],
    /// Operations in flight, one bit per (op, direction).
    pub(super) ops: u16,
    /// Last activity of the client (0) and of the server (1).
    pub(super) last: [Instant; 2],
    /// Set once the session is being torn down.
    pub(super) ending: Option<End>,
}
