//! Adversarial tests for the promise "exactly one master": hostile Sentinels (a lying minority,
//! a lying majority outside `servers`, replica and push floods, trickled and oversized replies),
//! a replica that quotes `role:master`, a second instance on the port, and an admin slowloris.
//! Honest Sentinels and servers are real processes; only the attackers are fakes.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use harness::hostile::{HostileSentinel, Lie};
use harness::{sentinel_service, wait_until, Conn, Forwarder, Redis, Reply, Sentinel, Service};

/// A redis-master service over two servers, checked every 200 ms with rise and fall 1.
fn pair_service(a: SocketAddr, b: SocketAddr) -> String {
    Service::redis("mymaster", &[a, b])
        .set("timeout", r#"{ queue = "1s" }"#)
        .check("fall", "1")
        .to_string()
}

fn checked_servers(f: &Forwarder) -> HashSet<String> {
    f.servers("mymaster").into_iter().collect()
}

fn checks_ok(f: &Forwarder, server: SocketAddr) -> u64 {
    f.service_status("mymaster")
        .and_then(|s| {
            s["servers"].as_array()?.iter().find_map(|x| {
                (x["addr"].as_str()? == server.to_string()).then(|| x["checks_ok"].as_u64())?
            })
        })
        .unwrap_or(0)
}

/// One Sentinel of three names a rogue master (a real Redis that says `role:master`), reports
/// 2,000 made-up replicas and pushes `+switch-master` every millisecond. Nothing it alone says
/// is checked, routed to, or logged without bound.
#[test]
fn one_lying_sentinel_cannot_add_servers_move_the_master_or_flood_the_log() {
    let (master, replica) = Redis::pair();
    let rogue = Redis::start();
    let honest: Vec<Sentinel> = (0..2)
        .map(|_| Sentinel::start("mymaster", master.addr(), 2, 1000))
        .collect();
    let liar = HostileSentinel::start(Lie::Flood {
        master: rogue.addr(),
        replicas: 2000,
    });
    let f = Forwarder::start(&sentinel_service(
        &[],
        &[honest[0].addr(), honest[1].addr(), liar.addr],
        "1s",
    ));
    let expected: HashSet<String> = [master.addr(), replica.addr()]
        .iter()
        .map(|a| a.to_string())
        .collect();
    let mut seen_masters = HashSet::new();
    // The honest pair reports the replica: discovery still works.
    assert!(
        wait_until(Duration::from_secs(20), || {
            seen_masters.insert(f.master("mymaster"));
            checked_servers(&f) == expected && f.master("mymaster") == Some(master.addr())
        }),
        "servers {:?}, master {:?}\n{}",
        checked_servers(&f),
        f.master("mymaster"),
        f.log_text()
    );
    assert!(
        f.wait_for_log("Sentinel +switch-master", Duration::from_secs(10)),
        "the liar's pushes never arrived"
    );
    // Many query rounds later (each check round is also a Sentinel round)...
    let start = Instant::now();
    let before = checks_ok(&f, master.addr());
    assert!(wait_until(Duration::from_secs(20), || {
        seen_masters.insert(f.master("mymaster"));
        checks_ok(&f, master.addr()) >= before + 10
    }));
    // ...only the two real servers are checked, the real master is routed, and the flood of
    // pushes cost a line a second.
    assert_eq!(checked_servers(&f), expected);
    assert!(
        !seen_masters.contains(&Some(rogue.addr())),
        "routed to the rogue"
    );
    let mut c = Conn::open(f.listen[0]).unwrap();
    assert_eq!(c.server_port().unwrap(), master.port);
    let lines = f
        .log_text()
        .lines()
        .filter(|l| l.contains("Sentinel +switch-master"))
        .count() as u64;
    let allowed = start.elapsed().as_secs() + 25; // one a second since the pushes began
    assert!(
        lines <= allowed,
        "{lines} +switch-master lines (at most {allowed})"
    );
    let discovered = || f.log_text().matches("discovered through Sentinel").count();
    wait_until(Duration::from_secs(5), || discovered() >= 2);
    assert_eq!(discovered(), 2, "{}", f.log_text());
}

/// Two Sentinels of three (a quorum) name a server that is not in `servers`: no route leaves
/// the list; there is no master, and `/status` says why.
#[test]
fn a_sentinel_quorum_naming_a_server_outside_servers_gives_no_master() {
    let (master, replica) = Redis::pair();
    let rogue = Redis::start();
    let honest = Sentinel::start("mymaster", master.addr(), 2, 1000);
    let liars: Vec<HostileSentinel> = (0..2)
        .map(|_| HostileSentinel::start(Lie::Names(rogue.addr())))
        .collect();
    let f = Forwarder::start(&sentinel_service(
        &[master.addr(), replica.addr()],
        &[honest.addr(), liars[0].addr, liars[1].addr],
        "1s",
    ));
    let want = format!("names {}, which is not in servers: no master", rogue.addr());
    assert!(
        wait_until(Duration::from_secs(15), || f
            .service_status("mymaster")
            .and_then(|s| s["note"].as_str().map(|n| n.contains(&want)))
            .unwrap_or(false)),
        "no note in /status: {:?}\n{}",
        f.service_status("mymaster"),
        f.log_text()
    );
    // Checks keep running on the listed servers only, and nothing is routed.
    let before = checks_ok(&f, master.addr());
    assert!(wait_until(Duration::from_secs(10), || checks_ok(
        &f,
        master.addr()
    ) >= before + 5));
    assert_eq!(f.master("mymaster"), None);
    let listed: HashSet<String> = [master.addr(), replica.addr()]
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(checked_servers(&f), listed);
    // A client is held for timeout.queue, then refused: never sent to the rogue.
    let mut c = Conn::open(f.listen[0]).unwrap();
    assert!(c.cmd(&["SET", "k", "v"]).is_err(), "a write was served");
    assert_eq!(rogue.cmd(&["DBSIZE"]), Reply::Integer(0));
    assert!(wait_until(Duration::from_secs(5), || f.counter(
        "mymaster",
        "rejected",
        "no_master"
    ) >= 1));
}

/// A Sentinel that floods its subscription with events other than `+switch-master` (here
/// `+sdown` for our master, 64 per write, as fast as it can) is dropped as a flood, so it cannot
/// keep a core busy.
#[test]
fn a_sentinel_event_flood_drops_its_subscription() {
    let (master, _replica) = Redis::pair();
    let honest: Vec<Sentinel> = (0..2)
        .map(|_| Sentinel::start("mymaster", master.addr(), 2, 1000))
        .collect();
    let flood = HostileSentinel::start(Lie::Events(master.addr()));
    let f = Forwarder::start(&sentinel_service(
        &[],
        &[honest[0].addr(), honest[1].addr(), flood.addr],
        "1s",
    ));
    assert!(
        wait_until(Duration::from_secs(15), || f
            .log_text()
            .contains("messages in")
            && f.log_text().contains("a flood")),
        "{}",
        f.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(15), || f.master("mymaster")
            == Some(master.addr())),
        "{:?}\n{}",
        f.service_status("mymaster"),
        f.log_text()
    );
}

/// A Sentinel quorum that names the forwarder's own listener: it is never checked (the check
/// would connect to ourselves, and every connection would open another).
#[test]
fn a_sentinel_quorum_naming_our_own_listener_is_not_followed() {
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], harness::free_port()));
    let liars: Vec<HostileSentinel> = (0..3)
        .map(|_| HostileSentinel::start(Lie::Names(listen)))
        .collect();
    let addrs: Vec<_> = liars.iter().map(|l| l.addr).collect();
    let text = sentinel_service(&[], &addrs, "1s").replace("{LISTEN}", &listen.to_string());
    let f = Forwarder::start(&text);
    assert!(
        wait_until(Duration::from_secs(10), || f
            .log_text()
            .contains("names one of our own listeners")),
        "{}",
        f.log_text()
    );
    assert!(checked_servers(&f).is_empty(), "{:?}", checked_servers(&f));
    assert_eq!(f.master("mymaster"), None);
}

/// A Sentinel that answers once and then trickles (a byte every 300 ms, each within the per-read
/// timeout), and one that announces a 64 MiB reply: both are unreachable, so their votes do not
/// count, and the master stays routed by the two honest ones.
#[test]
fn trickling_and_oversized_sentinels_are_unreachable() {
    let (master, _replica) = Redis::pair();
    let honest: Vec<Sentinel> = (0..2)
        .map(|_| Sentinel::start("mymaster", master.addr(), 2, 1000))
        .collect();
    for (lie, why) in [
        (Lie::Trickle(master.addr()), "no whole reply within"),
        (Lie::Oversized, "reply over"),
    ] {
        let hostile = HostileSentinel::start(lie);
        let f = Forwarder::start(&sentinel_service(
            &[],
            &[honest[0].addr(), honest[1].addr(), hostile.addr],
            "1s",
        ));
        assert!(
            wait_until(Duration::from_secs(20), || {
                f.log_text().contains(why)
                    && f.service_status("mymaster").is_some_and(|s| {
                        s["sentinel"]["reachable"] == 2 && s["sentinel"]["degraded"] == false
                    })
            }),
            "{why}: {:?}\n{}",
            f.service_status("mymaster"),
            f.log_text()
        );
        assert_eq!(f.master("mymaster"), Some(master.addr()));
    }
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
    let before = checks_ok(&f, m.addr());
    assert!(
        wait_until(Duration::from_secs(10), || checks_ok(&f, m.addr())
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
    let before = checks_ok(&f, m.addr());
    assert!(
        wait_until(Duration::from_secs(15), || checks_ok(&f, m.addr())
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

/// 200 connections that send half a request each: the admin listener keeps at most its limit
/// open, closes the rest at once and the slow ones after its header timeout (all counted), and
/// the data plane serves clients meanwhile.
#[test]
fn an_admin_slowloris_is_bounded_and_counted() {
    let backend = harness::tcp_server(harness::echo);
    let f = Forwarder::start(&harness::plain_service("a", "{LISTEN}", backend, ""));
    let mut slow: Vec<TcpStream> = (0..200)
        .filter_map(|_| {
            let mut s = TcpStream::connect(f.admin).ok()?;
            s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n").ok()?;
            Some(s)
        })
        .collect();
    assert!(slow.len() >= 150, "only {} connections opened", slow.len());
    // The data plane is not starved.
    let mut c = TcpStream::connect(f.listen[0]).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"hello").unwrap();
    let mut b = [0u8; 5];
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello");
    // Every slow connection is closed by the forwarder, none waits forever.
    for (i, s) in slow.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 256];
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue, // a 408 or similar before the close
                Err(e) => {
                    break !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    )
                }
            }
        };
        assert!(closed, "slow admin connection {i} is still open");
    }
    // Each was counted (the count follows the close by a moment).
    let counted = |st: &serde_json::Value| {
        let n = |k: &str| st["admin_rejected"][k].as_u64().unwrap_or(0);
        (n("busy"), n("timeout"))
    };
    assert!(
        wait_until(Duration::from_secs(5), || f.status().is_some_and(|st| {
            let (busy, timeout) = counted(&st);
            busy + timeout >= slow.len() as u64
        })),
        "{:?}",
        f.status()
    );
    let (busy, timeout) = counted(&f.status().expect("admin answers again"));
    assert!(
        busy >= 100 && timeout >= 1,
        "busy {busy}, timeout {timeout}"
    );
}
