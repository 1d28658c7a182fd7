//! A planned switchover: the master of a Sentinel-managed service handed to a replica without
//! losing an acknowledged write and without an error for a new client.
//!
//! The steps, in order, each bounded in time:
//! 1. **Hold** ([`Monitor::switchover`]): new clients wait as in a failover, and the sessions
//!    to the master are cut, so that from now on no write reaches it through the forwarder.
//! 2. **Pause the others**: `CLIENT PAUSE <ms> WRITE` on the master, so that its clients that
//!    do not come through this forwarder (direct, another forwarder) have no write
//!    acknowledged from now on either. Ended at once when the switchover is given up; when it
//!    succeeds, the old master is first made a replica of the new one (`REPLICAOF`, as Redis's
//!    own `FAILOVER` does), so its paused writes then fail with `READONLY`. Refused (an ACL
//!    without `@admin`), the switchover goes on and its answer says so.
//! 3. **Catch up**: the master's replication offset is read once (`INFO replication`), then
//!    every online replica's own offset until each has reached it. The replica the Sentinels
//!    promote then has every write the master acknowledged. Should they not catch up in
//!    [`Limits::catch_up`], the switchover is given up and the master takes clients again:
//!    nothing was lost, nothing changed.
//! 4. **Failover**: `SENTINEL FAILOVER <master_name>` to each Sentinel in turn until one accepts
//!    (`-INPROG`, a failover already running, counts as accepted).
//! 5. **Wait** for the decider to route to another master (named by a quorum, passing its own
//!    check): the hold ends by itself then. Past [`Limits::failover`] the switchover is reported
//!    failed and the hold given up: the decider routes wherever the quorum and the checks say
//!    (never back to a demoted master).
//!
//! Before the hold, a switchover is refused while any other server is in `drain` or `maint`:
//! the Sentinels might promote it, and it takes no sessions, leaving the service without a
//! routed master.
//!
//! Other forwarders in front of the same Sentinels follow the failover as any other: their
//! clients' writes wait (paused) and then fail with `READONLY` on the demoted master, never
//! acknowledged, until they follow the Sentinels to the new one.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::decider::MasterView;
use crate::info::{self, Role};
use crate::monitor::Monitor;
use crate::resp::Reply;
use crate::sentinel::{Conn, SentinelError};
use crate::tcpcheck::Auth;
use crate::tls::Connector;

/// How long each step may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// For the replicas to reach the master's offset.
    pub catch_up: Duration,
    /// For the Sentinels to promote a replica and the checks to confirm it; the switchover
    /// as a whole ends within `catch_up + failover` (plus the requests under way then).
    pub failover: Duration,
    /// Per request to a server or a Sentinel (connect included).
    pub request: Duration,
}

/// A switchover that was done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The master before.
    pub from: SocketAddr,
    /// The master after.
    pub to: SocketAddr,
    /// From the hold to the new master's route: how long new clients waited at most.
    pub paused: Duration,
    /// The Sentinel that accepted the failover.
    pub sentinel: SocketAddr,
    /// Why writes from the master's other clients (not through this forwarder) could not be
    /// paused (`CLIENT PAUSE ... WRITE` refused: an ACL without `@admin`, Redis before 6.2);
    /// `None` when they were.
    pub others_not_paused: Option<String>,
}

/// Why a switchover was not done; the text is the admin API's answer.
#[derive(Debug, thiserror::Error)]
pub enum SwitchoverError {
    /// The service has no `[service.sentinel]`.
    #[error("the service has no Sentinels: a switchover needs them")]
    NoSentinel,
    /// Nothing to switch from.
    #[error("the service has no master now")]
    NoMaster,
    /// One runs already, or the master is held for another reason.
    #[error("a switchover is already running")]
    Running,
    /// A server the Sentinels could promote takes no sessions: the switchover could end with
    /// a master that is not routed to.
    #[error(
        "server {0} is in {1} and the Sentinels could promote it; set it ready first \
         (nothing changed)"
    )]
    NotReady(SocketAddr, &'static str),
    /// The master could not be read, or said it is not a master.
    #[error("master {0}: {1}; switchover given up, nothing changed")]
    Master(SocketAddr, String),
    /// No replica to hand over to.
    #[error("master {0} has no online replica; switchover given up, nothing changed")]
    NoReplica(SocketAddr),
    /// The replicas did not reach the master's offset in time.
    #[error(
        "replicas did not catch up with master {master} (offset {offset}) within {within:?}: \
         {behind}; switchover given up, nothing changed"
    )]
    Behind {
        /// The master.
        master: SocketAddr,
        /// Its replication offset when the hold began.
        offset: i64,
        /// Which replicas were behind, and by how much.
        behind: String,
        /// [`Limits::catch_up`].
        within: Duration,
    },
    /// No Sentinel accepted the failover.
    #[error("no Sentinel accepted SENTINEL FAILOVER: {0}; switchover given up, nothing changed")]
    Refused(String),
    /// The failover was accepted but no new master was confirmed in time.
    #[error(
        "the Sentinels accepted the failover but no new master was confirmed within {0:?}; \
         clients are routed as the Sentinels and the checks say"
    )]
    Timeout(Duration),
}

/// Runs a switchover of `monitor`'s service; `auth` and `tls` are for the Redis servers (the
/// check's).
/// `enacted` is awaited once the hold is set, with the view that holds, and returns when
/// whoever routes by the view has acted on it (new clients held, the master's sessions cut):
/// only then is the master's offset read.
pub async fn run<F: Future<Output = ()>>(
    monitor: &Monitor,
    auth: Option<&Auth>,
    tls: Option<&Connector>,
    limits: Limits,
    enacted: impl FnOnce(MasterView) -> F,
) -> Result<Report, SwitchoverError> {
    let cfg = monitor
        .sentinel_config()
        .ok_or(SwitchoverError::NoSentinel)?;
    let from = monitor.view().master.ok_or(SwitchoverError::NoMaster)?;
    if let Some(s) = monitor
        .servers()
        .into_iter()
        .find(|s| s.addr != from && s.admin != crate::AdminState::Ready)
    {
        return Err(SwitchoverError::NotReady(s.addr, s.admin.as_str()));
    }
    let started = Instant::now();
    if !monitor.switchover(true) {
        return Err(match monitor.view().master {
            None => SwitchoverError::NoMaster,
            Some(_) => SwitchoverError::Running,
        });
    }
    // Given up on every way out but success, a dropped future included (the admin connection
    // closed or timed out): a hold nobody ends would keep new clients waiting for good.
    let mut hold = Held {
        monitor,
        armed: true,
    };
    enacted(monitor.view()).await;
    // One deadline for the whole: time the requests took before is not waited again.
    let deadline = started + limits.catch_up + limits.failover;
    // The master's other clients (direct, or through another forwarder) are not held by us:
    // their writes are paused on the master itself until it is demoted (or the deadline),
    // so that none is acknowledged after its offset is read and lost with the failover.
    let pause = deadline.saturating_duration_since(Instant::now());
    let others_not_paused = pause_writes(from, auth, tls, limits.request, pause)
        .await
        .err();
    if let Some(why) = &others_not_paused {
        tracing::warn!(master = %from, error = %why,
            "switchover: writes from the master's other clients are not paused");
    }
    let accepted = match catch_up(from, auth, tls, limits).await {
        Ok(()) => failover(&cfg, limits.request).await,
        Err(e) => Err(e),
    };
    let sentinel = match accepted {
        Ok(s) => s,
        Err(e) => {
            // Given up, nothing changed: the master takes writes again.
            if others_not_paused.is_none() {
                let _ = command(from, auth, tls, limits.request, &[b"CLIENT", b"UNPAUSE"]).await;
            }
            return Err(e);
        }
    };
    let mut views = monitor.subscribe();
    let moved = tokio::time::timeout_at(
        deadline.into(),
        views.wait_for(|v| v.master.is_some_and(|m| m != from) && v.hold.is_none()),
    )
    .await
    .ok()
    .and_then(|v| v.ok().and_then(|v| v.master));
    let Some(to) = moved else {
        return Err(SwitchoverError::Timeout(limits.failover));
    };
    hold.armed = false; // ended by itself: the next master routes
    let paused = started.elapsed();
    if others_not_paused.is_none() {
        demote(from, to, auth, tls, limits.request).await;
    }
    Ok(Report {
        from,
        to,
        paused,
        sentinel,
        others_not_paused,
    })
}

/// The hold of a running switchover: given up when dropped armed.
struct Held<'a> {
    monitor: &'a Monitor,
    armed: bool,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.monitor.switchover(false);
        }
    }
}

/// Waits until every online replica of `master` has reached the master's offset now.
async fn catch_up(
    master: SocketAddr,
    auth: Option<&Auth>,
    tls: Option<&Connector>,
    limits: Limits,
) -> Result<(), SwitchoverError> {
    let bad = |e: String| SwitchoverError::Master(master, e);
    let repl = replication(master, auth, tls, limits.request)
        .await
        .map_err(bad)?;
    if repl.role != Role::Master {
        return Err(bad(format!("says role:{}", repl.role.as_str())));
    }
    let offset = repl
        .master_repl_offset
        .ok_or_else(|| bad("no master_repl_offset in INFO replication".into()))?;
    let replicas: Vec<SocketAddr> = repl
        .slaves
        .iter()
        .filter(|s| s.state == "online")
        .filter_map(|s| Some(SocketAddr::new(s.ip.parse().ok()?, s.port)))
        .collect();
    if replicas.is_empty() {
        return Err(SwitchoverError::NoReplica(master));
    }
    let deadline = Instant::now() + limits.catch_up;
    loop {
        let mut behind = Vec::new();
        for r in &replicas {
            match replication(*r, auth, tls, limits.request).await {
                Ok(info) => match info.master_repl_offset {
                    Some(o) if o >= offset => {}
                    Some(o) => behind.push(format!("{r} at {o}")),
                    None => behind.push(format!("{r}: no offset")),
                },
                Err(e) => behind.push(format!("{r}: {e}")),
            }
        }
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(SwitchoverError::Behind {
                master,
                offset,
                behind: behind.join(", "),
                within: limits.catch_up,
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `INFO replication` of one server.
async fn replication(
    addr: SocketAddr,
    auth: Option<&Auth>,
    tls: Option<&Connector>,
    timeout: Duration,
) -> Result<info::Replication, String> {
    match command(addr, auth, tls, timeout, &[b"INFO", b"replication"]).await? {
        Reply::Bulk(Some(text)) => {
            info::parse_replication(&String::from_utf8_lossy(&text)).map_err(|e| e.to_string())
        }
        Reply::Error(e) => Err(e),
        _ => Err("INFO replication: not a bulk string".into()),
    }
}

/// One command to one server; its reply, or why there is none.
async fn command(
    addr: SocketAddr,
    auth: Option<&Auth>,
    tls: Option<&Connector>,
    timeout: Duration,
    args: &[&[u8]],
) -> Result<Reply, String> {
    let mut c = Conn::open(addr, timeout, auth, tls)
        .await
        .map_err(|e| e.to_string())?;
    c.call(args).await.map_err(|e| e.to_string())
}

/// `CLIENT PAUSE <ms> WRITE` on `master`: its clients' writes wait (read-only commands go on)
/// for `pause`, or until `CLIENT UNPAUSE`.
async fn pause_writes(
    master: SocketAddr,
    auth: Option<&Auth>,
    tls: Option<&Connector>,
    timeout: Duration,
    pause: Duration,
) -> Result<(), String> {
    let ms = pause.as_millis().max(1).to_string();
    match command(
        master,
        auth,
        tls,
        timeout,
        &[b"CLIENT", b"PAUSE", ms.as_bytes(), b"WRITE"],
    )
    .await?
    {
        Reply::Simple(ok) if ok == "OK" => Ok(()),
        Reply::Error(e) => Err(format!("CLIENT PAUSE: -{e}")),
        _ => Err("CLIENT PAUSE: unexpected reply".into()),
    }
}

/// Makes the paused old master a replica of `to`, then ends its pause: the writes it held
/// then fail with `READONLY`, never acknowledged. (Sentinel would demote it too, but its own
/// connection to the old master waits behind its paused `PUBLISH` of hellos.) Should the
/// demotion fail, the pause is left to end by itself.
async fn demote(
    old: SocketAddr,
    to: SocketAddr,
    auth: Option<&Auth>,
    tls: Option<&Connector>,
    timeout: Duration,
) {
    let (ip, port) = (to.ip().to_string(), to.port().to_string());
    let args: [&[u8]; 3] = [b"REPLICAOF", ip.as_bytes(), port.as_bytes()];
    match command(old, auth, tls, timeout, &args).await {
        Ok(Reply::Simple(ok)) if ok == "OK" => {
            let _ = command(old, auth, tls, timeout, &[b"CLIENT", b"UNPAUSE"]).await;
            tracing::info!(master = %old, new = %to,
                "switchover: the old master is a replica of the new one; its writes resume there");
        }
        other => tracing::warn!(master = %old, new = %to, answer = ?other,
            "switchover: the old master could not be made a replica; its pause ends by itself"),
    }
}

/// Asks each Sentinel in turn for a failover until one accepts; returns which.
async fn failover(
    cfg: &crate::sentinel::SentinelConfig,
    timeout: Duration,
) -> Result<SocketAddr, SwitchoverError> {
    let mut why = Vec::new();
    for s in &cfg.addresses {
        let answer: Result<Reply, SentinelError> = async {
            let mut c = Conn::open(*s, timeout, cfg.auth.as_ref(), cfg.tls.as_ref()).await?;
            c.call(&[b"SENTINEL", b"FAILOVER", cfg.master_name.as_bytes()])
                .await
        }
        .await;
        match answer {
            Ok(Reply::Simple(ok)) if ok == "OK" => return Ok(*s),
            Ok(Reply::Error(e)) if e.starts_with("INPROG") => return Ok(*s),
            Ok(Reply::Error(e)) => why.push(format!("{s}: {e}")),
            Ok(_) => why.push(format!("{s}: unexpected reply")),
            Err(e) => why.push(format!("{s}: {e}")),
        }
    }
    Err(SwitchoverError::Refused(why.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Schedule;
    use crate::sentinel::SentinelConfig;
    use crate::tcpcheck::Program;
    use harness::hostile::{HostileSentinel, Lie};
    use harness::Redis;
    use std::collections::HashMap;

    #[tokio::test]
    async fn a_switchover_dropped_midway_gives_its_hold_up() {
        let master = Redis::start();
        let replica = Redis::start_with(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
        // Names the master and accepts SENTINEL FAILOVER, but never fails over.
        let sentinel = HostileSentinel::start(Lie::Names(master.addr()));
        let m = Monitor::spawn(
            "test".into(),
            vec![master.addr(), replica.addr()],
            Program::redis_master(None),
            Schedule {
                interval: Duration::from_millis(100),
                fastinter: None,
                downinter: None,
                rise: 1,
                fall: 1,
                timeout: Duration::from_millis(500),
            },
            Some(SentinelConfig {
                addresses: vec![sentinel.addr],
                master_name: "mymaster".into(),
                quorum: 1,
                auth: None,
                tls: None,
                timeout: Duration::from_millis(500),
                max_servers: 8,
                interval: Duration::from_millis(100),
                own: Vec::new(),
            }),
            HashMap::new(),
        );
        let mut ready = false;
        for _ in 0..100 {
            let online = master
                .info_field("replication", "slave0")
                .is_some_and(|s| s.contains("online"));
            if m.view().master == Some(master.addr()) && online {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ready, "no master with an online replica: {:?}", m.view());
        let limits = Limits {
            catch_up: Duration::from_secs(3),
            failover: Duration::from_secs(20),
            request: Duration::from_millis(500),
        };
        // The admin connection's limit (or a client that goes away) drops the future while it
        // waits for the new master.
        let cut = tokio::time::timeout(
            Duration::from_secs(2),
            run(&m, None, None, limits, |_| async {}),
        )
        .await;
        assert!(cut.is_err(), "the switchover ended: {cut:?}");
        assert_eq!(m.view().master, Some(master.addr()));
        assert_eq!(m.view().hold, None, "the master is held for good");
        // And the next switchover is not refused as already running.
        assert!(m.switchover(true), "a second switchover is refused");
        m.switchover(false);

        // A replica in maint could be promoted, and would never be routed: refused.
        assert_eq!(
            m.set_admin(replica.addr(), crate::AdminState::Maint),
            Some(crate::AdminState::Ready)
        );
        let done = tokio::time::timeout(
            Duration::from_secs(5),
            run(&m, None, None, limits, |_| async {}),
        )
        .await;
        assert!(
            matches!(done, Ok(Err(SwitchoverError::NotReady(r, "maint"))) if r == replica.addr()),
            "{done:?}"
        );
        assert_eq!(m.view().hold, None);
        assert_eq!(m.view().master, Some(master.addr()));
    }
}
