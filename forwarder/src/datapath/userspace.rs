//! The portable data path: a tokio (epoll) copy loop per direction, in one task per session.
//!
//! Like tokio's `copy_bidirectional`, plus what a proxy needs: half-close (EOF on one side becomes
//! `shutdown(SHUT_WR)` on the other while the other direction keeps running), reset propagation
//! (an error on one side closes the other with SO_LINGER 0, i.e. a RST), idle timeouts per side, and
//! the master-change cut. A direction borrows a buffer from its thread's pool only while bytes are
//! in flight, so an idle session holds none.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use socket2::SockRef;
use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

use super::{cut_end, reset, Session};
use crate::metrics::End;
use crate::service::ServiceRuntime;

const BUF_SIZE: usize = 64 * 1024;
/// Free buffers kept per thread; more than this are returned to the allocator.
const POOL_MAX: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer borrowed from the thread's pool, given back on drop (possibly to another thread's
/// pool, when the task moved: that is fine, pools only bound how much is kept).
struct Buf(Box<[u8]>);

impl Buf {
    fn take() -> Buf {
        let b = POOL.with_borrow_mut(Vec::pop);
        Buf(b.unwrap_or_else(|| vec![0; BUF_SIZE].into_boxed_slice()))
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let b = std::mem::take(&mut self.0);
        POOL.with_borrow_mut(|p| {
            if p.len() < POOL_MAX {
                p.push(b);
            }
        });
    }
}

/// Last activity of each side, in milliseconds since the session started, and the bytes each
/// direction forwarded (counted only for the session log, when `logged`).
pub(super) struct Activity {
    start: Instant,
    client: AtomicU64,
    server: AtomicU64,
    logged: bool,
    bytes: [AtomicU64; 2],
}

impl Activity {
    /// Starts now; `logged` when the session has a log line to fill.
    pub(super) fn new(logged: bool) -> Activity {
        Activity {
            start: Instant::now(),
            client: AtomicU64::new(0),
            server: AtomicU64::new(0),
            logged,
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    fn touch(&self, side: &AtomicU64) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        side.store(ms, Ordering::Relaxed);
    }

    fn at(&self, side: &AtomicU64) -> Instant {
        self.start + Duration::from_millis(side.load(Ordering::Relaxed))
    }

    /// `n` bytes went `dir`: the activity of the side written to, the service's byte counters
    /// (and `userspace`'s, when they went through a buffer of ours) and the session's own.
    pub(super) fn moved(&self, svc: &ServiceRuntime, dir: Dir, n: usize, userspace: bool) {
        let (to, counter, mine) = match dir {
            Dir::ClientToServer => (
                &self.server,
                &svc.stats.bytes_client_to_server,
                &self.bytes[0],
            ),
            Dir::ServerToClient => (
                &self.client,
                &svc.stats.bytes_server_to_client,
                &self.bytes[1],
            ),
        };
        self.touch(to);
        counter.fetch_add(n as u64, Ordering::Relaxed);
        if self.logged {
            mine.fetch_add(n as u64, Ordering::Relaxed);
        }
        if userspace {
            svc.stats
                .bytes_copied_in_userspace
                .fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// A read from the source of `dir` returned (bytes or EOF): it was active.
    pub(super) fn heard(&self, dir: Dir) {
        self.touch(match dir {
            Dir::ClientToServer => &self.client,
            Dir::ServerToClient => &self.server,
        });
    }

    /// The bytes each direction moved, for the log line.
    pub(super) fn bytes(&self) -> [u64; 2] {
        self.bytes.each_ref().map(|b| b.load(Ordering::Relaxed))
    }
}

/// Which way bytes flow.
#[derive(Clone, Copy)]
pub(super) enum Dir {
    ClientToServer,
    ServerToClient,
}

/// Moves bytes until both directions have ended; says how the session ended.
pub async fn relay(mut s: Session) -> End {
    let mut trace = s.trace.take();
    let act = Activity::new(trace.is_some());
    let c2s = pump(&s, &act, Dir::ClientToServer);
    let s2c = pump(&s, &act, Dir::ServerToClient);
    let end = drive(&s.svc, &s.cut, &act, c2s, s2c).await;
    if end != End::Closed {
        // Anything but a clean close ends with a reset on both sides, so neither peer mistakes a
        // cut session for a complete reply.
        reset(&s.client);
        reset(&s.server);
    }
    if let Some(t) = trace.as_mut() {
        // Added: a session the sockmap spilled here counted its bytes before.
        for (t, b) in t.bytes.iter_mut().zip(act.bytes()) {
            *t += b;
        }
    }
    s.svc.session_ended(trace.as_deref(), end.as_str());
    end
}

/// Runs both directions of a session (`c2s`, `s2c`: each ends at its EOF, or fails) under the
/// idle timeouts of `act`'s sides and the `cut`; says how the session ended. The caller resets
/// the sockets of a session that did not end [`End::Closed`].
pub(super) async fn drive(
    svc: &ServiceRuntime,
    cut: &CancellationToken,
    act: &Activity,
    c2s: impl Future<Output = io::Result<()>>,
    s2c: impl Future<Output = io::Result<()>>,
) -> End {
    tokio::pin!(c2s, s2c);
    let (mut c2s_done, mut s2c_done) = (false, false);
    loop {
        let client_deadline = act.at(&act.client) + svc.timeouts.client;
        let server_deadline = act.at(&act.server) + svc.timeouts.server;
        tokio::select! {
            r = &mut c2s, if !c2s_done => match r {
                Ok(()) => c2s_done = true,
                Err(_) => return End::Reset,
            },
            r = &mut s2c, if !s2c_done => match r {
                Ok(()) => s2c_done = true,
                Err(_) => return End::Reset,
            },
            _ = tokio::time::sleep_until(client_deadline.min(server_deadline)) => {
                // Activity may have moved the deadlines since they were read.
                let now = Instant::now();
                if act.at(&act.client) + svc.timeouts.client <= now {
                    return End::ClientTimeout;
                }
                if act.at(&act.server) + svc.timeouts.server <= now {
                    return End::ServerTimeout;
                }
            }
            _ = cut.cancelled() => return cut_end(svc),
        }
        if c2s_done && s2c_done {
            return End::Closed;
        }
    }
}

/// Copies one direction until EOF (then half-closes the destination) or an error.
async fn pump(s: &Session, act: &Activity, dir: Dir) -> io::Result<()> {
    let (from, to) = match dir {
        Dir::ClientToServer => (&s.client, &s.server),
        Dir::ServerToClient => (&s.server, &s.client),
    };
    loop {
        from.readable().await?;
        let mut buf = Buf::take();
        let n = match from.try_read(&mut buf.0) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        act.heard(dir);
        if n == 0 {
            // Half-close: the peer sees our FIN after every byte before it.
            return match SockRef::from(to).shutdown(Shutdown::Write) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
                Err(e) => Err(e),
            };
        }
        let mut off = 0;
        while off < n {
            to.writable().await?;
            match to.try_write(&buf.0[off..n]) {
                Ok(k) => off += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        act.moved(&s.svc, dir, n, true);
    }
}
