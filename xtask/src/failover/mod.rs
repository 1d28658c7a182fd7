//! `cargo xtask bench failover`: failover drills under a steady write load, through the forwarder
//! (consulting Sentinel) and through HAProxy with the seed guide's configuration, side by side.
//!
//! Each drill starts fresh: a master, its replica, three Sentinels (`down-after-milliseconds`
//! 1000), the proxy in front, and a client writing `SET k<i> <i>` in a loop (a new connection
//! every 10 writes and after any error). Two kinds of drill, the same number of each per target:
//!
//! - **kill -9** ([`drill::kill`]): the master is killed with SIGKILL; once writes succeed again
//!   the old master is restarted empty on its port (it says `role:master` until Sentinel demotes
//!   it: the guide's split-brain window), writing goes on for 5 s.
//! - **planned switchover** ([`drill::switchover`]): the forwarder is asked for one
//!   (`POST /services/mymaster/switchover`); for HAProxy the operator's manual procedure,
//!   `SENTINEL FAILOVER mymaster` to one Sentinel, HAProxy following through its checks. The old
//!   master stays up and is demoted by Sentinel (which leaves it alone for 8 s after the switch);
//!   writing goes on until it says role:slave, and 5 s more.
//!
//! In both, every acknowledged key is then looked up on the final master. What is reported, and
//! the chart: [`render`].

mod drill;
mod render;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use harness::{wait_until, Conn, Forwarder, Proc, Redis, Reply, Sentinel};

use crate::prereq::{self, HAPROXY, REDIS, SENTINEL};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Forwarder,
    Haproxy,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Forwarder => "forwarder (Sentinel)",
            Target::Haproxy => "HAProxy (guide config)",
        }
    }
}

/// Every drill of both kinds, per target.
struct Results {
    kill: Vec<(Target, Vec<drill::Kill>)>,
    switchover: Vec<(Target, Vec<drill::Switch>)>,
}

pub fn run(drills: u32) -> anyhow::Result<()> {
    prereq::ensure(&[REDIS, SENTINEL, HAPROXY])?;
    prereq::run(crate::cargo().args(["build", "--release", "-p", "forwarder"]))?;
    let bin = crate::root().join("target/release/forwarder");
    // The harness starts the forwarder from FORWARDER_BIN.
    std::env::set_var("FORWARDER_BIN", &bin);
    let targets = [Target::Forwarder, Target::Haproxy];
    let mut results = Results {
        kill: targets.iter().map(|t| (*t, Vec::new())).collect(),
        switchover: targets.iter().map(|t| (*t, Vec::new())).collect(),
    };
    for n in 1..=drills {
        for (target, out) in &mut results.kill {
            eprintln!("failover: kill drill {n}/{drills}, {}", target.name());
            out.push(drill::kill(*target).with_context(|| format!("drill {n} {}", target.name()))?);
        }
    }
    for n in 1..=drills {
        for (target, out) in &mut results.switchover {
            eprintln!("failover: switchover drill {n}/{drills}, {}", target.name());
            let d = drill::switchover(*target)
                .with_context(|| format!("switchover drill {n} {}", target.name()))?;
            eprintln!("failover: {d:?}");
            out.push(d);
        }
    }
    let dir = crate::root().join("bench/results");
    std::fs::create_dir_all(&dir)?;
    let md = render::write(&results, drills, &dir)?;
    println!("{md}");
    eprintln!("failover: wrote {}", dir.join("failover.md").display());
    Ok(())
}

/// One write attempt (or failed connect) of the write loop.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    /// When its answer (or its failure) came.
    at: Instant,
    /// The key written; 0 for a connect that failed.
    key: u64,
    acked: bool,
    /// When its connection was opened; `None`: it could not connect.
    opened: Option<Instant>,
    /// The first write on its connection.
    first: bool,
}

/// The client: writes through the proxy in its own thread until [`Writer::finish`].
struct Writer {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Attempt>>>,
    thread: JoinHandle<()>,
}

impl Writer {
    fn start(to: SocketAddr) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, log) = (Arc::clone(&stop), Arc::clone(&log));
            std::thread::spawn(move || write_loop(to, &stop, &log))
        };
        Writer { stop, log, thread }
    }

    /// Waits up to `limit` for a write acknowledged after `t`.
    fn acked_after(&self, t: Instant, limit: Duration) -> bool {
        wait_until(limit, || {
            self.log
                .lock()
                .unwrap()
                .iter()
                .rev()
                .any(|a| a.acked && a.at > t)
        })
    }

    /// Stops writing; every attempt, in order.
    fn finish(self) -> anyhow::Result<Vec<Attempt>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))?;
        Ok(std::mem::take(&mut *self.log.lock().unwrap()))
    }
}

fn write_loop(to: SocketAddr, stop: &AtomicBool, log: &Mutex<Vec<Attempt>>) {
    let mut conn: Option<(Conn, Instant, bool)> = None;
    let mut i = 0u64;
    let push = |a: Attempt| log.lock().unwrap().push(a);
    while !stop.load(Ordering::Relaxed) {
        let (c, opened, first) = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::open(to) {
                Ok(c) => {
                    let _ = c.stream().set_read_timeout(Some(Duration::from_secs(2)));
                    conn.insert((c, Instant::now(), true))
                }
                Err(_) => {
                    push(Attempt {
                        at: Instant::now(),
                        key: 0,
                        acked: false,
                        opened: None,
                        first: true,
                    });
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        i += 1;
        let reply = c.cmd(&["SET", &format!("k{i}"), &i.to_string()]);
        let acked = matches!(&reply, Ok(Reply::Simple(s)) if s == "OK");
        push(Attempt {
            at: Instant::now(),
            key: i,
            acked,
            opened: Some(*opened),
            first: *first,
        });
        *first = false;
        if !acked {
            conn = None;
            std::thread::sleep(Duration::from_millis(10));
        } else if i.is_multiple_of(10) {
            // Real clients open new connections (pools, restarts): every 10 writes, so each new
            // connection is routed afresh.
            conn = None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The longest gap between two acknowledged writes from `from` on (the first gap starts there).
fn outage(attempts: &[Attempt], from: Instant) -> Duration {
    let mut prev = from;
    let mut longest = Duration::ZERO;
    for a in attempts.iter().filter(|a| a.acked && a.at > from) {
        longest = longest.max(a.at - prev);
        prev = a.at;
    }
    longest
}

/// The acknowledged writes missing on `master`, split into those acknowledged before `t` and
/// after it.
fn lost(attempts: &[Attempt], master: SocketAddr, t: Instant) -> anyhow::Result<(u64, u64)> {
    let mut c = Conn::open(master).context("connecting to the final master")?;
    let (mut before, mut after) = (0, 0);
    for a in attempts.iter().filter(|a| a.acked) {
        if c.cmd(&["GET", &format!("k{}", a.key)])? == Reply::Bulk(None) {
            if a.at < t {
                before += 1;
            } else {
                after += 1;
            }
        }
    }
    Ok((before, after))
}

/// The servers, the Sentinels and the proxy of one drill, torn down on drop.
struct Lab {
    master: Redis,
    replica: Redis,
    sentinels: Vec<Sentinel>,
    proxy: Proxy,
}

enum Proxy {
    Forwarder(Box<Forwarder>),
    Haproxy {
        listen: SocketAddr,
        _proc: Proc,
        _dir: tempfile::TempDir,
    },
}

impl Lab {
    /// Starts everything and waits until the proxy serves a write.
    fn start(target: Target) -> anyhow::Result<Lab> {
        let (master, replica) = Redis::pair();
        let sentinels: Vec<Sentinel> = (0..3)
            .map(|_| Sentinel::start("mymaster", master.addr(), 2, 1000))
            .collect();
        // Sentinels must know the replica and each other before a failover can happen.
        anyhow::ensure!(
            wait_until(Duration::from_secs(20), || sentinels
                .iter()
                .all(|s| s.ready("mymaster"))),
            "Sentinels did not discover each other"
        );
        let proxy = start_proxy(target, &master, &replica, &sentinels)?;
        let lab = Lab {
            master,
            replica,
            sentinels,
            proxy,
        };
        let listen = lab.listen();
        anyhow::ensure!(
            wait_until(Duration::from_secs(15), || Conn::open(listen)
                .and_then(|mut c| c.cmd(&["SET", "probe", "1"]))
                .is_ok_and(|r| r == Reply::Simple("OK".into()))),
            "{} never served a write",
            target.name()
        );
        Ok(lab)
    }

    fn listen(&self) -> SocketAddr {
        match &self.proxy {
            Proxy::Forwarder(f) => f.listen[0],
            Proxy::Haproxy { listen, .. } => *listen,
        }
    }

    /// The master the Sentinels name now, which must be the replica of the start.
    fn final_master(&self) -> anyhow::Result<SocketAddr> {
        let named = self.sentinels[0]
            .master_addr("mymaster")
            .context("asking Sentinel for the master")?;
        let role = |r: &Redis| role(r.addr()).unwrap_or_else(|| "no answer".into());
        anyhow::ensure!(
            named == self.replica.addr(),
            "unexpected final master {named}: the master was {} (role {}), the replica {} \
             (role {}); the Sentinels name {:?}",
            self.master.addr(),
            role(&self.master),
            self.replica.addr(),
            role(&self.replica),
            self.sentinels
                .iter()
                .map(|s| s.master_addr("mymaster"))
                .collect::<Vec<_>>()
        );
        Ok(named)
    }
}

/// The `role:` field of a server's `INFO replication` (`master`, `slave`); `None` when it does
/// not answer.
fn role(addr: SocketAddr) -> Option<String> {
    match Conn::open(addr).and_then(|mut c| c.cmd(&["INFO", "replication"])) {
        Ok(Reply::Bulk(Some(text))) => harness::info_field(&String::from_utf8_lossy(&text), "role"),
        _ => None,
    }
}

fn start_proxy(
    target: Target,
    master: &Redis,
    replica: &Redis,
    sentinels: &[Sentinel],
) -> anyhow::Result<Proxy> {
    match target {
        Target::Forwarder => {
            let list: Vec<String> = sentinels
                .iter()
                .map(|s| format!("\"{}\"", s.addr()))
                .collect();
            let f = Forwarder::start_with(
                &format!(
                    "[[service]]\nname = \"mymaster\"\nlisten = \"{{LISTEN}}\"\n\
                     servers = [\"{}\", \"{}\"]\n\
                     timeout = {{ connect = \"1s\", queue = \"10s\" }}\n\n\
                     [service.check]\nkind = \"redis-master\"\ninterval = \"1s\"\n\n\
                     [service.sentinel]\naddresses = [{}]\nmaster_name = \"mymaster\"\n",
                    master.addr(),
                    replica.addr(),
                    list.join(", ")
                ),
                "mode = \"auto\"",
                &[],
            );
            Ok(Proxy::Forwarder(Box::new(f)))
        }
        Target::Haproxy => {
            let listen = SocketAddr::from(([127, 0, 0, 1], harness::free_port()));
            let dir = tempfile::tempdir()?;
            let cfg = dir.path().join("haproxy.cfg");
            // The seed guide's configuration (defaults: rise 2, fall 3).
            std::fs::write(
                &cfg,
                format!(
                    "defaults\n  mode tcp\n  timeout connect 4s\n  timeout client 60s\n  \
                     timeout server 60s\n\nfrontend fe\n  bind {listen}\n  default_backend be\n\n\
                     backend be\n  option tcp-check\n  tcp-check connect\n  \
                     tcp-check send PING\\r\\n\n  tcp-check expect string +PONG\n  \
                     tcp-check send info\\ replication\\r\\n\n  tcp-check expect string role:master\n  \
                     tcp-check send QUIT\\r\\n\n  tcp-check expect string +OK\n  \
                     server redis1 {} check inter 1s\n  server redis2 {} check inter 1s\n",
                    master.addr(),
                    replica.addr()
                ),
            )?;
            let proc = Proc::spawn(
                Command::new("haproxy")
                    .args(["-db", "-f"])
                    .arg(Path::new(&cfg))
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null()),
            )?;
            Ok(Proxy::Haproxy {
                listen,
                _proc: proc,
                _dir: dir,
            })
        }
    }
}
