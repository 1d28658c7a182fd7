//! Reloading the configuration (SIGHUP, `forwarder reload`): services added, changed and
//! removed while sessions run, none dropped, no byte lost; an invalid file changes nothing.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use harness::{tcp_server, wait_until, Forwarder};

fn service(name: &str, listen: &str, backend: SocketAddr, allow: &str) -> String {
    harness::plain_service(name, listen, backend, &format!("allow = [{allow}]"))
}

fn echo_tagged(mut s: TcpStream, tag: u8) {
    if s.write_all(&[tag]).is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 || s.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

fn one(s: TcpStream) {
    echo_tagged(s, b'1');
}

fn two(s: TcpStream) {
    echo_tagged(s, b'2');
}

/// Connects and returns the backend's tag.
fn tag_of(addr: SocketAddr) -> Option<(TcpStream, u8)> {
    let mut c = TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut t = [0u8; 1];
    c.read_exact(&mut t).ok()?;
    Some((c, t[0]))
}

fn ping(c: &mut TcpStream) -> bool {
    let mut got = [0u8; 4];
    c.write_all(b"ping").is_ok() && c.read_exact(&mut got).is_ok() && &got == b"ping"
}

fn fnv(h: &mut u64, data: &[u8]) {
    for b in data {
        *h ^= u64::from(*b);
        *h = h.wrapping_mul(0x100000001b3);
    }
}

#[test]
fn reload_adds_changes_and_removes_services_without_dropping_sessions() {
    let (b1, b2) = (tcp_server(one), tcp_server(two));
    let f = Forwarder::start(&format!(
        "{}{}",
        service("a", "{LISTEN}", b1, "\"127.0.0.1/32\""),
        service("gone", "{LISTEN}", b1, "")
    ));
    let (a_addr, gone_addr) = (f.listen[0], f.listen[1]);
    assert!(wait_until(Duration::from_secs(10), || f
        .master("a")
        .is_some()
        && f.master("gone").is_some()));

    // A session streaming through "a" across the reload, checked byte for byte: bytes flow
    // before the reload, and it keeps sending until the reload is seen applied, then 1 MiB more.
    let (s, tag) = tag_of(a_addr).expect("session on a");
    assert_eq!(tag, b'1');
    let applied = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn({
        let applied = Arc::clone(&applied);
        move || {
            let mut h = 0xcbf29ce484222325u64;
            let mut sent = 0u64;
            let mut sent_when_applied = None;
            // Bounded: at most 1 GiB; the test fails long before if the reload is not applied.
            for i in 0..65_536u64 {
                let chunk: Vec<u8> = (0..16 * 1024).map(|j| ((i * 31 + j) % 251) as u8).collect();
                w.write_all(&chunk)
                    .expect("the streaming session survives the reload (sending)");
                fnv(&mut h, &chunk);
                sent += chunk.len() as u64;
                if applied.load(Ordering::Relaxed) {
                    let at = *sent_when_applied.get_or_insert(sent);
                    if sent >= at + (1 << 20) {
                        break;
                    }
                }
                // Pacing: a steady stream (about 1.6 MB/s), not a flood that starves the reload
                // on a loaded machine.
                std::thread::sleep(Duration::from_millis(10));
            }
            w.shutdown(Shutdown::Write).unwrap();
            (sent, h, sent_when_applied)
        }
    });
    let reader = std::thread::spawn({
        let (mut s, received) = (s, Arc::clone(&received));
        move || {
            let mut h = 0xcbf29ce484222325u64;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = s
                    .read(&mut buf)
                    .expect("the streaming session survives the reload (receiving)");
                if n == 0 {
                    break;
                }
                fnv(&mut h, &buf[..n]);
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
            h
        }
    });
    let (mut g, _) = tag_of(gone_addr).expect("session on gone");

    assert!(
        wait_until(Duration::from_secs(20), || received.load(Ordering::Relaxed)
            >= 1 << 20),
        "the stream did not get going before the reload"
    );
    let received_before = received.load(Ordering::Relaxed);
    let a_listen = a_addr.to_string();
    let new = f.rewrite(&format!(
        "{}{}",
        service("a", &a_listen, b2, "\"127.0.0.0/8\""),
        service("b", "{LISTEN}", b1, "")
    ));
    let mut fw = f;
    fw.proc().signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(5), || fw
            .log_text()
            .contains("reloaded: 0 unchanged, 1 changed, 1 added, 1 removed")),
        "{}",
        fw.log_text()
    );
    // New clients of "a" go to its new server; "b" serves; "gone" no longer listens.
    assert!(wait_until(Duration::from_secs(10), || tag_of(a_addr)
        .is_some_and(|(_, t)| t == b'2')));
    assert!(wait_until(Duration::from_secs(10), || tag_of(new[0])
        .is_some_and(|(_, t)| t == b'1')));
    assert!(wait_until(Duration::from_secs(5), || TcpStream::connect(
        gone_addr
    )
    .is_err()));
    // The session of the removed service goes on.
    assert!(ping(&mut g), "a session of the removed service was dropped");

    // The reload is applied (new clients of "a" reach its new server): the stream finishes.
    applied.store(true, Ordering::Relaxed);
    let (sent, sent_h, sent_when_applied) = writer.join().expect("the stream's writer failed");
    let h = reader.join().expect("the stream's reader failed");
    let got = received.load(Ordering::Relaxed);
    let sent_when_applied = sent_when_applied.expect("the writer stopped before the reload");
    assert!(
        received_before >= 1 << 20 && sent >= sent_when_applied + (1 << 20),
        "the stream did not span the reload: {received_before} bytes echoed before it, \
         {} sent after it was applied",
        sent - sent_when_applied
    );
    assert_eq!(got, sent);
    assert_eq!(h, sent_h, "bytes differ across the reload");
    // Counters carried over to the reconfigured service.
    assert!(fw
        .service_status("a")
        .is_some_and(|st| st["stats"]["accepted"].as_u64().unwrap_or(0) >= 2));
}

#[test]
fn an_invalid_file_changes_nothing_and_says_why() {
    let b1 = tcp_server(one);
    let mut f = Forwarder::start(&service("a", "{LISTEN}", b1, ""));
    assert!(wait_until(Duration::from_secs(10), || f
        .master("a")
        .is_some()));
    f.write_config(
        "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nservers = [\"x\"]\ncolour = 1\n",
    );
    f.proc().signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(5), || f
            .log_text()
            .contains("reload refused, the running configuration stays")),
        "{}",
        f.log_text()
    );
    assert!(
        f.wait_for_log("colour", Duration::from_secs(5)),
        "{}",
        f.log_text()
    );
    assert!(
        tag_of(f.listen[0]).is_some_and(|(_, t)| t == b'1'),
        "the old configuration stopped serving"
    );

    // `forwarder reload` reports the refusal, then the success once the file is fixed.
    let reload = || {
        harness::run_within(
            Command::new(harness::forwarder_bin()).args([
                "reload",
                "--admin",
                &f.admin.to_string(),
            ]),
            Duration::from_secs(20),
        )
    };
    let out = reload();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("colour"));
    f.rewrite(&service(
        "a",
        &f.listen[0].to_string(),
        b1,
        "\"127.0.0.0/8\"",
    ));
    let out = reload();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("reloaded: 0 unchanged, 1 changed"));
}
