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
//! - Map entries are always removed at the end (closing a socket would also unlink it).

// unsafe: aya::Pod for Activity (the socket syscalls are in `sockopt`).
#![allow(unsafe_code)]

mod sockopt;

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, SockHash};
use aya::programs::SkSkb;
use aya::Ebpf;
use socket2::SockRef;

use super::{cut_end, reset, Session};
use crate::metrics::End;
use sockopt::{closed, now_ns, queued_bytes, set_rcvlowat, tcp_info};

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
    totals: PerCpuArray<MapData, u64>,
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
    /// Skbs the program could not repair; each reset its session.
    pub faults: u64,
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

/// Why the program cannot be loaded and attached here.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `build.rs` could not compile the program, so the binary embeds none.
    #[error(
        "this binary was built without the BPF object: install clang-19, libbpf-dev \
         and linux-libc-dev (`cargo xtask build-ebpf` does, as root), then rebuild the \
         forwarder"
    )]
    NoObject,
    /// Loading the object failed (the error with its sources, on one line).
    #[error("loading the BPF object failed: {0}")]
    Object(String),
    /// A map the loader expects is not in the object: its name.
    #[error("the BPF object has no `{0}` map")]
    NoMap(&'static str),
    /// A map is not of the type the loader expects: its name and aya's error.
    #[error("map `{0}`: {1}")]
    Map(&'static str, aya::maps::MapError),
    /// The object has no program named `redirect`.
    #[error("the BPF object has no `redirect` program")]
    NoProgram,
    /// `redirect` is not an `sk_skb` program.
    #[error("program `redirect`: {0}")]
    Program(aya::programs::ProgramError),
    /// The verifier's refusal, with its sources on one line.
    #[error("the verifier rejected `redirect`: {0}")]
    Verifier(String),
    /// Duplicating the `peers` map's descriptor to attach to failed.
    #[error("dup of the map fd: {0}")]
    Dup(io::Error),
    /// The attach error, with its sources on one line.
    #[error("attaching `redirect` as stream_verdict: {0}")]
    Attach(String),
    /// The number of possible CPUs, which sizes the per-CPU values, could not be read.
    #[error("counting CPUs: {0}")]
    Cpus(io::Error),
}

impl Sockmap {
    /// Loads the embedded program with room for `sessions` sessions and attaches it.
    pub fn load(sessions: u32) -> Result<Sockmap, LoadError> {
        if OBJECT.is_empty() {
            return Err(LoadError::NoObject);
        }
        let entries = sessions.saturating_mul(2).max(2);
        let mut ebpf = aya::EbpfLoader::new()
            .set_max_entries("peers", entries)
            .set_max_entries("hooks", entries)
            .set_max_entries("activity", entries)
            .set_max_entries("broken", entries)
            .load(OBJECT)
            .map_err(|e| LoadError::Object(chain(&e)))?;
        let peers: SockHash<MapData, u64> = ebpf
            .take_map("peers")
            .ok_or(LoadError::NoMap("peers"))?
            .try_into()
            .map_err(|e| LoadError::Map("peers", e))?;
        let hooks: SockHash<MapData, u64> = ebpf
            .take_map("hooks")
            .ok_or(LoadError::NoMap("hooks"))?
            .try_into()
            .map_err(|e| LoadError::Map("hooks", e))?;
        let activity: PerCpuHashMap<MapData, u64, Activity> = ebpf
            .take_map("activity")
            .ok_or(LoadError::NoMap("activity"))?
            .try_into()
            .map_err(|e| LoadError::Map("activity", e))?;
        let broken: HashMap<MapData, u64, u8> = ebpf
            .take_map("broken")
            .ok_or(LoadError::NoMap("broken"))?
            .try_into()
            .map_err(|e| LoadError::Map("broken", e))?;
        let totals: PerCpuArray<MapData, u64> = ebpf
            .take_map("totals")
            .ok_or(LoadError::NoMap("totals"))?
            .try_into()
            .map_err(|e| LoadError::Map("totals", e))?;
        let prog: &mut SkSkb = ebpf
            .program_mut("redirect")
            .ok_or(LoadError::NoProgram)?
            .try_into()
            .map_err(LoadError::Program)?;
        prog.load().map_err(|e| LoadError::Verifier(chain(&e)))?;
        let map_fd = hooks.fd().try_clone().map_err(LoadError::Dup)?;
        prog.attach(&map_fd)
            .map_err(|e| LoadError::Attach(chain(&e)))?;
        let ncpus = aya::util::nr_cpus().map_err(|(_, e)| LoadError::Cpus(e))?;
        Ok(Sockmap {
            peers: Mutex::new(peers),
            hooks: Mutex::new(hooks),
            activity: Mutex::new(activity),
            broken: Mutex::new(broken),
            totals,
            ncpus,
            _ebpf: ebpf,
        })
    }

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
            faults: sum(TOTAL_FAULTS),
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
        let mut hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
        let _ = hooks.remove(&a.client);
        let _ = hooks.remove(&a.server);
        drop(hooks);
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let _ = peers.remove(&a.client);
        let _ = peers.remove(&a.server);
        drop(peers);
        let mut act = self.activity.lock().unwrap_or_else(|p| p.into_inner());
        let _ = act.remove(&a.client);
        let _ = act.remove(&a.server);
        drop(act);
        let mut broken = self.broken.lock().unwrap_or_else(|p| p.into_inner());
        let _ = broken.remove(&a.client);
        let _ = broken.remove(&a.server);
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

    /// Runs an attached session to its end.
    pub async fn relay(&self, s: Session, a: Attached) -> End {
        // Runs the program, under the socket lock, over bytes that arrived before the insertion.
        set_rcvlowat(&s.client, 1);
        set_rcvlowat(&s.server, 1);
        let mut run = Run {
            map: self,
            a: &a,
            s: &s,
            counted: [0, 0],
            last_ns: [now_ns(), now_ns()],
        };
        let end = run.until_end().await;
        run.count();
        let bytes = run.counted;
        self.detach(&a);
        if end != End::Closed {
            reset(&s.client);
            reset(&s.server);
        }
        let mut trace = s.trace;
        if let Some(t) = trace.as_mut() {
            t.bytes = bytes;
        }
        s.svc.session_ended(trace.as_deref(), end.as_str());
        end
    }
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
    /// Bytes already added to the service counters, per source (0: client, 1: server).
    counted: [u64; 2],
    /// Last activity seen per source.
    last_ns: [u64; 2],
}

impl Run<'_> {
    async fn until_end(&mut self) -> End {
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
                        if let Err(end) = self.propagate_eof(0).await { return end; }
                        done[0] = true;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "client socket failed");
                        return End::Reset;
                    }
                },
                r = closed(&s.server), if !done[1] => match r {
                    Ok(()) => {
                        if let Err(end) = self.propagate_eof(1).await { return end; }
                        done[1] = true;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "server socket failed");
                        return End::Reset;
                    }
                },
                _ = tokio::time::sleep(tick) => {
                    if let Some(end) = self.broken().or_else(|| self.idle()) { return end; }
                }
                _ = s.cut.cancelled() => return cut_end(&s.svc),
            }
            if done == [true, true] {
                return End::Closed;
            }
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
    /// the peer's send queue, then half-closes the peer.
    async fn propagate_eof(&mut self, from: usize) -> Result<(), End> {
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
                return Err(end);
            }
            let redirected = self.count()[from].bytes;
            let failed = |e: io::Error| {
                tracing::debug!(error = %e, "TCP_INFO failed");
                End::Reset
            };
            // The FIN counts one in bytes_received.
            let received = tcp_info(if from == 0 { &s.client } else { &s.server })
                .map_err(failed)?
                .tcpi_bytes_received
                .saturating_sub(1);
            if redirected > received {
                tracing::warn!(
                    service = %s.svc.name,
                    redirected,
                    received,
                    "sockmap: more bytes redirected than received; the session is reset"
                );
                return Err(End::Reset);
            }
            let queued = queued_bytes(to)
                .map_err(failed)?
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
            pause = (pause * 2).min(Duration::from_millis(10));
        }
        match SockRef::from(to).shutdown(Shutdown::Write) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            Err(e) => {
                tracing::debug!(error = %e, "shutdown(SHUT_WR) failed");
                Err(End::Reset)
            }
        }
    }
}

/// An error with its sources, on one line (aya's errors nest the errno).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
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
        let broken = &obj.maps["broken"];
        assert_eq!(broken.key_size() as usize, size_of::<u64>());
        assert_eq!(broken.value_size() as usize, size_of::<u8>());
        let totals = &obj.maps["totals"];
        assert_eq!(totals.value_size() as usize, size_of::<u64>());
        assert_eq!(totals.max_entries(), TOTAL_FAULTS + 1);
    }
}
