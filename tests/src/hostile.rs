//! Hostile peers for the adversarial tests: a fake Sentinel that lies, floods, trickles or
//! speaks garbage. (Honest Sentinels in the suite are real `redis-sentinel` processes; only the
//! attacker is a fake, since no real Sentinel misbehaves on demand.)

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How the fake Sentinel misbehaves.
#[derive(Clone, Debug)]
pub enum Lie {
    /// Names `master`, reports `replicas` made-up replicas, and pushes a `+switch-master` to
    /// `master` every millisecond on every subscription.
    Flood {
        /// The master it names and pushes.
        master: SocketAddr,
        /// How many made-up replicas `SENTINEL replicas` lists.
        replicas: u16,
    },
    /// Names `master`, quietly (no pushes, no replicas); accepts `SENTINEL FAILOVER` and never
    /// does it.
    Names(SocketAddr),
    /// Names `master`, and floods every subscription with `+sdown` events for it (not
    /// `+switch-master`), as fast as it can for at most 20 s.
    Events(SocketAddr),
    /// Answers the first query with `master`, then trickles every later answer one byte every
    /// 300 ms.
    Trickle(SocketAddr),
    /// Answers every query with a reply header announcing more than the forwarder accepts,
    /// then bytes forever.
    Oversized,
}

/// A fake Sentinel on a free loopback port; stops with the test (its threads exit when
/// dropped).
pub struct HostileSentinel {
    /// Where it listens (127.0.0.1, a free port): put it in the forwarder's `sentinels`.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Drop for HostileSentinel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
    }
}

fn bulk(s: &str) -> String {
    format!("${}\r\n{s}\r\n", s.len())
}

fn addr_reply(a: SocketAddr) -> String {
    format!(
        "*2\r\n{}{}",
        bulk(&a.ip().to_string()),
        bulk(&a.port().to_string())
    )
}

impl HostileSentinel {
    /// Starts listening at once, serving each connection on its own thread with `lie`.
    pub fn start(lie: Lie) -> HostileSentinel {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr = l.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        std::thread::spawn(move || {
            for c in l.incoming().map_while(Result::ok) {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let (lie, s) = (lie.clone(), Arc::clone(&s));
                std::thread::spawn(move || serve(c, &lie, &s));
            }
        });
        HostileSentinel { addr, stop }
    }
}

/// Reads one RESP command (an array of bulk strings) and returns its words, lower-cased.
fn read_command(c: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<String>> {
    loop {
        if let Ok(Some((health::resp::Reply::Array(Some(items)), used))) = health::resp::parse(buf)
        {
            buf.drain(..used);
            return Some(
                items
                    .iter()
                    .map(|i| match i {
                        health::resp::Reply::Bulk(Some(b)) => {
                            String::from_utf8_lossy(b).to_lowercase()
                        }
                        _ => String::new(),
                    })
                    .collect(),
            );
        }
        let mut chunk = [0u8; 4096];
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn serve(mut c: TcpStream, lie: &Lie, stop: &AtomicBool) {
    let mut buf = Vec::new();
    let mut queries = 0u32;
    while let Some(cmd) = read_command(&mut c, &mut buf) {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let words: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let reply = match (words.as_slice(), lie) {
            (["subscribe", channels @ ..], _) => {
                let mut out = String::new();
                for (i, ch) in channels.iter().enumerate() {
                    out.push_str(&format!(
                        "*3\r\n{}{}:{}\r\n",
                        bulk("subscribe"),
                        bulk(ch),
                        i + 1
                    ));
                }
                if c.write_all(out.as_bytes()).is_err() {
                    return;
                }
                if let Lie::Events(master) = lie {
                    let payload = format!("master mymaster {} {}", master.ip(), master.port());
                    let push = format!(
                        "*3\r\n{}{}{}",
                        bulk("message"),
                        bulk("+sdown"),
                        bulk(&payload)
                    )
                    .repeat(64);
                    let until = std::time::Instant::now() + Duration::from_secs(20);
                    while std::time::Instant::now() < until {
                        if stop.load(Ordering::Relaxed) || c.write_all(push.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
                if let Lie::Flood { master, .. } = lie {
                    let payload = format!("mymaster 127.0.0.1 1 {} {}", master.ip(), master.port());
                    let push = format!(
                        "*3\r\n{}{}{}",
                        bulk("message"),
                        bulk("+switch-master"),
                        bulk(&payload)
                    );
                    // Bounded: at most 20 s of pushes.
                    for _ in 0..20_000 {
                        if stop.load(Ordering::Relaxed) || c.write_all(push.as_bytes()).is_err() {
                            return;
                        }
                        // Pacing: the flood's rate, one push per millisecond.
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                // Then silent, like a real subscription.
                let _ = c.read(&mut [0u8; 1]);
                return;
            }
            (["sentinel", "get-master-addr-by-name", _], Lie::Flood { master, .. })
            | (["sentinel", "get-master-addr-by-name", _], Lie::Names(master))
            | (["sentinel", "get-master-addr-by-name", _], Lie::Events(master)) => {
                addr_reply(*master)
            }
            (["sentinel", "get-master-addr-by-name", _], Lie::Trickle(master)) => {
                queries += 1;
                let r = addr_reply(*master);
                if queries > 1 {
                    for b in r.bytes() {
                        if stop.load(Ordering::Relaxed) || c.write_all(&[b]).is_err() {
                            return;
                        }
                        // Pacing: the trickle, one byte per 300 ms.
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    continue;
                }
                r
            }
            (["sentinel", "get-master-addr-by-name", _], Lie::Oversized) => {
                // A bulk string of 64 MiB, sent for at most 10 s.
                let _ = c.write_all(format!("*2\r\n${}\r\n", 64 << 20).as_bytes());
                let junk = [b'x'; 64 * 1024];
                for _ in 0..1000 {
                    if stop.load(Ordering::Relaxed) || c.write_all(&junk).is_err() {
                        return;
                    }
                    // Pacing: 64 KiB per 10 ms, a fast but finite sender.
                    std::thread::sleep(Duration::from_millis(10));
                }
                return;
            }
            (["sentinel", "replicas", _], Lie::Flood { replicas, .. }) => {
                let mut out = format!("*{replicas}\r\n");
                for i in 0..*replicas {
                    let ip = format!("127.0.{}.{}", 100 + i / 250, 1 + i % 250);
                    out.push_str(&format!(
                        "*6\r\n{}{}{}{}{}{}",
                        bulk("name"),
                        bulk(&format!("{ip}:6379")),
                        bulk("ip"),
                        bulk(&ip),
                        bulk("port"),
                        bulk("6379")
                    ));
                }
                out
            }
            (["sentinel", "replicas", _], _) => "*0\r\n".to_string(),
            // Accepts a failover and never does it.
            (["sentinel", "failover", _], Lie::Names(_)) => "+OK\r\n".to_string(),
            (["auth", ..], _) => "+OK\r\n".to_string(),
            (["ping"], _) => "+PONG\r\n".to_string(),
            _ => "-ERR unknown command\r\n".to_string(),
        };
        if c.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}
