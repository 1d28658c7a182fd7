//! Bounded kernel memory: the kernel queues each redirected skb on the peer's psock without
//! charging it to either socket, so a peer that takes bytes slower than its partner sends them
//! (a server that stops reading, or a send path slower than the receive path) would let that
//! queue grow until the machine runs out of memory.
//!
//! The program watches each direction's backlog (bytes it handed on that the peer's send queue
//! has not taken yet, the `flows` base subtracted) and, past [`LIMIT`], pushes the receiving
//! socket's cookie into the `spills` ring buffer once. [`listen`] wakes the session, and
//! [`Run::spill`] takes it out of the kernel path for good; the caller hands it to the next data
//! path, where TCP's own windows hold a fast sender back.
//!
//! Taking a verdict program off a live socket drops an skb that TCP hands over meanwhile (the
//! kernel clears the program before it restores `data_ready`), so `SO_RCVLOWAT` goes to its
//! maximum first: TCP then calls `data_ready` only for a FIN or a nearly full buffer. Whatever
//! still slipped through is caught at the end, where the bytes the sockets consumed must equal
//! the bytes the program redirected, or the session is reset (counted in `faults`). No socket
//! ever goes back into the program.

// unsafe: aya::Pod for Flow, and registering the ring buffer's descriptor with tokio.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::sockopt::{queued_bytes, set_rcvlowat, tcp_info, unread_bytes};
use super::{cut_end, Run, Session};
use crate::metrics::End;

/// `BACKLOG_LIMIT` of `ebpf/forwarder.h`: bytes one direction may have handed on beyond what
/// the peer's send queue took, before the program asks for the spill.
pub const LIMIT: u64 = 4 << 20;

/// Twin of `struct flow` in `ebpf/forwarder.h`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Flow {
    /// What the peer's send queue had taken (`queued_bytes`) before the insertion.
    pub base: u64,
    /// 1 once the program pushed this socket into `spills`.
    pub spilled: u32,
    /// Padding to 8 bytes.
    pub pad: u32,
}

// SAFETY: `Flow` is `repr(C)`: a u64 and two u32, no padding; any bit pattern is valid.
unsafe impl aya::Pod for Flow {}

/// Sessions waiting for `spills` events, by the cookie of each of their sockets.
pub type Waiters = Arc<Mutex<HashMap<u64, Arc<Notify>>>>;

/// Reads the `spills` ring buffer for as long as the program is loaded and wakes the session of
/// each cookie (one that ended meanwhile is skipped).
pub async fn listen(ring: RingBuf<MapData>, waiters: Waiters) {
    // SAFETY: the ring buffer owns its map's descriptor, which stays open and is the one
    // `as_raw_fd` returns for as long as the ring buffer lives, i.e. as long as the `AsyncFd`.
    let registered = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "sockmap: cannot poll the `spills` ring buffer; a slow peer's backlog is unbounded");
            return;
        }
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "sockmap: polling the `spills` ring buffer failed");
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
    /// Takes the session out of the kernel path (see the module): afterwards both sockets are
    /// plain TCP sockets, every byte the program redirected is in the peer's send queue, and
    /// every byte it did not is still in its socket's receive queue. Fails with the peer's
    /// timeout when a peer takes nothing for that long while its backlog drains.
    pub(super) async fn spill(&mut self) -> Result<(), End> {
        let s = self.s;
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, "sockmap: {what} failed while moving a session out of the kernel; it is reset");
            End::Reset
        };
        for sock in [&s.client, &s.server] {
            set_rcvlowat(sock, libc::c_int::MAX);
        }
        self.map
            .unhook(self.a)
            .map_err(|e| failed("taking the sockets out of `hooks`", &e))?;
        // Takes each socket lock: a program run in flight on either socket has finished, so the
        // redirected counts are final.
        for sock in [&s.client, &s.server] {
            set_rcvlowat(sock, libc::c_int::MAX);
        }
        self.drain(0).await?;
        self.drain(1).await?;
        // Out of their last map, the sockets lose their psocks: plain TCP again.
        self.map
            .unpeer(self.a)
            .map_err(|e| failed("taking the sockets out of `peers`", &e))?;
        let redirected = self.count().map(|a| a.bytes);
        for (from, sock) in [&s.client, &s.server].into_iter().enumerate() {
            let consumed = consumed(sock).await.map_err(|e| failed("TCP_INFO", &e))?;
            if consumed != redirected[from] {
                self.map.count_fault();
                tracing::warn!(
                    service = %s.svc.name,
                    from = if from == 0 { "client" } else { "server" },
                    consumed,
                    redirected = redirected[from],
                    "sockmap: the kernel consumed bytes the program did not hand on while the \
                     session left the kernel path; it is reset"
                );
                return Err(End::Reset);
            }
            set_rcvlowat(sock, 1);
        }
        Ok(())
    }

    /// Waits until every byte redirected from `from` is in the peer's send queue.
    async fn drain(&mut self, from: usize) -> Result<(), End> {
        let s = self.s;
        let (to, idle) = if from == 0 {
            (&s.server, s.svc.timeouts.server)
        } else {
            (&s.client, s.svc.timeouts.client)
        };
        let mut taken = (0, tokio::time::Instant::now());
        let mut pause = Duration::from_micros(100);
        loop {
            let handed = self.count()[from].bytes;
            let written = queued_bytes(to)
                .map_err(|e| {
                    tracing::debug!(error = %e, "TCP_INFO failed");
                    End::Reset
                })?
                .saturating_sub(self.a.base[1 - from]);
            if written >= handed {
                return Ok(());
            }
            // The limit is on the peer taking nothing: a slow one may take longer in all.
            if written > taken.0 {
                taken = (written, tokio::time::Instant::now());
                pause = Duration::from_micros(100);
            } else if taken.1.elapsed() >= idle {
                return Err(if from == 0 {
                    End::ServerTimeout
                } else {
                    End::ClientTimeout
                });
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = s.cut.cancelled() => return Err(cut_end(&s.svc)),
            }
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

/// Bytes of the stream `sock` received that were taken off its receive queue (the FIN not
/// counted). Only meaningful on a plain TCP socket nobody reads (with a psock, the unread count
/// is the psock's). Bytes may still be arriving: a count is taken only between two equal unread
/// counts, that is, when nothing arrived meanwhile (nothing leaves the queue now).
async fn consumed(sock: &TcpStream) -> io::Result<u64> {
    for _ in 0..1000 {
        let before = unread_bytes(sock)?;
        let received = received(sock)?;
        if unread_bytes(sock)? == before {
            return Ok(received - before);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Err(io::Error::other(
        "bytes kept arriving while the receive queue was counted",
    ))
}

/// Bytes of the stream `sock` received, the FIN not counted.
fn received(sock: &TcpStream) -> io::Result<u64> {
    // `include/net/tcp_states.h`: the states that come after a FIN was received (a socket
    // with a descriptor is CLOSE, not TIME_WAIT, once both FINs went; a reset one is CLOSE too,
    // and its session ends in a reset anyway).
    const TIME_WAIT: u8 = 6;
    const CLOSE: u8 = 7;
    const CLOSE_WAIT: u8 = 8;
    const LAST_ACK: u8 = 9;
    const CLOSING: u8 = 11;
    let info = tcp_info(sock)?;
    // A FIN counts one in bytes_received.
    let fin = matches!(
        info.tcpi_state,
        TIME_WAIT | CLOSE | CLOSE_WAIT | LAST_ACK | CLOSING
    );
    Ok(info.tcpi_bytes_received - u64::from(fin))
}

/// The session, its sockets registered with tokio afresh: the readiness tokio cached while the
/// program consumed the bytes says nothing about the receive queues now.
pub(super) fn reregister(mut s: Session) -> io::Result<Session> {
    s.client = TcpStream::from_std(s.client.into_std()?)?;
    s.server = TcpStream::from_std(s.server.into_std()?)?;
    Ok(s)
}
