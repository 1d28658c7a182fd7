//! The sockmap data path, whatever FORWARDER_MODE says: payload never passes through userspace,
//! no byte is lost or reordered around a half-close (the FIN races with skbs still queued for
//! redirect), a retransmission that overlaps delivered bytes is forwarded once, and a full map
//! sends the session to the next data path, counted.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

use harness::rawtcp::RawTcp;
use harness::{echo, plain_service, tcp_server, wait_until, Forwarder, Netns, Service};

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
    // Under the 4 MiB a direction may fall behind before the session leaves the kernel path.
    let size = 3 << 20;
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
    assert_eq!(st["bpf"]["spills"], 0, "the session left the kernel path");
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

/// What the one data-carrying connection to [`record`] delivered, and whether it ended.
static RECORDED: Mutex<(Vec<u8>, bool)> = Mutex::new((Vec::new(), false));

/// A backend that appends what it reads to [`RECORDED`] as it comes, and marks the end of a
/// connection that carried bytes (the checks' connections carry none).
fn record(mut s: TcpStream) {
    let mut buf = [0u8; 4096];
    let mut any = false;
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        any = true;
        RECORDED.lock().unwrap().0.extend_from_slice(&buf[..n]);
    }
    if any {
        RECORDED.lock().unwrap().1 = true;
    }
}

/// The kernel queues a retransmitted segment that partly overlaps bytes already received
/// untrimmed, and hands the whole skb to the verdict program (shared/notes/sockmap-kernel.md):
/// redirected as is, the overlap reaches the server twice and the end of the stream stalls.
/// Segments written by hand on a raw socket, in a private network namespace: bytes [0,1000),
/// then a retransmission of [500,1500), then [1500,1800) and FIN. Exactly the 1,800 bytes must
/// arrive, in order, and the end with them.
#[test]
fn a_retransmission_overlapping_delivered_bytes_is_forwarded_once_and_does_not_stall() {
    let _ns = Netns::enter("overlap");
    let f = started(tcp_server(record), "mode = \"sockmap\"");
    let SocketAddr::V4(to) = f.listen[0] else {
        panic!("an IPv4 listener was asked for")
    };
    let c = RawTcp::connect(harness::free_port(), to).expect("handshake");
    let mut data = vec![0u8; 1800];
    pattern(3, &mut data);
    let got = || RECORDED.lock().unwrap().clone();
    c.send_at(0, &data[..1000]).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || got().0.len() >= 1000),
        "the first 1000 bytes never reached the server ({} did): {}",
        got().0.len(),
        f.log_text()
    );
    c.send_at(500, &data[500..1500]).unwrap();
    c.send_at(1500, &data[1500..]).unwrap();
    c.fin_at(1800).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || got().1),
        "the stream stalled: {} of 1800 bytes reached the server",
        got().0.len()
    );
    let (bytes, _) = got();
    assert_eq!(bytes.len(), 1800, "bytes duplicated or lost");
    let first_diff = bytes.iter().zip(&data).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "the stream differs from what was sent");
    let bpf = &f.status().expect("status")["bpf"];
    assert_eq!(bpf["trimmed_bytes"], 500, "{bpf}");
    assert_eq!(bpf["faults"], 0, "{bpf}");
}

/// A backend that greets and closes at once: its reply and FIN reach the forwarder's server
/// socket while the session is being handed to the kernel.
fn greet(mut s: TcpStream) {
    let _ = s.write_all(b"hello\n");
}

/// The reply of a server that speaks first and closes right away must reach the client, whatever
/// the moment it arrives during the hand-over (before: the server socket ran the program while
/// its peer's entry was missing, and the reply stayed on a socket nobody reads).
#[test]
fn a_reply_and_fin_that_race_the_hand_over_reach_the_client() {
    let f = started(tcp_server(greet), "mode = \"sockmap\"");
    for i in 0..300 {
        let mut c = TcpStream::connect(f.listen[0]).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        let r = c.read_to_end(&mut got);
        assert!(
            r.is_ok() && got == b"hello\n",
            "connection {i}: {r:?}, got {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    let st = f.status().expect("status");
    assert_eq!(st["bpf"]["passed_bytes"], 0, "{st}");
}

/// The loss drill: 400 bulk sessions (256 KiB to 460 KiB each way, written 300 bytes at a time,
/// 8 sessions at once) through the sockmap while packets on a private namespace's loopback are
/// dropped at random (a fifth of the small ones: pure ACKs, the replies and FINs; 2% of the
/// rest), so TCP retransmits, some segments over bytes the receiver already has. No session may
/// deliver other bytes than were sent (the server checks length and hash, the client the reply),
/// the program must repair every overlap, and at most 2 sessions may fail, with an error the
/// client sees (measured: 3 in about 8,800 sessions over 22 runs, each a stall of a minute).
/// SYNs are spared and the timeouts are a minute: with 20% of SYNs dropped and 10 s timeouts, 3 to 7 in 200 sessions
/// failed on every data path alike (uring too), TCP's own backoff outlasting the timeout. Before
/// the repair, 1 in 200 sessions got its 23-byte reply twice (a retransmission of reply and FIN)
/// in each of two runs.
#[test]
fn bulk_sessions_through_random_packet_drops_arrive_intact() {
    let _ns = Netns::enter("loss");
    // Checks that ride out the drops (their small packets are dropped too): the server stays the master,
    // so no session is cut for a master change.
    let service = Service::tcp("plain", tcp_server(digest))
        .set("listen", "\"{LISTEN}\"")
        .set(
            "timeout",
            "{ connect = \"60s\", client = \"60s\", server = \"60s\" }",
        )
        .check("timeout", "\"5s\"")
        .check("fall", "1000")
        .to_string();
    let f = Forwarder::start_with(&service, "mode = \"sockmap\"", &[]);
    assert!(
        wait_until(Duration::from_secs(10), || f.master("plain").is_some()),
        "backend never became up: {}",
        f.log_text()
    );
    for (rule, p) in [
        (&["-m", "length", "--length", "0:120"][..], "0.2"),
        (&[][..], "0.02"),
    ] {
        let mut args = vec![
            "-A",
            "INPUT",
            "-i",
            "lo",
            "-p",
            "tcp",
            "!",
            "--tcp-flags",
            "SYN",
            "SYN",
        ];
        args.extend_from_slice(rule);
        args.extend_from_slice(&["-m", "statistic", "--mode", "random", "--probability", p]);
        args.extend_from_slice(&["-j", "DROP"]);
        harness::run("iptables", &args);
    }
    const SESSIONS: usize = 400;
    const MAY_FAIL: usize = 2;
    const THREADS: usize = 8;
    let corrupted = Mutex::new(Vec::new());
    let failed = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (corrupted, failed) = (&corrupted, &failed);
            let to = f.listen[0];
            s.spawn(move || {
                for i in (t..SESSIONS).step_by(THREADS) {
                    let size = 256 * 1024 + i * 1031;
                    let mut out = vec![0u8; size];
                    pattern(i, &mut out);
                    let want = format!("{size} {:016x}", fnv(&out));
                    match try_exchange(to, &out) {
                        Ok(reply) if reply == want.as_bytes() => {}
                        Ok(reply) => corrupted
                            .lock()
                            .unwrap()
                            .push((i, String::from_utf8_lossy(&reply).into_owned())),
                        Err(e) => failed.lock().unwrap().push((i, e.to_string())),
                    }
                }
            });
        }
    });
    // The drops end with the sessions: the status below must not wait out a retransmission.
    harness::run("iptables", &["-F", "INPUT"]);
    let (corrupted, failed) = (
        corrupted.into_inner().unwrap(),
        failed.into_inner().unwrap(),
    );
    let bpf = f.status().expect("status")["bpf"].clone();
    let ended = f.service_status("plain").expect("status")["stats"]["ended"].clone();
    eprintln!(
        "loss drill: {SESSIONS} sessions, {} corrupted, {} failed {failed:?}; bpf {bpf}; ended \
         {ended}",
        corrupted.len(),
        failed.len()
    );
    assert!(
        corrupted.is_empty(),
        "{} of {SESSIONS} sessions delivered other bytes than were sent: {:?}",
        corrupted.len(),
        &corrupted[..corrupted.len().min(3)]
    );
    // A session that failed ended in an error the client saw (a reset or its read timeout),
    // never in other bytes. Rarely, one stalls for the whole minute: 3 of about 8,800 sessions
    // in 22 runs of this drill on sockmap; the same drill on uring lost none of 2,000, too few to
    // tell whether the stall is the sockmap's or TCP's under these drops (see the README).
    assert!(
        failed.len() <= MAY_FAIL,
        "{} of {SESSIONS} sessions failed (at most {MAY_FAIL} may): {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert_eq!(bpf["faults"], 0, "{bpf}");
}

/// Write size of [`try_exchange`].
const CHUNK: usize = 300;

/// [`exchange`] written in small pieces, with the errors returned (120 s for a reply:
/// retransmissions take their time).
fn try_exchange(to: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut c = TcpStream::connect(to)?;
    c.set_read_timeout(Some(Duration::from_secs(120)))?;
    c.set_nodelay(true)?;
    let mut w = c.try_clone()?;
    let sent = request.to_vec();
    // Small writes without Nagle: small skbs, which TCP collapses into one segment when it
    // retransmits them, so a retransmission can cover bytes the receiver already has.
    let writer = std::thread::spawn(move || {
        for (k, chunk) in sent.chunks(CHUNK).enumerate() {
            w.write_all(chunk)?;
            if k % 64 == 63 {
                std::thread::yield_now();
            }
        }
        w.shutdown(Shutdown::Write)
    });
    let mut back = Vec::new();
    c.read_to_end(&mut back)?;
    writer.join().expect("writer")?;
    Ok(back)
}

/// Reads from `/proc/meminfo` (kB).
fn meminfo(key: &str) -> i64 {
    let t = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    t.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/meminfo"))
}

/// A server that takes nothing until told, then reads slowly. The kernel queues a redirected skb
/// on the peer without charging it to either socket, so before the spill a client here had
/// written 5.7 GiB in 20 s (all of it in kernel memory, MemAvailable down as much) and was still
/// going. Now the program asks for the session to leave the kernel path once 4 MiB are behind:
/// the client's writes must block after a bounded amount, and every byte must arrive in order
/// once the server reads, on the next data path.
#[test]
fn a_server_that_stops_reading_holds_the_client_back_with_bounded_memory() {
    // Every connection waits (the health checks' too, which close at once).
    let go = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let wait = std::sync::Arc::clone(&go);
    let backend =
        harness::endpoints::tcp_server_at(std::net::Ipv4Addr::LOCALHOST.into(), move |mut s| {
            while !wait.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
            }
            // About 60 MB/s: far slower than the client.
            let mut h: u64 = 0xcbf29ce484222325;
            let mut n: u64 = 0;
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(k @ 1..) = s.read(&mut buf) {
                n += k as u64;
                for b in &buf[..k] {
                    h ^= u64::from(*b);
                    h = h.wrapping_mul(0x100000001b3);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = s.write_all(format!("{n} {h:016x}").as_bytes());
            let _ = s.shutdown(Shutdown::Write);
        });
    let f = started(backend, "mode = \"sockmap\"");
    const TOTAL: usize = 96 << 20;
    const BOUND: usize = 64 << 20;
    let mut data = vec![0u8; TOTAL];
    pattern(3, &mut data);
    let before = meminfo("MemAvailable:");
    let mut c = TcpStream::connect(f.listen[0]).expect("connect");
    c.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut sent = 0;
    let blocked = loop {
        assert!(
            sent < BOUND,
            "{sent} bytes taken while the server reads nothing (MemAvailable down {} MiB): the \
             kernel keeps queueing",
            (before - meminfo("MemAvailable:")) / 1024
        );
        match c.write(&data[sent..(sent + (1 << 20)).min(TOTAL)]) {
            Ok(n) => sent += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break sent
            }
            Err(e) => panic!("write after {sent} bytes: {e}"),
        }
    };
    let held = (before - meminfo("MemAvailable:")) / 1024;
    eprintln!(
        "server not reading: the client blocked after {} KiB, MemAvailable down {held} MiB",
        blocked >> 10
    );
    go.store(true, std::sync::atomic::Ordering::Relaxed);
    c.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    if let Err(e) = c.write_all(&data[sent..]) {
        panic!("the rest, once the server reads: {e}\n{}", f.log_text());
    }
    c.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    if let Err(e) = c.read_to_string(&mut reply) {
        panic!("reply: {e}\n{}", f.log_text());
    }
    assert_eq!(
        reply,
        format!("{TOTAL} {:016x}", fnv(&data)),
        "bytes lost, doubled or reordered"
    );
    let bpf = &f.status().expect("status")["bpf"];
    assert_eq!(bpf["spills"], 1, "{bpf}");
    assert_eq!(bpf["faults"], 0, "{bpf}");
}

/// The other way round, as with a Redis client that asks for a large value and does not read it:
/// a server sends 96 MiB to a client that reads nothing for a while. The session must leave the
/// kernel path with the server's writes blocked after a bounded amount, and the client must get
/// every byte in order once it reads.
#[test]
fn a_client_that_stops_reading_a_large_reply_holds_the_server_back() {
    const TOTAL: usize = 96 << 20;
    const BOUND: u64 = 64 << 20;
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let progress = std::sync::Arc::clone(&sent);
    let backend =
        harness::endpoints::tcp_server_at(std::net::Ipv4Addr::LOCALHOST.into(), move |mut s| {
            // Health checks send nothing: only a client's one-byte request gets the reply.
            let mut one = [0u8; 1];
            if s.read_exact(&mut one).is_err() {
                return;
            }
            let mut data = vec![0u8; TOTAL];
            pattern(5, &mut data);
            for chunk in data.chunks(1 << 20) {
                if s.write_all(chunk).is_err() {
                    return;
                }
                progress.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            let _ = s.shutdown(Shutdown::Write);
        });
    let f = started(backend, "mode = \"sockmap\"");
    let before = meminfo("MemAvailable:");
    let mut c = TcpStream::connect(f.listen[0]).expect("connect");
    c.write_all(b"?").unwrap();
    // The server writes until its socket blocks: its count stops growing (for a second).
    let (mut last, mut still) = (0, 0);
    while still < 2 {
        std::thread::sleep(Duration::from_millis(500));
        let now = sent.load(std::sync::atomic::Ordering::Relaxed);
        (last, still) = (now, if now == last && now > 0 { still + 1 } else { 0 });
        assert!(
            last < BOUND,
            "{last} bytes taken while the client reads nothing (MemAvailable down {} MiB): the \
             kernel keeps queueing",
            (before - meminfo("MemAvailable:")) / 1024
        );
    }
    eprintln!(
        "client not reading: the server blocked after {} KiB, MemAvailable down {} MiB",
        last >> 10,
        (before - meminfo("MemAvailable:")) / 1024
    );
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut back = Vec::new();
    if let Err(e) = c.read_to_end(&mut back) {
        panic!("reply after {} bytes: {e}\n{}", back.len(), f.log_text());
    }
    let mut want = vec![0u8; TOTAL];
    pattern(5, &mut want);
    assert_eq!(back.len(), TOTAL, "bytes lost or doubled");
    assert!(back == want, "bytes changed or reordered");
    let bpf = &f.status().expect("status")["bpf"];
    assert_eq!(bpf["spills"], 1, "{bpf}");
    assert_eq!(bpf["faults"], 0, "{bpf}");
}
