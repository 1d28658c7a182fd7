//! `log_sessions = true`: one `info` line per client at its end (target `forwarder::session`),
//! in the data path under test: its bytes exact, its end right (a clean close, a master-change
//! cut, a client given up without a master). The latency histograms count what happened, a
//! reload turns the log on for new clients, and the log itself is plain: no ANSI colours off a
//! terminal, no Rust `Some(..)`/`None` in JSON.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use harness::{echo, free_port, tcp_server, wait_until, Forwarder, Redis, Service};
use serde_json::Value;

/// A Redis service over `servers` with the session log on.
fn service(servers: &[SocketAddr]) -> String {
    Service::redis("cache", servers)
        .set("log_sessions", "true")
        .check("fall", "1")
        .check("timeout", "\"500ms\"")
        .to_string()
}

/// The `forwarder::session` lines of a JSON log, their fields parsed.
fn session_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "forwarder::session")
        .map(|v| v["fields"].clone())
        .collect()
}

/// Waits until the log has `n` session lines; returns them.
fn wait_lines(f: &Forwarder, n: usize) -> Vec<Value> {
    let done = wait_until(Duration::from_secs(10), || {
        session_lines(&f.log_text()).len() >= n
    });
    let lines = session_lines(&f.log_text());
    assert!(
        done && lines.len() == n,
        "wanted {n} session lines, got {}:\n{}",
        lines.len(),
        f.log_text()
    );
    lines
}

/// Sends `req` and reads exactly `reply_len` bytes back.
fn exchange(c: &mut TcpStream, req: &[u8], reply_len: usize) -> Vec<u8> {
    c.write_all(req).unwrap();
    let mut got = vec![0u8; reply_len];
    c.read_exact(&mut got).unwrap();
    got
}

/// A sample of the `/metrics` text, e.g. `forwarder_connect_seconds_count{service="cache"}`.
fn metric(f: &Forwarder, sample: &str) -> Option<f64> {
    f.metrics().lines().find_map(|l| {
        l.strip_prefix(sample)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    })
}

/// Asserts the fields every line has, as plain JSON values.
fn assert_common(line: &Value, client: SocketAddr) {
    assert_eq!(line["message"], "session", "{line}");
    assert_eq!(line["service"], "cache", "{line}");
    assert_eq!(line["client"], client.to_string(), "{line}");
    for n in [
        "queue_ms",
        "connect_ms",
        "duration_ms",
        "bytes_in",
        "bytes_out",
    ] {
        assert!(line[n].is_u64(), "{n} is not a number: {line}");
    }
}

#[test]
fn each_session_logs_one_line_with_its_bytes_and_how_it_ended() {
    let (old, new) = Redis::pair();
    let f = Forwarder::start_args(
        &service(&[old.addr(), new.addr()]),
        &["--log-format", "json"],
    );
    assert!(
        wait_until(Duration::from_secs(10), || f.master("cache")
            == Some(old.addr())),
        "{}",
        f.log_text()
    );

    // A SET of a 1000-byte value, then a clean close.
    let value = "v".repeat(1000);
    let set = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000\r\n{value}\r\n");
    let mut c = TcpStream::connect(f.listen[0]).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let client = c.local_addr().unwrap();
    assert_eq!(exchange(&mut c, set.as_bytes(), 5), b"+OK\r\n");
    c.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(
        c.read(&mut [0u8; 1]).unwrap(),
        0,
        "the server side closes too"
    );
    drop(c);
    let lines = wait_lines(&f, 1);
    let line = &lines[0];
    assert_common(line, client);
    assert_eq!(line["server"], old.addr().to_string(), "{line}");
    assert_eq!(line["bytes_in"], set.len() as u64, "{line}");
    assert_eq!(line["bytes_out"], 5, "{line}");
    assert_eq!(line["end"], "closed", "{line}");

    // A session cut by a master change.
    let mut c = TcpStream::connect(f.listen[0]).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let client = c.local_addr().unwrap();
    let ping = b"*1\r\n$4\r\nPING\r\n";
    assert_eq!(exchange(&mut c, ping, 7), b"+PONG\r\n");
    new.replicaof(None);
    old.replicaof(Some(&new));
    let r = c.read(&mut [0u8; 1]);
    assert!(
        matches!(r, Ok(0)) || r.is_err(),
        "the session to the demoted master was not cut: {r:?}"
    );
    let lines = wait_lines(&f, 2);
    let line = &lines[1];
    assert_common(line, client);
    assert_eq!(line["server"], old.addr().to_string(), "{line}");
    assert_eq!(line["bytes_in"], ping.len() as u64, "{line}");
    assert_eq!(line["bytes_out"], 7, "{line}");
    assert_eq!(line["end"], "master_changed", "{line}");

    // Two sessions, two successful connects, two queue waits; the checks are timed too.
    assert_eq!(
        metric(&f, "forwarder_connect_seconds_count{service=\"cache\"}"),
        Some(2.0),
        "{}",
        f.metrics()
    );
    assert_eq!(
        metric(
            &f,
            "forwarder_queue_wait_seconds_bucket{service=\"cache\",le=\"+Inf\"}"
        ),
        Some(2.0),
        "{}",
        f.metrics()
    );
    assert!(
        metric(
            &f,
            "forwarder_check_duration_seconds_count{service=\"cache\"}"
        )
        .is_some_and(|n| n >= 2.0),
        "{}",
        f.metrics()
    );

    // Every JSON line carries plain values (the master change logged an address, not an
    // Option).
    let log = f.log_text();
    assert!(log.contains("\"master changed\""), "{log}");
    for l in log.lines() {
        assert!(!l.contains("Some(") && !l.contains("None"), "{l}");
        assert!(serde_json::from_str::<Value>(l).is_ok(), "not JSON: {l}");
    }
}

#[test]
fn a_client_given_up_logs_its_reason_and_the_human_log_has_no_colours() {
    // Nothing listens on the server's port: there is never a master.
    let dead: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let f = Forwarder::start(
        &Service::tcp("cache", dead)
            .set("log_sessions", "true")
            .set("timeout", "{ queue = \"200ms\" }")
            .to_string(),
    );
    let mut c = TcpStream::connect(f.listen[0]).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let client = c.local_addr().unwrap();
    let r = c.read(&mut [0u8; 1]);
    assert!(matches!(r, Ok(0)) || r.is_err(), "not closed: {r:?}");
    // The human format: `key=value` pairs (strings quoted).
    let want = format!("client={client} server=\"\"");
    assert!(
        f.wait_for_log(&want, Duration::from_secs(10)),
        "{}",
        f.log_text()
    );
    let log = f.log_text();
    let line = log.lines().find(|l| l.contains(&want)).unwrap();
    assert!(line.contains("forwarder::session"), "{line}");
    assert!(line.contains("end=\"no_master\""), "{line}");
    assert!(line.contains("bytes_in=0 bytes_out=0"), "{line}");
    assert_eq!(
        metric(&f, "forwarder_queue_wait_seconds_count{service=\"cache\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&f, "forwarder_connect_seconds_count{service=\"cache\"}"),
        Some(0.0)
    );
    // stderr is a pipe here, not a terminal: no colour codes.
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a piped log:\n{log}"
    );
}

#[test]
fn a_reload_turns_the_session_log_on() {
    let backend = tcp_server(echo);
    let svc = |listen: &str, on: &str| {
        Service::tcp("cache", backend)
            .set("listen", &format!("\"{listen}\""))
            .set("log_sessions", on)
            .to_string()
    };
    let mut f = Forwarder::start(&svc("{LISTEN}", "false"));
    assert!(
        wait_until(Duration::from_secs(10), || f.master("cache").is_some()),
        "{}",
        f.log_text()
    );
    let session = |f: &Forwarder| {
        let mut c = TcpStream::connect(f.listen[0]).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(exchange(&mut c, b"ping", 4), b"ping");
        c.local_addr().unwrap()
    };
    session(&f);
    assert!(
        wait_until(Duration::from_secs(10), || f
            .counter("cache", "ended", "closed")
            == 1),
        "{:?}",
        f.status()
    );
    assert!(
        !f.log_text().contains("forwarder::session"),
        "{}",
        f.log_text()
    );

    let listen = f.listen[0].to_string();
    f.rewrite(&svc(&listen, "true"));
    f.proc().signal(libc::SIGHUP);
    assert!(
        f.wait_for_log("reloaded: 0 unchanged, 1 changed", Duration::from_secs(10)),
        "{}",
        f.log_text()
    );
    let client = session(&f);
    assert!(
        f.wait_for_log(&format!("client={client} "), Duration::from_secs(10)),
        "{}",
        f.log_text()
    );
    let log = f.log_text();
    assert_eq!(log.matches("forwarder::session").count(), 1, "{log}");
}
