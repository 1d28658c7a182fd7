//! A check that cannot run because this process is out of descriptors says nothing about the
//! server: it is counted as unknown and leaves the server's state and the master as they were.
//! (Its own test binary: it exhausts this process's descriptor table.)

use std::time::Duration;

use health::{Monitor, Program, Schedule, ServerState};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

#[tokio::test(flavor = "current_thread")]
async fn running_out_of_descriptors_is_not_a_server_failure() {
    let redis = harness::Redis::start();
    let schedule = Schedule {
        interval: Duration::from_millis(100),
        fastinter: None,
        downinter: None,
        rise: 1,
        fall: 1,
        timeout: Duration::from_millis(500),
    };
    let m = Monitor::spawn(
        "t".into(),
        vec![redis.addr()],
        Program::redis_master(None),
        schedule,
        None,
        Default::default(),
    );
    assert!(wait(|| m.view().master == Some(redis.addr())).await);
    let generation = m.view().generation;

    // Fill the descriptor table under a lowered soft limit.
    let old = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(256),
            maximum: old.maximum,
        },
    )
    .expect("lower the soft limit");
    let mut hog = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hog.push(f);
        assert!(hog.len() < 10_000, "the limit did not apply");
    }
    let unknown = m.servers()[0].checks_unknown;
    assert!(
        wait(|| m.servers()[0].checks_unknown >= unknown + 5).await,
        "no check ran into the limit: {:?}",
        m.servers()
    );
    let s = &m.servers()[0];
    assert_eq!(s.state, ServerState::Up, "{s:?}");
    assert_eq!(m.view().master, Some(redis.addr()));
    assert_eq!(m.view().generation, generation, "the master was dropped");

    drop(hog);
    setrlimit(Resource::Nofile, old).expect("restore the limit");
    let ok = m.servers()[0].checks_ok;
    assert!(wait(|| m.servers()[0].checks_ok >= ok + 2).await);
}

/// Polls `f` every 25 ms for up to 5 s.
async fn wait(f: impl Fn() -> bool) -> bool {
    for _ in 0..200 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}
