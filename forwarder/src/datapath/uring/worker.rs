//! A uring worker: its ring, what it owns (sessions, listeners, queued clients, pipes) and its
//! loop, which submits, reaps completions and dispatches each to the front (`front.rs`:
//! accepts, connects) or to its session (`session.rs`). The single place where entries are
//! pushed to the submission queue is here, with what makes that sound.

// unsafe: pushing io_uring submission entries, whose pointers and fds the kernel acts on.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};
use slab::Slab;

use super::bufring::BufRing;
use super::ops::{decode, Op, UD_TICK, UD_WAKE};
use super::pipes::Pipes;
use super::state::{Conn, Listener, Queued};
use super::{Msg, UringError};
use crate::service::RateLimit;

/// How often a worker checks idle timeouts and cut tokens on its own.
const TICK: Duration = Duration::from_millis(100);
const RING_ENTRIES: u32 = 1024;
const CQ_ENTRIES: u32 = 65536;

pub(super) struct Worker {
    /// Declared (so dropped) before `bufs`, whose memory the kernel uses until the ring is gone.
    pub(super) ring: IoUring,
    pub(super) bufs: BufRing,
    pub(super) conns: Slab<Conn>,
    pub(super) listeners: Slab<Listener>,
    pub(super) queued: Slab<Queued>,
    pub(super) accept_log: RateLimit,
    pub(super) pipes: Pipes,
    pub(super) pipe_log: RateLimit,
    rx: mpsc::Receiver<Msg>,
    wake: Arc<OwnedFd>,
    wake_buf: Box<[u8; 8]>,
    tick: Box<types::Timespec>,
    cqes: Vec<(u64, i32, u32)>,
    /// Clients admitted in this batch of completions, routed (and so connected) only after the
    /// whole batch: a burst of accepts installs many descriptors at once, and the refused ones
    /// must be closed before the admitted ones open sockets to the master.
    pub(super) admitted: Vec<usize>,
    sweep: bool,
}

impl Worker {
    pub(super) fn new(
        rx: mpsc::Receiver<Msg>,
        wake: Arc<OwnedFd>,
        pipes_max: usize,
        pipes_held: Arc<std::sync::atomic::AtomicUsize>,
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
        let bufs = BufRing::new(&ring).map_err(UringError::BufRing)?;
        let mut w = Worker {
            ring,
            bufs,
            conns: Slab::new(),
            listeners: Slab::new(),
            queued: Slab::new(),
            accept_log: RateLimit::default(),
            pipes: Pipes::new(pipes_max, pipes_held),
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

    pub(super) fn run(&mut self) {
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
                        (slot, dir, Op::Recv) => self.on_recv(slot, dir, res, flags),
                        (slot, dir, Op::Send) => self.on_send(slot, dir, res),
                        // The cancelled operation reports on its own; a linked timeout's result
                        // shows in the connect's (-ECANCELED when it fired).
                        (_, _, Op::Cancel | Op::ConnectTimeout) => {}
                        (slot, dir, op) => self.on_op(slot, dir, op, res),
                    },
                }
            }
            self.cqes = cqes;
            self.route_admitted();
            if std::mem::take(&mut self.sweep) {
                self.check_all();
            }
        }
    }

    /// Pushes entries as one unit (a linked chain must not be split), submitting to make room.
    pub(super) fn push(&mut self, entries: &[squeue::Entry]) {
        loop {
            // SAFETY: every buffer an entry points to (the eventfd buffer, the timespecs, a
            // connect's address) is boxed in this worker until its operation completed (a send's
            // buffer is a provided buffer its direction holds until the send completed), and the
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
                Msg::Listen(l) => self.add_listener(*l),
                Msg::Session(job) => self.add(*job),
                Msg::Sweep => self.sweep = true,
            }
        }
        self.arm_wake();
    }

    /// Ends sessions whose route was cut or which were idle too long, gives idle streams' pipes
    /// back, routes or drops queued clients, and closes or re-arms listeners.
    fn check_all(&mut self) {
        let now = Instant::now();
        self.check_sessions(now);
        self.cool_down(now);
        self.check_queued();
        self.check_listeners();
    }
}
