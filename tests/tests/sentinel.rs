//! Failover drills with real Sentinels: a master, its replica, three `redis-sentinel` processes
//! (quorum 2, `down-after-milliseconds` 1000 unless a test says otherwise) and the forwarder
//! consulting them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{wait_until, Conn, Forwarder, Redis, Reply, Sentinel};

struct Lab {
    master: Redis,
    replica: Redis,
    sentinels: Vec<Option<Sentinel>>,
    sentinel_addrs: Vec<SocketAddr>,
    f: Forwarder,
}

fn lab() -> Lab {
    lab_with(true, 1000)
}

/// The lab; with `list_servers` false the forwarder is told only the Sentinels, which use
/// `down_after_ms`.
fn lab_with(list_servers: bool, down_after_ms: u32) -> Lab {
    let (master, replica) = Redis::pair();
    let sentinels: Vec<Option<Sentinel>> = (0..3)
        .map(|_| Some(Sentinel::start("mymaster", master.addr(), 2, down_after_ms)))
        .collect();
    let addrs: Vec<SocketAddr> = sentinels.iter().flatten().map(Sentinel::addr).collect();
    let servers = match list_servers {
        true => vec![master.addr(), replica.addr()],
        false => Vec::new(),
    };
    let f = Forwarder::start(&harness::sentinel_service(&servers, &addrs, "15s"));
    assert!(
        wait_until(Duration::from_secs(10), || f.master("mymaster")
            == Some(master.addr())),
        "forwarder never routed to the master: {:?}\n{}",
        f.status(),
        f.log_text()
    );
    // Sentinels discover the replica and each other through the master; wait until they are
    // ready to fail over (each knows the replica and 2 other Sentinels).
    for s in sentinels.iter().flatten() {
        assert!(
            wait_until(Duration::from_secs(20), || s.ready("mymaster")),
            "Sentinel {} did not discover its peers",
            s.addr()
        );
    }
    Lab {
        master,
        replica,
        sentinels,
        sentinel_addrs: addrs,
        f,
    }
}

fn sentinel_status(f: &Forwarder) -> serde_json::Value {
    f.service_status("mymaster")
        .map_or(serde_json::Value::Null, |s| s["sentinel"].clone())
}

/// A write the server answered OK.
#[derive(Clone, Copy, Debug)]
struct Ack {
    /// Key `k<i>`, value `<i>`.
    i: u64,
    /// The server that said OK (`tcp_port` of the session).
    port: u16,
    /// `WAIT 1 100` said a replica has it too.
    replicated: bool,
    /// When the SET was sent.
    sent: Instant,
}

/// Writes `SET k<i> <i>` in a loop through the forwarder, each followed by `WAIT 1 100`, and
/// records every OK. Which of them must survive is decided at the end, against the final master
/// (see `must_survive`).
fn writer(to: SocketAddr, stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<Ack>>>) {
    let mut conn: Option<(Conn, u16)> = None;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let (c, port) = match conn.as_mut() {
            Some(c) => (&mut c.0, c.1),
            None => match Conn::open(to).and_then(|mut c| c.server_port().map(|p| (c, p))) {
                Ok(c) => {
                    let c = conn.insert(c);
                    (&mut c.0, c.1)
                }
                Err(_) => {
                    // Pacing: no master or a cut session; retry 50 times a second.
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            },
        };
        i += 1;
        let key = format!("k{i}");
        let sent = Instant::now();
        if !matches!(c.cmd(&["SET", &key, &i.to_string()]), Ok(Reply::Simple(s)) if s == "OK") {
            conn = None;
            // Pacing: the server refused or went away; retry 50 times a second.
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let replicated = matches!(c.cmd(&["WAIT", "1", "100"]), Ok(Reply::Integer(n)) if n >= 1);
        acked.lock().unwrap().push(Ack {
            i,
            port,
            replicated,
            sent,
        });
    }
}

/// The masters a quorum (2 of 3) of the Sentinels named, in the order they were named, read
/// directly from the Sentinels.
struct Named<'a> {
    sentinels: Vec<&'a Sentinel>,
    /// Each master named, with the time of the last reading that did not name it yet: it
    /// became master after that.
    seen: Vec<(Instant, SocketAddr)>,
    /// Where the masters that may be routed to start in `seen` (see `routable_from_now`).
    from: usize,
    last_reading: Instant,
}

impl<'a> Named<'a> {
    fn new(sentinels: &'a [Option<Sentinel>]) -> Named<'a> {
        let mut n = Named {
            sentinels: sentinels.iter().flatten().collect(),
            seen: Vec::new(),
            from: 0,
            last_reading: Instant::now(),
        };
        n.read();
        n
    }

    /// Reads every Sentinel; returns the master a quorum names now.
    fn read(&mut self) -> Option<SocketAddr> {
        let views: Vec<Option<SocketAddr>> = self
            .sentinels
            .iter()
            .map(|s| s.master_addr("mymaster"))
            .collect();
        let quorum = views
            .iter()
            .flatten()
            .find(|m| views.iter().filter(|v| v.as_ref() == Some(m)).count() >= 2)
            .copied();
        if let Some(m) = quorum {
            if self.seen.last().map(|s| s.1) != Some(m) {
                self.seen.push((self.last_reading, m));
            }
        }
        self.last_reading = Instant::now();
        quorum
    }

    /// From now on only the master named now and those named later may be routed to.
    fn routable_from_now(&mut self) {
        self.read();
        self.from = self.seen.len().saturating_sub(1);
    }

    /// The masters the forwarder may route to: the last one named and the one before it (the
    /// forwarder may not have seen the latest switch yet), both named since `routable_from_now`.
    fn routable(&self) -> Vec<SocketAddr> {
        self.seen[self.from..]
            .iter()
            .rev()
            .take(2)
            .map(|s| s.1)
            .collect()
    }

    /// The master named last, and the time after which it became master.
    fn last(&self) -> (Instant, SocketAddr) {
        *self
            .seen
            .last()
            .expect("the Sentinels never agreed on a master")
    }
}

/// The writes the final master must hold: those a replica confirmed (`WAIT`), and those it
/// acknowledged itself since it became master. A write only a master that later lost its role
/// had may be lost by Redis' asynchronous replication, which is not the forwarder's doing.
fn must_survive(acked: &[Ack], master: SocketAddr, since: Instant) -> Vec<Ack> {
    acked
        .iter()
        .filter(|a| a.replicated || (a.port == master.port() && a.sent >= since))
        .copied()
        .collect()
}

/// The restarted old master may be failed over to by the Sentinels themselves (a second
/// failover; with `down-after-milliseconds` 1000, which equals Sentinel's PING period, a master
/// just switched to is judged down before its first PING is answered), so the routing is judged
/// against what the Sentinels name, read directly from them around every look at the forwarder.
/// This lab uses 2000 ms, which removes that cause; the test holds either way.
#[test]
fn kill_9_failover_under_writes_then_the_old_master_returns() {
    let mut lab = lab_with(true, 2000);
    let f = &lab.f;
    let old_port = lab.master.port;
    let mut named = Named::new(&lab.sentinels);
    // A session held on the master: it must be cut when the master changes.
    let mut held = Conn::open(f.listen[0]).expect("connect");
    assert_eq!(held.server_port().unwrap(), old_port);

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let w = {
        let (to, stop, acked) = (f.listen[0], Arc::clone(&stop), Arc::clone(&acked));
        std::thread::spawn(move || writer(to, stop, acked))
    };
    let acks = || acked.lock().unwrap().len();
    assert!(wait_until(Duration::from_secs(10), || acks() >= 20));

    lab.master.proc().kill(); // SIGKILL
    let killed = Instant::now();
    // The only server left: the failover goes to the replica.
    assert!(
        wait_until(Duration::from_secs(30), || {
            named.read();
            f.master("mymaster") == Some(lab.replica.addr())
        }),
        "no failover to the replica: {:?}\n{}",
        f.status(),
        f.log_text()
    );
    let after = acks();
    assert!(
        wait_until(Duration::from_secs(10), || acks() >= after + 20),
        "writes did not resume on the new master"
    );
    assert!(
        held.closed_within(Duration::from_secs(5)),
        "session to the dead master not cut"
    );
    eprintln!(
        "failover seen by the forwarder after {:?}",
        killed.elapsed()
    );

    // The old master comes back saying role:master (empty, no replica). It is never routed to
    // unless the Sentinels name it; every session reaches the master they name.
    named.routable_from_now();
    assert_eq!(named.routable(), vec![lab.replica.addr()]);
    let old = Redis::start_on(old_port, &[]);
    let (mut reached, mut failed) = (0u32, 0u32);
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut settled = false;
    while Instant::now() < deadline {
        named.read();
        let master = f.master("mymaster");
        let port = Conn::open(f.listen[0]).and_then(|mut c| c.server_port());
        named.read();
        let routable = named.routable();
        if let Some(m) = master {
            assert!(
                routable.contains(&m),
                "routed to {m}, which the Sentinels do not name (named since the old master \
                 {old_port} returned: {routable:?}): {:?}\n{}",
                f.service_status("mymaster"),
                f.log_text()
            );
        }
        match port {
            Ok(p) => {
                assert!(
                    routable.iter().any(|m| m.port() == p),
                    "a session reached {p}, which the Sentinels do not name ({routable:?})"
                );
                reached += 1;
            }
            Err(_) => failed += 1,
        }
        // Settled: the forwarder routes to the master the Sentinels name, and the other server
        // is its replica, in sync.
        let (_, m) = named.last();
        let other = if m == lab.replica.addr() {
            &old
        } else {
            &lab.replica
        };
        let replica_of_m = other.info_field("replication", "role").as_deref() == Some("slave")
            && other.info_field("replication", "master_port") == Some(m.port().to_string())
            && other
                .info_field("replication", "master_link_status")
                .as_deref()
                == Some("up");
        if master == Some(m) && replica_of_m && reached >= 10 {
            settled = true;
            break;
        }
        // Pacing: one look at the Sentinels, the forwarder and a new session every 100 ms.
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        settled,
        "never settled on the Sentinel master with the other server its replica ({reached} \
         sessions reached a named master, {failed} connects failed; named: {:?}): {:?}",
        named.seen,
        f.service_status("mymaster")
    );

    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    // Every write that had to survive is on the final master, the one the Sentinels name.
    let (since, last) = named.last();
    assert_eq!(named.read(), Some(last), "the Sentinels moved on again");
    let final_master = [&lab.replica, &old]
        .into_iter()
        .find(|r| r.addr() == last)
        .expect("the final master is one of the two servers");
    let acked = acked.lock().unwrap().clone();
    let survive = must_survive(&acked, last, since);
    assert!(
        survive.len() >= 40,
        "too few writes to judge: {} of {}",
        survive.len(),
        acked.len()
    );
    for a in &survive {
        assert_eq!(
            final_master.cmd(&["GET", &format!("k{}", a.i)]),
            Reply::Bulk(Some(a.i.to_string().into_bytes())),
            "acknowledged write {a:?} missing on the final master {last}"
        );
    }
    // No write reached it while it was a replica.
    assert_eq!(
        final_master.info_field("errorstats", "errorstat_READONLY"),
        None
    );
    eprintln!(
        "{reached} sessions reached the named master, {failed} connects failed; masters named: \
         {:?}; {} of {} acknowledged writes had to survive",
        named.seen.iter().map(|s| s.1).collect::<Vec<_>>(),
        survive.len(),
        acked.len()
    );
}

#[test]
fn hung_master_is_failed_over_and_no_client_waits_forever() {
    let mut lab = lab();
    let f = &lab.f;
    let mut held = Conn::open(f.listen[0]).expect("connect");
    assert_eq!(held.server_port().unwrap(), lab.master.port);
    lab.master.proc().signal(libc::SIGSTOP);
    assert!(
        wait_until(Duration::from_secs(20), || f.master("mymaster")
            == Some(lab.replica.addr())),
        "no failover from the hung master: {:?}\n{}",
        f.status(),
        f.log_text()
    );
    assert!(
        held.closed_within(Duration::from_secs(5)),
        "session to the hung master not cut"
    );
    let mut c = Conn::open(f.listen[0]).expect("connect after failover");
    c.stream()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(c.server_port().unwrap(), lab.replica.port);
    assert_eq!(
        c.cmd(&["SET", "after", "1"]).unwrap(),
        Reply::Simple("OK".into())
    );
    lab.master.proc().signal(libc::SIGCONT);
}

#[test]
fn losing_sentinels_keeps_the_master_and_reports_degraded() {
    let mut lab = lab();
    assert!(wait_until(Duration::from_secs(5), || sentinel_status(
        &lab.f
    )["reachable"]
        == 3));
    assert_eq!(sentinel_status(&lab.f)["degraded"], false);

    lab.sentinels[0] = None; // stops it
    assert!(wait_until(Duration::from_secs(10), || sentinel_status(
        &lab.f
    )["reachable"]
        == 2));
    assert_eq!(
        sentinel_status(&lab.f)["degraded"],
        false,
        "2 of 3 is still a quorum"
    );
    let mut c = Conn::open(lab.f.listen[0]).unwrap();
    assert_eq!(c.server_port().unwrap(), lab.master.port);

    lab.sentinels[1] = None;
    assert!(
        wait_until(Duration::from_secs(10), || sentinel_status(&lab.f)
            ["degraded"]
            == true),
        "{:?}",
        sentinel_status(&lab.f)
    );
    assert_eq!(sentinel_status(&lab.f)["reachable"], 1);
    // The last agreed master is kept: traffic still flows to it.
    assert_eq!(lab.f.master("mymaster"), Some(lab.master.addr()));
    let mut c = Conn::open(lab.f.listen[0]).unwrap();
    assert_eq!(c.server_port().unwrap(), lab.master.port);
    assert_eq!(
        c.cmd(&["SET", "k", "v"]).unwrap(),
        Reply::Simple("OK".into())
    );
    assert!(
        lab.f
            .wait_for_log("Sentinel view degraded", Duration::from_secs(5)),
        "{}",
        lab.f.log_text()
    );
}

#[test]
fn servers_are_discovered_from_sentinel() {
    let mut lab = lab_with(false, 1000);
    let f = &lab.f;
    let listed = || f.servers("mymaster");
    assert!(
        wait_until(Duration::from_secs(10), || listed()
            .contains(&lab.replica.addr().to_string())),
        "replica not discovered: {:?}",
        listed()
    );
    lab.master.proc().kill();
    assert!(
        wait_until(Duration::from_secs(20), || f.master("mymaster")
            == Some(lab.replica.addr())),
        "no failover to the discovered replica: {:?}\n{}",
        f.status(),
        f.log_text()
    );
    let mut c = Conn::open(f.listen[0]).unwrap();
    assert_eq!(c.server_port().unwrap(), lab.replica.port);
}

#[test]
fn two_services_fail_over_independently() {
    // The guide's two masters, `mymaster` and `resque`, watched by the same three Sentinels.
    let (mut m1, r1) = Redis::pair();
    let (m2, r2) = Redis::pair();
    let sentinels: Vec<Sentinel> = (0..3)
        .map(|_| Sentinel::start_many(&[("mymaster", m1.addr()), ("resque", m2.addr())], 2, 1000))
        .collect();
    for s in &sentinels {
        assert!(wait_until(Duration::from_secs(20), || s.ready("mymaster")
            && s.ready("resque")));
    }
    let list: Vec<String> = sentinels
        .iter()
        .map(|s| format!("\"{}\"", s.addr()))
        .collect();
    let svc = |name: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nlisten = \"{{LISTEN}}\"\n\
             timeout = {{ queue = \"15s\" }}\n\n[service.check]\nkind = \"redis-master\"\n\
             interval = \"200ms\"\ntimeout = \"500ms\"\n\n[service.sentinel]\n\
             addresses = [{}]\nmaster_name = \"{name}\"\n\n",
            list.join(", ")
        )
    };
    let f = Forwarder::start(&format!("{}{}", svc("mymaster"), svc("resque")));
    assert!(wait_until(Duration::from_secs(10), || f.master("mymaster")
        == Some(m1.addr())
        && f.master("resque") == Some(m2.addr())));
    let mut held = Conn::open(f.listen[1]).unwrap();
    assert_eq!(held.server_port().unwrap(), m2.port);
    let gen_resque = f.service_status("resque").unwrap()["generation"].clone();

    m1.proc().kill();
    assert!(
        wait_until(Duration::from_secs(20), || f.master("mymaster")
            == Some(r1.addr())),
        "{:?}\n{}",
        f.status(),
        f.log_text()
    );
    // resque did not move, and its session was not touched.
    assert_eq!(f.master("resque"), Some(m2.addr()));
    assert_eq!(
        f.service_status("resque").unwrap()["generation"],
        gen_resque
    );
    assert_eq!(
        held.cmd(&["SET", "k", "v"]).unwrap(),
        Reply::Simple("OK".into())
    );
    let mut c = Conn::open(f.listen[0]).unwrap();
    assert_eq!(c.server_port().unwrap(), r1.port);
    drop(r2);
}

/// A reload that changes nothing about servers, checks or Sentinels (here a timeout) while every
/// Sentinel is unreachable keeps the master: the checks and the Sentinel view carry over, so no
/// new check starts and nothing is forgotten.
#[test]
fn a_reload_while_the_sentinels_are_away_keeps_the_master() {
    let mut lab = lab();
    for s in lab.sentinels.iter_mut() {
        s.take();
    }
    assert!(wait_until(Duration::from_secs(10), || lab
        .f
        .service_status("mymaster")
        .is_some_and(
            |s| s["sentinel"]["degraded"] == true && s["sentinel"]["reachable"] == 0
        )));
    let ok_before = lab.f.service_status("mymaster").unwrap()["servers"][0]["checks_ok"]
        .as_u64()
        .unwrap();
    let text = harness::sentinel_service(
        &[lab.master.addr(), lab.replica.addr()],
        &lab.sentinel_addrs,
        "15s",
    )
    .replace("{LISTEN}", &lab.f.listen[0].to_string())
    .replace("client = \"30s\"", "client = \"31s\"");
    lab.f.rewrite(&text);
    lab.f.proc().signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || lab
            .f
            .log_text()
            .contains("reloaded: 0 unchanged, 1 changed")),
        "{}",
        lab.f.log_text()
    );
    // Checks go on (their counters continue: the same checks), and the master stays.
    assert!(wait_until(Duration::from_secs(10), || lab
        .f
        .service_status("mymaster")
        .and_then(|s| s["servers"][0]["checks_ok"].as_u64())
        .unwrap_or(0)
        >= ok_before + 5));
    assert_eq!(lab.f.master("mymaster"), Some(lab.master.addr()));
    let mut c = Conn::open(lab.f.listen[0]).unwrap();
    assert_eq!(
        c.cmd(&["SET", "k", "v"]).unwrap(),
        Reply::Simple("OK".into())
    );
}
