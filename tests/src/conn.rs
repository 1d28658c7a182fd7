//! [`Conn`]: a blocking RESP client, direct to Redis or through the forwarder.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::tls::ClientTls;
use crate::{info_field, Reply};

/// A blocking RESP connection (direct to Redis or through the forwarder), in the clear or TLS.
pub struct Conn {
    wire: Wire,
    buf: Vec<u8>,
}

/// What a [`Conn`] reads and writes.
enum Wire {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Wire::Plain(s) => s.read(buf),
            Wire::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Wire::Plain(s) => s.write(buf),
            Wire::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Wire::Plain(s) => s.flush(),
            Wire::Tls(s) => s.flush(),
        }
    }
}

impl Conn {
    /// Connects to `addr` (within 5 s) and sets it up as [`Conn::from_stream`] does.
    pub fn open(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        Conn::from_stream(stream)
    }

    /// Connects to `addr` and completes a TLS handshake with `tls`; a refused handshake is an
    /// error with rustls's reason.
    pub fn open_tls(addr: SocketAddr, tls: &ClientTls) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        set_up(&stream)?;
        Ok(Conn {
            wire: Wire::Tls(Box::new(tls.connect(stream, addr)?)),
            buf: Vec::new(),
        })
    }

    /// [`Conn::open_tls`] with `tls`, else [`Conn::open`].
    pub fn open_with(addr: SocketAddr, tls: Option<&ClientTls>) -> io::Result<Conn> {
        match tls {
            Some(t) => Conn::open_tls(addr, t),
            None => Conn::open(addr),
        }
    }

    /// Wraps a connected stream: 10 s read and write timeouts, `TCP_NODELAY`.
    pub fn from_stream(stream: TcpStream) -> io::Result<Conn> {
        set_up(&stream)?;
        Ok(Conn {
            wire: Wire::Plain(stream),
            buf: Vec::new(),
        })
    }

    /// The certificate the server presented (DER), on a TLS connection.
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        match &self.wire {
            Wire::Tls(s) => s
                .conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec()),
            Wire::Plain(_) => None,
        }
    }

    /// Sends one command (as a RESP array of `args`) and reads its reply.
    pub fn cmd(&mut self, args: &[&str]) -> io::Result<Reply> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.wire.write_all(&health::resp::encode_command(&args))?;
        self.read_reply()
    }

    /// Reads the next reply (e.g. a pub/sub push); bytes past it stay buffered for the next
    /// call. Malformed RESP is an `InvalidData` error, EOF an `UnexpectedEof` one.
    pub fn read_reply(&mut self) -> io::Result<Reply> {
        loop {
            match health::resp::parse(&self.buf) {
                Ok(Some((reply, used))) => {
                    self.buf.drain(..used);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.wire.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The `tcp_port` of the Redis server at the other end: who we really talk to.
    pub fn server_port(&mut self) -> io::Result<u16> {
        match self.cmd(&["INFO", "server"])? {
            Reply::Bulk(Some(b)) => info_field(&String::from_utf8_lossy(&b), "tcp_port")
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| io::Error::other("no tcp_port in INFO server")),
            other => Err(io::Error::other(format!("INFO server: {other:?}"))),
        }
    }

    /// True when the peer closed or reset the connection (read returns 0 or an error other than
    /// a timeout) within `limit`.
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        let _ = self.stream().set_read_timeout(Some(limit));
        let mut b = [0u8; 1];
        let r = self.wire.read(&mut b);
        let _ = self
            .stream()
            .set_read_timeout(Some(Duration::from_secs(10)));
        match r {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        }
    }

    /// The underlying socket (to shut it down or read its addresses); reading from it bypasses
    /// the reply buffer.
    pub fn stream(&self) -> &TcpStream {
        match &self.wire {
            Wire::Plain(s) => s,
            Wire::Tls(s) => &s.sock,
        }
    }
}

/// 10 s read and write timeouts, `TCP_NODELAY`.
fn set_up(stream: &TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    stream.set_nodelay(true)
}
