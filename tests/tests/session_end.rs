//! How an established session ends, end to end in the data path under test: a server that
//! stops answering is closed after `timeout.server` (counted `server_timeout`); a client that
//! resets its connection makes the forwarder reset the server side at once (counted `reset`);
//! with `on_master_change = "keep"` a session to a demoted master goes on, while a service with
//! the default (`"shutdown-sessions"`) cuts it.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use harness::endpoints::{peer_end, tcp_server_at, PeerEnd};
use harness::{plain_service, wait_until, Conn, Forwarder, Redis, Reply};

fn started(backend: SocketAddr, timeouts: &str) -> Forwarder {
    let f = Forwarder::start(&plain_service(
        "plain",
        "{LISTEN}",
        backend,
        &format!("timeout = {{ {timeouts} }}"),
    ));
    assert!(
        wait_until(Duration::from_secs(10), || f.master("plain").is_some()),
        "backend never became up: {}",
        f.log_text()
    );
    f
}

/// A backend that echoes the first `answers` 4-byte requests of a connection, then reads on
/// without answering; it reports how the forwarder ended its connection. Connections that send
/// nothing (the tcp-check `connect`) are not reported.
fn stalling_backend(answers: usize) -> (SocketAddr, mpsc::Receiver<PeerEnd>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let addr = tcp_server_at(Ipv4Addr::LOCALHOST.into(), move |mut s| {
        let mut req = [0u8; 4];
        for _ in 0..answers {
            if s.read_exact(&mut req).is_err() || s.write_all(&req).is_err() {
                return;
            }
        }
        let end = peer_end(&mut s, Duration::from_secs(60));
        let _ = tx.lock().unwrap().send(end);
    });
    (addr, rx)
}

fn ping(c: &mut TcpStream) -> std::io::Result<()> {
    c.write_all(b"ping")?;
    let mut got = [0u8; 4];
    c.read_exact(&mut got)?;
    assert_eq!(&got, b"ping");
    Ok(())
}

#[test]
fn a_server_that_stops_answering_is_closed_after_timeout_server() {
    let (backend, ended) = stalling_backend(3);
    // The client side's limit is far away: only `timeout.server` can end this session.
    let f = started(backend, r#"client = "60s", server = "500ms""#);
    let mut c = TcpStream::connect(f.listen[0]).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for i in 0..3 {
        ping(&mut c).unwrap_or_else(|e| panic!("request {i} while the server answers: {e}"));
    }
    // The fourth request reaches the server, which never answers.
    c.write_all(b"ping").unwrap();
    let client_saw = peer_end(&mut c, Duration::from_secs(15));
    assert!(
        matches!(client_saw, PeerEnd::Reset | PeerEnd::Closed),
        "the client was not closed after timeout.server: {client_saw:?}\n{:?}",
        f.status()
    );
    assert!(
        wait_until(Duration::from_secs(5), || f.counter(
            "plain",
            "ended",
            "server_timeout"
        ) == 1),
        "not counted as a server timeout: {:?}",
        f.status()
    );
    assert_eq!(f.counter("plain", "ended", "client_timeout"), 0);
    // The server side was closed too, with a reset (a timed out session is not a complete one).
    let server_saw = ended.recv_timeout(Duration::from_secs(10));
    assert_eq!(server_saw, Ok(PeerEnd::Reset), "what the server saw");
}

#[test]
fn a_client_reset_resets_the_server_side() {
    let (backend, ended) = stalling_backend(1);
    // Idle limits far away: only the reset can end this session.
    let f = started(backend, r#"client = "60s", server = "60s""#);
    let mut c = TcpStream::connect(f.listen[0]).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A round trip: the session is established on both sides before the client resets.
    ping(&mut c).unwrap();
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c); // SO_LINGER 0, then close: a RST
    let server_saw = ended.recv_timeout(Duration::from_secs(15));
    assert_eq!(
        server_saw,
        Ok(PeerEnd::Reset),
        "the forwarder did not reset the server side after the client's reset\n{:?}",
        f.status()
    );
    assert!(
        wait_until(Duration::from_secs(5), || f
            .counter("plain", "ended", "reset")
            == 1),
        "not counted as a reset: {:?}",
        f.status()
    );
}

/// Two services in one daemon on the same pair of servers, differing only in
/// `on_master_change` (`extra` lines of the "keep" one).
fn two_services(master: &Redis, replica: &Redis, keep: &str) -> String {
    let block = |name: &str, extra: &str| {
        format!(
            r#"[[service]]
name = "{name}"
listen = "{{LISTEN}}"
servers = ["{}", "{}"]
{extra}

[service.check]
kind = "redis-master"
interval = "200ms"
rise = 1
fall = 1
timeout = "500ms"

"#,
            master.addr(),
            replica.addr()
        )
    };
    format!("{}{}", block("keep", keep), block("cut", ""))
}

#[test]
fn keep_leaves_sessions_on_the_demoted_master_where_the_default_cuts_them() {
    let (old, new) = Redis::pair();
    let f = Forwarder::start(&two_services(&old, &new, r#"on_master_change = "keep""#));
    let (keep, cut) = (f.listen[0], f.listen[1]);
    assert!(
        wait_until(Duration::from_secs(10), || f.master("keep")
            == Some(old.addr())
            && f.master("cut") == Some(old.addr())),
        "{:?}\n{}",
        f.status(),
        f.log_text()
    );
    let mut kept = Conn::open(keep).unwrap();
    assert_eq!(kept.server_port().unwrap(), old.port);
    let mut gone = Conn::open(cut).unwrap();
    assert_eq!(gone.server_port().unwrap(), old.port);

    // The seed guide's manual failover.
    new.replicaof(None);
    old.replicaof(Some(&new));
    assert!(
        wait_until(Duration::from_secs(10), || f.master("keep")
            == Some(new.addr())
            && f.master("cut") == Some(new.addr())),
        "{:?}\n{}",
        f.status(),
        f.log_text()
    );
    // Both routers have acted on the change (each logs what it did with the old sessions).
    assert!(
        wait_until(Duration::from_secs(5), || {
            let log = f.log_text();
            log.contains("keeping the sessions to the old master")
                && log.contains("cutting the sessions to the old master")
        }),
        "{}",
        f.log_text()
    );
    assert!(
        gone.closed_within(Duration::from_secs(10)),
        "the default policy did not cut the session to the demoted master"
    );
    // New sessions of the "keep" service go to the new master...
    let mut fresh = Conn::open(keep).unwrap();
    assert_eq!(fresh.server_port().unwrap(), new.port);
    // ...while the old one still talks to the demoted master, now a replica.
    assert_eq!(
        kept.cmd(&["PING"])
            .unwrap_or_else(|e| panic!("the kept session was cut: {e}\n{}", f.log_text())),
        Reply::Simple("PONG".into())
    );
    assert_eq!(kept.server_port().unwrap(), old.port);
    match kept.cmd(&["SET", "k", "v"]).unwrap() {
        Reply::Error(e) => assert!(e.starts_with("READONLY"), "{e}"),
        other => panic!("a write on the demoted master answered {other:?}"),
    }
    assert_eq!(f.counter("keep", "ended", "master_changed"), 0);
    assert!(
        wait_until(Duration::from_secs(5), || f.counter(
            "cut",
            "ended",
            "master_changed"
        ) == 1),
        "{:?}",
        f.status()
    );
}
