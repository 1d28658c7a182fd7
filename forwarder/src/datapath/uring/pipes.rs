//! A worker's pipes: the pool of empty ones and the count of those directions hold, bounded by
//! the worker's share of the descriptor budget. Kept apart because the pool is where a byte
//! leak would happen: a pipe goes back only when it is empty (checked with `FIONREAD`), else it
//! is closed, so no session can ever receive another's bytes.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes a pipe holds (`F_SETPIPE_SZ`): one splice moves at most this much.
const PIPE_SIZE: usize = 256 * 1024;
/// What a stream's pipe grows to (the default `fs.pipe-max-size`): a 1 MiB pipe moves a bulk
/// transfer in a quarter of the ring round trips, which measured 1 stream at +25% Gbit/s and
/// -30% CPU per GB against 256 KiB (bench/README.md).
const STREAM_PIPE_SIZE: usize = 1024 * 1024;
/// Pipes a worker lets grow to `STREAM_PIPE_SIZE`. The kernel counts pipe memory per user
/// (`fs.pipe-user-pages-soft`, 64 MiB by default) and gives an unprivileged user's new pipes a
/// single page past it, so big pipes stay few: 16 MiB per worker.
const STREAM_PIPES_MAX: usize = 16;
/// Empty pipes a worker keeps for reuse (at most; never more than its pipe budget).
const PIPE_POOL_MAX: usize = 64;
/// Pipes a worker lets streaming directions keep between bursts. Each pipe is two descriptors;
/// past this many, a drained direction gives its pipe back and waits with a plain poll, so
/// thousands of briefly busy sessions cannot exhaust the descriptor limit.
const PIPES_KEPT_MAX: usize = 256;

/// A pipe from the pool: read end, write end, capacity in bytes.
pub(super) struct Pipe {
    pub(super) r: OwnedFd,
    pub(super) w: OwnedFd,
    pub(super) size: u32,
}

/// The pipes of one worker.
pub(super) struct Pipes {
    /// Empty pipes ready for reuse.
    pool: Vec<Pipe>,
    /// Pipes currently held by directions.
    held: usize,
    /// Pipes this worker may have open, pooled and held together.
    max: usize,
    /// Pipes of this worker grown to `STREAM_PIPE_SIZE` (held ones only: a pipe shrinks back
    /// before it is pooled).
    big: usize,
    /// Pipes held by the directions of every worker together (`/status` `pipes_held`).
    held_by_all: Arc<AtomicUsize>,
}

impl Pipes {
    /// At most `max` pipes open (at least one); the pipes held are also counted in
    /// `held_by_all`, shared by the workers.
    pub(super) fn new(max: usize, held_by_all: Arc<AtomicUsize>) -> Pipes {
        Pipes {
            pool: Vec::new(),
            held: 0,
            max: max.max(1),
            big: 0,
            held_by_all,
        }
    }

    pub(super) fn held(&self) -> usize {
        self.held
    }

    pub(super) fn max(&self) -> usize {
        self.max
    }

    /// Whether a streaming direction may keep its pipe between bursts.
    pub(super) fn may_keep(&self) -> bool {
        self.held <= PIPES_KEPT_MAX
    }

    /// A pipe for a direction: from the pool, or a new one while the worker is under its pipe
    /// budget (past it: EMFILE, without asking the kernel).
    pub(super) fn take(&mut self) -> rustix::io::Result<Pipe> {
        if self.pool.is_empty() && self.held >= self.max {
            return Err(rustix::io::Errno::MFILE);
        }
        let p = self.pooled_or_new()?;
        self.held += 1;
        self.held_by_all.fetch_add(1, Ordering::Relaxed);
        Ok(p)
    }

    fn pooled_or_new(&mut self) -> rustix::io::Result<Pipe> {
        if let Some(p) = self.pool.pop() {
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

    /// Grows a stream's pipe to `STREAM_PIPE_SIZE` while the worker has fewer than
    /// `STREAM_PIPES_MAX` big pipes (best effort: a refusal leaves it as it is).
    pub(super) fn grow(&mut self, p: &mut Pipe) {
        if p.size as usize >= STREAM_PIPE_SIZE || self.big >= STREAM_PIPES_MAX {
            return;
        }
        if let Ok(n) = rustix::pipe::fcntl_setpipe_size(p.w.as_fd(), STREAM_PIPE_SIZE) {
            p.size = u32::try_from(n).unwrap_or(u32::MAX);
            self.big += 1;
        }
    }

    /// Counts a pipe that leaves its direction out of the big ones, if it was one.
    fn forget(&mut self, p: &Pipe) {
        if p.size as usize > PIPE_SIZE {
            self.big -= 1;
        }
    }

    /// A pipe on its way to the pool: a big one shrinks back first (it is empty); one that
    /// cannot shrink is closed.
    fn shrink(&mut self, p: Pipe) -> Option<Pipe> {
        self.forget(&p);
        if (p.size as usize) <= PIPE_SIZE {
            return Some(p);
        }
        let n = rustix::pipe::fcntl_setpipe_size(p.w.as_fd(), PIPE_SIZE).ok()?;
        Some(Pipe {
            size: u32::try_from(n).unwrap_or(u32::MAX),
            ..p
        })
    }

    /// Returns a drained pipe to the pool. A pipe that still holds bytes is closed instead
    /// (and logged as the bug it would be): pooled, its bytes would reach another session.
    pub(super) fn give(&mut self, pipe: Option<Pipe>) {
        if let Some(p) = pipe {
            self.held -= 1;
            self.held_by_all.fetch_sub(1, Ordering::Relaxed);
            match rustix::io::ioctl_fionread(&p.r) {
                Ok(0)
                    if self.pool.len() < PIPE_POOL_MAX.min(self.max.saturating_sub(self.held)) =>
                {
                    if let Some(p) = self.shrink(p) {
                        self.pool.push(p);
                    }
                }
                Ok(0) => self.forget(&p),
                Ok(bytes) => {
                    self.forget(&p);
                    tracing::error!(bytes, "a pipe given back was not empty; closed");
                }
                Err(e) => {
                    self.forget(&p);
                    tracing::error!(error = %e, "a pipe given back cannot be looked into; closed");
                }
            }
        }
    }

    /// Closes a pipe that bytes were left in (its session ended before they were written).
    pub(super) fn close(&mut self, pipe: Option<Pipe>) {
        if let Some(p) = pipe {
            self.forget(&p);
            self.held -= 1;
            self.held_by_all.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipes() -> Pipes {
        Pipes::new(STREAM_PIPES_MAX + 4, Arc::new(AtomicUsize::new(0)))
    }

    #[test]
    fn a_stream_pipe_grows_and_shrinks_back_when_pooled() {
        let mut pipes = pipes();
        let mut p = pipes.take().unwrap();
        assert_eq!(p.size as usize, PIPE_SIZE);
        pipes.grow(&mut p);
        assert_eq!(p.size as usize, STREAM_PIPE_SIZE);
        assert_eq!(pipes.big, 1);
        pipes.grow(&mut p); // already big: counted once
        assert_eq!(pipes.big, 1);
        pipes.give(Some(p));
        assert_eq!((pipes.big, pipes.held), (0, 0));
        let p = pipes.take().unwrap();
        assert_eq!(
            p.size as usize, PIPE_SIZE,
            "the pooled pipe came back at its normal size"
        );
        pipes.close(Some(p));
        assert_eq!(pipes.held, 0);
    }

    #[test]
    fn big_pipes_are_bounded_and_counted_out_when_closed() {
        let mut pipes = pipes();
        let mut held: Vec<Pipe> = (0..STREAM_PIPES_MAX + 2)
            .map(|_| pipes.take().unwrap())
            .collect();
        for p in &mut held {
            pipes.grow(p);
        }
        let big = held
            .iter()
            .filter(|p| p.size as usize == STREAM_PIPE_SIZE)
            .count();
        assert_eq!((big, pipes.big), (STREAM_PIPES_MAX, STREAM_PIPES_MAX));
        for p in held {
            pipes.close(Some(p));
        }
        assert_eq!((pipes.big, pipes.held), (0, 0));
    }
}
