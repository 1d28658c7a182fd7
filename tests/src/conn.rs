//! [`Conn`]: a blocking RESP client, direct to Redis or through the forwarder.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::{info_field, Reply};

/// A blocking RESP connection (direct to Redis or through the forwarder).
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects to `addr` (within 5 s) and sets it up as [`Conn::from_stream`] does.
    pub fn open(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        Conn::from_stream(stream)
    }

    /// Wraps a connected stream: 10 s read and write timeouts, `TCP_NODELAY`.
    pub fn from_stream(stream: TcpStream) -> io::Result<Conn> {
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends one command (as a RESP array of `args`) and reads its reply.
    pub fn cmd(&mut self, args: &[&str]) -> io::Result<Reply> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.stream
            .write_all(&health::resp::encode_command(&args))?;
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
            let n = self.stream.read(&mut chunk)?;
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
        let _ = self.stream.set_read_timeout(Some(limit));
        let mut b = [0u8; 1];
        let r = self.stream.read(&mut b);
        let _ = self.stream.set_read_timeout(Some(Duration::from_secs(10)));
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
        &self.stream
    }
}
