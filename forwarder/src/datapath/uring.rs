//! The zero-copy data path: io_uring on dedicated worker threads, from accept to close.
//!
//! Each worker has its own ring and, per service, its own `SO_REUSEPORT` listener with a
//! multishot `ACCEPT` on it, so a client is accepted, admitted (the shared [`Gate`]), queued while
//! there is no master (the shared [`ServiceRuntime::next`]) and connected (`CONNECT` linked to a
//! `LINK_TIMEOUT` of `timeout.connect`) on one thread, without a lock or a cross-thread hand-off.
//! Sessions that another path passes on (the sockmap's overflow) arrive through `hand_off`.
//!
//! The bytes never reach userspace. Per direction a `POLL_ADD(src, POLLIN)` waits; when it
//! fires, this thread splices `src -> pipe -> dst` at once with two non-blocking `splice(2)`
//! calls. A direction whose reads reach `STREAM_READ` is a stream: it moves on ring operations
//! instead, `POLL_ADD -> SPLICE(src -> pipe) -> SPLICE(pipe -> dst)` in one linked chain (no
//! poll while the pipe comes back full), which the kernel runs on its io-wq threads, beside this
//! one. The split is measured (bench/README.md): the kernel never runs `IORING_OP_SPLICE` inline
//! (`REQ_F_FORCE_ASYNC`), and when every hop took io-wq a small Redis request paid +44 µs at p50;
//! inline splicing after the poll costs what a `read` + `write` costs, with no copy, while
//! streams gain from io-wq running beside the worker.
//!
//! Rules that keep it correct:
//! - Sockets stay non-blocking, so a splice never parks a thread (ours or a kernel one) on an
//!   idle socket; the poll is what waits.
//! - A direction reads from its source only when its pipe is empty, so bytes are never reordered,
//!   and EOF is seen only after every earlier byte was written: then `shutdown(dst, SHUT_WR)`.
//! - A request/response direction holds a pipe only while bytes are in it; a drained pipe goes
//!   back to the worker's pool at once. A stream keeps its pipe between bursts (at most
//!   `PIPES_KEPT_MAX` per worker, so descriptors stay bounded) until `COOL_AFTER` without
//!   traffic, when its linked poll is cancelled and the pipe goes back. An idle session holds
//!   two sockets and a slab entry, nothing else.
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
//! [`Gate`]: crate::admission::Gate

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};
use rustix::event::{EventfdFlags, PollFlags};
use rustix::pipe::SpliceFlags;
use slab::Slab;
use socket2::{SockAddr, SockRef};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{cut_end, reset, Session};
use crate::admission::Permit;
use crate::metrics::End;
use crate::router::Route;
use crate::service::{Next, RateLimit, ServiceRuntime, ACCEPT_PAUSE};

/// Bytes a pipe holds (`F_SETPIPE_SZ`): one splice moves at most this much.
const PIPE_SIZE: usize = 256 * 1024;
/// Empty pipes a worker keeps for reuse (at most; never more than its pipe budget).
const PIPE_POOL_MAX: usize = 64;
/// A read at least this large marks a stream: the direction's next poll is linked to its splices.
const STREAM_READ: i32 = 64 * 1024;
/// At most this much is read at once by a direction that found no pipe free (`copy_inline`).
const COPY_CHUNK: usize = 16 * 1024;
/// Pipes a worker lets streaming directions keep between bursts. Each pipe is two descriptors;
/// past this many, a drained direction gives its pipe back and waits with a plain poll, so
/// thousands of briefly busy sessions cannot exhaust the descriptor limit.
const PIPES_KEPT_MAX: usize = 256;
/// A streaming direction idle this long gives its pipe back to the pool.
const COOL_AFTER: Duration = Duration::from_secs(1);
/// How often a worker checks idle timeouts and cut tokens on its own.
const TICK: Duration = Duration::from_millis(100);
const RING_ENTRIES: u32 = 1024;
const CQ_ENTRIES: u32 = 65536;

/// user_data values that are not session operations.
const UD_WAKE: u64 = u64::MAX;
const UD_TICK: u64 = u64::MAX - 1;

/// What an operation was, in the low bits of its user_data; above them is the index of the
/// session (`conns`), of the listener (`Accept`) or of the queued client (`Connect*`).
/// The session operations come first: they have a bit each in `Conn::ops`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// A plain poll: the direction splices inline when it fires.
    InPoll = 0,
    SpliceIn = 1,
    SpliceOut = 2,
    OutPoll = 3,
    /// The poll at the head of a `ChainPoll -> SpliceIn -> SpliceOut` chain.
    ChainPoll = 4,
    Cancel = 5,
    Accept = 6,
    Connect = 7,
    ConnectTimeout = 8,
}

/// The session operations, in `end`'s cancelling order.
const SESSION_OPS: [Op; 5] = [
    Op::InPoll,
    Op::ChainPoll,
    Op::SpliceIn,
    Op::SpliceOut,
    Op::OutPoll,
];

const OP_BITS: u32 = 5;

fn user_data(slot: usize, dir: usize, op: Op) -> u64 {
    ((slot as u64) << OP_BITS) | ((op as u64) << 1) | dir as u64
}

fn decode(ud: u64) -> (usize, usize, Op) {
    let dir = (ud & 1) as usize;
    let op = match (ud >> 1) & 0b1111 {
        0 => Op::InPoll,
        1 => Op::SpliceIn,
        2 => Op::SpliceOut,
        3 => Op::OutPoll,
        4 => Op::ChainPoll,
        5 => Op::Cancel,
        6 => Op::Accept,
        7 => Op::Connect,
        _ => Op::ConnectTimeout,
    };
    ((ud >> OP_BITS) as usize, dir, op)
}

/// Bit of `Conn::ops` for a session operation in flight.
fn op_bit(dir: usize, op: Op) -> u16 {
    1 << ((op as u16) * 2 + dir as u16)
}

/// Why the uring path cannot run here (the text goes into the fallback log line).
#[derive(Debug, thiserror::Error)]
pub enum UringError {
    /// The probe ring could not be set up; `why` reads the errno.
    #[error("{why}: {error}")]
    Setup { why: &'static str, error: io::Error },
    #[error("cannot probe io_uring opcodes (kernel older than 5.6?): {0}")]
    Probe(io::Error),
    #[error("io_uring has no {0} operation on this kernel")]
    Unsupported(&'static str),
    #[error("eventfd: {0}")]
    Eventfd(rustix::io::Errno),
    #[error("cannot start a uring worker thread: {0}")]
    Thread(io::Error),
    #[error("uring worker died while starting")]
    WorkerDied,
    /// A worker's own ring could not be set up.
    #[error("io_uring_setup: {0}")]
    Ring(io::Error),
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
}

impl Uring {
    /// Probes, then starts `n` worker threads, each with its own ring and at most `pipes` pipes
    /// open (its share of the descriptor budget).
    pub fn start(n: usize, pipes: usize) -> Result<Uring, UringError> {
        probe()?;
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let wake =
                rustix::event::eventfd(0, EventfdFlags::CLOEXEC).map_err(UringError::Eventfd)?;
            let wake = Arc::new(wake);
            let (tx, rx) = mpsc::channel();
            let (ready_tx, ready_rx) = mpsc::channel();
            let w = Arc::clone(&wake);
            std::thread::Builder::new()
                .name(format!("uring-{i}"))
                .spawn(move || match Worker::new(rx, w, pipes) {
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
        })
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
            return;
        };
        let worker = &self.workers[self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len()];
        let stats = Arc::clone(&s.svc.stats);
        let job = Job {
            fds: [client.into(), server.into()],
            cut: s.cut,
            _permit: s.permit,
            svc: s.svc,
        };
        if !worker.send(Msg::Session(Box::new(job))) {
            tracing::error!("uring worker is gone; closing the session");
            stats.end(End::Reset);
        }
    }

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

/// A pipe from the pool: read end, write end, capacity in bytes.
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    size: u32,
}

/// One direction of a session: `src` -> pipe -> `dst`.
#[derive(Default)]
struct Dir {
    pipe: Option<Pipe>,
    /// Bytes in the pipe not yet written to `dst`.
    pending: u32,
    /// Result of the last splice into the pipe.
    in_res: i32,
    /// Result of a chained splice out of the pipe that reported before the splice into it (the
    /// completions of a chain are not relied on to arrive in order).
    out_res: Option<i32>,
    /// EOF seen and propagated.
    done: bool,
    /// Its linked poll was cancelled to give the idle pipe back (see `cool_down`).
    cooling: bool,
    /// Bytes read without a pipe (see `copy_inline`) and not yet written: then `pending` counts
    /// these, and the direction holds no pipe.
    spill: Vec<u8>,
}

struct Conn {
    /// The sockets, limits and tokens handed over; dropped (sockets closed, permit given back)
    /// when the session is freed.
    job: Job,
    dirs: [Dir; 2],
    /// Operations in flight, one bit per (op, direction).
    ops: u16,
    /// Last activity of the client (0) and of the server (1).
    last: [Instant; 2],
    /// Set once the session is being torn down.
    ending: Option<End>,
}

/// A listener on this worker's ring.
struct Listener {
    listen: Listen,
    /// Its multishot accept is in flight.
    armed: bool,
    /// Accepting failed (EMFILE...): re-armed at the first tick after this.
    paused_until: Option<Instant>,
    /// Being closed: once `armed` is false, the listener is dropped.
    closing: bool,
}

/// A client accepted and admitted, waiting for a master or connecting to it.
struct Queued {
    client: OwnedFd,
    peer: SocketAddr,
    permit: Permit,
    svc: Arc<ServiceRuntime>,
    deadline: Instant,
    /// Generation of the last master it failed to reach.
    after: Option<u64>,
    dial: Option<Dial>,
}

/// A connect in flight.
struct Dial {
    server: OwnedFd,
    route: Route,
    /// Read by the kernel while the `CONNECT` and `LINK_TIMEOUT` are prepared; kept until the
    /// connect completes all the same.
    _addr: Box<SockAddr>,
    _timeout: Box<types::Timespec>,
}

struct Worker {
    ring: IoUring,
    conns: Slab<Conn>,
    listeners: Slab<Listener>,
    queued: Slab<Queued>,
    accept_log: RateLimit,
    pipes: Vec<Pipe>,
    /// Pipes currently held by directions.
    held: usize,
    /// Pipes this worker may have open, pooled and held together.
    pipes_max: usize,
    pipe_log: RateLimit,
    rx: mpsc::Receiver<Msg>,
    wake: Arc<OwnedFd>,
    wake_buf: Box<[u8; 8]>,
    tick: Box<types::Timespec>,
    cqes: Vec<(u64, i32, u32)>,
    /// Clients admitted in this batch of completions, routed (and so connected) only after the
    /// whole batch: a burst of accepts installs many descriptors at once, and the refused ones
    /// must be closed before the admitted ones open sockets to the master.
    admitted: Vec<usize>,
    sweep: bool,
}

impl Worker {
    fn new(
        rx: mpsc::Receiver<Msg>,
        wake: Arc<OwnedFd>,
        pipes_max: usize,
    ) -> Result<Worker, UringError> {
        // The ring is created on its own thread: with SINGLE_ISSUER and DEFER_TASKRUN, completions
        // are processed only when this thread asks for them, without cross-CPU task work.
        let ring = IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(RING_ENTRIES)
            .or_else(|_| {
                IoUring::builder()
                    .setup_cqsize(CQ_ENTRIES)
                    .build(RING_ENTRIES)
            })
            .map_err(UringError::Ring)?;
        let mut w = Worker {
            ring,
            conns: Slab::new(),
            listeners: Slab::new(),
            queued: Slab::new(),
            accept_log: RateLimit::default(),
            pipes: Vec::new(),
            held: 0,
            pipes_max: pipes_max.max(1),
            pipe_log: RateLimit::default(),
            rx,
            wake,
            wake_buf: Box::new([0; 8]),
            tick: Box::new(types::Timespec::from(TICK)),
            cqes: Vec::with_capacity(1024),
            admitted: Vec::new(),
            sweep: false,
        };
        w.arm_wake();
        w.arm_tick();
        Ok(w)
    }

    fn run(&mut self) {
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INTR.raw_os_error()) => {}
                // EBUSY: the completion queue overflowed; reaping below makes room.
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {}
                Err(e) => {
                    tracing::error!(error = %e, "io_uring_enter failed; uring worker stops");
                    return;
                }
            }
            self.cqes.clear();
            self.cqes.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            let cqes = std::mem::take(&mut self.cqes);
            for &(ud, res, flags) in &cqes {
                match ud {
                    UD_WAKE => self.on_wake(res),
                    UD_TICK => {
                        self.sweep = true;
                        self.arm_tick();
                    }
                    _ => match decode(ud) {
                        (slot, _, Op::Accept) => self.on_accept(slot, res, flags),
                        (slot, _, Op::Connect) => self.on_connect(slot, res),
                        // The cancelled operation reports on its own; a linked timeout's result
                        // shows in the connect's (-ECANCELED when it fired).
                        (_, _, Op::Cancel | Op::ConnectTimeout) => {}
                        (slot, dir, op) => self.on_op(slot, dir, op, res),
                    },
                }
            }
            self.cqes = cqes;
            for idx in std::mem::take(&mut self.admitted) {
                if self.queued.get(idx).is_some_and(|q| q.dial.is_none()) {
                    self.route(idx);
                }
            }
            if std::mem::take(&mut self.sweep) {
                self.check_all();
            }
        }
    }

    /// Pushes entries as one unit (a linked chain must not be split), submitting to make room.
    fn push(&mut self, entries: &[squeue::Entry]) {
        loop {
            // SAFETY: every buffer an entry points to (the eventfd buffer, the timespecs, a
            // connect's address) is boxed in this worker until its operation completed, and the
            // kernel copies addresses and timespecs when it prepares the entry anyway; fds stay
            // open until the ops on them have completed (a session is freed only when `ops` is
            // empty, a listener only after its accept's last completion, a dial after its connect).
            if unsafe { self.ring.submission().push_multiple(entries) }.is_ok() {
                return;
            }
            if let Err(e) = self.ring.submit() {
                tracing::error!(error = %e, "io_uring submit failed while the queue was full");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    fn arm_wake(&mut self) {
        let e = opcode::Read::new(
            types::Fd(self.wake.as_raw_fd()),
            self.wake_buf.as_mut_ptr(),
            8,
        )
        .build()
        .user_data(UD_WAKE);
        self.push(&[e]);
    }

    fn arm_tick(&mut self) {
        let e = opcode::Timeout::new(&*self.tick).build().user_data(UD_TICK);
        self.push(&[e]);
    }

    fn on_wake(&mut self, res: i32) {
        if res < 0 && res != -rustix::io::Errno::INTR.raw_os_error() {
            tracing::error!(error = %io::Error::from_raw_os_error(-res), "eventfd read failed");
        }
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Msg::Listen(l) => {
                    let idx = self.listeners.insert(Listener {
                        listen: *l,
                        armed: false,
                        paused_until: None,
                        closing: false,
                    });
                    self.rearm(idx);
                }
                Msg::Session(job) => self.add(*job),
                Msg::Sweep => self.sweep = true,
            }
        }
        self.arm_wake();
    }

    fn add(&mut self, job: Job) {
        let now = Instant::now();
        let slot = self.conns.insert(Conn {
            job,
            dirs: [Dir::default(), Dir::default()],
            ops: 0,
            last: [now, now],
            ending: None,
        });
        self.poll_in(slot, 0);
        self.poll_in(slot, 1);
    }

    fn fd(&self, slot: usize, side: usize) -> types::Fd {
        types::Fd(self.conns[slot].job.fds[side].as_raw_fd())
    }

    fn start(&mut self, slot: usize, dir: usize, op: Op, e: squeue::Entry) -> squeue::Entry {
        self.conns[slot].ops |= op_bit(dir, op);
        e.user_data(user_data(slot, dir, op))
    }

    /// Waits for bytes (or EOF, or an error) on the direction's source.
    fn poll_in(&mut self, slot: usize, dir: usize) {
        let e = opcode::PollAdd::new(self.fd(slot, dir), PollFlags::IN.bits().into()).build();
        let e = self.start(slot, dir, Op::InPoll, e);
        self.push(&[e]);
    }

    /// Bytes (or EOF, or an error) are waiting on the direction's source: splices them through
    /// the pipe here and now, non-blocking, then lets `after_out` decide what comes next.
    fn splice_inline(&mut self, slot: usize, dir: usize) {
        if self.conns[slot].dirs[dir].pipe.is_none() {
            match self.take_pipe() {
                Ok(p) => self.conns[slot].dirs[dir].pipe = Some(p),
                Err(e) => {
                    let (held, max) = (self.held, self.pipes_max);
                    self.pipe_log.log(|suppressed| {
                        tracing::warn!(error = %e, held, max, suppressed,
                            "no pipe free (slow readers hold them?); copying through userspace");
                    });
                    return self.copy_inline(slot, dir);
                }
            }
        }
        let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
        let res = |r: rustix::io::Result<usize>| match r {
            Ok(n) => i32::try_from(n).unwrap_or(i32::MAX),
            Err(e) => -e.raw_os_error(),
        };
        let Conn {
            job, dirs, last, ..
        } = &mut self.conns[slot];
        let d = &mut dirs[dir];
        let pipe = d
            .pipe
            .as_ref()
            .expect("a direction that splices holds a pipe");
        d.in_res = res(rustix::pipe::splice(
            &job.fds[dir],
            None,
            &pipe.w,
            None,
            pipe.size as usize,
            flags,
        ));
        let mut out = 0;
        if d.in_res > 0 {
            d.pending = d.in_res.unsigned_abs();
            last[dir] = Instant::now();
            out = res(rustix::pipe::splice(
                &pipe.r,
                None,
                &job.fds[1 - dir],
                None,
                d.pending as usize,
                flags,
            ));
        }
        self.after_out(slot, dir, out);
    }

    /// The direction's bytes without a pipe (the worker's pipe share is used up, typically by
    /// slow readers holding bytes in theirs): one non-blocking `recv` of at most `COPY_CHUNK`
    /// into a buffer and a `send` of it, as HAProxy falls back to its buffers when `maxpipes`
    /// is reached. What the destination does not take waits in `spill` (at most `COPY_CHUNK`
    /// per direction) and goes out on the next `POLLOUT`, before anything more is read.
    fn copy_inline(&mut self, slot: usize, dir: usize) {
        let mut buf = [0u8; COPY_CHUNK];
        let Conn {
            job, dirs, last, ..
        } = &mut self.conns[slot];
        let d = &mut dirs[dir];
        let mut out = 0;
        match rustix::net::recv(&job.fds[dir], &mut buf, rustix::net::RecvFlags::DONTWAIT) {
            Ok((n, _)) => {
                d.in_res = i32::try_from(n).unwrap_or(i32::MAX);
                if n > 0 {
                    d.pending = d.in_res.unsigned_abs();
                    last[dir] = Instant::now();
                    job.svc
                        .stats
                        .bytes_copied_in_userspace
                        .fetch_add(n as u64, Ordering::Relaxed);
                    let flags = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
                    let sent = match rustix::net::send(&job.fds[1 - dir], &buf[..n], flags) {
                        Ok(m) => m,
                        Err(e) => {
                            out = -e.raw_os_error();
                            0
                        }
                    };
                    d.spill.extend_from_slice(&buf[sent..n]);
                    if sent > 0 {
                        out = i32::try_from(sent).unwrap_or(i32::MAX);
                    }
                }
            }
            Err(e) => d.in_res = -e.raw_os_error(),
        }
        self.after_out(slot, dir, out);
    }

    /// Sends what a copying direction could not send before (see `copy_inline`), until the
    /// destination would block; then lets `after_out` decide.
    fn send_spill(&mut self, slot: usize, dir: usize) {
        let Conn { job, dirs, .. } = &mut self.conns[slot];
        let d = &mut dirs[dir];
        let flags = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
        let (mut sent, mut err) = (0usize, 0i32);
        while sent < d.spill.len() {
            match rustix::net::send(&job.fds[1 - dir], &d.spill[sent..], flags) {
                Ok(m) => sent += m,
                Err(e) => {
                    err = -e.raw_os_error();
                    break;
                }
            }
        }
        d.spill.drain(..sent);
        let res = match sent {
            0 => err,
            n => i32::try_from(n).unwrap_or(i32::MAX),
        };
        self.after_out(slot, dir, res);
    }

    /// Splices from the source into the (empty, held) pipe and, hard-linked, from the pipe to the
    /// destination.
    fn splice_in_out(&mut self, slot: usize, dir: usize) {
        let [a, b] = self.splices(slot, dir);
        self.push(&[a, b]);
    }

    /// `SPLICE(src -> pipe)` hard-linked to `SPLICE(pipe -> dst)`, both marked in flight: the
    /// second runs whatever the first returns, so a short or failed read is decided on in
    /// `after_out`.
    fn splices(&mut self, slot: usize, dir: usize) -> [squeue::Entry; 2] {
        let flags = (SpliceFlags::NONBLOCK | SpliceFlags::MOVE).bits();
        let (src, dst) = (self.fd(slot, dir), self.fd(slot, 1 - dir));
        let pipe = self.conns[slot].dirs[dir]
            .pipe
            .as_ref()
            .expect("a direction that splices holds a pipe");
        let (pr, pw) = (types::Fd(pipe.r.as_raw_fd()), types::Fd(pipe.w.as_raw_fd()));
        let len = pipe.size;
        let a = opcode::Splice::new(src, -1, pw, -1, len)
            .flags(flags)
            .build()
            .flags(squeue::Flags::IO_HARDLINK);
        let a = self.start(slot, dir, Op::SpliceIn, a);
        let b = opcode::Splice::new(pr, -1, dst, -1, len)
            .flags(flags)
            .build();
        let b = self.start(slot, dir, Op::SpliceOut, b);
        [a, b]
    }

    /// A streaming direction: waits for bytes and splices them through its pipe in one linked
    /// chain, without a trip through this thread between the poll and the splices.
    fn poll_splice(&mut self, slot: usize, dir: usize) {
        let p = opcode::PollAdd::new(self.fd(slot, dir), PollFlags::IN.bits().into())
            .build()
            .flags(squeue::Flags::IO_LINK);
        let p = self.start(slot, dir, Op::ChainPoll, p);
        let [a, b] = self.splices(slot, dir);
        self.push(&[p, a, b]);
    }

    /// Writes what is left in the pipe.
    fn splice_out(&mut self, slot: usize, dir: usize) {
        if !self.conns[slot].dirs[dir].spill.is_empty() {
            return self.send_spill(slot, dir);
        }
        let flags = (SpliceFlags::NONBLOCK | SpliceFlags::MOVE).bits();
        let dst = self.fd(slot, 1 - dir);
        let d = &self.conns[slot].dirs[dir];
        let pipe = d.pipe.as_ref().expect("pending bytes live in a pipe");
        let e = opcode::Splice::new(types::Fd(pipe.r.as_raw_fd()), -1, dst, -1, d.pending)
            .flags(flags)
            .build();
        let e = self.start(slot, dir, Op::SpliceOut, e);
        self.push(&[e]);
    }

    /// Waits until the destination can take more.
    fn poll_out(&mut self, slot: usize, dir: usize) {
        let e = opcode::PollAdd::new(self.fd(slot, 1 - dir), PollFlags::OUT.bits().into()).build();
        let e = self.start(slot, dir, Op::OutPoll, e);
        self.push(&[e]);
    }

    /// (Re-)arms a listener's multishot accept, unless it is armed, paused or closing (then, once
    /// its accept has reported for the last time, it is dropped and its socket closed).
    fn rearm(&mut self, idx: usize) {
        let l = &mut self.listeners[idx];
        if l.armed {
            return;
        }
        if l.closing {
            self.listeners.remove(idx);
            return;
        }
        if l.paused_until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        l.paused_until = None;
        l.armed = true;
        let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        let e = opcode::AcceptMulti::new(types::Fd(l.listen.fd.as_raw_fd()))
            .flags(flags)
            .build()
            .user_data(user_data(idx, 0, Op::Accept));
        self.push(&[e]);
    }

    fn on_accept(&mut self, idx: usize, res: i32, flags: u32) {
        let Some(l) = self.listeners.get_mut(idx) else {
            tracing::error!(idx, "accept completion for an unknown listener");
            return;
        };
        if !io_uring::cqueue::more(flags) {
            l.armed = false;
        }
        if res >= 0 {
            // SAFETY: a successful accept returns a new descriptor that nothing else owns.
            let client = unsafe { OwnedFd::from_raw_fd(res) };
            if !l.closing {
                let svc = Arc::clone(&l.listen.runtimes.borrow());
                self.admit(svc, client);
            }
        } else if !l.closing && res != -rustix::io::Errno::CANCELED.raw_os_error() {
            // EMFILE and friends: pause rather than spin on a connection that stays queued.
            let svc = Arc::clone(&l.listen.runtimes.borrow());
            svc.accept_failed(&self.accept_log, &io::Error::from_raw_os_error(-res));
            if !l.armed {
                l.paused_until = Some(Instant::now() + ACCEPT_PAUSE);
            }
        }
        self.rearm(idx);
    }

    /// Admits a client (the shared gate) and routes it.
    fn admit(&mut self, svc: Arc<ServiceRuntime>, client: OwnedFd) {
        // A client that reset before we got here has no peer any more: nothing to do.
        let Some(peer) = SockRef::from(&client)
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
        else {
            return;
        };
        let permit = match svc.gate.admit(peer) {
            Ok(p) => p,
            Err(why) => return svc.refused(peer, why),
        };
        let idx = self.queued.insert(Queued {
            client,
            peer,
            permit,
            deadline: svc.queue_deadline(),
            svc,
            after: None,
            dial: None,
        });
        self.admitted.push(idx);
    }

    /// Connects a queued client to its master, leaves it waiting for one (it is looked at again
    /// when routes change and at every tick), or gives up on it.
    fn route(&mut self, idx: usize) {
        let q = &self.queued[idx];
        match q.svc.next(q.after, q.deadline) {
            Next::Wait => {}
            Next::GiveUp(why) => {
                let q = self.queued.remove(idx);
                q.svc.give_up(q.peer, why);
            }
            Next::Connect(route) => self.dial(idx, route),
        }
    }

    /// `CONNECT` to the master, linked to a `LINK_TIMEOUT` of `timeout.connect`.
    fn dial(&mut self, idx: usize, route: Route) {
        let q = &mut self.queued[idx];
        let ty = socket2::Type::STREAM.nonblocking().cloexec();
        let domain = socket2::Domain::for_address(route.master);
        let server = match socket2::Socket::new(domain, ty, Some(socket2::Protocol::TCP)) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(service = %q.svc.name, error = %e, "cannot open a socket to the master");
                q.after = Some(route.generation);
                return self.route(idx);
            }
        };
        // Redis is request/response: never hold a small reply back for Nagle.
        let _ = server.set_nodelay(true);
        let addr = Box::new(SockAddr::from(route.master));
        let timeout = Box::new(types::Timespec::from(q.svc.timeouts.connect));
        let c = opcode::Connect::new(types::Fd(server.as_raw_fd()), addr.as_ptr(), addr.len())
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(user_data(idx, 0, Op::Connect));
        let t = opcode::LinkTimeout::new(&*timeout)
            .build()
            .user_data(user_data(idx, 0, Op::ConnectTimeout));
        q.dial = Some(Dial {
            server: server.into(),
            route,
            _addr: addr,
            _timeout: timeout,
        });
        self.push(&[c, t]);
    }

    fn on_connect(&mut self, idx: usize, res: i32) {
        let Some(dial) = self.queued.get_mut(idx).and_then(|q| q.dial.take()) else {
            tracing::error!(idx, "connect completion for an unknown client");
            return;
        };
        if res < 0 {
            let q = &mut self.queued[idx];
            let error = match -res {
                libc::ECANCELED => "timed out".to_string(),
                e => io::Error::from_raw_os_error(e).to_string(),
            };
            tracing::debug!(service = %q.svc.name, master = %dial.route.master, error, "connect failed");
            q.after = Some(dial.route.generation);
            return self.route(idx);
        }
        let q = self.queued.remove(idx);
        if !q.svc.still_routed(&dial.route) {
            return;
        }
        let _ = SockRef::from(&q.client).set_nodelay(true);
        self.add(Job {
            fds: [q.client, dial.server],
            cut: dial.route.cut,
            _permit: q.permit,
            svc: q.svc,
        });
    }

    fn on_op(&mut self, slot: usize, dir: usize, op: Op, res: i32) {
        let Some(c) = self.conns.get_mut(slot) else {
            tracing::error!(slot, ?op, "completion for an unknown session");
            return;
        };
        c.ops &= !op_bit(dir, op);
        if c.ending.is_some() {
            // A splice that completed anyway moved bytes: keep the pipe's count right, so that
            // `finish` never puts a pipe with bytes in it back into the pool (the next session
            // to take it would receive them).
            let d = &mut c.dirs[dir];
            match op {
                Op::SpliceIn if res > 0 => d.pending += res.unsigned_abs(),
                Op::SpliceOut if res > 0 => d.pending -= res.unsigned_abs().min(d.pending),
                _ => {}
            }
            if c.ops == 0 {
                self.finish(slot);
            }
            return;
        }
        match op {
            // The splices linked behind it report, cancelled or not.
            Op::ChainPoll => {}
            Op::InPoll | Op::OutPoll if res < 0 => self.end(slot, End::Reset),
            Op::InPoll => self.splice_inline(slot, dir),
            Op::OutPoll => self.splice_out(slot, dir),
            Op::SpliceIn => {
                let d = &mut c.dirs[dir];
                d.in_res = res;
                if res > 0 {
                    d.pending = res.unsigned_abs();
                    c.last[dir] = Instant::now();
                }
                // Decide once both splices of the chain reported.
                if let Some(out) = d.out_res.take() {
                    self.after_out(slot, dir, out);
                }
            }
            Op::SpliceOut if c.ops & op_bit(dir, Op::SpliceIn) != 0 => {
                c.dirs[dir].out_res = Some(res);
            }
            Op::SpliceOut => self.after_out(slot, dir, res),
            Op::Cancel | Op::Accept | Op::Connect | Op::ConnectTimeout => {}
        }
    }

    /// Decides what a direction does next once a splice out of its pipe completed (`res`; 0 when
    /// nothing was read, and `in_res` says why).
    fn after_out(&mut self, slot: usize, dir: usize, res: i32) {
        let eagain = -rustix::io::Errno::AGAIN.raw_os_error();
        let c = &mut self.conns[slot];
        let d = &mut c.dirs[dir];
        if res > 0 {
            let n = res.unsigned_abs().min(d.pending);
            d.pending -= n;
            c.last[1 - dir] = Instant::now();
            let counter = if dir == 0 {
                &c.job.svc.stats.bytes_client_to_server
            } else {
                &c.job.svc.stats.bytes_server_to_client
            };
            counter.fetch_add(u64::from(n), Ordering::Relaxed);
        }
        let in_res = d.in_res;
        if std::mem::take(&mut d.cooling)
            && in_res == -rustix::io::Errno::CANCELED.raw_os_error()
            && d.pending == 0
        {
            // `cool_down` cancelled the chain of an idle direction: back to a plain poll.
            let pipe = d.pipe.take();
            self.give_pipe(pipe);
            return self.poll_in(slot, dir);
        }
        if d.pending > 0 {
            if res < 0 && res != eagain {
                return self.end(slot, End::Reset); // the destination failed (reset, EPIPE)
            }
            return if res == eagain {
                self.poll_out(slot, dir)
            } else {
                self.splice_out(slot, dir) // short write: try again at once
            };
        }
        if in_res < 0 && in_res != eagain {
            return self.end(slot, End::Reset); // the source failed (reset)
        }
        if in_res == 0 {
            // EOF after every earlier byte was written: propagate the half-close.
            d.done = true;
            let pipe = d.pipe.take();
            self.give_pipe(pipe);
            let c = &self.conns[slot];
            match rustix::net::shutdown(&c.job.fds[1 - dir], rustix::net::Shutdown::Write) {
                Ok(()) | Err(rustix::io::Errno::NOTCONN) => {}
                Err(_) => return self.end(slot, End::Reset),
            }
            if c.dirs[1 - dir].done {
                self.end(slot, End::Closed);
            }
            return;
        }
        if d.pipe.as_ref().is_some_and(|p| in_res == p.size as i32) {
            // The pipe came back full: more is probably waiting. Bulk goes on in ring splices,
            // which io-wq runs beside this thread, without a poll in between.
            return self.splice_in_out(slot, dir);
        }
        if in_res >= STREAM_READ && self.held <= PIPES_KEPT_MAX {
            // A stream: keep the pipe, and link the next poll to its splices.
            return self.poll_splice(slot, dir);
        }
        // Drained: the pipe goes back to the pool and a poll waits for the next bytes, which
        // are spliced inline.
        let pipe = d.pipe.take();
        self.give_pipe(pipe);
        self.poll_in(slot, dir);
    }

    /// Starts tearing a session down: cancels what is in flight, then `finish` closes it.
    fn end(&mut self, slot: usize, how: End) {
        let c = &mut self.conns[slot];
        if c.ending.is_some() {
            return;
        }
        c.ending = Some(how);
        let ops = c.ops;
        if ops == 0 {
            return self.finish(slot);
        }
        for dir in 0..2 {
            for op in SESSION_OPS {
                if ops & op_bit(dir, op) != 0 {
                    let e = opcode::AsyncCancel::new(user_data(slot, dir, op))
                        .build()
                        .user_data(user_data(slot, dir, Op::Cancel));
                    self.push(&[e]);
                }
            }
        }
    }

    /// Closes a session with no operation in flight and reports how it ended.
    fn finish(&mut self, slot: usize) {
        let mut c = self.conns.remove(slot);
        let how = c.ending.unwrap_or(End::Reset);
        if how != End::Closed {
            // A cut, timed out or failed session ends with a reset on both sides, so neither peer
            // mistakes it for a complete exchange.
            for fd in &c.job.fds {
                reset(fd);
            }
        }
        for d in &mut c.dirs {
            if d.pending == 0 {
                let pipe = d.pipe.take();
                self.give_pipe(pipe);
            } else if d.pipe.take().is_some() {
                self.held -= 1; // a pipe with bytes left in it is closed with the session
            }
        }
        c.job.svc.stats.end(how);
    }

    /// Ends sessions whose route was cut, or which were idle too long.
    fn check_all(&mut self) {
        let now = Instant::now();
        let mut ends = Vec::new();
        for (slot, c) in &self.conns {
            if c.ending.is_some() {
                continue;
            }
            let how = if c.job.cut.is_cancelled() {
                Some(cut_end(&c.job.svc))
            } else if now.saturating_duration_since(c.last[0]) >= c.job.timeout(0) {
                Some(End::ClientTimeout)
            } else if now.saturating_duration_since(c.last[1]) >= c.job.timeout(1) {
                Some(End::ServerTimeout)
            } else {
                None
            };
            if let Some(how) = how {
                ends.push((slot, how));
            }
        }
        for (slot, how) in ends {
            self.end(slot, how);
        }
        self.cool_down(now);
        self.check_queued();
        self.check_listeners();
    }

    /// Cancels the linked polls of directions idle for `COOL_AFTER`, so their pipes go back to
    /// the pool (in `after_out`, when the cancelled chain reports).
    fn cool_down(&mut self, now: Instant) {
        let mut cancel = Vec::new();
        for (slot, c) in &mut self.conns {
            if c.ending.is_some() {
                continue;
            }
            for (dir, d) in c.dirs.iter_mut().enumerate() {
                let chained = c.ops & op_bit(dir, Op::ChainPoll) != 0;
                let idle = now.saturating_duration_since(c.last[dir]) >= COOL_AFTER;
                if chained && idle && !d.cooling {
                    d.cooling = true;
                    cancel.push(user_data(slot, dir, Op::ChainPoll));
                }
            }
        }
        for ud in cancel {
            let (slot, dir, _) = decode(ud);
            let e =
                opcode::AsyncCancel::new(ud)
                    .build()
                    .user_data(user_data(slot, dir, Op::Cancel));
            self.push(&[e]);
        }
    }

    /// Routes queued clients whose master appeared, gives up on those whose time is up, and lets
    /// go of them all at shutdown.
    fn check_queued(&mut self) {
        let waiting: Vec<usize> = self
            .queued
            .iter()
            .filter(|(_, q)| q.dial.is_none())
            .map(|(i, _)| i)
            .collect();
        for idx in waiting {
            if self.queued[idx].svc.shutdown.is_cancelled() {
                self.queued.remove(idx);
            } else {
                self.route(idx);
            }
        }
    }

    /// Closes listeners that stopped accepting, re-arms paused ones.
    fn check_listeners(&mut self) {
        let all: Vec<usize> = self.listeners.iter().map(|(i, _)| i).collect();
        for idx in all {
            let l = &mut self.listeners[idx];
            if l.listen.accepting.is_cancelled() && !l.closing {
                l.closing = true;
                if l.armed {
                    let ud = user_data(idx, 0, Op::Accept);
                    let e = opcode::AsyncCancel::new(ud).build().user_data(user_data(
                        idx,
                        0,
                        Op::Cancel,
                    ));
                    self.push(&[e]);
                    continue;
                }
            }
            self.rearm(idx);
        }
    }

    /// A pipe for a direction: from the pool, or a new one while the worker is under its pipe
    /// budget (past it: EMFILE, without asking the kernel).
    fn take_pipe(&mut self) -> rustix::io::Result<Pipe> {
        if self.pipes.is_empty() && self.held >= self.pipes_max {
            return Err(rustix::io::Errno::MFILE);
        }
        let p = self.new_pipe()?;
        self.held += 1;
        Ok(p)
    }

    fn new_pipe(&mut self) -> rustix::io::Result<Pipe> {
        if let Some(p) = self.pipes.pop() {
            return Ok(p);
        }
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        // Best effort: past fs.pipe-user-pages-soft the kernel refuses and the pipe stays at its
        // default size; that still works, with more round trips.
        let size = match rustix::pipe::fcntl_setpipe_size(w.as_fd(), PIPE_SIZE) {
            Ok(n) => n,
            Err(_) => rustix::pipe::fcntl_getpipe_size(w.as_fd())?,
        };
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        Ok(Pipe { r, w, size })
    }

    /// Returns a drained pipe to the pool. A pipe that still holds bytes is closed instead
    /// (and logged as the bug it would be): pooled, its bytes would reach another session.
    fn give_pipe(&mut self, pipe: Option<Pipe>) {
        if let Some(p) = pipe {
            self.held -= 1;
            match rustix::io::ioctl_fionread(&p.r) {
                Ok(0)
                    if self.pipes.len()
                        < PIPE_POOL_MAX.min(self.pipes_max.saturating_sub(self.held)) =>
                {
                    self.pipes.push(p)
                }
                Ok(0) => {}
                left => tracing::error!(?left, "a pipe given back was not empty; closed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips_and_session_ops_have_distinct_bits() {
        let all = [
            Op::InPoll,
            Op::SpliceIn,
            Op::SpliceOut,
            Op::OutPoll,
            Op::ChainPoll,
            Op::Cancel,
            Op::Accept,
            Op::Connect,
            Op::ConnectTimeout,
        ];
        for slot in [0, 1, 4095, 1 << 40] {
            for dir in 0..2 {
                for op in all {
                    assert_eq!(decode(user_data(slot, dir, op)), (slot, dir, op));
                    assert!(user_data(slot, dir, op) < UD_TICK);
                }
            }
        }
        let mut bits = 0u16;
        for dir in 0..2 {
            for op in SESSION_OPS {
                assert_eq!(bits & op_bit(dir, op), 0, "{op:?} shares a bit");
                bits |= op_bit(dir, op);
            }
        }
    }
}
