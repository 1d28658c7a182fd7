//! Sessions whose TLS is done here (`[service.tls]` terminates the clients', `[service.server_tls]`
//! without `passthrough` originates TLS to the master): the handshakes, bounded and counted by
//! reason, and a relay over the TLS streams in tokio. Whatever `[datapath] mode` says, these
//! sessions take this path: the splice and sockmap paths move TCP bytes, and without kernel TLS
//! (no `tls` ULP on this kernel) only userspace can encrypt them. Passthrough sessions are
//! plain TCP to the forwarder and keep every path.
//!
//! Same contract as the other paths: half-close (TLS `close_notify`, then FIN), resets
//! propagated, idle timeouts per side, the master-change cut. A TLS stream cannot be read
//! without a buffer, so each direction holds 16 KiB (one TLS record) for the session's life.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::reset;
use super::userspace::{drive, Activity, Dir};
use crate::metrics::{End, TlsFailure, TlsSide};
use crate::service::ServiceRuntime;
use health::tls::Stream;

/// Bytes a direction reads at once: one TLS record's worth.
const BUF: usize = 16 * 1024;

/// An accepted client: in the clear, or with its TLS terminated.
pub enum Client {
    /// Plain TCP (originate only).
    Plain(TcpStream),
    /// TLS terminated here.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Client {
    fn tcp(&self) -> &TcpStream {
        match self {
            Client::Plain(s) => s,
            Client::Tls(s) => s.get_ref().0,
        }
    }
}

/// The client's TLS handshake, within `timeout.handshake`; `None` (counted, logged at debug)
/// when it fails. Without `[service.tls]`, the client as it is.
pub async fn accept(svc: &ServiceRuntime, client: TcpStream, peer: SocketAddr) -> Option<Client> {
    let Some(config) = &svc.tls_accept else {
        return Some(Client::Plain(client));
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(config));
    let why = match tokio::time::timeout(svc.timeouts.handshake, acceptor.accept(client)).await {
        Ok(Ok(tls)) => return Some(Client::Tls(Box::new(tls))),
        Ok(Err(e)) => {
            tracing::debug!(service = %svc.name, client = %peer, error = %e,
                "client TLS handshake failed");
            TlsFailure::of(&e)
        }
        Err(_) => TlsFailure::Timeout,
    };
    svc.stats.tls_failed(TlsSide::Client, why);
    None
}

/// Connects to `master` within `timeout.connect`, the TLS handshake included when the service
/// originates TLS. A failed handshake is counted; either failure is the caller's connect
/// failure (it waits for a newer master).
pub async fn connect(svc: &ServiceRuntime, master: SocketAddr) -> io::Result<Stream> {
    let tcp = tokio::time::timeout(svc.timeouts.connect, TcpStream::connect(master))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = tcp.set_nodelay(true);
    let Some(origin) = &svc.tls_origin else {
        return Ok(Stream::Plain(tcp));
    };
    match tokio::time::timeout(svc.timeouts.connect, origin.connect(tcp, master)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => {
            svc.stats.tls_failed(TlsSide::Server, TlsFailure::of(&e));
            tracing::warn!(service = %svc.name, %master, error = %e,
                "TLS handshake with the master failed");
            Err(e)
        }
        Err(_) => {
            svc.stats.tls_failed(TlsSide::Server, TlsFailure::Timeout);
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            ))
        }
    }
}

fn server_tcp(s: &Stream) -> &TcpStream {
    match s {
        Stream::Plain(t) => t,
        Stream::Tls(t) => t.get_ref().0,
    }
}

/// Moves bytes until both directions have ended; says how the session ended.
pub async fn relay(session: TlsSession) -> End {
    let TlsSession {
        mut client,
        mut server,
        cut,
        svc,
        mut trace,
        permit: _permit,
    } = session;
    let act = Activity::new(trace.is_some());
    let end = match &mut client {
        Client::Plain(c) => both(&svc, &cut, &act, c, &mut server).await,
        Client::Tls(c) => both(&svc, &cut, &act, c.as_mut(), &mut server).await,
    };
    if end != End::Closed {
        // As in the other paths: neither peer may take a cut session for a complete reply.
        reset(client.tcp());
        reset(server_tcp(&server));
    }
    if let Some(t) = trace.as_mut() {
        t.bytes = act.bytes();
    }
    svc.session_ended(trace.as_deref(), end.as_str());
    end
}

/// Both directions of `client` <-> `server`.
async fn both<C, S>(
    svc: &ServiceRuntime,
    cut: &CancellationToken,
    act: &Activity,
    client: C,
    server: S,
) -> End
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (cr, cw) = tokio::io::split(client);
    let (sr, sw) = tokio::io::split(server);
    let c2s = pump(svc, act, Dir::ClientToServer, cr, sw);
    let s2c = pump(svc, act, Dir::ServerToClient, sr, cw);
    drive(svc, cut, act, c2s, s2c).await
}

/// Copies one direction until EOF (then `close_notify` and FIN towards the destination) or an
/// error. A peer that closes its TCP connection without `close_notify` is taken as an EOF:
/// redis-cli and most clients do so, and RESP frames its own replies.
async fn pump<R, W>(
    svc: &ServiceRuntime,
    act: &Activity,
    dir: Dir,
    mut from: R,
    mut to: W,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };
        act.heard(dir);
        if n == 0 {
            return match to.shutdown().await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
                Err(e) => Err(e),
            };
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
        act.moved(svc, dir, n, true);
    }
}

/// An established TLS session: like [`super::Session`], with streams instead of sockets.
pub struct TlsSession {
    /// The accepted client.
    pub client: Client,
    /// The connection to the master.
    pub server: Stream,
    /// Cancelled when the master changes or the daemon shuts down.
    pub cut: CancellationToken,
    /// Holds the `maxconn` slot until the session ends.
    pub permit: crate::admission::Permit,
    /// The service's runtime (see [`super::Session::svc`]).
    pub svc: Arc<ServiceRuntime>,
    /// What its log line will say (see [`super::Session::trace`]).
    pub trace: Option<Box<crate::session_log::Trace>>,
}
