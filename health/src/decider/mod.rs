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
    /// The master; `None` while there is none.
    pub master: Option<SocketAddr>,
    /// Set while the master takes no new sessions (new clients are held as in a failover).
    pub hold: Option<Hold>,
}

/// Why the master takes no new sessions for now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// An operator set the master to `drain`: its established sessions go on (up to
    /// `timeout.drain`), new ones wait.
    Drain,
    /// A planned switchover away from this master runs: its sessions are cut (so that no write
    /// reaches it while the replicas catch up), new ones wait for the next master.
    Switchover,
}

impl Hold {
    /// `drain` or `switchover`.
    pub fn as_str(self) -> &'static str {
        match self {
            Hold::Drain => "drain",
            Hold::Switchover => "switchover",
        }
    }
}

/// A server's state as an operator set it (HAProxy's `set server ... state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum AdminState {
    /// Checked and routed as the policy says.
    #[default]
    Ready,
    /// Takes no new sessions; established ones go on until they end or `timeout.drain`.
    Drain,
    /// Never routed, not checked: out for maintenance. Wins over the Sentinels.
    Maint,
}

impl AdminState {
    /// Every state, for metrics.
    pub const ALL: [AdminState; 3] = [AdminState::Ready, AdminState::Drain, AdminState::Maint];

    /// `ready`, `drain` or `maint`.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
}

impl std::str::FromStr for AdminState {
    type Err = String;

    fn from_str(s: &str) -> Result<AdminState, String> {
        match s.trim() {
            "ready" => Ok(AdminState::Ready),
            "drain" => Ok(AdminState::Drain),
            "maint" => Ok(AdminState::Maint),
            other => Err(format!(
                "unknown server state {other:?}: expected ready, drain or maint"
            )),
        }
    }
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
    /// Episodes of a server passing the master check while another, alive, is master (Checks:
    /// up by its checks; Sentinel: named by a quorum and not known to be down).
    pub conflicts: u64,
    /// Episodes without a master after having had one (a failover counts one, however long).
    pub no_master_episodes: u64,
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
    /// As the operator set it.
    admin: AdminState,
    /// Not yet checked by this decider (a carried conflict episode is kept until it is).
    fresh: bool,
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
    /// The master a planned switchover moves away from, while it runs.
    switching_from: Option<SocketAddr>,
    /// That master, until it stops passing the master check (is demoted): its passing meanwhile
    /// is expected, not a conflict.
    demoting: Option<SocketAddr>,
    /// The master of the decider this one replaced (a reload): finding it again is no change.
    carried_master: Option<SocketAddr>,
    /// The view last returned in an [`Outcome`] (what the caller published).
    told: MasterView,
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
            switching_from: None,
            demoting: None,
            carried_master: None,
            told: MasterView {
                generation: 0,
                master: None,
                hold: None,
            },
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
            admin: AdminState::Ready,
            fresh: true,
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
        s.fresh = false;
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

    /// Takes over from the decider this one replaces (a reload that changed the servers): its
    /// counts are added, finding its master again first is not a change of master, and the
    /// conflict episodes of `in_conflict` go on (they were counted).
    pub fn carry(
        &mut self,
        from: Counters,
        master: Option<SocketAddr>,
        in_conflict: &[SocketAddr],
    ) {
        for s in &mut self.servers {
            s.conflict |= in_conflict.contains(&s.addr);
        }
        self.counters.changes += from.changes;
        self.counters.conflicts += from.conflicts;
        self.counters.no_master_episodes += from.no_master_episodes;
        self.counters.over_cap += from.over_cap;
        self.carried_master = master;
    }

    /// The operator set server `index` to `state`. A server in `maint` is never the master and
    /// its checks say nothing (the caller stops running them; on leaving `maint` the server is
    /// down until its checks say otherwise); a `drain`ed master stays the master but takes no
    /// new sessions ([`Hold::Drain`]).
    pub fn set_admin(&mut self, index: usize, state: AdminState, now: Instant) -> Outcome {
        let Some(s) = self.servers.get_mut(index) else {
            return Outcome::default();
        };
        if state == AdminState::Maint || s.admin == AdminState::Maint {
            s.up_since = None;
            s.passing = false;
        }
        s.admin = state;
        self.decide(now)
    }

    /// The servers in a conflict episode now.
    pub fn in_conflict(&self) -> Vec<SocketAddr> {
        self.servers
            .iter()
            .filter(|s| s.conflict)
            .map(|s| s.addr)
            .collect()
    }

    /// The operator state of server `index`.
    pub fn admin(&self, index: usize) -> AdminState {
        self.servers
            .get(index)
            .map_or(AdminState::Ready, |s| s.admin)
    }

    /// A planned switchover starts (`true`) or is given up (`false`): while it runs, the
    /// current master takes no new sessions ([`Hold::Switchover`]), and its passing the master
    /// check after the Sentinels name its successor is expected, not a conflict. It ends by
    /// itself when another server becomes the master. Returns `false` (and changes nothing)
    /// when starting without a master or while one runs.
    pub fn switchover(&mut self, start: bool, now: Instant) -> (bool, Outcome) {
        if start {
            let Some(m) = self.master.filter(|_| self.switching_from.is_none()) else {
                return (false, Outcome::default());
            };
            self.switching_from = Some(self.servers[m].addr);
            self.demoting = self.switching_from;
        } else {
            self.switching_from = None;
            self.demoting = None;
        }
        (true, self.decide(now))
    }

    /// Who the master is now.
    pub fn view(&self) -> MasterView {
        let master = self.master.map(|i| &self.servers[i]);
        let hold = master.and_then(|m| {
            if self.switching_from == Some(m.addr) {
                Some(Hold::Switchover)
            } else if m.admin == AdminState::Drain {
                Some(Hold::Drain)
            } else {
                None
            }
        });
        MasterView {
            generation: self.generation,
            master: master.map(|m| m.addr),
            hold,
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

    /// Checks policy: the master kept while up; else, after a reload, the master of the decider
    /// this one replaced (nobody before its first check says it is down); else the server up
    /// the longest (ties: configuration order).
    fn checks_master(&self) -> Option<usize> {
        let routable = |i: &usize| {
            self.servers[*i].admin != AdminState::Maint && self.servers[*i].up_since.is_some()
        };
        if let Some(m) = self.master.filter(routable) {
            return Some(m);
        }
        if let Some(c) = self
            .carried_master
            .and_then(|c| self.servers.iter().position(|s| s.addr == c))
            .filter(|c| self.servers[*c].admin != AdminState::Maint)
        {
            if routable(&c) {
                return Some(c);
            }
            if self.servers[c].fresh {
                return None;
            }
        }
        self.servers
            .iter()
            .enumerate()
            .filter(|(i, _)| routable(i))
            .filter_map(|(i, s)| s.up_since.map(|t| (t, i)))
            .min()
            .map(|(_, i)| i)
    }

    fn decide(&mut self, now: Instant) -> Outcome {
        let mut out = Outcome::default();
        let eligible = |s: &Server| s.admin != AdminState::Maint;
        let master = match self.policy {
            Policy::Checks => self.checks_master(),
            Policy::Sentinel { .. } => self.named.and_then(|n| {
                self.servers
                    .iter()
                    .position(|s| s.addr == n && eligible(s) && (s.up_since.is_some() || s.passing))
            }),
        };
        // Sentinel: the named master is alive unless it is one of ours and its checks fail (an
        // ordinary failover: the dead master is still named while its successor already passes).
        let named_alive = self.named.is_some_and(|n| {
            self.servers
                .iter()
                .find(|s| s.addr == n)
                .is_none_or(|s| s.passing || s.up_since.is_some())
        });
        if let Some(d) = self.demoting {
            if !self.servers.iter().any(|s| s.addr == d && s.passing) {
                self.demoting = None; // demoted (or gone): conflicts count again
            }
        }
        for (i, s) in self
            .servers
            .iter_mut()
            .enumerate()
            .filter(|(_, s)| !s.fresh)
        {
            // During a switchover the successor passes before it is named, and the old master
            // until it is demoted: both expected.
            let conflict = eligible(s)
                && self.switching_from.is_none()
                && Some(s.addr) != self.demoting
                && match self.policy {
                    Policy::Checks => s.up_since.is_some() && Some(i) != master,
                    Policy::Sentinel { .. } => {
                        s.passing && named_alive && self.named.is_some_and(|n| n != s.addr)
                    }
                };
            if conflict && !s.conflict {
                self.counters.conflicts += 1;
                out.conflicts.push(s.addr);
            }
            s.conflict = conflict;
        }
        if let Policy::Sentinel { fenced } = self.policy {
            let note = self.named.and_then(|n| match self.servers.iter().find(|s| s.addr == n) {
                Some(s) if s.admin == AdminState::Maint => Some(format!(
                    "the Sentinel quorum names {n}, which an operator put in maint: no master"
                )),
                Some(_) => None,
                None if fenced => Some(format!(
                    "the Sentinel quorum names {n}, which is not in servers: no master"
                )),
                None if self.over_cap.contains(&n) => Some(format!(
                    "the Sentinel quorum names {n}, which is not checked (past max_servers): no master"
                )),
                None => None, // reported a moment before it is discovered: it will be checked
            });
            if note.is_some() && note != self.note {
                out.note.clone_from(&note);
            }
            self.note = note;
        }
        if master != self.master {
            let first = self.generation == 0;
            let had = self.master.is_some();
            self.master = master;
            self.generation += 1;
            let found_again =
                first && master.is_some() && self.view().master == self.carried_master;
            self.carried_master = None;
            if !found_again {
                self.counters.changes += 1;
            }
            if had && master.is_none() {
                self.counters.no_master_episodes += 1;
            }
            self.no_master_since = match master {
                Some(_) => None,
                None => Some(now),
            };
            if master.is_some_and(|m| Some(self.servers[m].addr) != self.switching_from) {
                self.switching_from = None; // the switchover is done
            }
        }
        let after = self.view();
        if after != self.told {
            self.told = after;
            out.view = Some(after);
        }
        out
    }
}

#[cfg(test)]
mod tests;
