//! The in-kernel data path: both sockets of a session go into a BPF SOCKHASH and the `sk_skb`
//! stream-verdict program of `ebpf/forwarder.bpf.c` redirects every skb to the peer's egress, so
//! payload never reaches userspace.
//!
//! Userspace still owns each session's life, in one tokio task:
//! - Each socket goes into `peers` under the cookie of the *other* one (the program looks up its
//!   own cookie), with a zeroed `activity` entry; only then do both go into `hooks`, the map the
//!   program is attached to, so no socket runs it before its peer can be found. Setting
//!   `SO_RCVLOWAT` (to 1) then runs the program, under the socket lock, over everything that
//!   arrived before the insertion, in order.
//! - The task waits only for EOF (`EPOLLRDHUP`), errors, the cut token and a timer: redirected
//!   bytes do not wake it.
//! - EOF on one side becomes `shutdown(SHUT_WR)` on the other only once the program has
//!   redirected every byte that side received (TCP signals the FIN before the program runs on
//!   the skb that carried it: bytes redirected == `tcpi_bytes_received` - 1, the FIN counting
//!   one; more would mean a byte went twice: reset) and all of them sit in the other socket's
//!   send queue (`tcpi_bytes_acked` + `SIOCOUTQ` == bytes redirected): the redirect goes through
//!   a kernel work queue, and a FIN sent earlier would cut those bytes off.
//! - Idle timeouts and byte counters come from the per-CPU `activity` map, read on the timer.
//! - A retransmitted skb that repeats bytes the stream already has is cut by the program
//!   before the redirect (counted in `trimmed_bytes`); one it cannot repair puts the socket in
//!   the `broken` map, whose bytes are dropped from then on: the session is reset at the next
//!   timer tick or before any EOF is passed on, counted as `faults`, never forwarded corrupt.
//! - A direction whose peer falls [`spill::LIMIT`] behind (a slow reader: the kernel does not
//!   charge redirected bytes to any socket) takes the session out of the kernel path; the
//!   caller finishes it on the next data path (see [`spill`]).
//! - Map entries are always removed at the end (closing a socket would also unlink it).

// unsafe: aya::Pod for Activity (the socket syscalls are in `sockopt`).
#![allow(unsafe_code)]

mod load;
mod sockopt;
mod spill;

pub use load::LoadError;

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, SockHash};
use aya::Ebpf;
use socket2::SockRef;
use tokio::sync::Notify;

use super::{cut_end, reset, Session};
use crate::metrics::End;
use load::chain;
use sockopt::{closed, now_ns, queued_bytes, set_rcvlowat, tcp_info};
use spill::{Flow, Waiters};

/// The program, compiled by `build.rs` (empty when clang-19 or the headers were missing).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/forwarder.bpf.o"));

/// Twin of `struct activity` in `ebpf/forwarder.h`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Activity {
    /// Bytes the program redirected from this socket to its peer (on this CPU).
    pub bytes: u64,
    /// When it last redirected some, in CLOCK_MONOTONIC ns (`bpf_ktime_get_ns`); 0 if never.
    pub last_ns: u64,
}

// SAFETY: `Activity` is `repr(C)`, two u64 without padding; any bit pattern is valid.
unsafe impl aya::Pod for Activity {}

/// Indexes of the `totals` per-CPU array (`enum total` in `ebpf/forwarder.h`).
const TOTAL_REDIRECTED: u32 = 0;
const TOTAL_PASSED: u32 = 1;
const TOTAL_TRIMMED: u32 = 2;
const TOTAL_FAULTS: u32 = 3;

/// Loaded and attached program with its maps.
pub struct Sockmap {
    peers: Mutex<SockHash<MapData, u64>>,
    hooks: Mutex<SockHash<MapData, u64>>,
    activity: Mutex<PerCpuHashMap<MapData, u64, Activity>>,
    broken: Mutex<HashMap<MapData, u64, u8>>,
    flows: Mutex<HashMap<MapData, u64, Flow>>,
    totals: PerCpuArray<MapData, u64>,
    /// Sessions to wake when the program asks for their spill.
    waiters: Waiters,
    /// Sessions taken out of the kernel path because a peer fell behind.
    spills: AtomicU64,
    /// Faults found by userspace (bytes consumed that the program did not hand on).
    user_faults: AtomicU64,
    ncpus: usize,
    /// Keeps the program loaded and attached.
    _ebpf: Ebpf,
}

/// Kernel-side totals, for metrics.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Totals {
    /// Bytes the program redirected from one socket to its peer.
    pub redirected_bytes: u64,
    /// Bytes left to their own socket because it had no peer in the map (should stay 0).
    pub passed_bytes: u64,
    /// Bytes retransmitted skbs repeated, cut before the redirect.
    pub trimmed_bytes: u64,
    /// Skbs the program could not repair, and spills that found bytes the kernel consumed
    /// without the program; each reset its session.
    pub faults: u64,
    /// Sessions moved to the next data path because a peer fell behind.
    pub spills: u64,
}

/// Why inserting a session failed.
pub enum AttachError {
    /// The map is full: the caller falls back to another data path for this session.
    Full,
    /// A socket is no longer ESTABLISHED (e.g. the client already half-closed): the kernel only
    /// takes established sockets, so the session goes to the next data path too.
    NotEstablished,
    /// Anything else (a cookie or queue query, a map error): the reason, on one line. The session
    /// is reset.
    Other(String),
}

impl Sockmap {
    /// Sums the per-CPU totals.
    pub fn totals(&self) -> Totals {
        let sum = |i| {
            self.totals
                .get(&i, 0)
                .map(|v| v.iter().sum::<u64>())
                .unwrap_or(0)
        };
        Totals {
            redirected_bytes: sum(TOTAL_REDIRECTED),
            passed_bytes: sum(TOTAL_PASSED),
            trimmed_bytes: sum(TOTAL_TRIMMED),
            faults: sum(TOTAL_FAULTS) + self.user_faults.load(Ordering::Relaxed),
            spills: self.spills.load(Ordering::Relaxed),
        }
    }

    /// Puts both sockets of a session into the maps.
    pub fn attach(&self, s: &Session) -> Result<Attached, AttachError> {
        let other = |e: io::Error| AttachError::Other(e.to_string());
        let client =
            rustix::net::sockopt::socket_cookie(s.client.as_fd()).map_err(|e| other(e.into()))?;
        let server =
            rustix::net::sockopt::socket_cookie(s.server.as_fd()).map_err(|e| other(e.into()))?;
        // What the send queues held before any redirected byte: the SYN may count in
        // `tcpi_bytes_acked`, and only bytes from the peer matter.
        let base = match (queued_bytes(&s.client), queued_bytes(&s.server)) {
            (Ok(c), Ok(v)) => [c, v],
            (Err(e), _) | (_, Err(e)) => return Err(other(e)),
        };
        let a = Attached {
            client,
            server,
            base,
        };
        let zero = || PerCpuValues::try_from(vec![Activity::default(); self.ncpus]);
        let (Ok(z1), Ok(z2)) = (zero(), zero()) else {
            return Err(AttachError::Other("cannot size per-CPU values".into()));
        };
        let res = (|| {
            let mut act = self.activity.lock().unwrap_or_else(|p| p.into_inner());
            act.insert(client, z1, 0)?;
            act.insert(server, z2, 0)?;
            drop(act);
            // Keyed by the receiving socket; the base is what its peer's queue already took.
            let mut flows = self.flows.lock().unwrap_or_else(|p| p.into_inner());
            let flow = |base| Flow {
                base,
                ..Flow::default()
            };
            flows.insert(client, flow(base[1]), 0)?;
            flows.insert(server, flow(base[0]), 0)?;
            drop(flows);
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            // Each socket goes in under the other's cookie: the program looks up its own.
            peers.insert(client, s.server.as_raw_fd(), 0)?;
            peers.insert(server, s.client.as_raw_fd(), 0)?;
            drop(peers);
            // Both peers can be found: now the program may run on either socket.
            let mut hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
            hooks.insert(client, s.client.as_raw_fd(), 0)?;
            hooks.insert(server, s.server.as_raw_fd(), 0)
        })();
        match res {
            Ok(()) => Ok(a),
            Err(e) => {
                self.detach(&a);
                let errno = match &e {
                    aya::maps::MapError::SyscallError(se) => se.io_error.raw_os_error(),
                    _ => None,
                };
                Err(match errno {
                    Some(libc::E2BIG | libc::ENOSPC | libc::ENOMEM) => AttachError::Full,
                    Some(libc::EOPNOTSUPP) => AttachError::NotEstablished,
                    _ => AttachError::Other(chain(&e)),
                })
            }
        }
    }

    /// Removes a session's entries (missing ones are fine).
    fn detach(&self, a: &Attached) {
        let _ = self.unhook(a);
        let _ = self.unpeer(a);
        let mut act = self.activity.lock().unwrap_or_else(|p| p.into_inner());
        let _ = act.remove(&a.client);
        let _ = act.remove(&a.server);
        drop(act);
        let mut broken = self.broken.lock().unwrap_or_else(|p| p.into_inner());
        let _ = broken.remove(&a.client);
        let _ = broken.remove(&a.server);
        drop(broken);
        let mut flows = self.flows.lock().unwrap_or_else(|p| p.into_inner());
        let _ = flows.remove(&a.client);
        let _ = flows.remove(&a.server);
        drop(flows);
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        w.remove(&a.client);
        w.remove(&a.server);
    }

    /// Stops running the program on both sockets of a session (they stay in `peers`).
    fn unhook(&self, a: &Attached) -> Result<(), aya::maps::MapError> {
        let mut hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
        let r = hooks.remove(&a.client);
        r.and(hooks.remove(&a.server))
    }

    /// Takes both sockets of a session out of `peers`.
    fn unpeer(&self, a: &Attached) -> Result<(), aya::maps::MapError> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let r = peers.remove(&a.client);
        r.and(peers.remove(&a.server))
    }

    /// Counts a fault userspace found.
    fn count_fault(&self) {
        self.user_faults.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the program marked either socket of the session broken.
    fn is_broken(&self, a: &Attached) -> bool {
        let broken = self.broken.lock().unwrap_or_else(|p| p.into_inner());
        [a.client, a.server]
            .iter()
            .any(|c| broken.get(c, 0).is_ok())
    }

    /// Bytes redirected from the socket with `cookie`, and its last activity (CLOCK_MONOTONIC ns).
    fn activity(&self, cookie: u64) -> Activity {
        let act = self.activity.lock().unwrap_or_else(|p| p.into_inner());
        act.get(&cookie, 0)
            .map(|v| Activity {
                bytes: v.iter().map(|a| a.bytes).sum(),
                last_ns: v.iter().map(|a| a.last_ns).max().unwrap_or(0),
            })
            .unwrap_or_default()
    }

    /// Runs an attached session to its end, or gives it back (`Err`) out of the kernel path, for
    /// the next data path to finish, when a peer fell behind (see [`spill`]).
    pub async fn relay(&self, mut s: Session, a: Attached) -> Result<End, Session> {
        let spill = Arc::new(Notify::new());
        {
            let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            w.insert(a.client, Arc::clone(&spill));
            w.insert(a.server, Arc::clone(&spill));
        }
        // Runs the program, under the socket lock, over bytes that arrived before the insertion.
        set_rcvlowat(&s.client, 1);
        set_rcvlowat(&s.server, 1);
        let mut run = Run {
            map: self,
            a: &a,
            s: &s,
            spill: &spill,
            counted: [0, 0],
            last_ns: [now_ns(), now_ns()],
        };
        let outcome = run.until_end().await;
        run.count();
        let bytes = run.counted;
        self.detach(&a);
        if let Some(t) = s.trace.as_mut() {
            t.bytes = bytes;
        }
        let end = match outcome {
            Outcome::Spilled => match spill::reregister(s) {
                Ok(s) => {
                    self.spills.fetch_add(1, Ordering::Relaxed);
                    return Err(s);
                }
                Err(e) => {
                    // The sockets are gone with the session: nothing to reset.
                    tracing::warn!(error = %e, "sockmap: cannot hand a session to the next data path; it is closed");
                    return Ok(End::Reset);
                }
            },
            Outcome::End(end) => end,
        };
        if end != End::Closed {
            reset(&s.client);
            reset(&s.server);
        }
        s.svc.session_ended(s.trace.as_deref(), end.as_str());
        Ok(end)
    }
}

/// How [`Run::until_end`] left the session.
enum Outcome {
    /// It ended.
    End(End),
    /// It is out of the kernel path, for the next data path to finish.
    Spilled,
}

/// A session's keys in the maps.
pub struct Attached {
    client: u64,
    server: u64,
    /// `queued_bytes` of the client and of the server socket before the insertion.
    base: [u64; 2],
}

struct Run<'a> {
    map: &'a Sockmap,
    a: &'a Attached,
    s: &'a Session,
    /// Woken when the program asks for this session's spill.
    spill: &'a Notify,
    /// Bytes already added to the service counters, per source (0: client, 1: server).
    counted: [u64; 2],
    /// Last activity seen per source.
    last_ns: [u64; 2],
}

impl Run<'_> {
    async fn until_end(&mut self) -> Outcome {
        let s = self.s;
        let t = &s.svc.timeouts;
        // Idle timeouts are checked this often (the BPF map holds the exact last activity).
        let tick =
            (t.client.min(t.server) / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut done = [false, false];
        loop {
            tokio::select! {
                r = closed(&s.client), if !done[0] => match r {
                    Ok(()) => {
                        if let Err(o) = self.propagate_eof(0).await { return o; }
                        done[0] = true;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "client socket failed");
                        return Outcome::End(End::Reset);
                    }
                },
                r = closed(&s.server), if !done[1] => match r {
                    Ok(()) => {
                        if let Err(o) = self.propagate_eof(1).await { return o; }
                        done[1] = true;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "server socket failed");
                        return Outcome::End(End::Reset);
                    }
                },
                _ = tokio::time::sleep(tick) => {
                    if let Some(end) = self.broken().or_else(|| self.idle()) {
                        return Outcome::End(end);
                    }
                }
                _ = self.spill.notified() => return self.spilled().await,
                _ = s.cut.cancelled() => return Outcome::End(cut_end(&s.svc)),
            }
            if done == [true, true] {
                return Outcome::End(End::Closed);
            }
        }
    }

    /// [`Run::spill`], unless the program could not repair a stream meanwhile.
    async fn spilled(&mut self) -> Outcome {
        if let Some(end) = self.broken() {
            return Outcome::End(end);
        }
        tracing::debug!(
            service = %self.s.svc.name,
            limit = spill::LIMIT,
            "sockmap: a peer fell behind; the session leaves the kernel path"
        );
        match self.spill().await {
            Ok(()) => Outcome::Spilled,
            Err(end) => Outcome::End(end),
        }
    }

    /// Adds newly redirected bytes to the service counters; returns the totals per source.
    fn count(&mut self) -> [Activity; 2] {
        let acts = [
            self.map.activity(self.a.client),
            self.map.activity(self.a.server),
        ];
        let counters = [
            &self.s.svc.stats.bytes_client_to_server,
            &self.s.svc.stats.bytes_server_to_client,
        ];
        for i in 0..2 {
            let new = acts[i].bytes.saturating_sub(self.counted[i]);
            counters[i].fetch_add(new, Ordering::Relaxed);
            self.counted[i] = self.counted[i].max(acts[i].bytes);
            self.last_ns[i] = self.last_ns[i].max(acts[i].last_ns);
        }
        acts
    }

    /// A reset when the program could not repair a stream of this session.
    fn broken(&self) -> Option<End> {
        if !self.map.is_broken(self.a) {
            return None;
        }
        tracing::warn!(
            service = %self.s.svc.name,
            "sockmap: a retransmitted segment could not be repaired in the kernel; the session \
             is reset rather than forward a corrupt stream"
        );
        Some(End::Reset)
    }

    /// Every byte flows through both sockets, so either side's activity counts for both
    /// timeouts, as in the other data paths.
    fn idle(&mut self) -> Option<End> {
        self.count();
        let idle =
            Duration::from_nanos(now_ns().saturating_sub(self.last_ns[0].max(self.last_ns[1])));
        if idle >= self.s.svc.timeouts.client {
            Some(End::ClientTimeout)
        } else if idle >= self.s.svc.timeouts.server {
            Some(End::ServerTimeout)
        } else {
            None
        }
    }

    /// EOF from `from` (0: client, 1: server): waits until every byte redirected from it is in
    /// the peer's send queue, then half-closes the peer. A spill asked for meanwhile leaves the
    /// EOF to the next data path.
    async fn propagate_eof(&mut self, from: usize) -> Result<(), Outcome> {
        let s = self.s;
        let to = if from == 0 { &s.server } else { &s.client };
        let limit = if from == 0 {
            s.svc.timeouts.server
        } else {
            s.svc.timeouts.client
        };
        let (mut progress, mut start) = (0, tokio::time::Instant::now());
        let mut pause = Duration::from_micros(50);
        loop {
            if let Some(end) = self.broken() {
                return Err(Outcome::End(end));
            }
            let redirected = self.count()[from].bytes;
            let failed = |e: io::Error| {
                tracing::debug!(error = %e, "TCP_INFO failed");
                End::Reset
            };
            // The FIN counts one in bytes_received.
            let received = tcp_info(if from == 0 { &s.client } else { &s.server })
                .map_err(failed)
                .map_err(Outcome::End)?
                .tcpi_bytes_received
                .saturating_sub(1);
            if redirected > received {
                tracing::warn!(
                    service = %s.svc.name,
                    redirected,
                    received,
                    "sockmap: more bytes redirected than received; the session is reset"
                );
                return Err(Outcome::End(End::Reset));
            }
            let queued = queued_bytes(to)
                .map_err(failed)
                .map_err(Outcome::End)?
                .saturating_sub(self.a.base[1 - from]);
            if redirected == received && queued >= redirected {
                break;
            }
            // The limit is on the peer taking nothing: a slow one may take longer in all.
            if queued > progress {
                (progress, start) = (queued, tokio::time::Instant::now());
            } else if start.elapsed() >= limit {
                tracing::warn!(
                    service = %s.svc.name,
                    from = if from == 0 { "client" } else { "server" },
                    redirected,
                    received,
                    queued,
                    "sockmap: the end of a stream was not handed on in time; the session is reset"
                );
                return Err(Outcome::End(if from == 0 {
                    End::ServerTimeout
                } else {
                    End::ClientTimeout
                }));
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.spill.notified() => return Err(self.spilled().await),
                _ = s.cut.cancelled() => return Err(Outcome::End(cut_end(&s.svc))),
            }
            pause = (pause * 2).min(Duration::from_millis(10));
        }
        match SockRef::from(to).shutdown(Shutdown::Write) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            Err(e) => {
                tracing::debug!(error = %e, "shutdown(SHUT_WR) failed");
                Err(Outcome::End(End::Reset))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use super::*;

    /// The `#[repr(C)]` twins agree with the object's map definitions (when it was built).
    #[test]
    fn layouts_match_the_bpf_object() {
        assert!(
            !OBJECT.is_empty(),
            "no BPF object embedded: build.rs needs clang-19, libbpf-dev and linux-libc-dev \
             (see its warning; `cargo xtask build-ebpf` installs them as root)"
        );
        let obj = aya_obj::Object::parse(OBJECT).expect("parse the BPF object");
        let act = &obj.maps["activity"];
        assert_eq!(act.key_size() as usize, size_of::<u64>());
        assert_eq!(act.value_size() as usize, size_of::<Activity>());
        let hooks = &obj.maps["hooks"];
        assert_eq!(hooks.key_size() as usize, size_of::<u64>());
        assert_eq!(hooks.value_size() as usize, size_of::<u32>());
        let peers = &obj.maps["peers"];
        assert_eq!(peers.key_size() as usize, size_of::<u64>());
        assert_eq!(
            peers.value_size() as usize,
            size_of::<u32>(),
            "aya inserts fds as u32"
        );
        let flows = &obj.maps["flows"];
        assert_eq!(flows.key_size() as usize, size_of::<u64>());
        assert_eq!(flows.value_size() as usize, size_of::<Flow>());
        let broken = &obj.maps["broken"];
        assert_eq!(broken.key_size() as usize, size_of::<u64>());
        assert_eq!(broken.value_size() as usize, size_of::<u8>());
        let totals = &obj.maps["totals"];
        assert_eq!(totals.value_size() as usize, size_of::<u64>());
        assert_eq!(totals.max_entries(), TOTAL_FAULTS + 1);
    }
}
