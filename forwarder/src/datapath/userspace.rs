//! The portable data path: a tokio (epoll) copy loop per direction, in one task per session.
//!
//! Like tokio's `copy_bidirectional`, plus what a proxy needs: half-close (EOF on one side becomes
//! `shutdown(SHUT_WR)` on the other while the other direction keeps running), reset propagation
//! (an error on one side closes the other with SO_LINGER 0, i.e. a RST), idle timeouts per side, and
//! the master-change cut. A direction borrows a buffer from its thread's pool only while bytes are
//! in flight, so an idle session holds none.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use socket2::SockRef;
use tokio::time::Instant;

use super::{cut_end, reset, Session};
use crate::metrics::End;

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
struct Activity {
    start: Instant,
    client: AtomicU64,
    server: AtomicU64,
    logged: bool,
    bytes: [AtomicU64; 2],
}

impl Activity {
    fn touch(&self, side: &AtomicU64) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        side.store(ms, Ordering::Relaxed);
    }

    fn at(&self, side: &AtomicU64) -> Instant {
        self.start + Duration::from_millis(side.load(Ordering::Relaxed))
    }
}

/// Which way bytes flow.
#[derive(Clone, Copy)]
enum Dir {
    ClientToServer,
    ServerToClient,
}

/// Moves bytes until both directions have ended; says how the session ended.
pub async fn relay(mut s: Session) -> End {
    let mut trace = s.trace.take();
    let act = Activity {
        start: Instant::now(),
        client: AtomicU64::new(0),
        server: AtomicU64::new(0),
        logged: trace.is_some(),
        bytes: [AtomicU64::new(0), AtomicU64::new(0)],
    };
    let c2s = pump(&s, &act, Dir::ClientToServer);
    let s2c = pump(&s, &act, Dir::ServerToClient);
    tokio::pin!(c2s, s2c);
    let (mut c2s_done, mut s2c_done) = (false, false);
    let end = loop {
        let client_deadline = act.at(&act.client) + s.svc.timeouts.client;
        let server_deadline = act.at(&act.server) + s.svc.timeouts.server;
        tokio::select! {
            r = &mut c2s, if !c2s_done => match r {
                Ok(()) => c2s_done = true,
                Err(_) => break End::Reset,
            },
            r = &mut s2c, if !s2c_done => match r {
                Ok(()) => s2c_done = true,
                Err(_) => break End::Reset,
            },
            _ = tokio::time::sleep_until(client_deadline.min(server_deadline)) => {
                // Activity may have moved the deadlines since they were read.
                let now = Instant::now();
                if act.at(&act.client) + s.svc.timeouts.client <= now {
                    break End::ClientTimeout;
                }
                if act.at(&act.server) + s.svc.timeouts.server <= now {
                    break End::ServerTimeout;
                }
            }
            _ = s.cut.cancelled() => break cut_end(&s.svc),
        }
        if c2s_done && s2c_done {
            break End::Closed;
        }
    };
    if end != End::Closed {
        // Anything but a clean close ends with a reset on both sides, so neither peer mistakes a
        // cut session for a complete reply.
        reset(&s.client);
        reset(&s.server);
    }
    if let Some(t) = trace.as_mut() {
        t.bytes = act.bytes.each_ref().map(|b| b.load(Ordering::Relaxed));
    }
    s.svc.session_ended(trace.as_deref(), end.as_str());
    end
}

/// Copies one direction until EOF (then half-closes the destination) or an error.
async fn pump(s: &Session, act: &Activity, dir: Dir) -> io::Result<()> {
    let (from, to, from_side, to_side, counter, mine) = match dir {
        Dir::ClientToServer => (
            &s.client,
            &s.server,
            &act.client,
            &act.server,
            &s.svc.stats.bytes_client_to_server,
            &act.bytes[0],
        ),
        Dir::ServerToClient => (
            &s.server,
            &s.client,
            &act.server,
            &act.client,
            &s.svc.stats.bytes_server_to_client,
            &act.bytes[1],
        ),
    };
    // The session's own count, for its log line only.
    let mine = act.logged.then_some(mine);
    loop {
        from.readable().await?;
        let mut buf = Buf::take();
        let n = match from.try_read(&mut buf.0) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        act.touch(from_side);
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
        act.touch(to_side);
        counter.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(mine) = mine {
            mine.fetch_add(n as u64, Ordering::Relaxed);
        }
        s.svc
            .stats
            .bytes_copied_in_userspace
            .fetch_add(n as u64, Ordering::Relaxed);
    }
}
