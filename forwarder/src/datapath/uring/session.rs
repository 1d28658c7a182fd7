//! The sessions of a uring worker: their two directions on the ring (a plain poll and inline
//! splices, or a linked `POLL_ADD -> SPLICE -> SPLICE` chain for streams, or the copy fallback
//! through a spill buffer when no pipe is free), their completions, idle timeouts, cuts, and
//! teardown. What a direction does after each completion is decided by [`Flow::on`]
//! (`direction.rs`); this file submits and performs it.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types};
use rustix::event::PollFlags;
use rustix::pipe::SpliceFlags;

use super::direction::{Event, Outcome, Room, Step};
use super::ops::{decode, op_bit, user_data, Op, SESSION_OPS};
use super::state::{Conn, Dir};
use super::worker::Worker;
use super::Job;
use crate::datapath::{cut_end, reset};
use crate::metrics::End;

/// At most this much is read at once by a direction that found no pipe free (`copy_inline`).
const COPY_CHUNK: usize = 16 * 1024;
/// A streaming direction idle this long gives its pipe back to the pool.
const COOL_AFTER: Duration = Duration::from_secs(1);

impl Worker {
    /// Takes a session over: both directions wait for bytes.
    pub(super) fn add(&mut self, job: Job) {
        let now = Instant::now();
        let slot = self.conns.insert(Conn {
            job,
            dirs: [Dir::default(), Dir::default()],
            ops: 0,
            last: [now, now],
            ending: None,
        });
        self.recv(slot, 0);
        self.recv(slot, 1);
    }

    pub(super) fn fd(&self, slot: usize, side: usize) -> types::Fd {
        types::Fd(self.conns[slot].job.fds[side].as_raw_fd())
    }

    pub(super) fn start(
        &mut self,
        slot: usize,
        dir: usize,
        op: Op,
        e: squeue::Entry,
    ) -> squeue::Entry {
        self.conns[slot].ops |= op_bit(dir, op);
        e.user_data(user_data(slot, dir, op))
    }

    /// A completion of a session operation.
    pub(super) fn on_op(&mut self, slot: usize, dir: usize, op: Op, res: i32) {
        let Some(c) = self.conns.get_mut(slot) else {
            tracing::error!(slot, ?op, "completion for an unknown session");
            return;
        };
        c.ops &= !op_bit(dir, op);
        let ev = match op {
            Op::InPoll => Event::Readable(res),
            Op::OutPoll => Event::Writable(res),
            Op::ChainPoll => Event::ChainPolled,
            Op::SpliceIn => Event::SplicedIn(res),
            Op::SpliceOut => Event::SplicedOut {
                res,
                read_pending: c.ops & op_bit(dir, Op::SpliceIn) != 0,
            },
            // Message-mode operations report to `on_recv` and `on_send`.
            Op::Recv | Op::Send => return,
            Op::Cancel | Op::Accept | Op::Connect | Op::ConnectTimeout => return,
        };
        if c.ending.is_some() {
            // A splice that completed anyway moved bytes: keep the pipe's count right, so that
            // `finish` never puts a pipe with bytes in it back into the pool.
            c.dirs[dir].flow.settle(ev);
            if c.ops == 0 {
                self.finish(slot);
            }
            return;
        }
        if matches!(ev, Event::Readable(r) if r >= 0) && c.dirs[dir].pipe.is_none() {
            self.lend_pipe(slot, dir);
        }
        self.decide(slot, dir, ev);
    }

    /// Gives a direction whose source has bytes a pipe, if one is free (else it copies).
    fn lend_pipe(&mut self, slot: usize, dir: usize) {
        match self.pipes.take() {
            Ok(p) => self.conns[slot].dirs[dir].pipe = Some(p),
            Err(e) => {
                let (held, max) = (self.pipes.held(), self.pipes.max());
                self.pipe_log.log(|suppressed| {
                    tracing::warn!(error = %e, held, max, suppressed,
                        "no pipe free (slow readers hold them?); copying through userspace");
                });
            }
        }
    }

    /// Folds a completion into the direction (see [`Flow::on`]) and does what it decides.
    fn decide(&mut self, slot: usize, dir: usize, ev: Event) {
        let keep = self.pipes.may_keep();
        let c = &mut self.conns[slot];
        let d = &mut c.dirs[dir];
        let room = Room {
            pipe: d.pipe.as_ref().map(|p| p.size),
            keep,
        };
        let Outcome { step, read, wrote } = d.flow.on(ev, room);
        if read > 0 {
            c.last[dir] = Instant::now();
        }
        if wrote > 0 {
            c.last[1 - dir] = Instant::now();
            let counter = if dir == 0 {
                &c.job.svc.stats.bytes_client_to_server
            } else {
                &c.job.svc.stats.bytes_server_to_client
            };
            counter.fetch_add(u64::from(wrote), Ordering::Relaxed);
            if let Some(t) = c.job.trace.as_mut() {
                t.bytes[dir] += u64::from(wrote);
            }
        }
        if step.returns_pipe() {
            self.give_back(slot, dir);
        }
        match step {
            Step::Wait => {}
            Step::SpliceInline => self.splice_inline(slot, dir),
            Step::Copy => self.copy_inline(slot, dir),
            Step::PollOut => self.poll_out(slot, dir),
            Step::WriteRest => self.write_rest(slot, dir),
            // Bulk goes on in ring splices, which io-wq runs beside this thread, without a poll
            // in between.
            Step::Splice => {
                self.grow_pipe(slot, dir);
                self.splice_in_out(slot, dir);
            }
            Step::Stream => {
                self.grow_pipe(slot, dir);
                self.poll_splice(slot, dir);
            }
            // Drained: the next bytes come as messages again (`message.rs`).
            Step::Poll => self.recv(slot, dir),
            Step::HalfClose => self.half_close(slot, dir),
            Step::Reset => self.end(slot, End::Reset),
        }
    }

    /// EOF after every earlier byte was written: half-closes the destination, and ends the
    /// session cleanly once the other direction did the same.
    pub(super) fn half_close(&mut self, slot: usize, dir: usize) {
        let c = &self.conns[slot];
        match rustix::net::shutdown(&c.job.fds[1 - dir], rustix::net::Shutdown::Write) {
            Ok(()) | Err(rustix::io::Errno::NOTCONN) => {}
            Err(_) => return self.end(slot, End::Reset),
        }
        if c.dirs[1 - dir].flow.done {
            self.end(slot, End::Closed);
        }
    }

    /// A stream's pipe grows, so that each ring round trip moves more (see `Pipes::grow`).
    fn grow_pipe(&mut self, slot: usize, dir: usize) {
        if let Some(p) = self.conns[slot].dirs[dir].pipe.as_mut() {
            self.pipes.grow(p);
        }
    }

    /// Returns the direction's (drained) pipe to the pool.
    fn give_back(&mut self, slot: usize, dir: usize) {
        let pipe = self.conns[slot].dirs[dir].pipe.take();
        self.pipes.give(pipe);
    }

    /// Waits for bytes (or EOF, or an error) on the direction's source, for the pipe path.
    pub(super) fn poll_in(&mut self, slot: usize, dir: usize) {
        let e = opcode::PollAdd::new(self.fd(slot, dir), PollFlags::IN.bits().into()).build();
        let e = self.start(slot, dir, Op::InPoll, e);
        self.push(&[e]);
    }

    /// Bytes (or EOF, or an error) are waiting on the direction's source: splices them through
    /// its pipe here and now, non-blocking.
    fn splice_inline(&mut self, slot: usize, dir: usize) {
        let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
        let res = |r: rustix::io::Result<usize>| match r {
            Ok(n) => i32::try_from(n).unwrap_or(i32::MAX),
            Err(e) => -e.raw_os_error(),
        };
        let Conn { job, dirs, .. } = &self.conns[slot];
        let pipe = dirs[dir]
            .pipe
            .as_ref()
            .expect("a direction that splices holds a pipe");
        let read = res(rustix::pipe::splice(
            &job.fds[dir],
            None,
            &pipe.w,
            None,
            pipe.size as usize,
            flags,
        ));
        let mut wrote = 0;
        if read > 0 {
            wrote = res(rustix::pipe::splice(
                &pipe.r,
                None,
                &job.fds[1 - dir],
                None,
                read.unsigned_abs() as usize,
                flags,
            ));
        }
        let read = Some(read);
        self.decide(slot, dir, Event::Moved { read, wrote });
    }

    /// The direction's bytes without a pipe (the worker's pipe share is used up, typically by
    /// slow readers holding bytes in theirs): one non-blocking `recv` of at most `COPY_CHUNK`
    /// into a buffer and a `send` of it, as HAProxy falls back to its buffers when `maxpipes`
    /// is reached. What the destination does not take waits in `spill` (at most `COPY_CHUNK`
    /// per direction) and goes out on the next `POLLOUT`, before anything more is read.
    fn copy_inline(&mut self, slot: usize, dir: usize) {
        let mut buf = [0u8; COPY_CHUNK];
        let Conn { job, dirs, .. } = &mut self.conns[slot];
        let d = &mut dirs[dir];
        let mut wrote = 0;
        let read =
            match rustix::net::recv(&job.fds[dir], &mut buf, rustix::net::RecvFlags::DONTWAIT) {
                Ok((n, _)) => {
                    if n > 0 {
                        job.svc
                            .stats
                            .bytes_copied_in_userspace
                            .fetch_add(n as u64, Ordering::Relaxed);
                        let flags =
                            rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
                        let sent = match rustix::net::send(&job.fds[1 - dir], &buf[..n], flags) {
                            Ok(m) => m,
                            Err(e) => {
                                wrote = -e.raw_os_error();
                                0
                            }
                        };
                        d.spill.extend_from_slice(&buf[sent..n]);
                        if sent > 0 {
                            wrote = i32::try_from(sent).unwrap_or(i32::MAX);
                        }
                    }
                    i32::try_from(n).unwrap_or(i32::MAX)
                }
                Err(e) => -e.raw_os_error(),
            };
        let read = Some(read);
        self.decide(slot, dir, Event::Moved { read, wrote });
    }

    /// Sends what a copying direction could not send before (see `copy_inline`), until the
    /// destination would block.
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
        let wrote = match sent {
            0 => err,
            n => i32::try_from(n).unwrap_or(i32::MAX),
        };
        self.decide(slot, dir, Event::Moved { read: None, wrote });
    }

    /// Splices from the source into the (empty, held) pipe and, hard-linked, from the pipe to the
    /// destination.
    fn splice_in_out(&mut self, slot: usize, dir: usize) {
        let [a, b] = self.splices(slot, dir);
        self.push(&[a, b]);
    }

    /// `SPLICE(src -> pipe)` hard-linked to `SPLICE(pipe -> dst)`, both marked in flight: the
    /// second runs whatever the first returns, so a short or failed read is decided on when
    /// both reported.
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

    /// Writes what is left in the spill, or in the pipe.
    fn write_rest(&mut self, slot: usize, dir: usize) {
        if !self.conns[slot].dirs[dir].spill.is_empty() {
            return self.send_spill(slot, dir);
        }
        let flags = (SpliceFlags::NONBLOCK | SpliceFlags::MOVE).bits();
        let dst = self.fd(slot, 1 - dir);
        let d = &self.conns[slot].dirs[dir];
        let pipe = d.pipe.as_ref().expect("pending bytes live in a pipe");
        let e = opcode::Splice::new(types::Fd(pipe.r.as_raw_fd()), -1, dst, -1, d.flow.pending)
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

    /// Starts tearing a session down: cancels what is in flight, then `finish` closes it.
    pub(super) fn end(&mut self, slot: usize, how: End) {
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
    pub(super) fn finish(&mut self, slot: usize) {
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
            self.release_held(&mut d.held);
            let pipe = d.pipe.take();
            if d.flow.drained() {
                self.pipes.give(pipe);
            } else {
                self.pipes.close(pipe); // a pipe with bytes left in it is closed with the session
            }
        }
        c.job.svc.stats.end(how);
        c.job
            .svc
            .session_ended(c.job.trace.as_deref(), how.as_str());
    }

    /// Ends sessions whose route was cut, or which were idle too long.
    pub(super) fn check_sessions(&mut self, now: Instant) {
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
    }

    /// Cancels the linked polls of directions idle for `COOL_AFTER`, so their pipes go back to
    /// the pool (decided when the cancelled chain reports).
    pub(super) fn cool_down(&mut self, now: Instant) {
        let mut cancel = Vec::new();
        for (slot, c) in &mut self.conns {
            if c.ending.is_some() {
                continue;
            }
            for (dir, d) in c.dirs.iter_mut().enumerate() {
                let chained = c.ops & op_bit(dir, Op::ChainPoll) != 0;
                let idle = now.saturating_duration_since(c.last[dir]) >= COOL_AFTER;
                if chained && idle && !d.flow.cooling {
                    d.flow.cooling = true;
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
}
