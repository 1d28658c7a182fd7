//! Operating a running forwarder as an HAProxy operator would: server states set at run time
//! (`drain`, `maint`), readiness and liveness probes, and counters that continue across a
//! reload. Real Redis servers; the Sentinel drills (switchover, two forwarders) are in
//! `switchover.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use harness::{wait_until, Conn, Forwarder, Redis, Reply, Service};

/// A Redis service over `servers`: checks every 200 ms, rise 1, clients held up to 20 s, and
/// sessions to a drained master cut after 2 s.
fn service(servers: &[SocketAddr]) -> String {
    Service::redis("mymaster", servers)
        .set(
            "timeout",
            "{ connect = \"1s\", queue = \"20s\", drain = \"2s\" }",
        )
        .check("rise", "1")
        .check("timeout", "\"1s\"")
        .to_string()
}

fn routed(f: &Forwarder, to: SocketAddr) {
    assert!(
        wait_until(Duration::from_secs(10), || f.master("mymaster") == Some(to)),
        "never routed to {to}: {:?}\n{}",
        f.status(),
        f.log_text()
    );
}

fn set_state(f: &Forwarder, server: SocketAddr, state: &str) -> (u16, String) {
    f.post(&format!("/servers/mymaster/{server}/state"), state)
}

fn server_field(f: &Forwarder, server: SocketAddr, field: &str) -> serde_json::Value {
    f.service_status("mymaster")
        .and_then(|s| {
            s["servers"]
                .as_array()?
                .iter()
                .find(|x| x["addr"] == server.to_string())
                .map(|x| x[field].clone())
        })
        .unwrap_or(serde_json::Value::Null)
}

/// A new client whose PING is not answered within 500 ms: it is held.
fn held_client(f: &Forwarder) -> Conn {
    let mut c = Conn::open(f.listen[0]).expect("connect");
    c.stream()
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert!(
        c.cmd(&["PING"]).is_err(),
        "a new client was served while no server may take it"
    );
    c.stream()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    c
}

fn pong(c: &mut Conn) -> bool {
    c.cmd(&["PING"])
        .is_ok_and(|r| r == Reply::Simple("PONG".into()))
}

#[test]
fn a_drained_master_keeps_its_sessions_holds_new_ones_and_cuts_them_after_timeout_drain() {
    let (master, replica) = Redis::pair();
    let f = Forwarder::start(&service(&[master.addr(), replica.addr()]));
    routed(&f, master.addr());
    assert_eq!(f.get("/ready"), (200, "ready\n".to_string()));
    let mut old = Conn::open(f.listen[0]).expect("connect");
    assert!(pong(&mut old));

    let (code, body) = set_state(&f, master.addr(), "drain");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("is drain (was ready)"), "{body}");
    assert_eq!(server_field(&f, master.addr(), "admin_state"), "drain");
    assert_eq!(f.service_status("mymaster").unwrap()["hold"], "drain");
    let (code, body) = f.get("/ready");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("takes no new sessions (drain)"), "{body}");
    assert!(f.metrics().contains(&format!(
        "forwarder_server_admin_state{{service=\"mymaster\",server=\"{}\",state=\"drain\"}} 1\n",
        master.addr()
    )));

    // New clients wait; the established session goes on.
    let mut new = held_client(&f);
    assert!(pong(&mut old), "the established session was cut by drain");
    // Back to ready: the held client is served, by the same master, on the same route.
    assert_eq!(set_state(&f, master.addr(), "ready").0, 200);
    assert_eq!(
        new.read_reply().expect("the held client was never served"),
        Reply::Simple("PONG".into())
    );
    assert_eq!(new.server_port().unwrap(), master.port);
    assert!(pong(&mut old));
    assert_eq!(f.get("/ready").0, 200);

    // Drained again: after timeout.drain (2 s) the sessions left are cut, counted as drained.
    assert_eq!(set_state(&f, master.addr(), "drain").0, 200);
    assert!(
        old.closed_within(Duration::from_secs(10)),
        "the drained master's session outlived timeout.drain"
    );
    assert!(
        wait_until(Duration::from_secs(5), || f
            .counter("mymaster", "ended", "drained")
            >= 2),
        "sessions cut by the drain time are not counted as drained: {:?}",
        f.status()
    );
    assert_eq!(f.counter("mymaster", "ended", "master_changed"), 0);
    let st = f.service_status("mymaster").unwrap();
    assert_eq!(
        st["master_changes"], 1,
        "drain is no change of master: {st:#}"
    );
}

#[test]
fn maint_is_never_routed_nor_checked_and_survives_a_reload() {
    let (master, replica) = Redis::pair();
    let mut f = Forwarder::start(&service(&[master.addr(), replica.addr()]));
    routed(&f, master.addr());

    // Bad requests say why and change nothing.
    assert_eq!(set_state(&f, master.addr(), "sleep").0, 400);
    assert_eq!(f.post("/servers/nope/127.0.0.1:1/state", "maint").0, 404);
    let (code, body) = set_state(&f, "127.0.0.1:1".parse().unwrap(), "maint");
    assert_eq!(code, 404, "{body}");
    assert_eq!(f.post("/servers/mymaster/garbage/state", "maint").0, 400);
    assert_eq!(f.master("mymaster"), Some(master.addr()));

    let (code, body) = set_state(&f, master.addr(), "maint");
    assert_eq!(code, 200, "{body}");
    assert!(
        wait_until(Duration::from_secs(5), || f.master("mymaster").is_none()),
        "a server in maint is still routed to"
    );
    let (code, body) = f.get("/ready");
    assert_eq!((code, body.contains("no master")), (503, true), "{body}");
    let checks = |f: &Forwarder| {
        let n = |k| server_field(f, master.addr(), k).as_u64().unwrap_or(0);
        n("checks_ok") + n("checks_failed") + n("checks_unknown")
    };
    let before = checks(&f);
    std::thread::sleep(Duration::from_secs(1)); // five check intervals
    assert_eq!(checks(&f), before, "a server in maint was checked");

    // A reload that replaces the checks keeps the operator's state.
    f.reload(
        &service(&[master.addr(), replica.addr()])
            .replace("interval = \"200ms\"", "interval = \"300ms\""),
    );
    assert_eq!(server_field(&f, master.addr(), "admin_state"), "maint");
    let mut held = held_client(&f);
    assert_eq!(f.master("mymaster"), None, "the reload forgot maint");

    // Ready again: checked, routed, and the held client served by it.
    assert_eq!(set_state(&f, master.addr(), "ready").0, 200);
    assert_eq!(
        held.read_reply().expect("the held client was never served"),
        Reply::Simple("PONG".into())
    );
    assert_eq!(held.server_port().unwrap(), master.port);
    assert!(checks(&f) > before);
    assert_eq!(f.get("/ready").0, 200);
}

#[test]
fn live_and_ready_probes_need_no_master_to_answer() {
    // A server that does not exist: the process works (live) but routes nowhere (not ready).
    let gone: SocketAddr = ([127, 0, 0, 1], harness::free_port()).into();
    let f = Forwarder::start(&service(&[gone]));
    assert_eq!(f.get("/live"), (200, "live\n".to_string()));
    let (code, body) = f.get("/ready");
    assert_eq!(code, 503);
    assert!(body.contains("service mymaster: no master"), "{body}");
    let st = f.status().unwrap();
    assert_eq!(st["ready"], false);
    assert!(f.metrics().contains("forwarder_ready 0\n"));
}

#[test]
fn a_reload_that_replaces_the_checks_keeps_every_counter() {
    // Two servers that both say role:master: one is routed, the other is a conflict.
    let (a, b) = (Redis::start(), Redis::start());
    let mut f = Forwarder::start(&service(&[a.addr(), b.addr()]));
    assert!(wait_until(Duration::from_secs(10), || f
        .service_status("mymaster")
        .is_some_and(|s| s["master_conflicts"] == 1)));
    let master = f.master("mymaster").expect("a master");
    let before = f.service_status("mymaster").unwrap();
    let ok_before = server_field(&f, master, "checks_ok").as_u64().unwrap();

    f.reload(&service(&[a.addr(), b.addr()]).replace("rise = 1", "rise = 1\nfall = 2"));
    // The new checks find the same master and the same conflict: neither is counted again.
    assert!(wait_until(Duration::from_secs(5), || server_field(
        &f,
        master,
        "checks_ok"
    )
    .as_u64()
    .unwrap_or(0)
        > ok_before));
    std::thread::sleep(Duration::from_millis(600)); // a few checks of both servers
    let after = f.service_status("mymaster").unwrap();
    assert_eq!(f.master("mymaster"), Some(master));
    for k in ["master_changes", "master_conflicts", "no_master_episodes"] {
        assert_eq!(
            after[k], before[k],
            "{k} moved across the reload: {after:#}"
        );
    }
}

/// A master, its replica and a Sentinel that names the master and accepts `SENTINEL FAILOVER`
/// but never does it: a switchover holds new clients until it gives up (20 s).
struct StuckSwitchover {
    master: Redis,
    replica: Redis,
    sentinel: harness::hostile::HostileSentinel,
}

impl StuckSwitchover {
    fn new() -> StuckSwitchover {
        let (master, replica) = Redis::pair();
        let sentinel =
            harness::hostile::HostileSentinel::start(harness::hostile::Lie::Names(master.addr()));
        StuckSwitchover {
            master,
            replica,
            sentinel,
        }
    }

    /// The service: clients held up to 30 s, `fall` as given (a reload changes it).
    fn config(&self, fall: &str) -> String {
        Service::redis("mymaster", &[self.master.addr(), self.replica.addr()])
            .set(
                "timeout",
                "{ connect = \"1s\", queue = \"30s\", drain = \"2s\" }",
            )
            .check("rise", "1")
            .check("timeout", "\"1s\"")
            .check("fall", fall)
            .sentinels(&[self.sentinel.addr])
            .to_string()
    }

    /// A forwarder routed to the master, its replica online (a switchover needs one).
    fn forwarder(&self) -> Forwarder {
        let f = Forwarder::start(&self.config("1"));
        routed(&f, self.master.addr());
        assert!(
            wait_until(Duration::from_secs(10), || self
                .master
                .info_field("replication", "slave0")
                .is_some_and(|s| s.contains("online"))),
            "the replica never came online"
        );
        f
    }
}

/// Waits until `f` holds the master for a switchover.
fn switchover_holds(f: &Forwarder) {
    assert!(
        wait_until(Duration::from_secs(10), || f
            .service_status("mymaster")
            .is_some_and(|s| s["hold"] == "switchover")),
        "the switchover never held the master: {:?}",
        f.status()
    );
}

/// Asks `f` for a switchover from another thread; the answer comes when it ends.
fn request_switchover(f: &Forwarder) -> std::thread::JoinHandle<std::io::Result<(u16, String)>> {
    let admin = f.admin;
    let switchover = std::thread::spawn(move || {
        harness::endpoints::admin_call(admin, "POST", "/services/mymaster/switchover", "", None)
    });
    switchover_holds(f);
    switchover
}

#[test]
fn a_reload_during_a_switchover_does_not_route_new_clients_to_the_held_master() {
    let lab = StuckSwitchover::new();
    let mut f = lab.forwarder();
    let switchover = request_switchover(&f);
    // A reload that replaces the checks (a new monitor) while the switchover runs.
    f.rewrite(
        &lab.config("2")
            .replace("{LISTEN}", &f.listen[0].to_string()),
    );
    f.proc().signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_secs(1));
    // The master is still being switched away from: a new client must not reach it.
    let _held = held_client(&f);
    assert_eq!(f.service_status("mymaster").unwrap()["hold"], "switchover");
    let (code, body) = switchover.join().unwrap().expect("switchover answered");
    assert_eq!(code, 502, "{body}");
    // The reload waited for the switchover, then was applied.
    assert!(
        f.wait_for_log("1 changed", Duration::from_secs(10)),
        "{}",
        f.log_text()
    );
}

#[test]
fn a_switchover_runs_to_its_end_when_its_client_goes_away() {
    use std::io::Write;
    let lab = StuckSwitchover::new();
    let f = lab.forwarder();
    let mut c = std::net::TcpStream::connect(f.admin).unwrap();
    write!(
        c,
        "POST /services/mymaster/switchover HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    switchover_holds(&f);
    // The operator's curl is interrupted: the Sentinels were asked to fail over, so the
    // master must stay held (writes to it now would be lost) until the switchover ends.
    drop(c);
    std::thread::sleep(Duration::from_secs(1));
    let _held = held_client(&f);
    assert_eq!(f.service_status("mymaster").unwrap()["hold"], "switchover");
    // It ends as it would have: given up after 20 s, counted, the master routed again.
    assert!(
        wait_until(Duration::from_secs(30), || f
            .service_status("mymaster")
            .is_some_and(|s| s["hold"].is_null())),
        "the hold never ended"
    );
    assert_eq!(
        f.service_status("mymaster").unwrap()["stats"]["switchovers_failed"],
        1,
        "{:?}",
        f.status()
    );
}

#[test]
fn a_server_removed_by_a_reload_and_added_again_starts_ready() {
    let (master, replica) = Redis::pair();
    let mut f = Forwarder::start(&service(&[master.addr(), replica.addr()]));
    routed(&f, master.addr());
    assert_eq!(set_state(&f, replica.addr(), "maint").0, 200);
    f.reload(&service(&[master.addr()]));
    // Added again (another machine on the same address, say): not in a maint nobody could see.
    f.reload(&service(&[master.addr(), replica.addr()]));
    assert_eq!(server_field(&f, replica.addr(), "admin_state"), "ready");
    assert!(
        f.log_text().contains("its operator state is forgotten"),
        "{}",
        f.log_text()
    );
}

#[test]
fn a_drained_master_that_fails_hands_its_held_clients_to_the_next_master() {
    let (mut master, replica) = Redis::pair();
    let f = Forwarder::start(&service(&[master.addr(), replica.addr()]));
    routed(&f, master.addr());
    assert_eq!(set_state(&f, master.addr(), "drain").0, 200);
    let mut held = held_client(&f);
    // The drained master dies; its replica is promoted.
    master.proc().kill();
    replica.replicaof(None);
    routed(&f, replica.addr());
    assert_eq!(
        held.read_reply().expect("the held client was never served"),
        Reply::Simple("PONG".into())
    );
    assert_eq!(held.server_port().unwrap(), replica.port);
    assert!(f.service_status("mymaster").unwrap()["hold"].is_null());
    assert_eq!(f.get("/ready").0, 200);
}

#[test]
fn a_switchover_answers_within_the_admin_connection_limit_when_a_sentinel_hangs() {
    use harness::hostile::{HostileSentinel, Lie};
    let (master, replica) = Redis::pair();
    // The first Sentinel accepts connections and never answers; the next two name the master
    // and accept SENTINEL FAILOVER without doing it.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let honest: Vec<HostileSentinel> = (0..2)
        .map(|_| HostileSentinel::start(Lie::Names(master.addr())))
        .collect();
    let sentinels = [hang.local_addr().unwrap(), honest[0].addr, honest[1].addr];
    let f = Forwarder::start(
        &Service::redis("mymaster", &[master.addr(), replica.addr()])
            .set(
                "timeout",
                "{ connect = \"1s\", queue = \"30s\", drain = \"2s\" }",
            )
            .check("rise", "1")
            .check("interval", "\"10s\"")
            .check("timeout", "\"10s\"")
            .sentinels(&sentinels)
            .to_string(),
    );
    routed(&f, master.addr());
    assert!(
        wait_until(Duration::from_secs(10), || master
            .info_field("replication", "slave0")
            .is_some_and(|s| s.contains("online"))),
        "the replica never came online"
    );
    let started = std::time::Instant::now();
    let answer =
        harness::endpoints::admin_call(f.admin, "POST", "/services/mymaster/switchover", "", None);
    // Not cut by the admin listener's 30 s limit: an answer, saying it gave up.
    let (code, body) = answer.unwrap_or_else(|e| {
        panic!(
            "no answer after {:?}: {e}\n{}",
            started.elapsed(),
            f.log_text()
        )
    });
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("no new master was confirmed"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn a_state_set_after_a_reload_reaches_the_clients_held_before_it() {
    let (master, replica) = Redis::pair();
    let mut f = Forwarder::start(&service(&[master.addr(), replica.addr()]));
    routed(&f, master.addr());
    let mut old = Conn::open(f.listen[0]).expect("connect");
    assert!(pong(&mut old));
    assert_eq!(set_state(&f, master.addr(), "drain").0, 200);
    let mut held = held_client(&f);
    // A reload that replaces the checks: the held client and the established session belong
    // to the runtime before it.
    f.reload(
        &service(&[master.addr(), replica.addr()])
            .replace("interval = \"200ms\"", "interval = \"300ms\""),
    );
    // Ready again: the client held since before the reload is served.
    assert_eq!(set_state(&f, master.addr(), "ready").0, 200);
    held.stream()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(
        held.read_reply()
            .expect("the client held before the reload was never served"),
        Reply::Simple("PONG".into())
    );
    // Maint now: the session established before the reload is cut too.
    assert_eq!(set_state(&f, master.addr(), "maint").0, 200);
    assert!(
        old.closed_within(Duration::from_secs(5)),
        "a session to a server in maint outlived it"
    );
}

#[test]
fn a_switchover_cuts_the_sessions_a_reload_left_on_the_master() {
    let lab = StuckSwitchover::new();
    let mut f = lab.forwarder();
    // A session, then a reload that replaces the checks: the session stays on the runtime
    // (and monitor) the reload retired.
    let mut old = Conn::open(f.listen[0]).expect("connect");
    assert!(pong(&mut old));
    f.reload(&lab.config("2"));
    assert!(pong(&mut old), "the reload cut an established session");
    let switchover = request_switchover(&f);
    // The retired runtime's session reached the master being switched away from: cut.
    old.stream()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert!(
        !pong(&mut old),
        "a session left by the reload still reaches the held master"
    );
    let (code, body) = switchover.join().unwrap().expect("switchover answered");
    assert_eq!(code, 502, "{body}");
}
