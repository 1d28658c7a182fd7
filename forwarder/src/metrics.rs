//! Counters, kept in one place for every data path: plain relaxed atomics, cheap to bump on the
//! connection path and read by the admin listener.

use std::sync::atomic::{AtomicU64, Ordering};

use health::{Histogram, HistogramSnapshot};
use serde::{Deserialize, Serialize};

/// Why a client was turned away (or a session ended early); each has a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Source address not in the service's allow list.
    NotAllowed,
    /// `maxconn` sessions already open.
    Maxconn,
    /// `maxconn_per_source` sessions already open from this source address.
    PerSource,
    /// No master appeared within `timeout.queue`.
    NoMaster,
    /// The connection to the master failed or timed out.
    ConnectFailed,
}

impl Reject {
    /// Every reason, in the order of the counters.
    pub const ALL: [Reject; 5] = [
        Reject::NotAllowed,
        Reject::Maxconn,
        Reject::PerSource,
        Reject::NoMaster,
        Reject::ConnectFailed,
    ];

    /// The name in metrics labels and the status model, e.g. `per_source`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::NotAllowed => "not_allowed",
            Reject::Maxconn => "maxconn",
            Reject::PerSource => "per_source",
            Reject::NoMaster => "no_master",
            Reject::ConnectFailed => "connect_failed",
        }
    }
}

/// How an established session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both directions finished with FIN.
    Closed,
    /// A reset or socket error on either side, propagated to the other as a reset.
    Reset,
    /// `timeout.client` expired.
    ClientTimeout,
    /// `timeout.server` expired.
    ServerTimeout,
    /// The master changed and `on_master_change = "shutdown-sessions"` cut the session.
    MasterChanged,
    /// The daemon is shutting down.
    Shutdown,
    /// Its server was set to `drain` and `timeout.drain` was up.
    Drained,
}

impl End {
    /// Every way, in the order of the counters.
    pub const ALL: [End; 7] = [
        End::Closed,
        End::Reset,
        End::ClientTimeout,
        End::ServerTimeout,
        End::MasterChanged,
        End::Shutdown,
        End::Drained,
    ];

    /// The name in metrics labels and the status model, e.g. `master_changed`.
    pub fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Reset => "reset",
            End::ClientTimeout => "client_timeout",
            End::ServerTimeout => "server_timeout",
            End::MasterChanged => "master_changed",
            End::Shutdown => "shutdown",
            End::Drained => "drained",
        }
    }
}

/// Which TLS handshake failed: the client's with us, or ours with the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsSide {
    /// A client's handshake with the forwarder (`[service.tls]`).
    Client,
    /// The forwarder's handshake with the master (`[service.server_tls]`).
    Server,
}

impl TlsSide {
    /// Both, in the order of the counters.
    pub const ALL: [TlsSide; 2] = [TlsSide::Client, TlsSide::Server];

    /// The name in metrics labels: `client`, `server`.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsSide::Client => "client",
            TlsSide::Server => "server",
        }
    }
}

/// Why a TLS handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// Not done within `timeout.handshake` (`timeout.connect` towards the server).
    Timeout,
    /// The peer closed or reset the connection during the handshake.
    Closed,
    /// A client certificate was required and none was presented.
    NoCertificate,
    /// The peer's certificate is signed by no CA we trust.
    UnknownCa,
    /// The peer's certificate has expired (or is not yet valid).
    Expired,
    /// The peer's certificate does not name the server.
    WrongName,
    /// The peer's certificate is unusable otherwise, or the peer refused ours (an alert).
    BadCertificate,
    /// Not TLS, no common version or cipher suite, or another protocol error.
    Protocol,
}

impl TlsFailure {
    /// Every reason, in the order of the counters.
    pub const ALL: [TlsFailure; 8] = [
        TlsFailure::Timeout,
        TlsFailure::Closed,
        TlsFailure::NoCertificate,
        TlsFailure::UnknownCa,
        TlsFailure::Expired,
        TlsFailure::WrongName,
        TlsFailure::BadCertificate,
        TlsFailure::Protocol,
    ];

    /// The name in metrics labels and the status model, e.g. `unknown_ca`.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsFailure::Timeout => "timeout",
            TlsFailure::Closed => "closed",
            TlsFailure::NoCertificate => "no_certificate",
            TlsFailure::UnknownCa => "unknown_ca",
            TlsFailure::Expired => "expired",
            TlsFailure::WrongName => "wrong_name",
            TlsFailure::BadCertificate => "bad_certificate",
            TlsFailure::Protocol => "protocol",
        }
    }

    /// The reason of a failed handshake's error (tokio-rustls wraps rustls's in `io::Error`).
    pub fn of(e: &std::io::Error) -> TlsFailure {
        use rustls::{AlertDescription as A, CertificateError as C, Error as R};
        let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<R>()) else {
            return TlsFailure::Closed;
        };
        match tls {
            R::NoCertificatesPresented => TlsFailure::NoCertificate,
            R::InvalidCertificate(C::UnknownIssuer) => TlsFailure::UnknownCa,
            R::InvalidCertificate(C::Expired | C::NotValidYet)
            | R::InvalidCertificate(C::ExpiredContext { .. })
            | R::InvalidCertificate(C::NotValidYetContext { .. }) => TlsFailure::Expired,
            R::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                TlsFailure::WrongName
            }
            R::InvalidCertificate(_) => TlsFailure::BadCertificate,
            R::AlertReceived(A::UnknownCA) => TlsFailure::UnknownCa,
            R::AlertReceived(A::CertificateExpired) => TlsFailure::Expired,
            R::AlertReceived(A::CertificateRequired) => TlsFailure::NoCertificate,
            R::AlertReceived(
                A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateUnknown
                | A::AccessDenied,
            ) => TlsFailure::BadCertificate,
            _ => TlsFailure::Protocol,
        }
    }
}

/// Counters of one service.
#[derive(Debug, Default)]
pub struct ServiceStats {
    /// Clients admitted (past the allow list and both limits), since the service first ran.
    pub accepted: AtomicU64,
    /// Sessions admitted and not yet ended (queued ones included).
    pub active: AtomicU64,
    rejected: [AtomicU64; Reject::ALL.len()],
    ended: [AtomicU64; End::ALL.len()],
    /// Bytes forwarded from clients to the master, whatever the data path.
    pub bytes_client_to_server: AtomicU64,
    /// Bytes forwarded from the master to clients, whatever the data path.
    pub bytes_server_to_client: AtomicU64,
    /// Bytes that passed through userspace buffers: the userspace data path, and uring
    /// directions that found no pipe free.
    pub bytes_copied_in_userspace: AtomicU64,
    /// Sessions that did not fit the sockmap and ran on the next data path.
    pub sockmap_fallbacks: AtomicU64,
    tls_failures: [[AtomicU64; TlsFailure::ALL.len()]; TlsSide::ALL.len()],
    /// Planned switchovers done.
    pub switchovers: AtomicU64,
    /// Planned switchovers asked for and not done (refused, given up or timed out).
    pub switchovers_failed: AtomicU64,
    /// How long new clients were held in the last switchover done, in ms.
    pub last_switchover_ms: AtomicU64,
    /// How long each admitted client was held before the connect that gave it its session
    /// started (or, for one that never got a session, until it was closed).
    pub queue_wait: Histogram,
    /// How long each successful connect to the master took.
    pub connect: Histogram,
    /// Open sessions per source address (only addresses with at least one), for
    /// `maxconn_per_source`; here rather than in the runtime's gate so they carry over a reload.
    pub sources: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, u32>>,
}

impl ServiceStats {
    /// Counts a client turned away for `why`.
    pub fn reject(&self, why: Reject) {
        self.rejected[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// How many clients were turned away for `why`.
    pub fn rejected(&self, why: Reject) -> u64 {
        self.rejected[why as usize].load(Ordering::Relaxed)
    }

    /// Counts a session that ended `how`.
    pub fn end(&self, how: End) {
        self.ended[how as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// How many sessions ended `how`.
    pub fn ended(&self, how: End) -> u64 {
        self.ended[how as usize].load(Ordering::Relaxed)
    }

    /// Counts a failed TLS handshake.
    pub fn tls_failed(&self, side: TlsSide, why: TlsFailure) {
        self.tls_failures[side as usize][why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A plain copy for rendering.
    pub fn snapshot(&self) -> StatsSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            accepted: load(&self.accepted),
            active: load(&self.active),
            rejected: Reject::ALL
                .iter()
                .map(|r| (r.as_str().to_string(), self.rejected(*r)))
                .collect(),
            ended: End::ALL
                .iter()
                .map(|e| (e.as_str().to_string(), self.ended(*e)))
                .collect(),
            bytes_client_to_server: load(&self.bytes_client_to_server),
            bytes_server_to_client: load(&self.bytes_server_to_client),
            bytes_copied_in_userspace: load(&self.bytes_copied_in_userspace),
            sockmap_fallbacks: load(&self.sockmap_fallbacks),
            tls_handshake_failures: TlsSide::ALL
                .iter()
                .map(|side| {
                    let by = TlsFailure::ALL
                        .iter()
                        .map(|f| {
                            let n = load(&self.tls_failures[*side as usize][*f as usize]);
                            (f.as_str().to_string(), n)
                        })
                        .collect();
                    (side.as_str().to_string(), by)
                })
                .collect(),
            switchovers: load(&self.switchovers),
            switchovers_failed: load(&self.switchovers_failed),
            last_switchover_ms: load(&self.last_switchover_ms),
            queue_wait: self.queue_wait.snapshot(),
            connect: self.connect.snapshot(),
        }
    }
}

/// A point-in-time copy of [`ServiceStats`] (part of the status model, `status.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// [`ServiceStats::accepted`].
    pub accepted: u64,
    /// [`ServiceStats::active`].
    pub active: u64,
    /// By [`Reject::as_str`].
    pub rejected: std::collections::BTreeMap<String, u64>,
    /// By [`End::as_str`].
    pub ended: std::collections::BTreeMap<String, u64>,
    /// [`ServiceStats::bytes_client_to_server`].
    pub bytes_client_to_server: u64,
    /// [`ServiceStats::bytes_server_to_client`].
    pub bytes_server_to_client: u64,
    /// [`ServiceStats::bytes_copied_in_userspace`].
    pub bytes_copied_in_userspace: u64,
    /// [`ServiceStats::sockmap_fallbacks`].
    pub sockmap_fallbacks: u64,
    /// Failed TLS handshakes by [`TlsSide::as_str`], then [`TlsFailure::as_str`].
    #[serde(default)]
    pub tls_handshake_failures:
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
    /// [`ServiceStats::switchovers`].
    pub switchovers: u64,
    /// [`ServiceStats::switchovers_failed`].
    pub switchovers_failed: u64,
    /// [`ServiceStats::last_switchover_ms`].
    pub last_switchover_ms: u64,
    /// [`ServiceStats::queue_wait`].
    pub queue_wait: HistogramSnapshot,
    /// [`ServiceStats::connect`].
    pub connect: HistogramSnapshot,
}

/// Why the admin listener closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminReject {
    /// As many admin connections open as allowed.
    Busy,
    /// Headers too slow, or the connection older than its limit.
    Timeout,
    /// accept(2) failed.
    AcceptFailed,
}

impl AdminReject {
    /// Every reason, in the order of [`GlobalStats::admin_rejected`].
    pub const ALL: [AdminReject; 3] = [
        AdminReject::Busy,
        AdminReject::Timeout,
        AdminReject::AcceptFailed,
    ];

    /// The name in metrics labels and the status model, e.g. `accept_failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminReject::Busy => "busy",
            AdminReject::Timeout => "timeout",
            AdminReject::AcceptFailed => "accept_failed",
        }
    }
}

/// Counters that belong to no service.
#[derive(Debug, Default)]
pub struct GlobalStats {
    /// accept(2) failures (EMFILE, ENFILE, ENOBUFS, ...), each followed by a short pause.
    pub accept_errors: AtomicU64,
    /// Admin connections closed by its limits, indexed by [`AdminReject`].
    pub admin_rejected: [AtomicU64; AdminReject::ALL.len()],
}
