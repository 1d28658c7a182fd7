//! Adversarial tests for the promise "exactly one master" that meet the data path (so they run
//! in every mode): a lying Sentinel majority naming a server outside `servers` (clients held,
//! then refused, by the path's front), a replica that quotes `role:master`, clients whose bytes
//! through the path try to fail the master's check, and a second instance on the port (uring
//! binds one listener per worker). The attacks that never touch the data path are in `trust.rs`.
//! Honest Sentinels and servers are real processes; only the attackers are fakes.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use harness::{wait_until, Conn, Forwarder, Redis, Reply, Service};

/// A redis-master service over two servers, checked every 200 ms with rise and fall 1.
fn pair_service(a: SocketAddr, b: SocketAddr) -> String {
    Service::redis("mymaster", &[a, b])
        .set("timeout", r#"{ queue = "1s" }"#)
        .check("fall", "1")
        .to_string()
}

/// A replica whose sub-replica announces the IP "role:master" has that text in its INFO reply.
/// When the real master dies, the replica must fail the redis-master check (its `role:` field
/// says slave), so nothing is routed to it and no write gets READONLY.
#[test]
fn a_replica_quoting_role_master_is_never_routed_to() {
    let m = Redis::start();
    let r = Redis::start_with(&["--replicaof", "127.0.0.1", &m.port.to_string()]);
    let _s = Redis::start_with(&[
        "--replicaof",
        "127.0.0.1",
        &r.port.to_string(),
        "--replica-announce-ip",
        "role:master",
    ]);
    assert!(
        wait_until(Duration::from_secs(15), || {
            match r.cmd(&["INFO", "replication"]) {
                Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b).contains("ip=role:master"),
                _ => false,
            }
        }),
        "the sub-replica never announced itself"
    );
    let f = Forwarder::start(&pair_service(m.addr(), r.addr()));
    assert!(wait_until(Duration::from_secs(10), || f.master("mymaster")
        == Some(m.addr())));
    let mut m = m;
    m.proc().kill();
    let failed = |f: &Forwarder| {
        f.service_status("mymaster")
            .and_then(|s| s["servers"][1]["checks_failed"].as_u64())
            .unwrap_or(0)
    };
    let before = failed(&f);
    let mut masters = HashSet::new();
    assert!(
        wait_until(Duration::from_secs(15), || {
            masters.insert(f.master("mymaster"));
            failed(&f) >= before + 10
        }),
        "the replica's checks stopped: {:?}",
        f.service_status("mymaster")
    );
    masters.insert(f.master("mymaster"));
    assert!(!masters.contains(&Some(r.addr())), "routed to the replica");
    assert_eq!(f.master("mymaster"), None);
    let st = f.service_status("mymaster").unwrap();
    assert_eq!(st["servers"][1]["role"], "replica", "{st}");
    let mut c = Conn::open(f.listen[0]).unwrap();
    match c.cmd(&["SET", "k", "v"]) {
        Ok(Reply::Error(e)) => panic!("a write reached the replica: {e}"),
        Ok(other) => panic!("a write was answered with no master: {other:?}"),
        Err(_) => {}
    }
}

/// Any client can make the master print `role:slave` in its INFO (`REPLCONF ip-address` is shown
/// verbatim in the `slaveN:` line). The check reads the role field Redis writes first, so the
/// master keeps passing and stays routed.
#[test]
fn a_client_quoting_role_slave_in_the_masters_info_cannot_fail_it() {
    let (m, r) = Redis::pair();
    let f = Forwarder::start(&pair_service(m.addr(), r.addr()));
    assert!(wait_until(Duration::from_secs(10), || f.master("mymaster")
        == Some(m.addr())));
    let generation = f.service_status("mymaster").unwrap()["generation"].clone();
    // The attack, through the forwarder itself.
    let mut evil = Conn::open(f.listen[0]).unwrap();
    for cmd in [
        &["REPLCONF", "listening-port", "1"][..],
        &["REPLCONF", "ip-address", "x\r\nrole:slave"],
    ] {
        assert_eq!(evil.cmd(cmd).unwrap(), Reply::Simple("OK".into()));
    }
    evil.stream().write_all(b"PSYNC ? -1\r\n").unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || {
            match m.cmd(&["INFO", "replication"]) {
                Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b).contains("ip=x\r\nrole:slave"),
                _ => false,
            }
        }),
        "the injection did not show in INFO"
    );
    let before = f.checks_ok("mymaster", m.addr());
    assert!(
        wait_until(Duration::from_secs(10), || f
            .checks_ok("mymaster", m.addr())
            >= before + 10),
        "the master stopped passing: {:?}",
        f.service_status("mymaster")
    );
    let st = f.service_status("mymaster").unwrap();
    assert_eq!(st["master"].as_str(), Some(m.addr().to_string().as_str()));
    assert_eq!(st["generation"], generation, "the master was dropped: {st}");
    drop(evil);
}

/// Any client can lengthen the master's INFO reply past what a check keeps (each fake replica
/// adds a `slaveN:` line with a 250-byte address): the check reads the reply to its end and
/// judges it by its first `role:` field, so the master stays routed.
#[test]
fn a_client_inflating_the_masters_info_cannot_fail_it() {
    let (m, r) = Redis::pair();
    let f = Forwarder::start(&pair_service(m.addr(), r.addr()));
    assert!(wait_until(Duration::from_secs(10), || f.master("mymaster")
        == Some(m.addr())));
    let generation = f.service_status("mymaster").unwrap()["generation"].clone();
    let ip = "y".repeat(250);
    let fakes: Vec<Conn> = (0..300)
        .map(|_| {
            let mut c = Conn::open(m.addr()).unwrap();
            for cmd in [
                &["REPLCONF", "listening-port", "1"][..],
                &["REPLCONF", "ip-address", &ip],
            ] {
                assert_eq!(c.cmd(cmd).unwrap(), Reply::Simple("OK".into()));
            }
            c.stream().write_all(b"PSYNC ? -1\r\n").unwrap();
            c
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(10), || {
            match m.cmd(&["INFO", "replication"]) {
                Reply::Bulk(Some(b)) => b.len() > 70_000,
                _ => false,
            }
        }),
        "INFO did not grow past 64 KiB"
    );
    let before = f.checks_ok("mymaster", m.addr());
    assert!(
        wait_until(Duration::from_secs(15), || f
            .checks_ok("mymaster", m.addr())
            >= before + 10),
        "the master stopped passing: {:?}",
        f.service_status("mymaster")
    );
    let st = f.service_status("mymaster").unwrap();
    assert_eq!(st["generation"], generation, "the master was dropped: {st}");
    drop(fakes);
}

/// A second `forwarder run` on an address a running forwarder serves is refused, written the
/// same or as the wildcard address; with `share_listen = true` on both it may join on purpose.
#[test]
fn a_second_instance_on_the_same_address_is_refused() {
    let backend = harness::tcp_server(harness::echo);
    let first = Forwarder::start(&harness::plain_service("a", "{LISTEN}", backend, ""));
    let taken = first.listen[0];
    for listen in [taken.to_string(), format!("0.0.0.0:{}", taken.port())] {
        let text = harness::plain_service("a", &listen, backend, "");
        let (code, out) = harness::forwarder_exit("run", &text);
        assert_ne!(code, 0, "{listen}: a second instance started:\n{out}");
        assert!(
            out.contains("service[0].listen") && out.contains("already in use by another process"),
            "{listen}: {out}"
        );
    }
    // The first one still serves.
    let mut s = TcpStream::connect(taken).unwrap();
    s.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");

    let shared = harness::free_port();
    let text = harness::plain_service(
        "a",
        &format!("127.0.0.1:{shared}"),
        backend,
        "share_listen = true",
    );
    let one = Forwarder::start(&text);
    let two = Forwarder::start(&text);
    assert!(one.status().is_some() && two.status().is_some());
}
