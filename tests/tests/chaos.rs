//! Chaos drill: network partitions, made with iptables DROP rules inside a private network
//! namespace, while a write loop runs through the forwarder. (`sch_netem` is not in this kernel;
//! DROP is what a partition looks like to TCP.)
//!
//! The test thread moves itself into a fresh network namespace, so every process it starts
//! (redis-server, Sentinels, the forwarder, iptables) runs there, on that namespace's own
//! loopback, and the rules vanish with it. The forwarder runs as `nobody`, so `-m owner` rules
//! cut exactly its sockets: first from the master (the Sentinels still see the master, so there
//! is no failover: the forwarder must stop routing, then resume), then from the Sentinels (it
//! must keep the last agreed master). No acknowledged write may be lost, and no write may reach
//! a replica.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use harness::{run, wait_until, Conn, Forwarder, Netns, Redis, Reply, Sentinel};

/// `iptables -A|-D OUTPUT` for the forwarder's (uid nobody) packets to `ports`.
fn cut(add: bool, ports: &[u16]) {
    for p in ports {
        let port = p.to_string();
        run(
            "iptables",
            &[
                if add { "-A" } else { "-D" },
                "OUTPUT",
                "-m",
                "owner",
                "--uid-owner",
                "nobody",
                "-p",
                "tcp",
                "--dport",
                &port,
                "-j",
                "DROP",
            ],
        );
    }
}

#[test]
fn partitions_from_the_master_and_the_sentinels_lose_no_acknowledged_write() {
    let ns = Netns::enter("chaos");
    let (master, replica) = Redis::pair();
    let sentinels: Vec<Sentinel> = (0..3)
        .map(|_| Sentinel::start("mymaster", master.addr(), 2, 1000))
        .collect();
    let addrs: Vec<_> = sentinels.iter().map(Sentinel::addr).collect();
    let f = Forwarder::start(&format!(
        "[process]\nuser = \"nobody\"\n\n{}",
        harness::sentinel_service(&[master.addr(), replica.addr()], &addrs, "10s")
    ));
    let routed = Mutex::new(HashSet::new());
    let sample = || {
        let m = f.master("mymaster");
        routed.lock().unwrap().insert(m);
        m
    };
    assert!(wait_until(Duration::from_secs(15), || sample() == Some(master.addr())));

    let stop = AtomicBool::new(false);
    let acked = Mutex::new(Vec::new());
    let (readonly, other) = (AtomicU64::new(0), Mutex::new(Vec::new()));
    let listen = f.listen[0];
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.join();
            let mut conn: Option<Conn> = None;
            // Bounded: at most 300,000 writes, and the drill stops it.
            for i in 0..300_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Some(c) = conn.as_mut() else {
                    conn = Conn::open(listen).ok();
                    if conn.is_none() {
                        // Pacing: the forwarder refused (partition, no master); retry 50 times
                        // a second.
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    continue;
                };
                match c.cmd(&["SET", &format!("k{i}"), "v"]) {
                    Ok(Reply::Simple(ok)) if ok == "OK" => acked.lock().unwrap().push(i),
                    Ok(Reply::Error(e)) if e.starts_with("READONLY") => {
                        readonly.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => other.lock().unwrap().push(format!("{r:?}")),
                    Err(_) => conn = None, // cut or refused: not acknowledged
                }
            }
        });
        let acks = || acked.lock().unwrap().len();
        let progress = |n: usize| {
            let goal = acks() + n;
            wait_until(Duration::from_secs(20), || {
                sample();
                acks() >= goal
            })
        };
        assert!(progress(200), "no writes through the forwarder");

        // 1. The forwarder loses the master (the Sentinels do not): no route, then back.
        cut(true, &[master.port]);
        assert!(
            wait_until(Duration::from_secs(15), || sample().is_none()),
            "still routed to an unreachable master: {:?}",
            f.service_status("mymaster")
        );
        cut(false, &[master.port]);
        assert!(
            wait_until(Duration::from_secs(15), || sample() == Some(master.addr())),
            "not routed again after the partition healed: {:?}",
            f.service_status("mymaster")
        );
        assert!(progress(200), "writes did not resume after the partition");

        // 2. The forwarder loses every Sentinel: it keeps the last agreed master.
        let ports: Vec<u16> = sentinels.iter().map(|s| s.port).collect();
        cut(true, &ports);
        assert!(
            wait_until(Duration::from_secs(15), || {
                sample();
                f.service_status("mymaster").is_some_and(|s| {
                    s["sentinel"]["reachable"] == 0 && s["sentinel"]["degraded"] == true
                })
            }),
            "the Sentinels never looked unreachable: {:?}",
            f.service_status("mymaster")
        );
        assert!(
            progress(200),
            "writes stopped while the Sentinels were away"
        );
        assert_eq!(sample(), Some(master.addr()));
        cut(false, &ports);
        assert!(wait_until(Duration::from_secs(15), || f
            .service_status("mymaster")
            .is_some_and(|s| s["sentinel"]["reachable"] == 3)));
        stop.store(true, Ordering::Relaxed);
    });

    assert_eq!(
        readonly.load(Ordering::Relaxed),
        0,
        "writes reached a replica"
    );
    assert!(
        other.lock().unwrap().is_empty(),
        "{:?}",
        other.lock().unwrap()
    );
    let routed = routed.into_inner().unwrap();
    assert!(
        !routed.contains(&Some(replica.addr())),
        "routed to the replica: {routed:?}"
    );
    // Every acknowledged write is on the master.
    let acked = acked.into_inner().unwrap();
    let mut c = Conn::open(master.addr()).unwrap();
    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|i| c.cmd(&["EXISTS", &format!("k{i}")]).ok() != Some(Reply::Integer(1)))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
}
