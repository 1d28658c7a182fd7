//! The two drills: kill -9 of the master, and a planned switchover.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use harness::{wait_until, Conn, Redis, Reply};

use super::{lost, outage, role, Attempt, Lab, Proxy, Target, Writer};

/// One kill -9 drill.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Kill {
    /// From the kill to the first `+switch-master` a Sentinel published.
    pub sentinel: Duration,
    pub outage: Duration,
    pub failed: u64,
    pub acked: u64,
    pub lost_before_kill: u64,
    pub lost_after_kill: u64,
}

/// One planned switchover drill; every count is from the moment it began.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Switch {
    pub outage: Duration,
    /// When the Sentinels named the new master (the first `+switch-master`).
    pub named: Duration,
    /// When the old master said role:slave.
    pub demoted: Duration,
    pub failed: u64,
    /// Failed attempts on connections opened after it began: could not connect, or the first
    /// write failed.
    pub new_conn_errors: u64,
    /// The other failed attempts (connections opened before, or after their first write).
    pub established_errors: u64,
    /// The forwarder's answer: how long it held new clients.
    pub paused: Option<Duration>,
    /// Acknowledged writes, the whole drill.
    pub acked: u64,
    /// Acknowledged writes missing on the final master, the whole drill.
    pub lost: u64,
}

pub(super) fn kill(target: Target) -> anyhow::Result<Kill> {
    let mut lab = Lab::start(target)?;
    let writer = Writer::start(lab.listen());
    let switched = switch_master(&lab)?;
    std::thread::sleep(Duration::from_secs(1));
    let old_port = lab.master.port;
    lab.master.proc().kill();
    let killed = Instant::now();
    // Resumed: a write acknowledged after the Sentinels switched. (Not merely after the kill: a
    // reply the dead master sent just before it can be read, and timed, after `killed`, and the
    // old master would then come back before the Sentinels saw it down: no failover at all.)
    let decided = wait_until(Duration::from_secs(30), || {
        switched.lock().unwrap().is_some()
    });
    let resumed = decided
        && writer.acked_after(
            switched.lock().unwrap().unwrap_or(killed),
            Duration::from_secs(30),
        );
    // The old master returns, empty and saying role:master, until Sentinel demotes it.
    let _old = Redis::start_on(old_port, &[]);
    std::thread::sleep(Duration::from_secs(5));
    let attempts = writer.finish()?;
    anyhow::ensure!(resumed, "writes never resumed after the kill");

    let (lost_before_kill, lost_after_kill) = lost(&attempts, lab.final_master()?, killed)?;
    let sentinel = switched
        .lock()
        .unwrap()
        .map_or(Duration::ZERO, |t| t.saturating_duration_since(killed));
    Ok(Kill {
        sentinel,
        outage: outage(&attempts, killed),
        failed: attempts.iter().filter(|a| !a.acked).count() as u64,
        acked: attempts.iter().filter(|a| a.acked).count() as u64,
        lost_before_kill,
        lost_after_kill,
    })
}

/// When the Sentinels decide: the first `+switch-master` on one of them, once it comes.
fn switch_master(lab: &Lab) -> anyhow::Result<Arc<Mutex<Option<Instant>>>> {
    let switched = Arc::new(Mutex::new(None::<Instant>));
    let mut sub = Conn::open(lab.sentinels[0].addr())?;
    sub.stream()
        .set_read_timeout(Some(Duration::from_secs(60)))?;
    sub.cmd(&["SUBSCRIBE", "+switch-master"])?;
    let at = Arc::clone(&switched);
    std::thread::spawn(move || {
        if sub.read_reply().is_ok() {
            *at.lock().unwrap() = Some(Instant::now());
        }
    });
    Ok(switched)
}

pub(super) fn switchover(target: Target) -> anyhow::Result<Switch> {
    let lab = Lab::start(target)?;
    let writer = Writer::start(lab.listen());
    let switched = switch_master(&lab)?;
    std::thread::sleep(Duration::from_secs(1));
    let began = Instant::now();
    let paused = match &lab.proxy {
        Proxy::Forwarder(f) => {
            let path = "/services/mymaster/switchover";
            let (code, answer) = harness::endpoints::admin_call(f.admin, "POST", path, "", None)
                .with_context(|| format!("POST {path}"))?;
            anyhow::ensure!(
                code == 200,
                "POST {path}: {code} {answer}\nforwarder log:\n{}",
                f.log_text()
            );
            Some(held(&answer).with_context(|| format!("POST {path} answered {answer:?}"))?)
        }
        // The operator's procedure today: ask one Sentinel, HAProxy follows through its checks.
        Proxy::Haproxy { .. } => {
            let answer = lab.sentinels[0].cmd(&["SENTINEL", "FAILOVER", "mymaster"]);
            anyhow::ensure!(
                answer == Some(Reply::Simple("OK".into())),
                "SENTINEL FAILOVER answered {answer:?}"
            );
            None
        }
    };
    // Done when the Sentinels name the replica, writes go on, and the old master is demoted (a
    // Sentinel leaves a server that still says role:master alone for 8 s after the switch:
    // until then it takes any write sent to it).
    let named = wait_until(Duration::from_secs(30), || {
        lab.sentinels[0].master_addr("mymaster") == Some(lab.replica.addr())
    });
    let resumed = named && writer.acked_after(Instant::now(), Duration::from_secs(30));
    let demoted = wait_until(Duration::from_secs(30), || {
        role(lab.master.addr()).as_deref() == Some("slave")
    });
    let demoted_at = began.elapsed();
    // Long enough for HAProxy's checks to take the demoted master out (fall 3 x 1 s) and the new
    // one in (rise 2).
    std::thread::sleep(Duration::from_secs(5));
    let attempts = writer.finish()?;
    anyhow::ensure!(named, "the Sentinels never named the replica");
    anyhow::ensure!(resumed, "writes never resumed after the switchover");
    anyhow::ensure!(demoted, "the old master was never demoted");

    let (before, after) = lost(&attempts, lab.final_master()?, began)?;
    let mut d = Switch {
        outage: outage(&attempts, began),
        named: switched
            .lock()
            .unwrap()
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(began)),
        demoted: demoted_at,
        paused,
        acked: attempts.iter().filter(|a| a.acked).count() as u64,
        lost: before + after,
        ..Switch::default()
    };
    for a in attempts.iter().filter(|a| !a.acked && a.at >= began) {
        d.failed += 1;
        if is_new_conn_error(a, began) {
            d.new_conn_errors += 1;
        } else {
            d.established_errors += 1;
        }
    }
    Ok(d)
}

/// A failed attempt on a connection opened from `began` on: it could not connect, or its first
/// write failed.
fn is_new_conn_error(a: &Attempt, began: Instant) -> bool {
    match a.opened {
        None => true,
        Some(opened) => a.first && opened >= began,
    }
}

/// The pause in the forwarder's answer, "... (new clients held 1834 ms; ...)".
fn held(answer: &str) -> Option<Duration> {
    let rest = &answer[answer.find("new clients held ")? + "new clients held ".len()..];
    let ms = rest[..rest.find(" ms")?].parse().ok()?;
    Some(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_pause_from_the_answer() {
        let answer = "service mymaster: switched over from 127.0.0.1:1 to 127.0.0.1:2 \
                      (new clients held 1834 ms; failover by Sentinel 127.0.0.1:3)";
        assert_eq!(held(answer), Some(Duration::from_millis(1834)));
        assert_eq!(held("service mymaster: no master"), None);
    }

    #[test]
    fn new_connection_errors_are_those_opened_after_it_began() {
        let began = Instant::now();
        let before = began - Duration::from_millis(5);
        let after = began + Duration::from_millis(5);
        let a = |opened, first| Attempt {
            at: after,
            key: 1,
            acked: false,
            opened,
            first,
        };
        assert!(
            is_new_conn_error(&a(None, true), began),
            "could not connect"
        );
        assert!(is_new_conn_error(&a(Some(after), true), began));
        assert!(!is_new_conn_error(&a(Some(after), false), began));
        assert!(!is_new_conn_error(&a(Some(before), true), began));
    }
}
