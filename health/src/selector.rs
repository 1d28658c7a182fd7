//! Exactly one master per service. A pure state machine: fed server up/down transitions, it
//! publishes a [`MasterView`] whose generation grows on every change of master.

use std::net::SocketAddr;
use std::time::Instant;

/// Who the master is, as of `generation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MasterView {
    pub generation: u64,
    pub master: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectorState {
    NoMaster { since: Instant },
    Master { server: usize, since: Instant },
}

/// What one update changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Update {
    /// The new view, when the master changed.
    pub view: Option<MasterView>,
    /// A server that passes the master check while another is the master (split brain avoided).
    pub conflict: Option<SocketAddr>,
}

/// Chooses one master among servers that pass the master check.
///
/// Rules: the current master is kept as long as it is up, whatever else is up (a second one is a
/// conflict, counted, never routed to); when it goes down, the server that has been up the
/// longest takes over (ties: configuration order); none up means no master.
#[derive(Debug)]
pub struct Selector {
    servers: Vec<SocketAddr>,
    up_since: Vec<Option<Instant>>,
    state: SelectorState,
    generation: u64,
    conflicts: u64,
    changes: u64,
}

impl Selector {
    pub fn new(servers: Vec<SocketAddr>, now: Instant) -> Selector {
        Selector {
            up_since: vec![None; servers.len()],
            servers,
            state: SelectorState::NoMaster { since: now },
            generation: 0,
            conflicts: 0,
            changes: 0,
        }
    }

    pub fn state(&self) -> SelectorState {
        self.state
    }

    pub fn view(&self) -> MasterView {
        MasterView {
            generation: self.generation,
            master: match self.state {
                SelectorState::Master { server, .. } => self.servers.get(server).copied(),
                SelectorState::NoMaster { .. } => None,
            },
        }
    }

    pub fn conflicts(&self) -> u64 {
        self.conflicts
    }

    pub fn changes(&self) -> u64 {
        self.changes
    }

    pub fn no_master_since(&self) -> Option<Instant> {
        match self.state {
            SelectorState::NoMaster { since } => Some(since),
            SelectorState::Master { .. } => None,
        }
    }

    /// Records that `server` (an index into the server list) is now up or down.
    pub fn update(&mut self, server: usize, up: bool, now: Instant) -> Update {
        let Some(slot) = self.up_since.get_mut(server) else {
            return Update::default();
        };
        *slot = if up { slot.or(Some(now)) } else { None };
        if let SelectorState::Master { server: m, .. } = self.state {
            if self.up_since[m].is_some() {
                if up && server != m {
                    self.conflicts += 1;
                    return Update {
                        view: None,
                        conflict: self.servers.get(server).copied(),
                    };
                }
                return Update::default();
            }
        }
        let best = self
            .up_since
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.map(|t| (t, i)))
            .min();
        let next = match best {
            Some((_, i)) => SelectorState::Master {
                server: i,
                since: now,
            },
            None => SelectorState::NoMaster { since: now },
        };
        let was = self.view().master;
        if matches!(self.state, SelectorState::NoMaster { .. }) && best.is_none() {
            return Update::default();
        }
        self.state = next;
        self.generation += 1;
        if was.is_some() || best.is_some() {
            self.changes += 1;
        }
        Update {
            view: Some(self.view()),
            conflict: None,
        }
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

    #[test]
    fn startup_with_two_up_picks_one_and_counts_the_conflict() {
        let t = Instant::now();
        let mut s = Selector::new(addrs(2), t);
        assert_eq!(
            s.view(),
            MasterView {
                generation: 0,
                master: None
            }
        );
        let u = s.update(1, true, t);
        assert_eq!(
            u.view,
            Some(MasterView {
                generation: 1,
                master: Some(addrs(2)[1])
            })
        );
        let u = s.update(0, true, t);
        assert_eq!(u.view, None);
        assert_eq!(u.conflict, Some(addrs(2)[0]));
        assert_eq!(s.conflicts(), 1);
        assert_eq!(s.view().master, Some(addrs(2)[1]));
    }

    #[test]
    fn restarted_old_master_never_takes_over() {
        let t = Instant::now();
        let a = addrs(2);
        let mut s = Selector::new(a.clone(), t);
        s.update(0, true, t);
        // A dies, B is promoted.
        let v = s.update(0, false, t).view.unwrap();
        assert_eq!(
            v,
            MasterView {
                generation: 2,
                master: None
            }
        );
        let v = s.update(1, true, t).view.unwrap();
        assert_eq!(
            v,
            MasterView {
                generation: 3,
                master: Some(a[1])
            }
        );
        // A comes back saying role:master: conflict, B stays.
        assert_eq!(s.update(0, true, t).conflict, Some(a[0]));
        assert_eq!(s.view().master, Some(a[1]));
        assert_eq!(s.changes(), 3);
    }

    #[test]
    fn the_longest_up_takes_over() {
        let t = Instant::now();
        let a = addrs(3);
        let mut s = Selector::new(a.clone(), t);
        s.update(0, true, t);
        s.update(2, true, t + Duration::from_secs(1));
        s.update(1, true, t + Duration::from_secs(2));
        let v = s.update(0, false, t + Duration::from_secs(3)).view.unwrap();
        assert_eq!(v.master, Some(a[2]));
    }

    #[test]
    fn flapping_never_alternates_between_two_up_servers() {
        let t = Instant::now();
        let a = addrs(2);
        let mut s = Selector::new(a.clone(), t);
        s.update(0, true, t);
        s.update(1, true, t);
        let mut masters = Vec::new();
        for i in 0..20 {
            // B flaps; A stays up all along.
            s.update(1, i % 2 == 0, t);
            masters.push(s.view().master);
        }
        assert!(masters.iter().all(|m| *m == Some(a[0])));
        assert_eq!(s.view().generation, 1);
    }

    #[test]
    fn no_master_since_and_out_of_range() {
        let t = Instant::now();
        let mut s = Selector::new(addrs(1), t);
        assert_eq!(s.no_master_since(), Some(t));
        assert_eq!(s.update(7, true, t), Update::default());
        s.update(0, true, t);
        assert_eq!(s.no_master_since(), None);
        // Down while already without master: no new generation.
        let mut s = Selector::new(addrs(1), t);
        assert_eq!(s.update(0, false, t), Update::default());
        assert_eq!(s.view().generation, 0);
    }
}
