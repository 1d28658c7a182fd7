//! Who the master of a service is: the one place that decides it. A pure state machine, fed
//! facts (a server was checked, the Sentinels name a master, a reported server is past the cap)
//! and never doing I/O, so that every rule is a table test.
//!
//! It owns the generation (grows on every change of master, so a data path can tell an old route
//! from a new one), the counters (changes, conflicts), the time without a master, and, with
//! Sentinel, the note saying why the named master is not routed to. `monitor.rs` runs the
//! checks and the Sentinel client, feeds the facts in, and logs and publishes what comes out.
//!
//! Two policies:
//! - [`Policy::Checks`]: the master is a server that is up by its checks (rise/fall). The
//!   current master is kept as long as it is up, whatever else is up (a second one is a
//!   conflict, counted, never routed to: split brain avoided); when it goes down, the server
//!   that has been up the longest takes over (ties: configuration order).
//! - [`Policy::Sentinel`]: the master is the server a quorum of Sentinels names while its own
//!   checks say it is the master: up by rise/fall or, for a server just named, as soon as one
//!   check passes (for Redis: it says `role:master`), so a failover is not delayed by `rise`. A
//!   server that passes while the Sentinels name another (an old master restarted, not yet
//!   demoted) is a conflict, counted once per episode, never routed to. A named server that is
//!   not checked is not routed to either: with `servers` configured (fenced), traffic never
//!   leaves that list.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Instant;

/// Who the master is, as of `generation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MasterView {
    /// Grows by one on every change of master (to none included).
    pub generation: u64,
    /// The server sessions go to; `None` while there is no master.
    pub master: Option<SocketAddr>,
}

/// How the master is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// By the checks alone.
    Checks,
    /// The Sentinels name it, its own checks confirm it. `fenced`: `servers` was configured, so
    /// only those are checked and routed to, whatever the Sentinels say.
    Sentinel {
        /// `servers` was configured: nothing is discovered, the Sentinels choose among them.
        fenced: bool,
    },
}

/// What an alert looks at; carried over when a reload replaces the decider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    /// Changes of master, to none included.
    pub changes: u64,
    /// Episodes of a server passing the master check while another is (or is named) master.
    pub conflicts: u64,
    /// Addresses a Sentinel quorum reported that are not checked: past `max_servers`.
    pub over_cap: u64,
}

/// What one fact changed, for the caller to log and publish.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Outcome {
    /// The new view, when the master changed.
    pub view: Option<MasterView>,
    /// Servers that began passing the master check while another is (or is named) master.
    pub conflicts: Vec<SocketAddr>,
    /// The note, when it changed to a new one (see [`Decider::note`]).
    pub note: Option<String>,
}

/// Over-cap addresses remembered one by one (to count each once); past this many, each report
/// is counted again, so a lying Sentinel cannot grow the set without bound.
const OVER_CAP_KEPT: usize = 4096;

#[derive(Debug)]
struct Server {
    addr: SocketAddr,
    /// Up by rise/fall since then.
    up_since: Option<Instant>,
    /// The last check passed.
    passing: bool,
    /// In a conflict episode (counted when it began).
    conflict: bool,
}

/// The master decider of one service; see the module docs for its rules.
#[derive(Debug)]
pub struct Decider {
    policy: Policy,
    servers: Vec<Server>,
    /// The master a Sentinel quorum names (Sentinel policy).
    named: Option<SocketAddr>,
    master: Option<usize>,
    generation: u64,
    no_master_since: Option<Instant>,
    counters: Counters,
    note: Option<String>,
    over_cap: HashSet<SocketAddr>,
}

impl Decider {
    /// No servers, no master since `now`.
    pub fn new(policy: Policy, now: Instant) -> Decider {
        Decider {
            policy,
            servers: Vec::new(),
            named: None,
            master: None,
            generation: 0,
            no_master_since: Some(now),
            counters: Counters::default(),
            note: None,
            over_cap: HashSet::new(),
        }
    }

    /// The policy it was made with.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Adds a server (down, not yet checked) and returns its index, or `None` when it is known.
    pub fn add(&mut self, addr: SocketAddr) -> Option<usize> {
        if self.servers.iter().any(|s| s.addr == addr) {
            return None;
        }
        self.servers.push(Server {
            addr,
            up_since: None,
            passing: false,
            conflict: false,
        });
        Some(self.servers.len() - 1)
    }

    /// Whether `addr` is one of the servers.
    pub fn knows(&self, addr: SocketAddr) -> bool {
        self.servers.iter().any(|s| s.addr == addr)
    }

    /// How many servers there are.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether there are no servers.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// A check of server `index` ended: `up` by rise/fall, `passing` if this check passed.
    /// Checks that could not run here (our own descriptor shortage) are not facts: leave them out.
    pub fn checked(&mut self, index: usize, up: bool, passing: bool, now: Instant) -> Outcome {
        let Some(s) = self.servers.get_mut(index) else {
            return Outcome::default();
        };
        s.up_since = if up { s.up_since.or(Some(now)) } else { None };
        s.passing = passing;
        self.decide(now)
    }

    /// The Sentinel quorum now names `named` (`None`: no quorum).
    pub fn named(&mut self, named: Option<SocketAddr>, now: Instant) -> Outcome {
        self.named = named;
        self.decide(now)
    }

    /// A Sentinel quorum reported `addr`, which is not checked because there are `max_servers`
    /// already. Returns whether it was counted (each address once, while fewer than
    /// `OVER_CAP_KEPT` are remembered).
    pub fn over_cap(&mut self, addr: SocketAddr) -> bool {
        let full = self.over_cap.len() >= OVER_CAP_KEPT;
        let counted = full || self.over_cap.insert(addr);
        if counted {
            self.counters.over_cap += 1;
        }
        counted
    }

    /// Adds counts of a decider this one replaces (a reload that changed the servers).
    pub fn carry(&mut self, from: Counters) {
        self.counters.changes += from.changes;
        self.counters.conflicts += from.conflicts;
        self.counters.over_cap += from.over_cap;
    }

    /// Who the master is now.
    pub fn view(&self) -> MasterView {
        MasterView {
            generation: self.generation,
            master: self.master.map(|i| self.servers[i].addr),
        }
    }

    /// The counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Since when there is no master, while that is so.
    pub fn no_master_since(&self) -> Option<Instant> {
        self.no_master_since
    }

    /// Why the master the Sentinels name is not routed to, while that is so (e.g. "the Sentinel
    /// quorum names 10.0.0.9:6379, which is not in servers: no master").
    pub fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    fn decide(&mut self, now: Instant) -> Outcome {
        let mut out = Outcome::default();
        let master = match self.policy {
            Policy::Checks => self
                .master
                .filter(|m| self.servers[*m].up_since.is_some())
                .or_else(|| {
                    self.servers
                        .iter()
                        .enumerate()
                        .filter_map(|(i, s)| s.up_since.map(|t| (t, i)))
                        .min()
                        .map(|(_, i)| i)
                }),
            Policy::Sentinel { .. } => self.named.and_then(|n| {
                self.servers
                    .iter()
                    .position(|s| s.addr == n && (s.up_since.is_some() || s.passing))
            }),
        };
        for (i, s) in self.servers.iter_mut().enumerate() {
            let conflict = match self.policy {
                Policy::Checks => s.up_since.is_some() && Some(i) != master,
                // Only a master named by the Sentinels makes another one a rival: while they
                // name none (startup, quorum lost) nobody is confirmed, and nobody conflicts.
                Policy::Sentinel { .. } => s.passing && self.named.is_some_and(|n| n != s.addr),
            };
            if conflict && !s.conflict {
                self.counters.conflicts += 1;
                out.conflicts.push(s.addr);
            }
            s.conflict = conflict;
        }
        if let Policy::Sentinel { fenced } = self.policy {
            let unchecked = self
                .named
                .filter(|n| !self.servers.iter().any(|s| s.addr == *n));
            let note = unchecked.and_then(|n| {
                if fenced {
                    Some(format!(
                        "the Sentinel quorum names {n}, which is not in servers: no master"
                    ))
                } else if self.over_cap.contains(&n) {
                    Some(format!(
                        "the Sentinel quorum names {n}, which is not checked (past max_servers): no master"
                    ))
                } else {
                    None // reported a moment before it is discovered: it will be checked
                }
            });
            if note.is_some() && note != self.note {
                out.note.clone_from(&note);
            }
            self.note = note;
        }
        if master != self.master {
            self.master = master;
            self.generation += 1;
            self.counters.changes += 1;
            self.no_master_since = match master {
                Some(_) => None,
                None => Some(now),
            };
            out.view = Some(self.view());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 6380 + i)))
            .collect()
    }

    fn with(policy: Policy, n: u16, t: Instant) -> (Decider, Vec<SocketAddr>) {
        let a = addrs(n);
        let mut d = Decider::new(policy, t);
        for addr in &a {
            assert!(d.add(*addr).is_some());
        }
        (d, a)
    }

    fn view(generation: u64, master: Option<SocketAddr>) -> Option<MasterView> {
        Some(MasterView { generation, master })
    }

    // ---- checks only ----

    #[test]
    fn startup_with_two_up_picks_one_and_counts_the_conflict() {
        let t = Instant::now();
        let (mut d, a) = with(Policy::Checks, 2, t);
        assert_eq!(
            d.view(),
            MasterView {
                generation: 0,
                master: None
            }
        );
        assert_eq!(d.checked(1, true, true, t).view, view(1, Some(a[1])));
        let o = d.checked(0, true, true, t);
        assert_eq!((o.view, o.conflicts), (None, vec![a[0]]));
        // Still up: the same episode, not counted again.
        assert_eq!(d.checked(0, true, true, t), Outcome::default());
        assert_eq!(d.counters().conflicts, 1);
        assert_eq!(d.view().master, Some(a[1]));
    }

    #[test]
    fn restarted_old_master_never_takes_over() {
        let t = Instant::now();
        let (mut d, a) = with(Policy::Checks, 2, t);
        d.checked(0, true, true, t);
        // A dies, B is promoted.
        assert_eq!(d.checked(0, false, false, t).view, view(2, None));
        assert_eq!(d.checked(1, true, true, t).view, view(3, Some(a[1])));
        // A comes back saying role:master: conflict, B stays.
        assert_eq!(d.checked(0, true, true, t).conflicts, vec![a[0]]);
        assert_eq!(d.view().master, Some(a[1]));
        assert_eq!(d.counters().changes, 3);
    }

    #[test]
    fn the_longest_up_takes_over() {
        let t = Instant::now();
        let s = Duration::from_secs(1);
        let (mut d, a) = with(Policy::Checks, 3, t);
        d.checked(0, true, true, t);
        d.checked(2, true, true, t + s);
        d.checked(1, true, true, t + 2 * s);
        let v = d.checked(0, false, false, t + 3 * s).view.unwrap();
        assert_eq!(v.master, Some(a[2]));
        assert_eq!(d.no_master_since(), None);
    }

    #[test]
    fn flapping_never_alternates_between_two_up_servers() {
        let t = Instant::now();
        let (mut d, a) = with(Policy::Checks, 2, t);
        d.checked(0, true, true, t);
        d.checked(1, true, true, t);
        for i in 0..20 {
            // B flaps; A stays up all along.
            d.checked(1, i % 2 == 0, i % 2 == 0, t);
            assert_eq!(d.view().master, Some(a[0]));
        }
        assert_eq!(d.view().generation, 1);
        assert_eq!(d.counters().conflicts, 10, "each time B came up again");
    }

    #[test]
    fn no_master_since_and_out_of_range() {
        let t = Instant::now();
        let (mut d, a) = with(Policy::Checks, 1, t);
        assert_eq!(d.no_master_since(), Some(t));
        assert_eq!(d.checked(7, true, true, t), Outcome::default());
        assert_eq!(d.add(a[0]), None, "a known server is not added twice");
        d.checked(0, true, true, t);
        assert_eq!(d.no_master_since(), None);
        let later = t + Duration::from_secs(1);
        d.checked(0, false, false, later);
        assert_eq!(d.no_master_since(), Some(later));
        // Down while already without master: no new generation.
        let (mut d, _) = with(Policy::Checks, 1, t);
        assert_eq!(d.checked(0, false, false, t), Outcome::default());
        assert_eq!(d.view().generation, 0);
    }

    #[test]
    fn a_passing_check_is_not_up_before_rise() {
        let t = Instant::now();
        let (mut d, _) = with(Policy::Checks, 1, t);
        assert_eq!(d.checked(0, false, true, t), Outcome::default());
        assert_eq!(d.view().master, None);
    }

    // ---- Sentinel-confirmed ----

    const OPEN: Policy = Policy::Sentinel { fenced: false };
    const FENCED: Policy = Policy::Sentinel { fenced: true };

    #[test]
    fn the_named_server_is_master_once_one_check_passes() {
        let t = Instant::now();
        let (mut d, a) = with(FENCED, 2, t);
        // Named but not yet checked: no master.
        assert_eq!(d.named(Some(a[1]), t), Outcome::default());
        // Its first passing check (before rise) is enough.
        assert_eq!(d.checked(1, false, true, t).view, view(1, Some(a[1])));
        // Not up by rise yet: one failed check ends it.
        assert_eq!(d.checked(1, false, false, t).view, view(2, None));
        assert_eq!(d.checked(1, false, true, t).view, view(3, Some(a[1])));
        assert_eq!(d.checked(1, true, true, t), Outcome::default(), "risen");
        // Up by rise/fall: one failed check (fewer than fall) keeps it.
        assert_eq!(d.checked(1, true, false, t), Outcome::default());
        assert_eq!(d.checked(1, false, false, t).view, view(4, None), "fallen");
    }

    #[test]
    fn an_unnamed_server_that_passes_is_a_conflict_and_never_the_master() {
        let t = Instant::now();
        let (mut d, a) = with(FENCED, 2, t);
        d.named(Some(a[1]), t);
        d.checked(1, true, true, t);
        // The old master restarted, still saying role:master.
        let o = d.checked(0, true, true, t);
        assert_eq!((o.view, o.conflicts), (None, vec![a[0]]));
        assert_eq!(
            d.checked(0, true, true, t),
            Outcome::default(),
            "one episode"
        );
        assert_eq!(d.checked(0, false, false, t), Outcome::default(), "demoted");
        assert_eq!(
            d.checked(0, true, true, t).conflicts,
            vec![a[0]],
            "a new episode"
        );
        assert_eq!(d.counters().conflicts, 2);
        assert_eq!(
            d.view(),
            MasterView {
                generation: 1,
                master: Some(a[1])
            }
        );
    }

    #[test]
    fn a_failover_moves_the_master_when_the_new_one_passes() {
        let t = Instant::now();
        let (mut d, a) = with(FENCED, 2, t);
        d.named(Some(a[0]), t);
        d.checked(0, true, true, t);
        d.checked(1, false, false, t); // a replica
                                       // The Sentinels promote B: A is no longer named, B not yet confirmed.
        let o = d.named(Some(a[1]), t);
        assert_eq!(o.view, view(2, None));
        assert_eq!(
            o.conflicts,
            vec![a[0]],
            "A still passes: it is not yet demoted"
        );
        assert_eq!(d.no_master_since(), Some(t));
        assert_eq!(d.checked(1, false, true, t).view, view(3, Some(a[1])));
        assert_eq!(d.counters().changes, 3);
    }

    #[test]
    fn before_the_sentinels_answer_nobody_is_master_or_in_conflict() {
        let t = Instant::now();
        let (mut d, a) = with(FENCED, 2, t);
        assert_eq!(d.checked(0, true, true, t), Outcome::default());
        assert_eq!(d.checked(1, true, true, t), Outcome::default());
        assert_eq!(d.counters(), Counters::default());
        assert_eq!(d.named(Some(a[1]), t).view, view(1, Some(a[1])));
        assert_eq!(d.counters().conflicts, 1, "A passes while B is named");
    }

    #[test]
    fn degraded_sentinels_no_quorum_means_no_master() {
        let t = Instant::now();
        let (mut d, a) = with(FENCED, 1, t);
        d.named(Some(a[0]), t);
        d.checked(0, true, true, t);
        // The quorum is lost: whatever the checks say, nobody is confirmed, and nobody is in
        // conflict with a master that is not named.
        let o = d.named(None, t);
        assert_eq!((o.view, o.conflicts), (view(2, None), vec![]));
        // The quorum comes back naming the same server.
        assert_eq!(d.named(Some(a[0]), t).view, view(3, Some(a[0])));
    }

    #[test]
    fn a_named_server_outside_servers_gives_no_master_and_a_note() {
        let t = Instant::now();
        let (mut d, a) = with(FENCED, 1, t);
        d.checked(0, true, true, t);
        let stranger: SocketAddr = "10.0.0.9:6379".parse().unwrap();
        let o = d.named(Some(stranger), t);
        let note = "the Sentinel quorum names 10.0.0.9:6379, which is not in servers: no master";
        assert_eq!(o.note.as_deref(), Some(note));
        assert_eq!(o.view, None);
        assert_eq!(d.note(), Some(note));
        assert_eq!(d.named(Some(stranger), t).note, None, "told once");
        assert_eq!(
            d.counters().conflicts,
            1,
            "the server passing outside the quorum's choice"
        );
        d.named(Some(a[0]), t);
        assert_eq!(d.note(), None);
        assert_eq!(d.view().master, Some(a[0]));
    }

    #[test]
    fn discovered_servers_past_the_cap_are_counted_once_and_noted() {
        let t = Instant::now();
        let (mut d, _) = with(OPEN, 1, t);
        let far: SocketAddr = "10.0.0.7:6379".parse().unwrap();
        assert!(d.over_cap(far));
        assert!(!d.over_cap(far));
        assert_eq!(d.counters().over_cap, 1);
        let o = d.named(Some(far), t);
        assert!(o.note.unwrap().contains("past max_servers"));
        // Named before it is discovered: no note, it will be checked.
        let soon: SocketAddr = "10.0.0.8:6379".parse().unwrap();
        assert_eq!(d.named(Some(soon), t).note, None);
        assert_eq!(d.note(), None);
        let i = d.add(soon).unwrap();
        assert_eq!(d.checked(i, false, true, t).view, view(1, Some(soon)));
    }

    #[test]
    fn over_cap_memory_is_bounded() {
        let t = Instant::now();
        let mut d = Decider::new(OPEN, t);
        for i in 0..(OVER_CAP_KEPT as u32 + 10) {
            let addr = SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + i), 6379));
            assert!(d.over_cap(addr));
        }
        assert_eq!(d.over_cap.len(), OVER_CAP_KEPT);
        assert!(
            d.over_cap("10.0.0.0:6379".parse().unwrap()),
            "full: counted again"
        );
    }

    #[test]
    fn counters_carry_over() {
        let t = Instant::now();
        let (mut d, _) = with(Policy::Checks, 1, t);
        d.checked(0, true, true, t);
        d.carry(Counters {
            changes: 4,
            conflicts: 2,
            over_cap: 1,
        });
        assert_eq!(
            d.counters(),
            Counters {
                changes: 5,
                conflicts: 2,
                over_cap: 1
            }
        );
    }
}
