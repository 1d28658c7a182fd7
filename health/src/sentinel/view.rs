//! What a quorum of Sentinels says: each Sentinel's last answer, and the rule that turns them
//! into one [`SentinelView`] (a master only when `quorum` reachable Sentinels name it; otherwise
//! the last agreed one, degraded) and into the list of servers a quorum reports.
//!
//! No sockets here: `client` feeds answers in, and the rule is tested on its own, including the race
//! between a query answer and a newer `+switch-master` push.

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

use super::SentinelConfig;
use crate::plain::OrNone;
use crate::ratelimit::RateLimit;

/// What the Sentinels agree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentinelView {
    /// The last master a quorum agreed on (kept while degraded).
    pub master: Option<SocketAddr>,
    /// Sentinels that answered their last query.
    pub reachable: usize,
    /// Sentinels configured (the length of [`SentinelConfig::addresses`]).
    pub configured: usize,
    /// Fewer than a quorum reachable, or no quorum agrees: `master` is the last agreed one.
    pub degraded: bool,
}

/// One configured Sentinel as its last query (or push) left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelReport {
    /// The Sentinel, as configured.
    pub addr: SocketAddr,
    /// Whether its last query was answered (or it pushed `+switch-master` since); `false`
    /// before the first answer.
    pub up: bool,
    /// Why its last query failed, while it is down; `None` before the first attempt ends.
    pub last_error: Option<String>,
}

/// One Sentinel's last word.
#[derive(Debug, Clone, Default)]
struct Answer {
    reachable: bool,
    master: Option<SocketAddr>,
    /// Why the last query failed, while unreachable.
    error: Option<String>,
    /// `+switch-master` pushes received from this Sentinel. A query answer is applied only if
    /// none arrived while it was in flight: the push is newer, and a stale answer naming the old
    /// master must not outvote it.
    pushes: u64,
    /// The master and replicas this Sentinel named in its last query (at most `MAX_KNOWN`).
    known: Vec<SocketAddr>,
}

/// Addresses kept from one Sentinel's `SENTINEL replicas` answer: a liar's flood stops here.
const MAX_KNOWN: usize = 1024;

/// Where an answer comes from.
pub(super) enum Source {
    /// A query sent when the slot had seen this many pushes.
    Query {
        pushes: u64,
    },
    Push,
    /// The query session ended with this error.
    Failure(String),
}

/// The state the tasks of one service share: each Sentinel's answer and the views made of them.
pub(super) struct Shared {
    pub(super) cfg: SentinelConfig,
    pub(super) service: String,
    answers: Mutex<Vec<Answer>>,
    pub(super) tx: watch::Sender<SentinelView>,
    /// The view's log lines ("agree on a new master", "degraded", "restored"): a flapping
    /// Sentinel must not fill the disk.
    view_log: RateLimit,
    /// The master and replica addresses that a quorum of reachable Sentinels report now, in
    /// order of first report. What one Sentinel alone says is never here.
    pub(super) discovered: watch::Sender<Vec<SocketAddr>>,
    /// Log sites a Sentinel can flood, one per Sentinel each.
    pub(super) logs: Vec<SentinelLogs>,
}

#[derive(Default)]
pub(super) struct SentinelLogs {
    pub(super) failed: RateLimit,
    pub(super) push: RateLimit,
    pub(super) event: RateLimit,
    pub(super) unknown_name: RateLimit,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// No answer yet from any of `cfg.addresses`: no master, degraded.
    pub(super) fn new(service: String, cfg: SentinelConfig) -> Shared {
        let n = cfg.addresses.len();
        let (tx, _) = watch::channel(SentinelView {
            master: None,
            reachable: 0,
            configured: n,
            degraded: true,
        });
        Shared {
            cfg,
            service,
            answers: Mutex::new(vec![Answer::default(); n]),
            tx,
            view_log: RateLimit::default(),
            discovered: watch::channel(Vec::new()).0,
            logs: (0..n).map(|_| SentinelLogs::default()).collect(),
        }
    }

    /// Records what Sentinel `i` reported (its master and replicas) and republishes the
    /// addresses a quorum of reachable Sentinels report.
    pub(super) fn discover(&self, i: usize, mut addrs: Vec<SocketAddr>) {
        addrs.truncate(MAX_KNOWN);
        let confirmed = {
            let mut answers = lock(&self.answers);
            let Some(slot) = answers.get_mut(i) else {
                return;
            };
            slot.known = addrs;
            confirmed(&answers, self.cfg.quorum())
        };
        self.discovered.send_if_modified(|known| {
            if *known == confirmed {
                return false;
            }
            *known = confirmed;
            true
        });
    }

    /// Each Sentinel's last word, in configuration order.
    pub(super) fn reports(&self) -> Vec<SentinelReport> {
        lock(&self.answers)
            .iter()
            .zip(&self.cfg.addresses)
            .map(|(a, addr)| SentinelReport {
                addr: *addr,
                up: a.reachable,
                last_error: a.error.clone(),
            })
            .collect()
    }

    /// Pushes seen so far from Sentinel `i`.
    pub(super) fn pushes(&self, i: usize) -> u64 {
        lock(&self.answers).get(i).map_or(0, |a| a.pushes)
    }

    pub(super) fn set(
        &self,
        i: usize,
        reachable: bool,
        master: Option<SocketAddr>,
        source: Source,
    ) {
        let view = {
            let mut answers = lock(&self.answers);
            let Some(slot) = answers.get_mut(i) else {
                return;
            };
            match source {
                Source::Query { pushes } if pushes != slot.pushes => return, // stale
                Source::Push => slot.pushes += 1,
                _ => {}
            }
            slot.error = match source {
                Source::Failure(e) => Some(e),
                _ => None,
            };
            slot.reachable = reachable;
            slot.master = master;
            if !reachable {
                slot.known.clear();
            }
            agree(&answers, self.cfg.quorum(), *self.tx.borrow())
        };
        self.tx.send_if_modified(|v| {
            if *v == view {
                return false;
            }
            let (old, service) = (*v, &self.service);
            if old.master != view.master || old.degraded != view.degraded {
                self.view_log.log(
                    |suppressed| match (old.master != view.master, view.degraded) {
                        (true, _) => {
                            tracing::warn!(%service, old = %OrNone(old.master), new = %OrNone(view.master),
                        reachable = view.reachable, suppressed, "Sentinels agree on a new master")
                        }
                        (false, true) => tracing::error!(%service, reachable = view.reachable,
                        configured = view.configured, master = %OrNone(view.master), suppressed,
                        "Sentinel view degraded: no quorum; keeping the last agreed master"),
                        (false, false) => tracing::info!(%service, reachable = view.reachable,
                        suppressed, "Sentinel quorum restored"),
                    },
                );
            }
            *v = view;
            true
        });
    }
}

/// The addresses that at least `quorum` reachable Sentinels report, in the order they are first
/// reported.
fn confirmed(answers: &[Answer], quorum: usize) -> Vec<SocketAddr> {
    let mut votes: std::collections::HashMap<SocketAddr, usize> = Default::default();
    let mut order = Vec::new();
    for a in answers.iter().filter(|a| a.reachable) {
        let mut seen = std::collections::HashSet::new();
        for addr in a.known.iter().filter(|x| seen.insert(**x)) {
            let n = votes.entry(*addr).or_insert(0);
            if *n == 0 {
                order.push(*addr);
            }
            *n += 1;
        }
    }
    order.retain(|a| votes[a] >= quorum);
    order
}

/// The view from the Sentinels' answers: the address a quorum names, else the previous master,
/// degraded.
fn agree(answers: &[Answer], quorum: usize, prev: SentinelView) -> SentinelView {
    let reachable = answers.iter().filter(|a| a.reachable).count();
    let mut best: Option<(SocketAddr, usize)> = None;
    for a in answers.iter().filter(|a| a.reachable) {
        if let Some(m) = a.master {
            let n = answers
                .iter()
                .filter(|b| b.reachable && b.master == Some(m))
                .count();
            if best.is_none_or(|(_, k)| n > k) {
                best = Some((m, n));
            }
        }
    }
    match best {
        Some((m, n)) if n >= quorum => SentinelView {
            master: Some(m),
            reachable,
            configured: answers.len(),
            degraded: false,
        },
        _ => SentinelView {
            master: prev.master,
            reachable,
            configured: answers.len(),
            degraded: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ans(reachable: bool, m: Option<&str>) -> Answer {
        Answer {
            reachable,
            master: m.map(|s| s.parse().unwrap()),
            error: None,
            pushes: 0,
            known: Vec::new(),
        }
    }

    #[test]
    fn only_what_a_quorum_reports_is_discovered() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let liar: Vec<SocketAddr> = (10..5000u16)
            .map(|p| SocketAddr::from(([127, 0, 0, 9], p)))
            .collect();
        let with = |reachable, known: Vec<SocketAddr>| Answer {
            known,
            ..ans(reachable, Some("127.0.0.1:1"))
        };
        // Two honest Sentinels and one that floods: only the honest pair's addresses.
        let mut flood = liar.clone();
        flood.push(a);
        let answers = [
            with(true, vec![a, b]),
            with(true, vec![a, b]),
            with(true, flood),
        ];
        assert_eq!(confirmed(&answers, 2), vec![a, b]);
        // One Sentinel listing an address twice is still one vote.
        let answers = [
            with(true, vec![a, b, b]),
            with(true, vec![a]),
            with(false, vec![b]),
        ];
        assert_eq!(confirmed(&answers, 2), vec![a]);
        // An unreachable Sentinel's old list does not count.
        let answers = [
            with(true, vec![a, b]),
            with(false, vec![a, b]),
            with(true, vec![]),
        ];
        assert_eq!(confirmed(&answers, 2), Vec::<SocketAddr>::new());
    }

    #[test]
    fn quorum_agreement_and_degradation() {
        let none = SentinelView {
            master: None,
            reachable: 0,
            configured: 3,
            degraded: true,
        };
        let a = "127.0.0.1:1";
        let b = "127.0.0.1:2";
        // Two of three agree: that is the master.
        let v = agree(
            &[ans(true, Some(a)), ans(true, Some(a)), ans(true, Some(b))],
            2,
            none,
        );
        assert_eq!(v.master, Some(a.parse().unwrap()));
        assert!(!v.degraded);
        // One Sentinel alone cannot move the master.
        let v2 = agree(
            &[ans(true, Some(b)), ans(false, None), ans(false, None)],
            2,
            v,
        );
        assert_eq!(
            v2.master,
            Some(a.parse().unwrap()),
            "last agreed master kept"
        );
        assert!(v2.degraded);
        assert_eq!(v2.reachable, 1);
        // Split answers: no quorum, keep the last.
        let v3 = agree(
            &[ans(true, Some(a)), ans(true, Some(b)), ans(false, None)],
            2,
            v,
        );
        assert_eq!(v3.master, v.master);
        assert!(v3.degraded);
        // Nothing known yet: no master.
        let v4 = agree(
            &[ans(false, None), ans(false, None), ans(false, None)],
            2,
            none,
        );
        assert_eq!(v4.master, None);
    }

    #[test]
    fn a_stale_query_answer_cannot_outvote_a_push() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let shared = Shared::new(
            "t".into(),
            SentinelConfig {
                addresses: vec![a; 3],
                master_name: "m".into(),
                quorum: 0,
                auth: None,
                tls: None,
                timeout: Duration::from_secs(1),
                interval: Duration::from_secs(1),
                max_servers: 8,
                own: Vec::new(),
            },
        );
        let rx = shared.tx.subscribe();
        for i in 0..3 {
            shared.set(i, true, Some(a), Source::Query { pushes: 0 });
        }
        assert_eq!(rx.borrow().master, Some(a));
        // Queries are in flight to Sentinels 0 and 1 when they push +switch-master...
        let sent = [shared.pushes(0), shared.pushes(1)];
        shared.set(0, true, Some(b), Source::Push);
        shared.set(1, true, Some(b), Source::Push);
        assert_eq!(rx.borrow().master, Some(b));
        // ...and their answers, computed before the switch, arrive after it: ignored.
        shared.set(0, true, Some(a), Source::Query { pushes: sent[0] });
        shared.set(1, true, Some(a), Source::Query { pushes: sent[1] });
        assert_eq!(
            rx.borrow().master,
            Some(b),
            "a stale answer moved the master back"
        );
        // A failure is reported with its reason until the next answer.
        shared.set(2, false, None, Source::Failure("connection closed".into()));
        let r = shared.reports();
        assert_eq!((r[0].up, r[2].up), (true, false));
        assert_eq!(r[2].last_error.as_deref(), Some("connection closed"));
        shared.set(2, true, Some(b), Source::Query { pushes: 0 });
        assert_eq!(shared.reports()[2].last_error, None);
        // A fresh query still counts.
        shared.set(
            0,
            true,
            Some(b),
            Source::Query {
                pushes: shared.pushes(0),
            },
        );
        assert_eq!(rx.borrow().master, Some(b));
    }
}
