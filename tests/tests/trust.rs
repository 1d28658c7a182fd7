//! What hostile peers can do to the choice of master and to the daemon, whatever the data path
//! (so these run once, not per mode): a lying minority of Sentinels, a push flood, a quorum
//! naming our own listener, trickled and oversized Sentinel replies, and an admin slowloris.
//! Honest Sentinels and servers are real processes; only the attackers are fakes.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use harness::hostile::{HostileSentinel, Lie};
use harness::{sentinel_service, wait_until, Conn, Forwarder, Redis, Sentinel};

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
            f.servers("mymaster").into_iter().collect::<HashSet<_>>() == expected
                && f.master("mymaster") == Some(master.addr())
        }),
        "servers {:?}, master {:?}\n{}",
        f.servers("mymaster").into_iter().collect::<HashSet<_>>(),
        f.master("mymaster"),
        f.log_text()
    );
    assert!(
        f.wait_for_log("Sentinel +switch-master", Duration::from_secs(10)),
        "the liar's pushes never arrived"
    );
    // Many query rounds later (each check round is also a Sentinel round)...
    let start = Instant::now();
    let before = f.checks_ok("mymaster", master.addr());
    assert!(wait_until(Duration::from_secs(20), || {
        seen_masters.insert(f.master("mymaster"));
        f.checks_ok("mymaster", master.addr()) >= before + 10
    }));
    // ...only the two real servers are checked, the real master is routed, and the flood of
    // pushes cost a line a second.
    assert_eq!(
        f.servers("mymaster").into_iter().collect::<HashSet<_>>(),
        expected
    );
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
    assert!(
        f.servers("mymaster")
            .into_iter()
            .collect::<HashSet<_>>()
            .is_empty(),
        "{:?}",
        f.servers("mymaster").into_iter().collect::<HashSet<_>>()
    );
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
