//! The zero-copy data path: io_uring on dedicated worker threads, from accept to close.
//!
//! Each worker has its own ring and, per service, its own `SO_REUSEPORT` listener with a
//! multishot `ACCEPT` on it, so a client is accepted, admitted (the shared [`Gate`]), queued while
//! there is no master (the shared [`ServiceRuntime::next`]) and connected (`CONNECT` linked to a
//! `LINK_TIMEOUT` of `timeout.connect`) on one thread, without a lock or a cross-thread hand-off.
//! Sessions that another path passes on (the sockmap's overflow) arrive through `hand_off`.
//!
//! Two ways to move a direction's bytes, chosen by what the direction does:
//! - **Messages** (the default; `message.rs`): a multishot `RECV` takes whatever arrives into a
//!   buffer of the worker's provided-buffer ring (`bufring.rs`) and a `SEND` passes it on. A
//!   Redis request or reply costs two completions and no syscall of its own: the worker submits
//!   the sends and reaps the receives of all its sessions in one `io_uring_enter` per loop. The
//!   bytes are copied in and out once each, as `read` + `write` would. Measured against the
//!   previous design (every message `POLL_ADD`, then two `splice(2)` calls through a pipe) this
//!   cut the proxy's CPU per Redis request by about a fifth (bench/README.md).
//! - **Streams** (zero copy): a direction that holds `HOLD_MAX` buffers (its destination takes
//!   bytes slower than its source sends them) or finds the buffer ring empty moves to a pipe:
//!   `POLL_ADD(src, POLLIN)`, then `splice src -> pipe -> dst` at once with two non-blocking
//!   `splice(2)` calls; a direction whose reads reach `STREAM_READ` runs
//!   `POLL_ADD -> SPLICE(src -> pipe) -> SPLICE(pipe -> dst)` as one linked chain on the kernel's
//!   io-wq threads, beside this one. When the pipe is drained and the source has nothing more,
//!   the direction goes back to messages.
//!
//! Rules that keep it correct:
//! - Sockets stay non-blocking, so a splice never parks a thread (ours or a kernel one) on an
//!   idle socket; the multishot receive or the poll is what waits.
//! - A direction has one `SEND` in flight, always of its oldest held buffer, and reads into a
//!   pipe only when it holds no buffer and its pipe is empty, so bytes are never reordered; EOF
//!   is acted on only after every earlier byte was written: then `shutdown(dst, SHUT_WR)`.
//! - A buffer is its direction's from the completion that names it until its bytes were sent;
//!   a session that ends gives back what it held. An idle session holds no buffer.
//! - A request/response direction holds a pipe only while bytes are in it; a drained pipe goes
//!   back to the worker's pool at once. A stream keeps its pipe between bursts (at most
//!   `PIPES_KEPT_MAX` per worker, so descriptors stay bounded) until `COOL_AFTER` without
//!   traffic, when its linked poll is cancelled and the pipe goes back. An idle session holds
//!   two sockets, a slab entry and its two armed receives, nothing else.
//! - A worker opens at most `pipes_max` pipes (its share of the descriptor budget). A direction
//!   that finds none free copies through a `COPY_CHUNK` buffer instead (`copy_inline`); what
//!   the destination does not take waits in the direction's `spill`, which, like a pipe, is
//!   written out before the source is read again. Running out of pipes never ends a session.
//! - A session is freed only when none of its operations is in flight (`ops` bit set), after
//!   cancelling them; then both sockets close, with a reset unless both directions ended cleanly.
//!   A listener is closed only once its multishot accept has reported its last completion.
//!
//! Control from tokio (new listener, sessions handed off, "routes changed: look at the cut
//! tokens and the queued clients") travels over a channel plus an eventfd that each ring keeps a
//! `READ` on, so neither side blocks the other.
//!
//! The rooms: `ops.rs` (what an operation was, in its user_data), `worker.rs` (the ring and its
//! loop), `front.rs` (accept, admit, queue, connect), `session.rs` (a session's directions on
//! the ring), `message.rs` (their receives and sends), `bufring.rs` (the provided buffers),
//! `direction.rs` (what a piped direction does after each completion, as a pure function),
//! `pipes.rs` (the pipe pool).
//!
//! [`Gate`]: crate::admission::Gate

mod bufring;
mod direction;
mod front;
mod message;
mod ops;
mod pipes;
mod session;
mod state;
mod worker;

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use io_uring::{opcode, IoUring};
use rustix::event::EventfdFlags;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Session;
use crate::admission::Permit;
use crate::metrics::End;
use crate::service::ServiceRuntime;
use crate::session_log::Trace;
use worker::Worker;

/// Why the uring path cannot run here (the text goes into the fallback log line).
#[derive(Debug, thiserror::Error)]
pub enum UringError {
    /// The probe ring could not be set up; `why` reads the errno.
    #[error("{why}: {error}")]
    Setup {
        /// The likely cause, from the errno (no io_uring, forbidden, or other).
        why: &'static str,
        /// The error of `io_uring_setup`.
        error: io::Error,
    },
    /// Registering an opcode probe failed (kernels before 5.6 have none).
    #[error("cannot probe io_uring opcodes (kernel older than 5.6?): {0}")]
    Probe(io::Error),
    /// An opcode this path needs is missing: its name, e.g. `SPLICE`.
    #[error("io_uring has no {0} operation on this kernel")]
    Unsupported(&'static str),
    /// A worker's wake-up eventfd could not be created.
    #[error("eventfd: {0}")]
    Eventfd(rustix::io::Errno),
    /// A worker thread could not be spawned.
    #[error("cannot start a uring worker thread: {0}")]
    Thread(io::Error),
    /// A worker thread ended before saying whether its ring is up.
    #[error("uring worker died while starting")]
    WorkerDied,
    /// A worker's own ring could not be set up.
    #[error("io_uring_setup: {0}")]
    Ring(io::Error),
    /// A worker's provided-buffer ring could not be mapped or registered.
    #[error("cannot register a provided-buffer ring (kernel older than 5.19?): {0}")]
    BufRing(io::Error),
}

/// Checks that this kernel (and whatever sandbox we run in) lets us use io_uring with the
/// operations this path needs. The error says why not, for the fallback log line.
pub fn probe() -> Result<(), UringError> {
    use rustix::io::Errno;
    let ring = IoUring::new(8).map_err(|error| {
        let why = match Errno::from_io_error(&error) {
            Some(Errno::NOSYS) => "the kernel has no io_uring (ENOSYS)",
            Some(Errno::PERM) => {
                "io_uring_setup is forbidden (EPERM: a seccomp profile such as Docker's default, \
                 or sysctl kernel.io_uring_disabled)"
            }
            _ => "io_uring_setup failed",
        };
        UringError::Setup { why, error }
    })?;
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(UringError::Probe)?;
    for (code, name) in [
        (opcode::Splice::CODE, "SPLICE"),
        (opcode::RecvMulti::CODE, "RECV"),
        (opcode::Send::CODE, "SEND"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
        (opcode::Read::CODE, "READ"),
        (opcode::Timeout::CODE, "TIMEOUT"),
        (opcode::AcceptMulti::CODE, "ACCEPT"),
        (opcode::Connect::CODE, "CONNECT"),
        (opcode::LinkTimeout::CODE, "LINK_TIMEOUT"),
    ] {
        if !probe.is_supported(code) {
            return Err(UringError::Unsupported(name));
        }
    }
    Ok(())
}

/// A session handed to a worker; kept whole in its `Conn` until the session is freed.
struct Job {
    /// 0: client, 1: server. Direction 0 is client -> server, direction 1 server -> client.
    fds: [OwnedFd; 2],
    cut: CancellationToken,
    /// The `maxconn` slot, held until the session ends.
    _permit: Permit,
    /// The service runtime (timeouts, counters), kept alive until the session ends.
    svc: Arc<ServiceRuntime>,
    /// The session's log line in the making (`log_sessions`), its bytes counted by the worker.
    trace: Option<Box<Trace>>,
}

impl Job {
    /// `timeout.client` (side 0) or `timeout.server` (side 1).
    fn timeout(&self, side: usize) -> Duration {
        let t = &self.svc.timeouts;
        if side == 0 {
            t.client
        } else {
            t.server
        }
    }
}

/// A listening socket of a service, for one worker to accept on.
struct Listen {
    fd: OwnedFd,
    /// The service's current runtime (a reload swaps it).
    runtimes: watch::Receiver<Arc<ServiceRuntime>>,
    /// Cancelled when the service stops accepting (drain, or removed by a reload).
    accepting: CancellationToken,
}

enum Msg {
    Listen(Box<Listen>),
    Session(Box<Job>),
    /// Routes changed (or a listener stopped): look at the cut tokens, the queued clients and the
    /// listeners now rather than at the next tick.
    Sweep,
}

struct WorkerHandle {
    tx: mpsc::Sender<Msg>,
    wake: Arc<OwnedFd>,
}

impl WorkerHandle {
    fn send(&self, msg: Msg) -> bool {
        if self.tx.send(msg).is_err() {
            return false;
        }
        // A blocking eventfd write only blocks when the counter would overflow 2^64-2.
        rustix::io::write(&*self.wake, &1u64.to_ne_bytes()).is_ok()
    }
}

/// The running io_uring workers.
pub struct Uring {
    workers: Vec<WorkerHandle>,
    next: AtomicUsize,
    /// Pipes the workers' directions hold now, all workers together.
    pipes_held: Arc<AtomicUsize>,
}

impl Uring {
    /// Probes, then starts `n` worker threads, each with its own ring and at most `pipes` pipes
    /// open (its share of the descriptor budget).
    pub fn start(n: usize, pipes: usize) -> Result<Uring, UringError> {
        probe()?;
        let mut workers = Vec::with_capacity(n);
        let pipes_held = Arc::new(AtomicUsize::new(0));
        for i in 0..n {
            let wake =
                rustix::event::eventfd(0, EventfdFlags::CLOEXEC).map_err(UringError::Eventfd)?;
            let wake = Arc::new(wake);
            let (tx, rx) = mpsc::channel();
            let (ready_tx, ready_rx) = mpsc::channel();
            let (w, held) = (Arc::clone(&wake), Arc::clone(&pipes_held));
            std::thread::Builder::new()
                .name(format!("uring-{i}"))
                .spawn(move || match Worker::new(rx, w, pipes, held) {
                    Ok(mut worker) => {
                        let _ = ready_tx.send(Ok(()));
                        worker.run();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                })
                .map_err(UringError::Thread)?;
            ready_rx.recv().map_err(|_| UringError::WorkerDied)??;
            workers.push(WorkerHandle { tx, wake });
        }
        Ok(Uring {
            workers,
            next: AtomicUsize::new(0),
            pipes_held,
        })
    }

    /// Pipes the workers' directions hold now (an idle session holds none).
    pub fn pipes_held(&self) -> usize {
        self.pipes_held.load(Ordering::Relaxed)
    }

    /// Gives each worker one of a service's listeners (bound with SO_REUSEPORT, one per worker) to
    /// accept on until `accepting` is cancelled.
    pub fn listen(
        self: &Arc<Self>,
        listeners: Vec<std::net::TcpListener>,
        runtimes: watch::Receiver<Arc<ServiceRuntime>>,
        accepting: CancellationToken,
    ) {
        for (i, l) in listeners.into_iter().enumerate() {
            let listen = Listen {
                fd: l.into(),
                runtimes: runtimes.clone(),
                accepting: accepting.clone(),
            };
            if !self.workers[i % self.workers.len()].send(Msg::Listen(Box::new(listen))) {
                tracing::error!("uring worker is gone; a listener of the service is closed");
            }
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            accepting.cancelled().await;
            me.sweep();
        });
    }

    /// Hands the session to a worker, which owns it from then on and counts its end. A cut
    /// reaches the worker through `sweep` (and, as a backstop, its own tick).
    pub fn hand_off(&self, s: Session) {
        let (Ok(client), Ok(server)) = (s.client.into_std(), s.server.into_std()) else {
            s.svc.stats.end(End::Reset);
            s.svc.session_ended(s.trace.as_deref(), End::Reset.as_str());
            return;
        };
        let worker = &self.workers[self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len()];
        let svc = Arc::clone(&s.svc);
        let job = Job {
            fds: [client.into(), server.into()],
            cut: s.cut,
            _permit: s.permit,
            svc: s.svc,
            trace: s.trace,
        };
        if !worker.send(Msg::Session(Box::new(job))) {
            // The session went with the message (no log line: this line says it).
            tracing::error!("uring worker is gone; closing the session");
            svc.stats.end(End::Reset);
        }
    }

    /// How many worker threads (and rings, and listeners per service) there are.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Makes every worker look at its sessions' cut tokens now.
    pub fn sweep(&self) {
        for w in &self.workers {
            w.send(Msg::Sweep);
        }
    }
}
