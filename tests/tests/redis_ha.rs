//! Redis HA behaviour through the forwarder: writes reach the master only, failover (manual and
//! after a crash), and no split-brain routing.

use std::net::SocketAddr;
use std::time::Duration;

use harness::{wait_until, Conn, Forwarder, Redis, Reply, Service};

fn service(servers: &[&Redis], queue: &str) -> String {
    let addrs: Vec<_> = servers.iter().map(|r| r.addr()).collect();
    Service::redis("mymaster", &addrs)
        .set(
            "timeout",
            &format!(r#"{{ connect = "1s", client = "30s", server = "30s", queue = "{queue}" }}"#),
        )
        .check("fall", "1")
        .check("timeout", "\"500ms\"")
        .to_string()
}

fn wait_master(f: &Forwarder, r: &Redis) {
    assert!(
        wait_until(Duration::from_secs(10), || f.master("mymaster")
            == Some(r.addr())),
        "forwarder never routed to {}: {:?}\n{}",
        r.addr(),
        f.status(),
        f.log_text()
    );
}

#[test]
fn writes_land_on_the_master_and_never_on_the_replica() {
    let (master, replica) = Redis::pair();
    let f = Forwarder::start(&service(&[&replica, &master], "5s"));
    wait_master(&f, &master);
    for i in 0..50 {
        let mut c = Conn::open(f.listen[0]).expect("connect through forwarder");
        assert_eq!(c.server_port().unwrap(), master.port);
        let key = format!("k{i}");
        assert_eq!(
            c.cmd(&["SET", &key, "v"]).unwrap(),
            Reply::Simple("OK".into())
        );
        assert_eq!(
            c.cmd(&["GET", &key]).unwrap(),
            Reply::Bulk(Some(b"v".to_vec()))
        );
    }
    assert_eq!(master.cmd(&["DBSIZE"]), Reply::Integer(50));
    // A client write that reached the replica would have been refused with READONLY.
    assert_eq!(replica.info_field("errorstats", "errorstat_READONLY"), None);
    assert!(f.counter("mymaster", "rejected", "no_master") == 0);
}

#[test]
fn manual_failover_moves_new_sessions_and_cuts_old_ones() {
    let (old, new) = Redis::pair();
    let f = Forwarder::start(&service(&[&old, &new], "5s"));
    wait_master(&f, &old);
    let mut before = Conn::open(f.listen[0]).unwrap();
    assert_eq!(before.server_port().unwrap(), old.port);

    // The seed guide's manual failover.
    new.replicaof(None);
    old.replicaof(Some(&new));
    wait_master(&f, &new);

    assert!(
        before.closed_within(Duration::from_secs(5)),
        "the session to the demoted master was not cut"
    );
    let mut after = Conn::open(f.listen[0]).unwrap();
    assert_eq!(after.server_port().unwrap(), new.port);
    assert_eq!(
        after.cmd(&["SET", "x", "1"]).unwrap(),
        Reply::Simple("OK".into())
    );
    // Through the forwarder, INFO replication shows the new master (0 slaves until the old one syncs).
    match after.cmd(&["INFO", "replication"]).unwrap() {
        Reply::Bulk(Some(b)) => assert!(String::from_utf8_lossy(&b).contains("role:master")),
        other => panic!("INFO replication: {other:?}"),
    }
    assert!(f.counter("mymaster", "ended", "master_changed") >= 1);
}

#[test]
fn client_arriving_while_no_master_is_held_then_served() {
    let (mut master, replica) = Redis::pair();
    let f = Forwarder::start(&service(&[&master, &replica], "15s"));
    wait_master(&f, &master);
    master.proc().kill(); // SIGKILL
    assert!(
        wait_until(Duration::from_secs(10), || f.master("mymaster").is_none()),
        "the dead master is still routed to: {:?}",
        f.service_status("mymaster")
    );
    let stats = || f.service_status("mymaster").expect("status")["stats"].clone();
    let accepted = stats()["accepted"].as_u64().unwrap();

    // A client arrives now, while there is no master, and sends a command.
    let (tx, rx) = std::sync::mpsc::channel();
    let client = std::thread::spawn({
        let addr = f.listen[0];
        move || {
            let r = (|| {
                let mut c = Conn::open(addr)?;
                c.stream().set_read_timeout(Some(Duration::from_secs(30)))?;
                let pong = c.cmd(&["PING"])?;
                let port = c.server_port()?;
                Ok::<_, std::io::Error>((pong, port))
            })();
            let _ = tx.send(r);
        }
    });
    // It is held: admitted and active, and it stays unanswered and open for several check
    // rounds that still find no master.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let st = stats();
            st["accepted"] == accepted + 1 && st["active"] == 1
        }),
        "the client was not admitted and held (accepted +1, active 1): {:?}",
        f.service_status("mymaster")
    );
    let failed = |f: &Forwarder| {
        f.service_status("mymaster").expect("status")["servers"][0]["checks_failed"]
            .as_u64()
            .unwrap()
    };
    let before = failed(&f);
    assert!(
        wait_until(Duration::from_secs(10), || failed(&f) >= before + 3),
        "the checks stopped: {:?}",
        f.service_status("mymaster")
    );
    assert_eq!(
        f.master("mymaster"),
        None,
        "a master appeared during the hold"
    );
    assert!(
        rx.try_recv().is_err(),
        "the client got an answer or was closed while there was no master"
    );
    let st = stats();
    assert_eq!(st["active"], 1, "the held client is gone: {st}");
    assert_eq!(st["rejected"]["no_master"], 0, "{st}");

    // A master appears: the held client is served, by it.
    replica.replicaof(None);
    let (pong, port) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the held client was never answered")
        .unwrap_or_else(|e| panic!("held client was not served: {e}\n{}", f.log_text()));
    client.join().expect("client thread");
    assert_eq!(pong, Reply::Simple("PONG".into()));
    assert_eq!(
        port, replica.port,
        "served by another server than the new master"
    );
    assert_eq!(f.master("mymaster"), Some(replica.addr()));
    assert_eq!(f.counter("mymaster", "rejected", "no_master"), 0);
}

/// The servers' check rounds so far (passed and failed), per `/status`.
fn checks_run(f: &Forwarder, server: SocketAddr) -> u64 {
    f.service_status("mymaster")
        .and_then(|st| {
            st["servers"].as_array().and_then(|a| {
                a.iter().find(|s| s["addr"] == server.to_string()).map(|s| {
                    s["checks_ok"].as_u64().unwrap() + s["checks_failed"].as_u64().unwrap()
                })
            })
        })
        .unwrap_or(0)
}

/// New clients, one after another, all reach `port` while each of `watched` is checked `rounds`
/// more times.
fn clients_stay_on(f: &Forwarder, port: u16, watched: &[SocketAddr], rounds: u64) {
    let start: Vec<u64> = watched.iter().map(|a| checks_run(f, *a)).collect();
    let mut clients = 0u64;
    let done = wait_until(Duration::from_secs(30), || {
        let mut c = Conn::open(f.listen[0]).expect("connect through the forwarder");
        assert_eq!(
            c.server_port().unwrap(),
            port,
            "client {clients} reached the other master: {:?}",
            f.service_status("mymaster")
        );
        clients += 1;
        watched
            .iter()
            .zip(&start)
            .all(|(a, s)| checks_run(f, *a) >= s + rounds)
    });
    assert!(
        done && clients >= rounds,
        "{rounds} check rounds did not pass ({clients} clients): {:?}",
        f.service_status("mymaster")
    );
}

#[test]
fn split_brain_routes_every_client_to_one_master() {
    // Two servers that both say role:master (e.g. an old master restarted before demotion).
    let a = Redis::start();
    let b = Redis::start();
    // HAProxy's fall 3 and a 2 s check timeout: on a loaded machine one slow check must not
    // count as the master going away (that would be a real change of master, not split brain).
    let f = Forwarder::start(
        &Service::redis("mymaster", &[a.addr(), b.addr()])
            .set("timeout", r#"{ connect = "1s", queue = "5s" }"#)
            .check("fall", "3")
            .check("timeout", "\"2s\"")
            .to_string(),
    );
    assert!(wait_until(Duration::from_secs(10), || f
        .master("mymaster")
        .is_some()));
    let chosen = f.master("mymaster").unwrap();
    // Several check rounds of both: the choice must not alternate.
    clients_stay_on(&f, chosen.port(), &[a.addr(), b.addr()], 5);
    assert_eq!(f.master("mymaster"), Some(chosen));
    let st = f.service_status("mymaster").unwrap();
    assert!(
        st["master_conflicts"].as_u64().unwrap() >= 1,
        "conflict not counted: {st}"
    );

    // The chosen one goes away and comes back as a master: the other stays chosen.
    let (gone, other) = if chosen == a.addr() { (a, b) } else { (b, a) };
    let port = gone.port;
    drop(gone);
    wait_master(&f, &other);
    let back = Redis::start_on(port, &[]);
    // It passes its checks again, as a master: a conflict again, never the master.
    assert!(
        wait_until(Duration::from_secs(10), || f
            .service_status("mymaster")
            .is_some_and(|st| st["master_conflicts"].as_u64().unwrap() >= 2)),
        "the returning master was not seen as a second master: {:?}",
        f.service_status("mymaster")
    );
    clients_stay_on(&f, other.port, &[other.addr(), back.addr()], 5);
    assert_eq!(f.master("mymaster"), Some(other.addr()));
}
