//! Plain TCP through the forwarder (tcp-check `connect` only): bulk integrity both ways,
//! half-close, idle timeouts, reset propagation, connect timeouts.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use harness::{echo, plain_service, tcp_server, wait_until, Forwarder};

fn service(backend: SocketAddr, timeouts: &str) -> String {
    plain_service(
        "plain",
        "{LISTEN}",
        backend,
        &format!("timeout = {{ {timeouts} }}"),
    )
}

fn started(backend: SocketAddr, timeouts: &str) -> Forwarder {
    let f = Forwarder::start(&service(backend, timeouts));
    assert!(
        wait_until(Duration::from_secs(10), || f.master("plain").is_some()),
        "backend never became up: {}",
        f.log_text()
    );
    f
}

/// FNV-1a over a stream: cheap, order-sensitive.
fn fnv(h: &mut u64, data: &[u8]) {
    for b in data {
        *h ^= u64::from(*b);
        *h = h.wrapping_mul(0x100000001b3);
    }
}

/// Deterministic test bytes: not all zero, so reordering shows.
fn pattern(i: usize, buf: &mut [u8]) {
    for (j, b) in buf.iter_mut().enumerate() {
        *b = ((i * 7919 + j * 31) % 251) as u8;
    }
}

const MIB: usize = 1024 * 1024;

#[test]
fn bulk_64_mib_each_way_is_intact() {
    let f = started(tcp_server(echo), "client = \"30s\", server = \"30s\"");
    let s = TcpStream::connect(f.listen[0]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut h = 0xcbf29ce484222325u64;
        let mut chunk = vec![0u8; MIB];
        for i in 0..64 {
            pattern(i, &mut chunk);
            fnv(&mut h, &chunk);
            w.write_all(&chunk).unwrap();
        }
        w.shutdown(Shutdown::Write).unwrap();
        h
    });
    let mut r = s;
    let mut h = 0xcbf29ce484222325u64;
    let mut total = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = r.read(&mut buf).expect("read echo");
        if n == 0 {
            break;
        }
        fnv(&mut h, &buf[..n]);
        total += n;
    }
    let sent = writer.join().unwrap();
    assert_eq!(total, 64 * MIB);
    assert_eq!(h, sent, "echoed bytes differ from sent bytes");
    assert!(wait_until(Duration::from_secs(5), || f
        .counter("plain", "ended", "closed")
        == 1));
    let st = f.service_status("plain").unwrap();
    assert_eq!(st["stats"]["bytes_client_to_server"], 64 * MIB);
    assert_eq!(st["stats"]["bytes_server_to_client"], 64 * MIB);
}

/// Reads the whole request until EOF, then answers with 8 MiB derived from it.
fn reply_after_eof(mut s: TcpStream) {
    let mut req = Vec::new();
    if s.read_to_end(&mut req).is_err() {
        return;
    }
    let mut h = 0xcbf29ce484222325u64;
    fnv(&mut h, &req);
    let mut chunk = vec![0u8; MIB];
    for i in 0..8 {
        pattern(i + (h % 1000) as usize, &mut chunk);
        if s.write_all(&chunk).is_err() {
            return;
        }
    }
}

#[test]
fn half_closed_request_gets_its_whole_reply() {
    let f = started(
        tcp_server(reply_after_eof),
        "client = \"30s\", server = \"30s\"",
    );
    let mut s = TcpStream::connect(f.listen[0]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = b"the whole request, then FIN".repeat(1000);
    s.write_all(&req).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).expect("reply after half-close");
    let mut h = 0xcbf29ce484222325u64;
    fnv(&mut h, &req);
    let mut want = Vec::new();
    let mut chunk = vec![0u8; MIB];
    for i in 0..8 {
        pattern(i + (h % 1000) as usize, &mut chunk);
        want.extend_from_slice(&chunk);
    }
    assert_eq!(reply.len(), want.len());
    assert!(reply == want, "reply bytes differ");
}

fn silent(mut s: TcpStream) {
    let mut b = [0u8; 1024];
    while matches!(s.read(&mut b), Ok(n) if n > 0) {}
}

/// Reads until the forwarder closes `s` (reset or EOF), long before our own 10 s read timeout.
fn assert_closed_by_forwarder(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 1];
    let r = s.read(&mut b);
    assert!(
        matches!(r, Ok(0))
            || r.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{r:?}"
    );
}

#[test]
fn idle_client_is_closed_after_timeout_client() {
    let f = started(tcp_server(silent), "client = \"500ms\", server = \"30s\"");
    let mut s = TcpStream::connect(f.listen[0]).unwrap();
    assert_closed_by_forwarder(&mut s);
    assert!(wait_until(Duration::from_secs(5), || f.counter(
        "plain",
        "ended",
        "client_timeout"
    ) == 1));
}

/// Accepts, reads a little, then resets the connection.
fn resetter(mut s: TcpStream) {
    let mut b = [0u8; 4];
    let _ = s.read_exact(&mut b);
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
}

#[test]
fn server_reset_reaches_the_client() {
    let f = started(tcp_server(resetter), "client = \"30s\", server = \"30s\"");
    let mut s = TcpStream::connect(f.listen[0]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"ping").unwrap();
    let mut b = [0u8; 1];
    let r = s.read(&mut b);
    assert!(
        r.as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "expected a reset, got {r:?}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || f
            .counter("plain", "ended", "reset")
            == 1),
        "{:?}",
        f.status()
    );
}

/// Answers every connection with one fixed line, then closes.
fn hello_a(mut s: TcpStream) {
    let _ = s.write_all(b"service a\n");
}

fn hello_b(mut s: TcpStream) {
    let _ = s.write_all(b"service b\n");
}

#[test]
fn several_services_in_one_daemon() {
    let (a, b) = (tcp_server(hello_a), tcp_server(hello_b));
    let t = "client = \"30s\", server = \"30s\"";
    let two = format!(
        "{}\n{}",
        service(a, t),
        service(b, t).replace("name = \"plain\"", "name = \"other\"")
    );
    let f = Forwarder::start(&two);
    assert!(wait_until(Duration::from_secs(10), || f
        .master("plain")
        .is_some()
        && f.master("other").is_some()));
    for (listen, want) in [(f.listen[0], "service a\n"), (f.listen[1], "service b\n")] {
        let mut s = TcpStream::connect(listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        assert_eq!(got, want);
    }
}

#[test]
fn sessions_keep_working_after_idle_pauses() {
    // The uring path lets a streaming direction keep its pipe between bursts; after 1 s without
    // traffic the direction's linked chain is cancelled, the pipe goes back and a plain poll
    // waits. Traffic before and after such pauses must flow, in order, both ways. Each pause
    // lasts until the forwarder says the session holds no pipe (`pipes_held`, uring only: an
    // idle session holds none); the other paths keep nothing per idle session, so there the
    // rounds follow each other at once.
    let f = started(tcp_server(echo), r#"client = "30s", server = "30s""#);
    let held = || f.status().and_then(|s| s["pipes_held"].as_u64());
    let uring = harness::mode() == "uring";
    // Sockmap's next path (for sessions that do not fit its map) is uring, which has pipes.
    assert_eq!(
        held().is_some(),
        harness::mode() != "userspace",
        "{:?}",
        f.status()
    );
    let mut c = TcpStream::connect(f.listen[0]).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Whether a round ends with a pipe held depends on where its last read fell, so rounds go
    // on until two pauses have given a held pipe back (at most 20 rounds).
    let mut cooled = 0;
    for round in 0..20u8 {
        if uring && cooled >= 2 {
            break;
        }
        // 4 MiB each way: the reads fill the pipes, so the directions stream.
        let mut out = vec![0u8; 4 * MIB];
        pattern(usize::from(round), &mut out);
        let mut writer = c.try_clone().unwrap();
        let sent = out.clone();
        let w = std::thread::spawn(move || writer.write_all(&sent));
        let mut back = vec![0u8; out.len()];
        c.read_exact(&mut back).expect("echo after a pause");
        w.join().unwrap().unwrap();
        assert!(back == out, "round {round}: bytes differ");
        if uring {
            if held() != Some(0) {
                cooled += 1;
            }
            assert!(
                wait_until(Duration::from_secs(10), || held() == Some(0)),
                "round {round}: the idle session still holds pipes: {:?}",
                f.status()
            );
        }
    }
    assert!(
        !uring || cooled >= 2,
        "only {cooled} rounds ended with a pipe held: the cooling was not exercised"
    );
}

#[test]
fn unanswered_connect_times_out_and_the_client_is_closed() {
    // A server whose accept queue is full: the kernel drops further SYNs, so a connect to it
    // hangs until `timeout.connect`. The check runs once (interval 1h), while the queue has room.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    sock.listen(0).unwrap();
    let backend = sock.local_addr().unwrap().as_socket().unwrap();
    let f = Forwarder::start(&format!(
        "[[service]]\nname = \"plain\"\nlisten = \"{{LISTEN}}\"\nservers = [\"{backend}\"]\n\
         timeout = {{ connect = \"300ms\", queue = \"1s\" }}\n\n\
         [service.check]\nkind = \"tcp-check\"\nsteps = [\"connect\"]\ninterval = \"1h\"\nrise = 1\n"
    ));
    assert!(
        wait_until(Duration::from_secs(10), || f.master("plain").is_some()),
        "backend never became up: {}",
        f.log_text()
    );
    // Fill the accept queue until a connect goes unanswered.
    let mut fillers = Vec::new();
    let full =
        (0..8).any(
            |_| match TcpStream::connect_timeout(&backend, Duration::from_millis(300)) {
                Ok(s) => {
                    fillers.push(s);
                    false
                }
                Err(_) => true,
            },
        );
    assert!(full, "the backend's accept queue never filled");

    let mut s = TcpStream::connect(f.listen[0]).unwrap();
    s.write_all(b"hello").unwrap();
    // The connect timed out and no other master turned up in the queue time.
    assert_closed_by_forwarder(&mut s);
    assert!(wait_until(Duration::from_secs(5), || f.counter(
        "plain",
        "rejected",
        "connect_failed"
    ) == 1));
    assert_eq!(f.master("plain"), Some(backend), "the check still passes");
}

/// `R`: reads about 200 KB, then resets the connection. Anything else: reads 64 bytes and sends
/// them back.
fn reset_or_echo(mut s: TcpStream) {
    let mut mode = [0u8; 1];
    if s.read_exact(&mut mode).is_err() {
        return;
    }
    if mode[0] == b'R' {
        let mut b = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < 200_000 {
            match s.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    } else {
        let mut b = [0u8; 64];
        if s.read_exact(&mut b).is_ok() {
            let _ = s.write_all(&b);
        }
    }
}

#[test]
fn bytes_of_a_reset_session_never_reach_another_session() {
    // Sessions that the server resets while their client is still sending end with bytes in
    // flight inside the forwarder; those bytes must die with them, not turn up in the pipes
    // or buffers of the sessions that follow.
    let f = started(
        tcp_server(reset_or_echo),
        "client = \"30s\", server = \"30s\"",
    );
    let addr = f.listen[0];
    let mut wrong = Vec::new();
    // Bounded by count: 20 rounds of 16 reset sessions and 40 echo sessions. The 30 s socket
    // timeouts only guard against a hang: a session that gets neither its bytes nor an error
    // within them is wrong, and the test stops at the third wrong session.
    let guard = Duration::from_secs(30);
    for round in 0..20 {
        if wrong.len() >= 3 {
            break;
        }
        let blasters: Vec<_> = (0..16)
            .map(|_| {
                std::thread::spawn(move || {
                    let Ok(mut s) = TcpStream::connect(addr) else {
                        return None;
                    };
                    let _ = s.set_write_timeout(Some(guard));
                    let chunk = vec![b'X'; 64 * 1024];
                    let _ = s.write_all(b"R");
                    for _ in 0..200 {
                        match s.write_all(&chunk) {
                            Ok(()) => {}
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) =>
                            {
                                return Some(format!("a reset session stalled: {e}"));
                            }
                            Err(_) => break, // the server's reset reached the client
                        }
                    }
                    None
                })
            })
            .collect();
        for b in blasters {
            wrong.extend(b.join().unwrap());
        }
        for i in 0..40 {
            if wrong.len() >= 3 {
                break;
            }
            let msg: Vec<u8> = format!("{round:02}-{i:02}-")
                .bytes()
                .cycle()
                .take(64)
                .collect();
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(guard)).unwrap();
            s.write_all(b"E").unwrap();
            s.write_all(&msg).unwrap();
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            if got != msg {
                wrong.push(String::from_utf8_lossy(&got[..got.len().min(70)]).into_owned());
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} sessions went wrong (an echo without exactly its own 64 bytes, or a reset session \
         that stalled; the test stops at 3), e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(3)]
    );
}
