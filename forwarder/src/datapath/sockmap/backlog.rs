//! Bounded kernel memory: the kernel queues each redirected skb on the peer's psock without
//! charging it to either socket, so a peer that takes bytes slower than its partner sends them
//! (a server that stops reading) would let that queue grow until the machine runs out of memory.
//!
//! The program watches each direction's backlog (bytes it handed on that the peer's send queue
//! has not taken yet, the `flows` base subtracted) and, past [`LIMIT`], pushes the receiving
//! socket's cookie into the `held` ring buffer once. [`listen`] wakes the session, whose
//! [`Run::hold`] takes that socket out of `hooks`: its bytes then stay in its receive queue, whose
//! window stops the sender, as on any TCP socket nobody reads. Once the peer has caught up to
//! half the limit, the socket goes back into `hooks` and `SO_RCVLOWAT` runs the program over what
//! waited, in order. Nothing is copied through userspace and no byte changes order: the program
//! never runs on a held socket.

// unsafe: aya::Pod for Flow, and registering the ring buffer's descriptor with tokio.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;

use super::sockopt::{now_ns, queued_bytes, set_rcvlowat};
use super::{cut_end, Run, Session};
use crate::metrics::End;

/// `BACKLOG_LIMIT` of `ebpf/forwarder.h`: bytes one direction may have handed on beyond what
/// the peer's send queue took, before the program tells userspace.
pub const LIMIT: u64 = 4 << 20;

/// Twin of `struct flow` in `ebpf/forwarder.h`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Flow {
    /// What the peer's send queue had taken (`queued_bytes`) before the insertion.
    pub base: u64,
    /// 1 once the program pushed this socket into `held`; userspace clears it on release.
    pub held: u32,
    /// Padding to 8 bytes.
    pub pad: u32,
}

// SAFETY: `Flow` is `repr(C)`: a u64 and two u32, no padding; any bit pattern is valid.
unsafe impl aya::Pod for Flow {}

/// Sessions waiting for `held` events, by the cookie of each of their sockets.
pub type Waiters = Arc<Mutex<HashMap<u64, Arc<Notify>>>>;

/// Reads the `held` ring buffer for as long as the program is loaded and wakes the session of
/// each cookie (one that ended meanwhile is skipped).
pub async fn listen(ring: RingBuf<MapData>, waiters: Waiters) {
    // SAFETY: the ring buffer owns its map's descriptor, which stays open and is the one
    // `as_raw_fd` returns for as long as the ring buffer lives, i.e. as long as the `AsyncFd`.
    let registered = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "sockmap: cannot poll the `held` ring buffer; a slow peer's backlog is unbounded");
            return;
        }
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "sockmap: polling the `held` ring buffer failed");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            let Ok(cookie) = <[u8; 8]>::try_from(&item[..]).map(u64::from_ne_bytes) else {
                continue;
            };
            let w = waiters.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = w.get(&cookie) {
                n.notify_one();
            }
        }
        guard.clear_ready();
    }
}

impl Run<'_> {
    /// Holds each socket of the session the program marked, until its peer caught up (see the
    /// module), and says which directions ended meanwhile: a socket past ESTABLISHED cannot go
    /// back into a map, so a stream whose FIN came while it was held is handed on from
    /// userspace, EOF included. Fails with the peer's timeout when the peer takes nothing for
    /// that long.
    pub(super) async fn hold(&mut self) -> Result<[bool; 2], End> {
        let s = self.s;
        let mut ended = [false, false];
        for from in 0..2 {
            let (cookie, src) = if from == 0 {
                (self.a.client, &s.client)
            } else {
                (self.a.server, &s.server)
            };
            if !self.map.is_held(cookie) {
                continue;
            }
            self.map.unhook(cookie).map_err(|e| {
                tracing::warn!(error = %e, "sockmap: cannot hold a socket; the session is reset");
                End::Reset
            })?;
            // Takes the socket lock: a program run in flight on `src` has finished.
            set_rcvlowat(src, 1);
            self.map.holds.fetch_add(1, Ordering::Relaxed);
            self.drain(from, LIMIT / 2).await?;
            match self.map.release(cookie, src) {
                Ok(()) => {
                    // Runs the program over the bytes that waited; the wait was not idleness.
                    set_rcvlowat(src, 1);
                    self.last_ns[from] = now_ns();
                }
                Err(e) if errno(&e) == Some(libc::EOPNOTSUPP) => {
                    self.finish(from).await?;
                    ended = [from == 0 || ended[0], from == 1 || ended[1]];
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sockmap: cannot release a held socket; the session is reset");
                    return Err(End::Reset);
                }
            }
        }
        Ok(ended)
    }

    /// Waits until at most `keep` bytes handed on from `from` are not yet in the peer's send
    /// queue.
    async fn drain(&mut self, from: usize, keep: u64) -> Result<(), End> {
        let s = self.s;
        let (to, idle) = towards(s, from);
        let failed = |e: io::Error| {
            tracing::debug!(error = %e, "TCP_INFO failed");
            End::Reset
        };
        let mut taken = (0, tokio::time::Instant::now());
        let mut pause = Duration::from_millis(1);
        loop {
            let handed = self.count()[from].bytes;
            let written = queued_bytes(to)
                .map_err(failed)?
                .saturating_sub(self.a.base[1 - from]);
            if handed <= written + keep {
                return Ok(());
            }
            if written > taken.0 {
                taken = (written, tokio::time::Instant::now());
                pause = Duration::from_millis(1);
            } else if taken.1.elapsed() >= idle {
                return Err(timed_out(from));
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = s.cut.cancelled() => return Err(cut_end(&s.svc)),
            }
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Copies the rest of the held stream from `from` through userspace once everything handed
    /// on before is in the peer's send queue, then half-closes the peer.
    async fn finish(&mut self, from: usize) -> Result<(), End> {
        let s = self.s;
        self.drain(from, 0).await?;
        let src = if from == 0 { &s.client } else { &s.server };
        let (to, idle) = towards(s, from);
        let counter = if from == 0 {
            &s.svc.stats.bytes_client_to_server
        } else {
            &s.svc.stats.bytes_server_to_client
        };
        let failed = |e: io::Error| {
            tracing::debug!(error = %e, "copying a held stream's end failed");
            End::Reset
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = within(idle, from, s, || src.readable(), || src.try_read(&mut buf))
                .await?
                .map_err(failed)?;
            if n == 0 {
                break;
            }
            let mut off = 0;
            while off < n {
                off += within(
                    idle,
                    from,
                    s,
                    || to.writable(),
                    || to.try_write(&buf[off..n]),
                )
                .await?
                .map_err(failed)?;
            }
            counter.fetch_add(n as u64, Ordering::Relaxed);
            self.last_ns[from] = now_ns();
        }
        match socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            Err(e) => Err(failed(e)),
        }
    }
}

/// The peer of `from`'s socket and the timeout for it taking nothing.
fn towards(s: &Session, from: usize) -> (&tokio::net::TcpStream, Duration) {
    if from == 0 {
        (&s.server, s.svc.timeouts.server)
    } else {
        (&s.client, s.svc.timeouts.client)
    }
}

/// The timeout end for a peer of `from` that took nothing for too long.
fn timed_out(from: usize) -> End {
    if from == 0 {
        End::ServerTimeout
    } else {
        End::ClientTimeout
    }
}

/// Runs the non-blocking `op` each time `ready` says it may succeed, until it does, for at most
/// `idle`, unless the session is cut.
async fn within<'a, R, F, T>(
    idle: Duration,
    from: usize,
    s: &'a Session,
    ready: impl Fn() -> R,
    mut op: F,
) -> Result<io::Result<T>, End>
where
    R: std::future::Future<Output = io::Result<()>> + 'a,
    F: FnMut() -> io::Result<T>,
{
    let attempt = async {
        loop {
            ready().await?;
            match op() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    };
    tokio::select! {
        r = tokio::time::timeout(idle, attempt) => r.map_err(|_| timed_out(from)),
        _ = s.cut.cancelled() => Err(cut_end(&s.svc)),
    }
}

/// The errno inside an aya map error.
fn errno(e: &aya::maps::MapError) -> Option<i32> {
    match e {
        aya::maps::MapError::SyscallError(se) => se.io_error.raw_os_error(),
        _ => None,
    }
}
