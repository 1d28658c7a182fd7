//! Drills with real Sentinels for what an operator does on purpose: a planned switchover under
//! a write loop, an operator's `maint` against what the Sentinels say, and two forwarders in
//! front of the same Sentinels agreeing on the master and on being ready.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::{sentinel_service, wait_until, Conn, Forwarder, Redis, Reply, Sentinel};

/// A master, its replica and three Sentinels (quorum 2) that know each other.
fn lab(down_after_ms: u32) -> (Redis, Redis, Vec<Sentinel>) {
    let (master, replica) = Redis::pair();
    let sentinels: Vec<Sentinel> = (0..3)
        .map(|_| Sentinel::start("mymaster", master.addr(), 2, down_after_ms))
        .collect();
    for s in &sentinels {
        assert!(
            wait_until(Duration::from_secs(20), || s.ready("mymaster")),
            "Sentinel {} did not discover its peers",
            s.addr()
        );
    }
    (master, replica, sentinels)
}

fn forwarder(servers: &[SocketAddr], sentinels: &[Sentinel], routed: SocketAddr) -> Forwarder {
    let addrs: Vec<SocketAddr> = sentinels.iter().map(Sentinel::addr).collect();
    let f = Forwarder::start(&sentinel_service(servers, &addrs, "15s"));
    assert!(
        wait_until(Duration::from_secs(10), || f.master("mymaster")
            == Some(routed)),
        "never routed to {routed}: {:?}\n{}",
        f.status(),
        f.log_text()
    );
    f
}

/// What the writers saw.
#[derive(Default)]
struct Writes {
    acked: Mutex<Vec<String>>,
    readonly: AtomicU64,
    failed: AtomicU64,
}

/// Writes `SET <tag>-<i> <i>`, each on a new connection, until `stop`.
fn writer(to: SocketAddr, tag: usize, stop: Arc<AtomicBool>, w: Arc<Writes>) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let key = format!("w{tag}-{i}");
        let reply = Conn::open(to).and_then(|mut c| {
            c.stream().set_read_timeout(Some(Duration::from_secs(20)))?;
            c.cmd(&["SET", &key, &i.to_string()])
        });
        match reply {
            Ok(Reply::Simple(ok)) if ok == "OK" => w.acked.lock().unwrap().push(key),
            Ok(Reply::Error(e)) if e.starts_with("READONLY") => {
                w.readonly.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                w.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Pacing: about 200 writes a second per writer.
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `during` under two writers, and checks what a switchover must guarantee: no write
/// reached a replica, at most the write in flight on each writer's connection when the hold
/// began failed (new connections wait instead), and `final_master` has every acknowledged write.
fn under_writes(f: &Forwarder, final_master: &Redis, during: impl FnOnce()) {
    let stop = Arc::new(AtomicBool::new(false));
    let w = Arc::new(Writes::default());
    let threads: Vec<_> = (0..2)
        .map(|tag| {
            let (to, stop, w) = (f.listen[0], Arc::clone(&stop), Arc::clone(&w));
            std::thread::spawn(move || writer(to, tag, stop, w))
        })
        .collect();
    let acks = || w.acked.lock().unwrap().len();
    assert!(wait_until(Duration::from_secs(10), || acks() >= 50));
    during();
    let after = acks();
    assert!(
        wait_until(Duration::from_secs(10), || acks() >= after + 50),
        "writes did not resume"
    );
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        w.readonly.load(Ordering::Relaxed),
        0,
        "a write reached a replica"
    );
    let failed = w.failed.load(Ordering::Relaxed);
    assert!(
        failed <= 2,
        "{failed} writes failed: new connections must wait, not fail"
    );
    final_master.assert_holds(&w.acked.lock().unwrap());
}

#[test]
fn a_planned_switchover_under_writes_loses_no_write_and_fails_no_new_client() {
    let (master, replica, sentinels) = lab(5000);
    let f = forwarder(&[master.addr(), replica.addr()], &sentinels, master.addr());
    assert_eq!(f.post("/services/nope/switchover", "").0, 404);
    // Not onto a replica the operator took out: it could end with a master not routed to.
    let state = format!("/servers/mymaster/{}/state", replica.addr());
    assert_eq!(f.post(&state, "maint").0, 200);
    let (code, body) = f.post("/services/mymaster/switchover", "");
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("set it ready first"), "{body}");
    assert_eq!(f.post(&state, "ready").0, 200);
    assert_eq!(f.master("mymaster"), Some(master.addr()), "nothing changed");

    under_writes(&f, &replica, || {
        let (code, body) = f.post("/services/mymaster/switchover", "");
        assert_eq!(code, 200, "{body}\n{}", f.log_text());
        assert!(
            body.contains(&format!(
                "switched over from {} to {}",
                master.addr(),
                replica.addr()
            )),
            "{body}"
        );
        assert_eq!(f.master("mymaster"), Some(replica.addr()));
    });
    // And back, once the Sentinels have made the old master a replica of the new one.
    assert!(
        wait_until(Duration::from_secs(20), || master
            .info_field("replication", "master_link_status")
            .as_deref()
            == Some("up")),
        "the old master never followed the new one"
    );
    under_writes(&f, &master, || {
        let (code, body) = f.post("/services/mymaster/switchover", "");
        assert_eq!(code, 200, "{body}\n{}", f.log_text());
        assert_eq!(f.master("mymaster"), Some(master.addr()));
    });
    let st = f.service_status("mymaster").unwrap();
    assert_eq!(st["stats"]["switchovers"], 2, "{st:#}");
    assert_eq!(
        st["master_conflicts"], 0,
        "a planned switchover is no conflict: {st:#}"
    );
    assert_eq!(f.get("/ready").0, 200);
}

#[test]
fn an_operators_maint_wins_over_the_sentinels() {
    let (master, replica, sentinels) = lab(5000);
    let f = forwarder(&[master.addr(), replica.addr()], &sentinels, master.addr());
    let (code, body) = f.post(
        &format!("/servers/mymaster/{}/state", master.addr()),
        "maint",
    );
    assert_eq!(code, 200, "{body}");
    assert!(wait_until(Duration::from_secs(5), || f
        .master("mymaster")
        .is_none()));
    let st = f.service_status("mymaster").unwrap();
    assert!(
        st["note"]
            .as_str()
            .is_some_and(|n| n.contains("an operator put in maint")),
        "{st:#}"
    );
    let (code, body) = f.get("/ready");
    assert_eq!(code, 503);
    assert!(body.contains("operator put in maint"), "{body}");
    // A switchover needs a master to switch from.
    assert_eq!(f.post("/services/mymaster/switchover", "").0, 409);
    assert_eq!(
        f.post(
            &format!("/servers/mymaster/{}/state", master.addr()),
            "ready"
        )
        .0,
        200
    );
    assert!(wait_until(Duration::from_secs(5), || f.master("mymaster")
        == Some(master.addr())));
}

#[test]
fn two_forwarders_agree_on_the_master_and_go_unready_and_ready_together() {
    let (mut master, replica, sentinels) = lab(1000);
    let servers = [master.addr(), replica.addr()];
    let fs = [
        forwarder(&servers, &sentinels, master.addr()),
        forwarder(&servers, &sentinels, master.addr()),
    ];
    let sample = || -> Vec<(u16, Option<SocketAddr>)> {
        fs.iter()
            .map(|f| (f.get("/ready").0, f.master("mymaster")))
            .collect()
    };
    assert_eq!(
        sample(),
        vec![(200, Some(master.addr())), (200, Some(master.addr()))]
    );
    master.proc().kill();
    let mut seen = Vec::new();
    let settled = wait_until(Duration::from_secs(30), || {
        let s = sample();
        seen.push(s.clone());
        s.iter().all(|x| *x == (200, Some(replica.addr())))
    });
    assert!(settled, "the forwarders did not settle: {seen:?}");
    for s in &seen {
        if let [(_, Some(a)), (_, Some(b))] = s.as_slice() {
            assert_eq!(a, b, "the forwarders disagreed on the master: {seen:?}");
        }
    }
    for i in 0..2 {
        assert!(
            seen.iter().any(|s| s[i].0 == 503),
            "forwarder {i} never said it was not ready while there was no master: {seen:?}"
        );
    }
    for f in &fs {
        assert_eq!(f.get("/live").0, 200);
    }
}

#[test]
fn a_switchover_pauses_the_masters_other_clients_so_none_of_their_writes_is_lost() {
    let (master, replica, sentinels) = lab(5000);
    let f = forwarder(&[master.addr(), replica.addr()], &sentinels, master.addr());
    // A client of the master that does not come through this forwarder.
    let stop = Arc::new(AtomicBool::new(false));
    let w = Arc::new(Writes::default());
    let direct = {
        let (to, stop, w) = (master.addr(), Arc::clone(&stop), Arc::clone(&w));
        std::thread::spawn(move || writer(to, 9, stop, w))
    };
    let acks = || w.acked.lock().unwrap().len();
    assert!(wait_until(Duration::from_secs(10), || acks() >= 50));
    let (code, body) = f.post("/services/mymaster/switchover", "");
    assert_eq!(code, 200, "{body}\n{}", f.log_text());
    assert!(
        body.contains("writes of its other clients paused"),
        "{body}"
    );
    // Until the Sentinels demote the old master, its direct writes wait; demoted, it refuses
    // them (READONLY) or closes the paused ones: none is acknowledged there and then wiped by
    // the resync. (Redis closes connections while it is demoted: a failed look is no answer.)
    let following = || {
        Conn::open(master.addr())
            .and_then(|mut c| c.cmd(&["INFO", "replication"]))
            .is_ok_and(|r| {
                matches!(r, Reply::Bulk(Some(b))
                    if String::from_utf8_lossy(&b).contains("master_link_status:up"))
            })
    };
    assert!(
        wait_until(Duration::from_secs(30), following),
        "the old master never followed the new one"
    );
    let refused = || w.readonly.load(Ordering::Relaxed) + w.failed.load(Ordering::Relaxed);
    assert!(
        wait_until(Duration::from_secs(25), || refused() > 0),
        "the demoted master never refused a direct write"
    );
    stop.store(true, Ordering::Relaxed);
    direct.join().unwrap();
    replica.assert_holds(&w.acked.lock().unwrap());
}
