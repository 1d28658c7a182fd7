//! The zero-copy data path: io_uring `SPLICE` through a pipe, on dedicated worker threads.
//!
//! Accepting, admission, queueing and connecting stay in `service.rs` (one code path for every
//! mode); this module takes over an established pair of sockets and moves the bytes without them
//! ever reaching userspace: per direction `POLL_ADD(src, POLLIN)`, then `SPLICE(src -> pipe)`
//! hard-linked to `SPLICE(pipe -> dst)`, repeated while the pipe comes back full.
//!
//! Rules that keep it correct:
//! - Sockets stay non-blocking, so a splice (which io_uring always runs on its io-wq threads) never
//!   parks a kernel thread on an idle socket; the poll is what waits.
//! - A direction reads from its source only when its pipe is empty, so bytes are never reordered,
//!   and EOF is seen only after every earlier byte was written: then `shutdown(dst, SHUT_WR)`.
//! - While a direction is busy it keeps its pipe (up to `PIPES_KEPT_MAX` per worker, so
//!   descriptors stay bounded) and its poll is linked to the splices
//!   (`POLL_ADD -> SPLICE -> SPLICE` in one chain, no trip through this thread between them).
//!   After `COOL_AFTER` without traffic the poll is cancelled and the pipe goes back to the pool;
//!   the next bytes are then waited for by a plain poll. An idle session holds two sockets and a
//!   slab entry, nothing else.
//! - A session is freed only when none of its operations is in flight (`ops` bit set), after
//!   cancelling them; then both sockets close, with a reset unless both directions ended cleanly.
//!
//! Control from tokio (new session, "look at the cut tokens") travels over a channel plus an
//! eventfd that each ring keeps a `READ` on, so neither side blocks the other.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};
use rustix::event::{EventfdFlags, PollFlags};
use rustix::pipe::SpliceFlags;
use slab::Slab;
use socket2::SockRef;
use tokio_util::sync::CancellationToken;

use super::Session;
use crate::admission::Permit;
use crate::metrics::{End, ServiceStats};

/// Bytes a pipe holds (`F_SETPIPE_SZ`): one splice moves at most this much.
const PIPE_SIZE: usize = 256 * 1024;
/// Empty pipes a worker keeps for reuse.
const PIPE_POOL_MAX: usize = 64;
/// Pipes a worker lets busy directions keep between bursts. Each pipe is two descriptors; past
/// this many, a drained direction gives its pipe back and waits with a plain poll, so thousands
/// of briefly active sessions cannot exhaust the descriptor limit.
const PIPES_KEPT_MAX: usize = 256;
/// How often a worker checks idle timeouts and cut tokens on its own.
const TICK: Duration = Duration::from_millis(100);
/// A direction idle this long gives its pipe back to the pool.
const COOL_AFTER: Duration = Duration::from_secs(1);
const RING_ENTRIES: u32 = 1024;
const CQ_ENTRIES: u32 = 65536;

/// user_data values that are not session operations.
const UD_WAKE: u64 = u64::MAX;
const UD_TICK: u64 = u64::MAX - 1;

/// What an operation was, in the low bits of its user_data; the slab index is above them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    InPoll = 0,
    SpliceIn = 1,
    SpliceOut = 2,
    OutPoll = 3,
    Cancel = 4,
}

const OP_BITS: u32 = 4;

fn user_data(slot: usize, dir: usize, op: Op) -> u64 {
    ((slot as u64) << OP_BITS) | ((op as u64) << 1) | dir as u64
}

fn decode(ud: u64) -> (usize, usize, Option<Op>) {
    let dir = (ud & 1) as usize;
    let op = match (ud >> 1) & 0b111 {
        0 => Some(Op::InPoll),
        1 => Some(Op::SpliceIn),
        2 => Some(Op::SpliceOut),
        3 => Some(Op::OutPoll),
        4 => Some(Op::Cancel),
        _ => None,
    };
    ((ud >> OP_BITS) as usize, dir, op)
}

/// Bit of `Conn::ops` for an operation in flight.
fn op_bit(dir: usize, op: Op) -> u8 {
    1 << ((op as u8) * 2 + dir as u8)
}

/// Checks that this kernel (and whatever sandbox we run in) lets us use io_uring with the
/// operations this path needs. The error says why not, for the fallback log line.
pub fn probe() -> Result<(), String> {
    use rustix::io::Errno;
    let ring = IoUring::new(8).map_err(|e| {
        let why = match Errno::from_io_error(&e) {
            Some(Errno::NOSYS) => "the kernel has no io_uring (ENOSYS)",
            Some(Errno::PERM) => {
                "io_uring_setup is forbidden (EPERM: a seccomp profile such as Docker's default, \
                 or sysctl kernel.io_uring_disabled)"
            }
            _ => "io_uring_setup failed",
        };
        format!("{why}: {e}")
    })?;
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("cannot probe io_uring opcodes (kernel older than 5.6?): {e}"))?;
    for (code, name) in [
        (opcode::Splice::CODE, "SPLICE"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
        (opcode::Read::CODE, "READ"),
        (opcode::Timeout::CODE, "TIMEOUT"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("io_uring has no {name} operation on this kernel"));
        }
    }
    Ok(())
}

/// A session handed to a worker; kept whole in its `Conn` until the session is freed.
struct Job {
    /// 0: client, 1: server. Direction 0 is client -> server, direction 1 server -> client.
    fds: [OwnedFd; 2],
    /// `timeout.client`, `timeout.server`.
    timeouts: [Duration; 2],
    cut: CancellationToken,
    shutdown: CancellationToken,
    stats: Arc<ServiceStats>,
    /// The `maxconn` slot and the service runtime, held until the session ends.
    _permit: Permit,
    _owner: Arc<dyn std::any::Any + Send + Sync>,
}

enum Msg {
    Session(Box<Job>),
    /// Some cut token was cancelled: look at all of them now rather than at the next tick.
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
    /// Probes, then starts `n` worker threads, each with its own ring.
    pub fn start(n: usize) -> Result<Uring, String> {
        probe()?;
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let wake = rustix::event::eventfd(0, EventfdFlags::CLOEXEC)
                .map_err(|e| format!("eventfd: {e}"))?;
            let wake = Arc::new(wake);
            let (tx, rx) = mpsc::channel();
            let (ready_tx, ready_rx) = mpsc::channel();
            let w = Arc::clone(&wake);
            std::thread::Builder::new()
                .name(format!("uring-{i}"))
                .spawn(move || match Worker::new(rx, w) {
                    Ok(mut worker) => {
                        let _ = ready_tx.send(Ok(()));
                        worker.run();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                })
                .map_err(|e| format!("cannot start a uring worker thread: {e}"))?;
            ready_rx
                .recv()
                .map_err(|_| "uring worker died while starting".to_string())??;
            workers.push(WorkerHandle { tx, wake });
        }
        Ok(Uring {
            workers,
            next: AtomicUsize::new(0),
        })
    }

    /// Hands the session to a worker, which owns it from then on and counts its end. A cut
    /// reaches the worker through `sweep` (and, as a backstop, its own tick).
    pub fn hand_off(&self, s: Session) {
        let (Ok(client), Ok(server)) = (s.client.into_std(), s.server.into_std()) else {
            s.stats.end(End::Reset);
            return;
        };
        let worker = &self.workers[self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len()];
        let stats = Arc::clone(&s.stats);
        let job = Job {
            fds: [client.into(), server.into()],
            timeouts: [s.timeouts.client, s.timeouts.server],
            cut: s.cut,
            shutdown: s.shutdown,
            stats: s.stats,
            _permit: s.permit,
            _owner: s.owner,
        };
        if !worker.send(Msg::Session(Box::new(job))) {
            tracing::error!("uring worker is gone; closing the session");
            stats.end(End::Reset);
        }
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
    /// EOF seen and propagated.
    done: bool,
    /// Its poll was cancelled to give the idle pipe back (see `cool_down`).
    cooling: bool,
}

struct Conn {
    /// The sockets, limits and tokens handed over; dropped (sockets closed, permit given back)
    /// when the session is freed.
    job: Job,
    dirs: [Dir; 2],
    /// Operations in flight, one bit per (op, direction).
    ops: u8,
    /// Last activity of the client (0) and of the server (1).
    last: [Instant; 2],
    /// Set once the session is being torn down.
    ending: Option<End>,
}

struct Worker {
    ring: IoUring,
    conns: Slab<Conn>,
    pipes: Vec<Pipe>,
    /// Pipes currently held by directions.
    held: usize,
    rx: mpsc::Receiver<Msg>,
    wake: Arc<OwnedFd>,
    wake_buf: Box<[u8; 8]>,
    tick: Box<types::Timespec>,
    cqes: Vec<(u64, i32)>,
    sweep: bool,
}

impl Worker {
    fn new(rx: mpsc::Receiver<Msg>, wake: Arc<OwnedFd>) -> Result<Worker, String> {
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
            .map_err(|e| format!("io_uring_setup: {e}"))?;
        let mut w = Worker {
            ring,
            conns: Slab::new(),
            pipes: Vec::new(),
            held: 0,
            rx,
            wake,
            wake_buf: Box::new([0; 8]),
            tick: Box::new(types::Timespec::from(TICK)),
            cqes: Vec::with_capacity(1024),
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
            self.cqes
                .extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            let cqes = std::mem::take(&mut self.cqes);
            for &(ud, res) in &cqes {
                match ud {
                    UD_WAKE => self.on_wake(res),
                    UD_TICK => {
                        self.sweep = true;
                        self.arm_tick();
                    }
                    _ => self.on_op(ud, res),
                }
            }
            self.cqes = cqes;
            if std::mem::take(&mut self.sweep) {
                self.check_all();
            }
        }
    }

    /// Pushes entries as one unit (a linked chain must not be split), submitting to make room.
    fn push(&mut self, entries: &[squeue::Entry]) {
        loop {
            // SAFETY: every buffer an entry points to (the eventfd buffer, the timespec) lives in
            // this worker, which outlives the ring's use of them; fds stay open until the ops on
            // them have completed (a session is freed only when `ops` is empty).
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

    /// Splices from the source into the pipe and, hard-linked, from the pipe to the destination.
    fn splice_in_out(&mut self, slot: usize, dir: usize) {
        if self.conns[slot].dirs[dir].pipe.is_none() {
            match self.take_pipe() {
                Ok(p) => self.conns[slot].dirs[dir].pipe = Some(p),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot get a pipe; resetting the session");
                    self.end(slot, End::Reset);
                    return;
                }
            }
        }
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

    /// A busy direction: waits for bytes and splices them through its pipe in one linked chain.
    fn poll_splice(&mut self, slot: usize, dir: usize) {
        let p = opcode::PollAdd::new(self.fd(slot, dir), PollFlags::IN.bits().into())
            .build()
            .flags(squeue::Flags::IO_LINK);
        let p = self.start(slot, dir, Op::InPoll, p);
        let [a, b] = self.splices(slot, dir);
        self.push(&[p, a, b]);
    }

    /// Writes what is left in the pipe.
    fn splice_out(&mut self, slot: usize, dir: usize) {
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

    fn on_op(&mut self, ud: u64, res: i32) {
        let (slot, dir, op) = decode(ud);
        let Some(op) = op else { return };
        if op == Op::Cancel {
            return; // the cancelled operation reports on its own
        }
        let Some(c) = self.conns.get_mut(slot) else {
            tracing::error!(ud, "completion for an unknown session");
            return;
        };
        c.ops &= !op_bit(dir, op);
        if c.ending.is_some() {
            if c.ops == 0 {
                self.finish(slot);
            }
            return;
        }
        let linked = c.ops & op_bit(dir, Op::SpliceIn) != 0;
        match op {
            // A linked poll: the splices behind it report, cancelled or not.
            Op::InPoll if linked => {}
            Op::InPoll | Op::OutPoll if res < 0 => self.end(slot, End::Reset),
            Op::InPoll => self.splice_in_out(slot, dir),
            Op::OutPoll => self.splice_out(slot, dir),
            Op::SpliceIn => {
                let d = &mut c.dirs[dir];
                d.in_res = res;
                if res > 0 {
                    d.pending = res.unsigned_abs();
                    c.last[dir] = Instant::now();
                }
                // The hard-linked SpliceOut always follows; decide there.
            }
            Op::SpliceOut => self.after_out(slot, dir, res),
            Op::Cancel => {}
        }
    }

    /// Decides what a direction does next once a splice out of its pipe completed.
    fn after_out(&mut self, slot: usize, dir: usize, res: i32) {
        let eagain = -rustix::io::Errno::AGAIN.raw_os_error();
        let c = &mut self.conns[slot];
        let d = &mut c.dirs[dir];
        if res > 0 {
            let n = res.unsigned_abs().min(d.pending);
            d.pending -= n;
            c.last[1 - dir] = Instant::now();
            let counter = if dir == 0 {
                &c.job.stats.bytes_client_to_server
            } else {
                &c.job.stats.bytes_server_to_client
            };
            counter.fetch_add(u64::from(n), Ordering::Relaxed);
        }
        let in_res = d.in_res;
        let cooling = std::mem::take(&mut d.cooling);
        if cooling && in_res == -rustix::io::Errno::CANCELED.raw_os_error() && d.pending == 0 {
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
            // The pipe came back full: more is probably waiting, skip the poll.
            return self.splice_in_out(slot, dir);
        }
        if self.held <= PIPES_KEPT_MAX {
            self.poll_splice(slot, dir);
        } else {
            let pipe = self.conns[slot].dirs[dir].pipe.take();
            self.give_pipe(pipe);
            self.poll_in(slot, dir);
        }
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
            for op in [Op::InPoll, Op::SpliceIn, Op::SpliceOut, Op::OutPoll] {
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
                let _ = SockRef::from(fd).set_linger(Some(Duration::ZERO));
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
        c.job.stats.end(how);
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
                Some(if c.job.shutdown.is_cancelled() {
                    End::Shutdown
                } else {
                    End::MasterChanged
                })
            } else if now.saturating_duration_since(c.last[0]) >= c.job.timeouts[0] {
                Some(End::ClientTimeout)
            } else if now.saturating_duration_since(c.last[1]) >= c.job.timeouts[1] {
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
                let chained =
                    c.ops & op_bit(dir, Op::InPoll) != 0 && c.ops & op_bit(dir, Op::SpliceIn) != 0;
                let idle = now.saturating_duration_since(c.last[dir]) >= COOL_AFTER;
                if chained && idle && !d.cooling {
                    d.cooling = true;
                    cancel.push(user_data(slot, dir, Op::InPoll));
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

    fn take_pipe(&mut self) -> rustix::io::Result<Pipe> {
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

    fn give_pipe(&mut self, pipe: Option<Pipe>) {
        if let Some(p) = pipe {
            self.held -= 1;
            if self.pipes.len() < PIPE_POOL_MAX {
                self.pipes.push(p);
            }
        }
    }
}
