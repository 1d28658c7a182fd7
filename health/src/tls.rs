//! TLS towards a server (HAProxy's `check-ssl`, Redis 6+ `tls-port`): the checks, the Sentinel
//! connections and a switchover's requests open their TCP connection, then, when the service
//! says so, a TLS session over it with [`Connector`]. The certificates are read by the
//! forwarder; health only gets the rustls client configuration it built.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// How to speak TLS to a server: the rustls client configuration (trusted CA, client
/// certificate) and the name to verify its certificate against.
#[derive(Clone)]
pub struct Connector {
    config: Arc<rustls::ClientConfig>,
    name: Option<ServerName<'static>>,
    /// Tells two connectors apart without comparing configurations (rustls's cannot be): the
    /// forwarder derives it from the files' contents, so a reload with new certificates is a
    /// changed check.
    id: u64,
}

impl Connector {
    /// `name` is what the server's certificate must name; `None` verifies the address the
    /// connection goes to (an IP address SAN). `id` identifies the material (see the field).
    pub fn new(
        config: Arc<rustls::ClientConfig>,
        name: Option<ServerName<'static>>,
        id: u64,
    ) -> Connector {
        Connector { config, name, id }
    }

    /// The rustls configuration (for a data path that originates TLS itself).
    pub fn config(&self) -> &Arc<rustls::ClientConfig> {
        &self.config
    }

    /// The name verified for a server at `addr`.
    pub fn name_for(&self, addr: SocketAddr) -> ServerName<'static> {
        self.name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
    }

    /// The TLS handshake over `tcp`, connected to `addr`. The error says why a handshake failed
    /// (`invalid peer certificate: UnknownIssuer`, an alert the server sent, an EOF).
    pub async fn connect(&self, tcp: TcpStream, addr: SocketAddr) -> io::Result<Stream> {
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.config))
            .connect(self.name_for(addr), tcp)
            .await?;
        Ok(Stream::Tls(Box::new(tls)))
    }
}

impl PartialEq for Connector {
    fn eq(&self, other: &Connector) -> bool {
        self.id == other.id && self.name == other.name
    }
}

impl Eq for Connector {}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("name", &self.name)
            .field("id", &format_args!("{:016x}", self.id))
            .finish()
    }
}

/// A connection to a server, in the clear or in TLS.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Connects to `addr` (TCP, `TCP_NODELAY`), then the TLS handshake when `tls` is set.
    pub async fn connect(addr: SocketAddr, tls: Option<&Connector>) -> io::Result<Stream> {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        match tls {
            Some(t) => t.connect(tcp, addr).await,
            None => Ok(Stream::Plain(tcp)),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
