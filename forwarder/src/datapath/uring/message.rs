//! Message-mode directions: what a session's bytes take by default. A multishot `RECV` picks a
//! buffer from the worker's provided-buffer ring (`bufring.rs`) whenever bytes arrive, and a
//! `SEND` passes them on to the peer; the buffer goes back to the ring once sent. A small
//! request or reply costs two completions and no syscall of its own: the worker submits the
//! sends and reaps the receives of all its sessions in one `io_uring_enter` per loop.
//!
//! Order and bounds: one `SEND` per direction is in flight, always of the oldest held buffer, so
//! bytes leave in the order they came; a direction holds at most `HOLD_MAX` buffers. One that
//! reaches it is a stream (its destination takes bytes slower than its source sends them): its
//! receive is cancelled and, once what it holds is sent, it moves to the pipe path (`session.rs`:
//! `POLL_ADD` + splices, the zero-copy stream path) and comes back here when that path finds
//! the pipe drained and waits for new bytes. A receive that finds the ring empty (`ENOBUFS`:
//! many stalled readers hold buffers) does the same, so a session never waits on another's
//! buffers. EOF half-closes the destination once every earlier byte was sent.

use std::sync::atomic::Ordering;
use std::time::Instant;

use io_uring::{cqueue, opcode};

use super::bufring::{GROUP, HOLD_MAX};
use super::ops::{op_bit, user_data, Op};
use super::state::Held;
use super::worker::Worker;
use crate::metrics::End;

const ENOBUFS: i32 = -libc::ENOBUFS;
const ECANCELED: i32 = -libc::ECANCELED;

impl Worker {
    /// Waits for the direction's next bytes with a multishot receive into the worker's buffers.
    pub(super) fn recv(&mut self, slot: usize, dir: usize) {
        self.conns[slot].dirs[dir].to_pipe = false;
        let e = opcode::RecvMulti::new(self.fd(slot, dir), GROUP).build();
        let e = self.start(slot, dir, Op::Recv, e);
        self.push(&[e]);
    }

    /// A completion of the direction's multishot receive.
    pub(super) fn on_recv(&mut self, slot: usize, dir: usize, res: i32, flags: u32) {
        let bid = cqueue::buffer_select(flags);
        let Some(c) = self.conns.get_mut(slot) else {
            tracing::error!(slot, "receive completion for an unknown session");
            if let Some(bid) = bid {
                self.bufs.give(bid);
            }
            return;
        };
        let more = cqueue::more(flags);
        if !more {
            c.ops &= !op_bit(dir, Op::Recv);
        }
        if c.ending.is_some() {
            if let Some(bid) = bid {
                self.bufs.give(bid);
            }
            if c.ops == 0 {
                self.finish(slot);
            }
            return;
        }
        let d = &mut c.dirs[dir];
        match (res, bid) {
            (n, Some(bid)) if n > 0 => {
                d.held.push_back(Held {
                    bid,
                    len: n.unsigned_abs(),
                    sent: 0,
                });
                c.last[dir] = Instant::now();
                if d.held.len() >= HOLD_MAX && more && !d.to_pipe {
                    d.to_pipe = true;
                    let e = opcode::AsyncCancel::new(user_data(slot, dir, Op::Recv))
                        .build()
                        .user_data(user_data(slot, dir, Op::Cancel));
                    self.push(&[e]);
                }
                if self.conns[slot].ops & op_bit(dir, Op::Send) == 0 {
                    self.send(slot, dir);
                }
            }
            (0, _) => d.eof = true,
            (ENOBUFS, _) => d.to_pipe = true,
            (ECANCELED, _) if d.to_pipe => {}
            (n, bid) => {
                if let Some(bid) = bid {
                    self.bufs.give(bid);
                }
                if n > 0 {
                    tracing::error!(slot, n, "a receive reported bytes without a buffer");
                }
                return self.end(slot, End::Reset);
            }
        }
        if !more {
            self.next_message(slot, dir);
        }
    }

    /// Sends (the rest of) the direction's oldest held buffer to its destination.
    fn send(&mut self, slot: usize, dir: usize) {
        let h = *self.conns[slot].dirs[dir]
            .held
            .front()
            .expect("a direction sends only what it holds");
        // SAFETY-relevant invariant (the push in `Worker::push` relies on it): the buffer stays
        // held, so neither the kernel nor another session writes into it, until this send has
        // completed.
        let ptr = self.bufs.ptr(h.bid).wrapping_add(h.sent as usize);
        let e = opcode::Send::new(self.fd(slot, 1 - dir), ptr, h.len - h.sent)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        let e = self.start(slot, dir, Op::Send, e);
        self.push(&[e]);
    }

    /// A completion of the direction's send.
    pub(super) fn on_send(&mut self, slot: usize, dir: usize, res: i32) {
        let Some(c) = self.conns.get_mut(slot) else {
            tracing::error!(slot, "send completion for an unknown session");
            return;
        };
        c.ops &= !op_bit(dir, Op::Send);
        if c.ending.is_some() {
            // What it still holds goes back to the ring in `finish`.
            if c.ops == 0 {
                self.finish(slot);
            }
            return;
        }
        if res <= 0 {
            // The destination failed (reset, EPIPE); 0 would mean no progress: never retried.
            return self.end(slot, End::Reset);
        }
        let sent = res.unsigned_abs();
        let counter = if dir == 0 {
            &c.job.svc.stats.bytes_client_to_server
        } else {
            &c.job.svc.stats.bytes_server_to_client
        };
        counter.fetch_add(u64::from(sent), Ordering::Relaxed);
        if let Some(t) = c.job.trace.as_mut() {
            t.bytes[dir] += u64::from(sent);
        }
        c.last[1 - dir] = Instant::now();
        let d = &mut c.dirs[dir];
        let h = d.held.front_mut().expect("a send is of a held buffer");
        h.sent += sent;
        if h.sent >= h.len {
            let bid = h.bid;
            d.held.pop_front();
            self.bufs.give(bid);
        }
        let (held, receiving) = (
            !self.conns[slot].dirs[dir].held.is_empty(),
            self.conns[slot].ops & op_bit(dir, Op::Recv) != 0,
        );
        if held {
            self.send(slot, dir);
        } else if !receiving {
            self.next_message(slot, dir);
        }
    }

    /// The direction's receive has ended: once what it holds is sent, it half-closes (EOF),
    /// moves to the pipe path (a stream, or no buffer was free), or receives again.
    fn next_message(&mut self, slot: usize, dir: usize) {
        let c = &mut self.conns[slot];
        let d = &mut c.dirs[dir];
        if !d.held.is_empty() || c.ops & op_bit(dir, Op::Send) != 0 {
            return; // decided when the last send completes
        }
        if d.eof {
            d.flow.done = true;
            self.half_close(slot, dir);
        } else if d.to_pipe {
            self.poll_in(slot, dir);
        } else {
            self.recv(slot, dir);
        }
    }

    /// Gives the buffers a freed session still held back to the ring.
    pub(super) fn release_held(&mut self, held: &mut std::collections::VecDeque<Held>) {
        for h in held.drain(..) {
            self.bufs.give(h.bid);
        }
    }
}
