//! Endpoints the end-to-end tests talk to besides Redis: TCP servers on any local address (IPv4
//! or IPv6) run by a closure, so that a test can learn what the forwarder did to the server side
//! of a session (closed it, reset it), and admin requests that carry a bearer token and return
//! the HTTP status whatever it is.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// A port on `ip` that was free a moment ago (`::` also takes it on every IPv4 address, as a
/// dual-stack listener does).
pub fn free_port_at(ip: IpAddr) -> u16 {
    let l = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip} port 0: {e}"));
    l.local_addr().expect("local addr").port()
}

/// A TCP server on a free port of `ip`, running `handler` on a thread per connection; stops with
/// the test process. Unlike [`crate::tcp_server`] the handler may capture state (a channel to
/// report what its peer did, a counter).
pub fn tcp_server_at(
    ip: IpAddr,
    handler: impl Fn(TcpStream) + Send + Sync + 'static,
) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip} port 0: {e}"));
    let addr = l.local_addr().expect("addr");
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        for s in l.incoming().map_while(Result::ok) {
            let handler = Arc::clone(&handler);
            std::thread::spawn(move || handler(s));
        }
    });
    addr
}

/// How the peer of a socket ended its side, as seen by a blocking read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEnd {
    /// A FIN: the read returned 0.
    Closed,
    /// A RST: the read failed with `ECONNRESET`.
    Reset,
    /// Nothing within the read timeout.
    Silent,
    /// Another error.
    Failed(io::ErrorKind),
}

/// Reads from `s` (discarding the bytes) until its peer closes or resets it, or nothing arrives
/// for `limit`; says which.
pub fn peer_end(s: &mut TcpStream, limit: Duration) -> PeerEnd {
    if s.set_read_timeout(Some(limit)).is_err() {
        return PeerEnd::Failed(io::ErrorKind::Other);
    }
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return PeerEnd::Closed,
            Ok(_) => {}
            Err(e) => {
                return match e.kind() {
                    io::ErrorKind::ConnectionReset => PeerEnd::Reset,
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => PeerEnd::Silent,
                    k => PeerEnd::Failed(k),
                }
            }
        }
    }
}

/// One HTTP/1.0 request to the admin listener at `addr`, with `Authorization: Bearer <token>`
/// when `token` is given: the status code and the body, whatever the code.
pub fn admin_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> io::Result<(u16, String)> {
    admin_call(addr, method, path, "", token)
}

/// Like [`admin_request`], with a request body; waits up to 40 s for the answer (a switchover
/// answers when it is done).
pub fn admin_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(40)))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n{auth}\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("{method} {path}: no end of headers: {out}")))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("{method} {path}: no status code: {head}")))?;
    Ok((code, body.to_string()))
}
