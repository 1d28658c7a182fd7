//! Clients arriving while there is no master, end to end in the data path under test (each path
//! has its own front that queues them): one whose `timeout.queue` expires is closed and counted
//! `rejected.no_master`; with `timeout.queue = "0s"` one is refused at once, and clients are
//! still served as soon as there is a master.

use std::time::{Duration, Instant};

use harness::{free_port, wait_until, Conn, Forwarder, Redis, Reply};

/// A Redis service on `r` whose clients wait up to `queue` for a master.
fn service(r: &Redis, queue: &str) -> String {
    format!(
        r#"[[service]]
name = "mymaster"
listen = "{{LISTEN}}"
servers = ["{}"]
timeout = {{ connect = "1s", client = "60s", server = "60s", queue = "{queue}" }}

[service.check]
kind = "redis-master"
interval = "200ms"
rise = 1
fall = 1
timeout = "500ms"
"#,
        r.addr()
    )
}

/// A Redis that is a replica of a master that does not exist (as during a failover): its check
/// fails (`role:slave`), so the service has no master.
fn orphan_replica() -> Redis {
    let r = Redis::start();
    let nowhere = free_port().to_string();
    assert_eq!(
        r.cmd(&["REPLICAOF", "127.0.0.1", &nowhere]),
        Reply::Simple("OK".into())
    );
    r
}

/// Waits until the forwarder has checked `r` and found it is not a master.
fn checked_and_not_master(f: &Forwarder, r: &Redis) {
    assert!(
        wait_until(Duration::from_secs(10), || f
            .service_status("mymaster")
            .and_then(|s| s["servers"][0]["last_ok"].as_bool())
            == Some(false)),
        "{:?}",
        f.status()
    );
    assert_eq!(f.master("mymaster"), None, "{} is routed to", r.addr());
}

#[test]
fn a_queued_client_is_closed_when_timeout_queue_expires_and_counted() {
    let r = orphan_replica();
    let f = Forwarder::start(&service(&r, "1s"));
    checked_and_not_master(&f, &r);
    let start = Instant::now();
    let mut c = Conn::open(f.listen[0]).unwrap();
    assert!(
        c.closed_within(Duration::from_secs(15)),
        "a client waiting for a master was not closed after timeout.queue\n{:?}",
        f.status()
    );
    // Held, not refused: it was closed no earlier than its queue time after it connected (a
    // lower bound, which load cannot break: the forwarder's clock starts after our connect).
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "closed after {:?}, before timeout.queue",
        start.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(5), || f.counter(
            "mymaster",
            "rejected",
            "no_master"
        ) == 1),
        "{:?}",
        f.status()
    );
    let st = f.service_status("mymaster").unwrap();
    assert_eq!(st["stats"]["accepted"], 1, "{st}");
    assert_eq!(st["stats"]["active"], 0, "{st}");
}

#[test]
fn queue_zero_refuses_at_once_without_a_master_and_serves_with_one() {
    let r = orphan_replica();
    let f = Forwarder::start(&service(&r, "0s"));
    checked_and_not_master(&f, &r);
    let mut c = Conn::open(f.listen[0]).unwrap();
    // "At once": well within the 5 s default queue time, which a forwarder that ignored "0s"
    // would hold the client for.
    assert!(
        c.closed_within(Duration::from_secs(3)),
        "a client was held although timeout.queue is 0s\n{:?}",
        f.status()
    );
    assert!(
        wait_until(Duration::from_secs(5), || f.counter(
            "mymaster",
            "rejected",
            "no_master"
        ) == 1),
        "{:?}",
        f.status()
    );

    // With a master, "0s" refuses nobody.
    r.replicaof(None);
    assert!(
        wait_until(Duration::from_secs(10), || f.master("mymaster")
            == Some(r.addr())),
        "{:?}",
        f.status()
    );
    // The router takes the new master a moment after /status shows it: a client in between
    // would still find none, so wait for the first one served.
    let served = || {
        Conn::open(f.listen[0])
            .and_then(|mut c| c.server_port())
            .is_ok_and(|p| p == r.port)
    };
    assert!(
        wait_until(Duration::from_secs(10), served),
        "{:?}",
        f.status()
    );
    let refused = f.counter("mymaster", "rejected", "no_master");
    for i in 0..5 {
        let mut c = Conn::open(f.listen[0]).unwrap();
        assert_eq!(
            c.cmd(&["PING"])
                .unwrap_or_else(|e| panic!("client {i}: {e}")),
            Reply::Simple("PONG".into())
        );
    }
    assert_eq!(f.counter("mymaster", "rejected", "no_master"), refused);
}
