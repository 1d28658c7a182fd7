//! A worker's pipes: the pool of empty ones and the count of those directions hold, bounded by
//! the worker's share of the descriptor budget. Kept apart because the pool is where a byte
//! leak would happen: a pipe goes back only when it is empty (checked with `FIONREAD`), else it
//! is closed, so no session can ever receive another's bytes.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes a pipe holds (`F_SETPIPE_SZ`): one splice moves at most this much.
const PIPE_SIZE: usize = 256 * 1024;
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
                    self.pool.push(p)
                }
                Ok(0) => {}
                left => tracing::error!(?left, "a pipe given back was not empty; closed"),
            }
        }
    }

    /// Closes a pipe that bytes were left in (its session ended before they were written).
    pub(super) fn close(&mut self, pipe: Option<Pipe>) {
        if pipe.is_some() {
            self.held -= 1;
            self.held_by_all.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
