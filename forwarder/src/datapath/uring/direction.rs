//! One direction of a uring session as plain data, and the decision of what it does after each
//! of its operations completed: submit the next one, give its pipe back to the pool or keep it
//! (because bytes are still in it, or because it streams), half-close, or end the session.
//!
//! The decision is a pure function ([`Flow::on`]) so that the rules which keep bytes in order and
//! in their own session can be read in one place and tested in a table: a pipe that still holds
//! bytes is never given back; EOF is propagated only once every earlier byte was written; an
//! error ends the session; a direction that found no pipe free copies through its spill buffer,
//! which is written out before the source is read again. The worker (`session.rs`) performs
//! what it decides.

/// A read at least this large marks a stream: the direction's next poll is linked to its splices.
const STREAM_READ: i32 = 64 * 1024;
/// Completion results the decision tells apart (negated errnos, as the ring reports them).
const EAGAIN: i32 = -libc::EAGAIN;
const ECANCELED: i32 = -libc::ECANCELED;

/// What the decisions of one direction read and write (its pipe and spill buffer live beside
/// it, in the worker's `Dir`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Flow {
    /// Bytes in the pipe (or, without a pipe, in the spill) not yet written to `dst`.
    pub(super) pending: u32,
    /// Result of the last read into the pipe (or the spill).
    pub(super) in_res: i32,
    /// Result of a chained splice out of the pipe that reported before the splice into it (the
    /// completions of a chain are not relied on to arrive in order).
    pub(super) out_res: Option<i32>,
    /// EOF seen and propagated.
    pub(super) done: bool,
    /// Its linked poll was cancelled to give the idle pipe back (see `cool_down`).
    pub(super) cooling: bool,
}

/// A completed operation of the direction, as the decision sees it (results are byte counts or
/// negated errnos).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Event {
    /// The plain poll on the source reported.
    Readable(i32),
    /// The poll on the destination reported.
    Writable(i32),
    /// The poll at the head of a chain reported; the splices behind it report on their own.
    ChainPolled,
    /// A ring splice into the pipe completed.
    SplicedIn(i32),
    /// A ring splice out of the pipe completed; `read_pending`: the splice into the pipe of the
    /// same chain has not reported yet.
    SplicedOut { res: i32, read_pending: bool },
    /// A move on the worker thread: a read into the pipe or the spill (`read`; none when only
    /// the spill was sent) and the write of what it holds (`wrote`; 0 when nothing was read).
    Moved { read: Option<i32>, wrote: i32 },
}

/// What the worker knows beside the direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Room {
    /// The capacity of the direction's pipe, when it holds one.
    pub(super) pipe: Option<u32>,
    /// A streaming direction may keep its pipe between bursts (the worker keeps few enough).
    pub(super) keep: bool,
}

/// What the direction does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Nothing until the other splice of the chain reports.
    Wait,
    /// Bytes are waiting and a pipe is held: splice them through it on this thread.
    SpliceInline,
    /// Bytes are waiting and no pipe was free: copy them through the spill buffer.
    Copy,
    /// The destination takes no more: wait until it does, keeping the bytes where they are.
    PollOut,
    /// A short write: write the rest at once (the spill first, if it holds any).
    WriteRest,
    /// The pipe came back full: more is probably waiting, splice again on the ring.
    Splice,
    /// A stream: keep the pipe and link the next poll to its splices.
    Stream,
    /// Drained: the pipe goes back to the pool and a plain poll waits for the next bytes.
    Poll,
    /// EOF after every earlier byte was written: the pipe goes back, `dst` is half-closed.
    HalfClose,
    /// The source or the destination failed: the session ends with a reset.
    Reset,
}

impl Step {
    /// Whether the direction gives its pipe back to the pool now.
    pub(super) fn returns_pipe(self) -> bool {
        matches!(self, Step::Poll | Step::HalfClose)
    }
}

/// A decision, with the bytes the completion moved (for activity times and counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Outcome {
    pub(super) step: Step,
    /// Bytes newly read from the source.
    pub(super) read: u32,
    /// Bytes written to the destination.
    pub(super) wrote: u32,
}

impl Flow {
    /// Folds a completion into the direction's state and decides what comes next.
    pub(super) fn on(&mut self, ev: Event, room: Room) -> Outcome {
        let only = |step| Outcome {
            step,
            read: 0,
            wrote: 0,
        };
        let (read, out) = match ev {
            Event::Readable(res) | Event::Writable(res) if res < 0 => return only(Step::Reset),
            Event::Readable(_) if room.pipe.is_some() => return only(Step::SpliceInline),
            Event::Readable(_) => return only(Step::Copy),
            Event::Writable(_) => return only(Step::WriteRest),
            Event::ChainPolled => return only(Step::Wait),
            Event::SplicedIn(res) => {
                let read = self.read(res);
                // Decide once both splices of the chain reported.
                match self.out_res.take() {
                    Some(out) => (read, out),
                    None => {
                        return Outcome {
                            step: Step::Wait,
                            read,
                            wrote: 0,
                        }
                    }
                }
            }
            Event::SplicedOut {
                res,
                read_pending: true,
            } => {
                self.out_res = Some(res);
                return only(Step::Wait);
            }
            Event::SplicedOut { res, .. } => (0, res),
            Event::Moved { read, wrote } => (read.map_or(0, |r| self.read(r)), wrote),
        };
        let mut wrote = 0;
        if out > 0 {
            wrote = out.unsigned_abs().min(self.pending);
            self.pending -= wrote;
        }
        Outcome {
            step: self.after_out(out, room),
            read,
            wrote,
        }
    }

    /// A read into the (empty) pipe or spill: its result, and the bytes now pending.
    fn read(&mut self, res: i32) -> u32 {
        self.in_res = res;
        if res > 0 {
            self.pending = res.unsigned_abs();
            self.pending
        } else {
            0
        }
    }

    /// What follows a write out of the pipe or spill (`out`; 0 when nothing was read, and
    /// `in_res` says why), once `pending` counts what is left.
    fn after_out(&mut self, out: i32, room: Room) -> Step {
        if std::mem::take(&mut self.cooling) && self.in_res == ECANCELED && self.pending == 0 {
            // `cool_down` cancelled the chain of an idle direction: back to a plain poll.
            return Step::Poll;
        }
        if self.pending > 0 {
            // Bytes are left: they are written before anything more is read.
            return match out {
                EAGAIN => Step::PollOut,
                e if e < 0 => Step::Reset, // the destination failed (reset, EPIPE)
                _ => Step::WriteRest,
            };
        }
        if self.in_res < 0 && self.in_res != EAGAIN {
            return Step::Reset; // the source failed (reset)
        }
        if self.in_res == 0 {
            // EOF after every earlier byte was written: propagate the half-close.
            self.done = true;
            return Step::HalfClose;
        }
        if room.pipe.is_some_and(|size| self.in_res == size as i32) {
            return Step::Splice;
        }
        if self.in_res >= STREAM_READ && room.keep && room.pipe.is_some() {
            return Step::Stream;
        }
        Step::Poll
    }

    /// Counts what a splice that completed after the session began ending moved, so that the
    /// pipe is not given back with bytes in it when the session is freed (the next session to
    /// take it would receive them).
    pub(super) fn settle(&mut self, ev: Event) {
        match ev {
            Event::SplicedIn(res) if res > 0 => self.pending += res.unsigned_abs(),
            Event::SplicedOut { res, .. } if res > 0 => {
                self.pending -= res.unsigned_abs().min(self.pending);
            }
            _ => {}
        }
    }

    /// Whether the direction's pipe may go back to the pool when its session is freed.
    pub(super) fn drained(&self) -> bool {
        self.pending == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u32 = 256 * 1024;
    const PIPE: Room = Room {
        pipe: Some(SIZE),
        keep: true,
    };
    const FULL: Room = Room {
        pipe: Some(SIZE),
        keep: false,
    };
    /// No pipe was free: the direction copies through its spill.
    const SPILL: Room = Room {
        pipe: None,
        keep: true,
    };
    const EPIPE: i32 = -libc::EPIPE;
    const ECONNRESET: i32 = -libc::ECONNRESET;

    fn flow(pending: u32, in_res: i32) -> Flow {
        Flow {
            pending,
            in_res,
            ..Flow::default()
        }
    }

    fn moved(read: i32, wrote: i32) -> Event {
        Event::Moved {
            read: Some(read),
            wrote,
        }
    }

    struct Row {
        what: &'static str,
        before: Flow,
        ev: Event,
        room: Room,
        step: Step,
        /// Bytes pending afterwards.
        pending: u32,
    }

    #[rustfmt::skip]
    fn rows() -> Vec<Row> {
        let r = |what, before, ev, room, step, pending| Row {
            what,
            before,
            ev,
            room,
            step,
            pending,
        };
        let idle = Flow::default();
        vec![
            r("readable, pipe held: splice inline", idle, Event::Readable(1), PIPE, Step::SpliceInline, 0),
            r("readable, no pipe free: copy through the spill", idle, Event::Readable(1), SPILL, Step::Copy, 0),
            r("poll on the source failed: reset", idle, Event::Readable(ECONNRESET), PIPE, Step::Reset, 0),
            r("poll on the destination failed: reset", flow(9, 9), Event::Writable(EPIPE), PIPE, Step::Reset, 9),
            r("destination writable: write the rest", flow(9, 9), Event::Writable(1), PIPE, Step::WriteRest, 9),
            r("chain poll: the splices report on their own", idle, Event::ChainPolled, PIPE, Step::Wait, 0),
            // Pipe return rules.
            r("drained request: pipe back, plain poll", idle, moved(100, 100), PIPE, Step::Poll, 0),
            r("short write: the pipe keeps its bytes, write the rest", idle, moved(100, 40), PIPE, Step::WriteRest, 60),
            r("destination full: the pipe keeps its bytes, poll out", idle, moved(100, EAGAIN), PIPE, Step::PollOut, 100),
            r("destination failed with bytes in the pipe: reset, pipe kept", idle, moved(100, EPIPE), PIPE, Step::Reset, 100),
            r("source failed, pipe empty: reset", idle, moved(ECONNRESET, 0), PIPE, Step::Reset, 0),
            r("nothing to read after all: pipe back, plain poll", idle, moved(EAGAIN, 0), PIPE, Step::Poll, 0),
            r("EOF, pipe empty: pipe back, half-close", idle, moved(0, 0), PIPE, Step::HalfClose, 0),
            r("EOF with bytes still in the pipe: flush first", flow(50, 0), Event::Moved { read: None, wrote: 20 }, PIPE, Step::WriteRest, 30),
            r("EOF once the pipe is flushed: half-close", flow(50, 0), Event::Moved { read: None, wrote: 50 }, PIPE, Step::HalfClose, 0),
            r("EOF with bytes left, destination writable: write the rest", flow(50, 0), Event::Writable(1), PIPE, Step::WriteRest, 50),
            r("pipe came back full: splice on the ring, pipe kept", idle, moved(SIZE as i32, SIZE as i32), PIPE, Step::Splice, 0),
            r("stream: pipe kept, next poll chained", idle, moved(STREAM_READ, STREAM_READ), PIPE, Step::Stream, 0),
            r("stream, but the worker keeps enough pipes: pipe back", idle, moved(STREAM_READ, STREAM_READ), FULL, Step::Poll, 0),
            // Chains, whose two splices report in either order.
            r("chain: splice-out first waits for the splice-in", idle, Event::SplicedOut { res: 100, read_pending: true }, PIPE, Step::Wait, 0),
            r("chain: splice-in first waits for the splice-out", idle, Event::SplicedIn(100), PIPE, Step::Wait, 100),
            r("chain: splice-in after the splice-out decides", Flow { out_res: Some(100), ..idle }, Event::SplicedIn(100), PIPE, Step::Poll, 0),
            r("chain: short splice-out keeps the bytes", flow(100, 100), Event::SplicedOut { res: 60, read_pending: false }, PIPE, Step::WriteRest, 40),
            r("chain: destination full keeps the bytes", flow(100, 100), Event::SplicedOut { res: EAGAIN, read_pending: false }, PIPE, Step::PollOut, 100),
            r("chain: EOF read, pipe empty: half-close", Flow { out_res: Some(0), ..idle }, Event::SplicedIn(0), PIPE, Step::HalfClose, 0),
            r("cooled: cancelled chain of an idle direction goes back to a plain poll", Flow { cooling: true, out_res: Some(ECANCELED), ..idle }, Event::SplicedIn(ECANCELED), PIPE, Step::Poll, 0),
            r("cancelled chain without cooling: reset", Flow { out_res: Some(ECANCELED), ..idle }, Event::SplicedIn(ECANCELED), PIPE, Step::Reset, 0),
            // The copy fallback: no pipe, bytes wait in the spill.
            r("copy, all sent: plain poll", idle, moved(100, 100), SPILL, Step::Poll, 0),
            r("copy, partly sent: the rest stays in the spill", idle, moved(16 * 1024, 1000), SPILL, Step::WriteRest, 16 * 1024 - 1000),
            r("copy, destination full: the spill waits for POLLOUT", idle, moved(100, EAGAIN), SPILL, Step::PollOut, 100),
            r("copy, destination failed: reset", idle, moved(100, EPIPE), SPILL, Step::Reset, 100),
            r("spill sent at last: plain poll", flow(100, 100), Event::Moved { read: None, wrote: 100 }, SPILL, Step::Poll, 0),
            r("spill still not taken: poll out again", flow(100, 100), Event::Moved { read: None, wrote: EAGAIN }, SPILL, Step::PollOut, 100),
            r("copy, EOF: half-close", idle, moved(0, 0), SPILL, Step::HalfClose, 0),
            r("copy never streams: there is no pipe to keep", idle, moved(STREAM_READ, STREAM_READ), SPILL, Step::Poll, 0),
        ]
    }

    #[test]
    fn decisions_follow_the_table() {
        for row in rows() {
            let mut f = row.before;
            let out = f.on(row.ev, row.room);
            assert_eq!(out.step, row.step, "{}", row.what);
            assert_eq!(f.pending, row.pending, "{}: pending", row.what);
            assert_eq!(f.done, row.step == Step::HalfClose, "{}: done", row.what);
            assert!(!f.cooling, "{}: cooling is used up", row.what);
            // A pipe goes back to the pool only empty; bytes stay with their direction.
            if row.step.returns_pipe() {
                assert_eq!(f.pending, 0, "{}: a pipe with bytes given back", row.what);
            }
        }
    }

    #[test]
    fn bytes_moved_are_reported() {
        let mut f = Flow::default();
        let out = f.on(moved(100, 40), PIPE);
        assert_eq!((out.read, out.wrote), (100, 40));
        let out = f.on(
            Event::Moved {
                read: None,
                wrote: 60,
            },
            PIPE,
        );
        assert_eq!((out.read, out.wrote, out.step), (0, 60, Step::Poll));
        let out = f.on(Event::SplicedIn(300), PIPE);
        assert_eq!((out.read, out.wrote, out.step), (300, 0, Step::Wait));
        let out = f.on(
            Event::SplicedOut {
                res: 300,
                read_pending: false,
            },
            PIPE,
        );
        assert_eq!((out.read, out.wrote, out.step), (0, 300, Step::Poll));
        let out = f.on(moved(ECONNRESET, 0), PIPE);
        assert_eq!((out.read, out.wrote, out.step), (0, 0, Step::Reset));
    }

    /// Every completion and state on a grid: a pipe is never given back while bytes are in it,
    /// and EOF is never propagated before they were written.
    #[test]
    fn no_pipe_goes_back_with_bytes_in_it() {
        let results = [
            -libc::ECONNRESET,
            EAGAIN,
            ECANCELED,
            0,
            1,
            100,
            STREAM_READ,
            SIZE as i32,
        ];
        let mut events = vec![Event::ChainPolled];
        for &r in &results {
            events.extend([Event::Readable(r), Event::Writable(r), Event::SplicedIn(r)]);
            for read_pending in [false, true] {
                events.push(Event::SplicedOut {
                    res: r,
                    read_pending,
                });
            }
            events.push(Event::Moved {
                read: None,
                wrote: r,
            });
            for &w in &results {
                events.push(Event::Moved {
                    read: Some(r),
                    wrote: w,
                });
            }
        }
        for pending in [0, 1, 100] {
            for &in_res in &results {
                for out_res in [None, Some(0), Some(50), Some(EAGAIN)] {
                    for cooling in [false, true] {
                        for room in [PIPE, FULL, SPILL] {
                            for &ev in &events {
                                let mut f = Flow {
                                    pending,
                                    in_res,
                                    out_res,
                                    done: false,
                                    cooling,
                                };
                                let step = f.on(ev, room).step;
                                if step.returns_pipe() {
                                    assert_eq!(f.pending, 0, "{ev:?} from {pending} pending");
                                }
                                if step == Step::HalfClose {
                                    assert!(f.done);
                                }
                                if matches!(step, Step::Splice | Step::Stream) {
                                    assert!(
                                        room.pipe.is_some(),
                                        "{ev:?}: ring splices need a pipe"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn late_completions_keep_the_pipe_out_of_the_pool() {
        // The session is ending: a splice into the pipe completed anyway.
        let mut f = Flow::default();
        f.settle(Event::SplicedIn(100));
        assert!(
            !f.drained(),
            "bytes went into the pipe: it is closed, not pooled"
        );
        f.settle(Event::SplicedOut {
            res: 100,
            read_pending: false,
        });
        assert!(f.drained(), "and written out: it may go back");
        f.settle(Event::SplicedOut {
            res: 5,
            read_pending: false,
        });
        assert_eq!(f.pending, 0);
        f.settle(Event::SplicedIn(-libc::ECANCELED));
        f.settle(Event::Readable(1));
        assert!(f.drained());
    }
}
