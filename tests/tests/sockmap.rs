//! The sockmap data path, whatever FORWARDER_MODE says: payload never passes through userspace,
//! no byte is lost or reordered around a half-close (the FIN races with skbs still queued for
//! redirect), and a full map sends the session to the next data path, counted.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use harness::{echo, plain_service, tcp_server, wait_until, Forwarder};

fn service(backend: SocketAddr) -> String {
    plain_service("plain", "{LISTEN}", backend, "")
}

fn started(backend: SocketAddr, datapath: &str) -> Forwarder {
    let f = Forwarder::start_with(&service(backend), datapath, &[]);
    assert_eq!(
        f.status().expect("status")["datapath"],
        "sockmap",
        "{}",
        f.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(10), || f.master("plain").is_some()),
        "backend never became up: {}",
        f.log_text()
    );
    f
}

fn pattern(seed: usize, buf: &mut [u8]) {
    for (j, b) in buf.iter_mut().enumerate() {
        *b = ((seed * 7919 + j * 31) % 251) as u8;
    }
}

/// Reads the whole request until EOF, then answers with its length and FNV-1a hash, and closes.
fn digest(mut s: TcpStream) {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut n: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                n += k as u64;
                for b in &buf[..k] {
                    h ^= u64::from(*b);
                    h = h.wrapping_mul(0x100000001b3);
                }
            }
            Err(_) => return,
        }
    }
    let _ = s.write_all(format!("{n} {h:016x}").as_bytes());
    let _ = s.shutdown(Shutdown::Write);
}

fn fnv(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Sends `request` then half-closes (while reading, from another thread), and returns all that
/// comes back until the peer closes.
fn exchange(to: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut c = TcpStream::connect(to).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = c.try_clone().unwrap();
    let sent = request.to_vec();
    let writer = std::thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    c.read_to_end(&mut back).expect("reply");
    writer.join().unwrap();
    back
}

#[test]
fn payload_bypasses_userspace() {
    let f = started(tcp_server(echo), "mode = \"sockmap\"");
    let size = 8 << 20;
    let mut out = vec![0u8; size];
    pattern(1, &mut out);
    let back = exchange(f.listen[0], &out);
    assert!(back == out, "echo differs ({} bytes back)", back.len());
    assert!(
        wait_until(Duration::from_secs(5), || f
            .counter("plain", "ended", "closed")
            == 1),
        "session did not end cleanly: {:?}",
        f.service_status("plain")
    );
    let st = f.status().expect("status");
    // Exactly the echo's bytes, once each way: a byte redirected twice (the kernel 6.18
    // duplicate the README describes) is a failure here, not a margin.
    let redirected = st["bpf"]["redirected_bytes"].as_u64();
    assert_eq!(
        redirected,
        Some(2 * size as u64),
        "BPF redirected bytes for {size} bytes each way (expected exactly {}): {st}",
        2 * size
    );
    assert_eq!(st["bpf"]["passed_bytes"], 0, "no byte left the fast path");
    let stats = &f.service_status("plain").unwrap()["stats"];
    assert_eq!(stats["bytes_copied_in_userspace"], 0, "{stats}");
    assert_eq!(stats["bytes_client_to_server"], size as u64, "{stats}");
    assert_eq!(stats["bytes_server_to_client"], size as u64, "{stats}");
}

#[test]
fn no_byte_is_lost_or_reordered_around_a_half_close() {
    let f = started(tcp_server(digest), "mode = \"sockmap\"");
    // Sizes from one segment to several MiB: the FIN is sent right after the last byte, while
    // skbs may still sit in the redirect queue.
    for (i, size) in [1usize, 100, 4096, 65_537, 1 << 20, 3 << 20, 17, 200_000]
        .into_iter()
        .enumerate()
    {
        let mut out = vec![0u8; size];
        pattern(i, &mut out);
        let reply = String::from_utf8_lossy(&exchange(f.listen[0], &out)).into_owned();
        assert_eq!(
            reply,
            format!("{size} {:016x}", fnv(&out)),
            "request of {size} bytes"
        );
    }
}

#[test]
fn a_full_map_sends_sessions_to_the_next_path_counted() {
    let f = started(tcp_server(echo), "mode = \"sockmap\"\nsockmap_sessions = 1");
    let mut first = TcpStream::connect(f.listen[0]).expect("connect");
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    first.write_all(b"one").unwrap();
    let mut got = [0u8; 3];
    first.read_exact(&mut got).unwrap();
    let mut second = TcpStream::connect(f.listen[0]).expect("connect");
    second
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    second.write_all(b"two").unwrap();
    second
        .read_exact(&mut got)
        .expect("the second session works on the next path");
    assert_eq!(&got, b"two");
    let stats = &f.service_status("plain").unwrap()["stats"];
    assert_eq!(stats["sockmap_fallbacks"], 1, "{stats}");
    // And the first session still works.
    first.write_all(b"uno").unwrap();
    first.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"uno");
}
