//! When to check a server, and when its state flips: HAProxy's `inter`, `fastinter`,
//! `downinter`, `rise` and `fall`.

use std::time::Duration;

/// A server's check schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Between checks while the server is steadily up (HAProxy `inter`).
    pub interval: Duration,
    /// Between checks while the server is changing state; defaults to `interval`.
    pub fastinter: Option<Duration>,
    /// Between checks while the server is steadily down; defaults to `interval`.
    pub downinter: Option<Duration>,
    /// Consecutive passing checks to go up.
    pub rise: u32,
    /// Consecutive failing checks to go down.
    pub fall: u32,
    /// Limit for one whole check, connect included (HAProxy `timeout check`).
    pub timeout: Duration,
}

/// What is wrong with a [`Schedule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// `rise` or `fall` is 0: a server could never change state.
    #[error("rise and fall must be at least 1")]
    ZeroRiseOrFall,
    /// Holds the name of the duration: `interval`, `fastinter`, `downinter` or `timeout`.
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
}

impl Schedule {
    /// Says what is wrong with the schedule, if anything.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        if self.rise == 0 || self.fall == 0 {
            return Err(ScheduleError::ZeroRiseOrFall);
        }
        for (name, d) in [
            ("interval", Some(self.interval)),
            ("fastinter", self.fastinter),
            ("downinter", self.downinter),
            ("timeout", Some(self.timeout)),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                return Err(ScheduleError::ZeroDuration(name));
            }
        }
        Ok(())
    }
}

/// Where a server stands. Counts are consecutive opposite results seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Routable: the last check passed, after at least `rise` in a row.
    Up,
    /// Not routable: the last check failed, or none has passed yet (the initial state).
    Down,
    /// Down, with this many passing checks in a row (fewer than `rise`).
    Rising(u32),
    /// Up, with this many failing checks in a row (fewer than `fall`).
    Falling(u32),
}

impl ServerState {
    /// `up`, `down`, `rising` (down, passing checks fewer than `rise`) or `falling` (up, failing
    /// fewer than `fall`).
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Up => "up",
            ServerState::Down => "down",
            ServerState::Rising(_) => "rising",
            ServerState::Falling(_) => "falling",
        }
    }

    /// Whether traffic may go to the server: up, or up and not yet failed `fall` times.
    pub fn is_up(self) -> bool {
        matches!(self, ServerState::Up | ServerState::Falling(_))
    }
}

/// A change of a server's routable state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// `rise` passing checks in a row: the server became routable.
    WentUp,
    /// `fall` failing checks in a row: the server stopped being routable.
    WentDown,
}

/// The rise/fall state machine of one server.
///
/// Unlike HAProxy, which starts servers up, a server starts `Down` and needs `rise` passing
/// checks: nothing is routed before a server has proven itself once.
#[derive(Debug, Clone, Copy)]
pub struct ServerHealth {
    state: ServerState,
    rise: u32,
    fall: u32,
}

impl ServerHealth {
    /// A server not yet checked: `Down`, with the schedule's `rise` and `fall` (at least 1).
    pub fn new(schedule: &Schedule) -> ServerHealth {
        ServerHealth {
            state: ServerState::Down,
            rise: schedule.rise.max(1),
            fall: schedule.fall.max(1),
        }
    }

    /// A server that was at `state` under another schedule (a reload): where it stands under
    /// `schedule`, a rise or fall count clamped below the new `rise` or `fall`.
    pub fn resume(schedule: &Schedule, state: ServerState) -> ServerHealth {
        let mut h = ServerHealth::new(schedule);
        h.state = match state {
            ServerState::Rising(n) if n < h.rise => ServerState::Rising(n),
            ServerState::Rising(_) => ServerState::Rising(h.rise.saturating_sub(1).max(1)),
            ServerState::Falling(n) if n < h.fall => ServerState::Falling(n),
            ServerState::Falling(_) => ServerState::Falling(h.fall.saturating_sub(1).max(1)),
            other => other,
        };
        if h.rise <= 1 && matches!(h.state, ServerState::Rising(_)) {
            h.state = ServerState::Down;
        }
        if h.fall <= 1 && matches!(h.state, ServerState::Falling(_)) {
            h.state = ServerState::Up;
        }
        h
    }

    /// Where the server stands now.
    pub fn state(&self) -> ServerState {
        self.state
    }

    /// Whether traffic may go to the server (see [`ServerState::is_up`]).
    pub fn is_up(&self) -> bool {
        self.state.is_up()
    }

    /// Feeds one check result; returns the transition it caused, if any.
    pub fn observe(&mut self, ok: bool) -> Option<Transition> {
        use ServerState::*;
        let (next, t) = match (self.state, ok) {
            (Up | Falling(_), true) => (Up, None),
            (Up, false) if self.fall <= 1 => (Down, Some(Transition::WentDown)),
            (Up, false) => (Falling(1), None),
            (Falling(n), false) if n + 1 >= self.fall => (Down, Some(Transition::WentDown)),
            (Falling(n), false) => (Falling(n + 1), None),
            (Down | Rising(_), false) => (Down, None),
            (Down, true) if self.rise <= 1 => (Up, Some(Transition::WentUp)),
            (Down, true) => (Rising(1), None),
            (Rising(n), true) if n + 1 >= self.rise => (Up, Some(Transition::WentUp)),
            (Rising(n), true) => (Rising(n + 1), None),
        };
        self.state = next;
        t
    }

    /// How long to wait before the next check.
    pub fn next_delay(&self, s: &Schedule) -> Duration {
        match self.state {
            ServerState::Up => s.interval,
            ServerState::Down => s.downinter.unwrap_or(s.interval),
            ServerState::Rising(_) | ServerState::Falling(_) => s.fastinter.unwrap_or(s.interval),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ServerState::*;

    fn sched(rise: u32, fall: u32) -> Schedule {
        Schedule {
            interval: Duration::from_secs(2),
            fastinter: Some(Duration::from_millis(500)),
            downinter: Some(Duration::from_secs(5)),
            rise,
            fall,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn rise_two_fall_three() {
        let s = sched(2, 3);
        let mut h = ServerHealth::new(&s);
        assert_eq!(h.state(), Down);
        assert_eq!(h.next_delay(&s), Duration::from_secs(5));
        assert_eq!(h.observe(true), None);
        assert_eq!(h.state(), Rising(1));
        assert_eq!(h.next_delay(&s), Duration::from_millis(500));
        assert_eq!(h.observe(true), Some(Transition::WentUp));
        assert_eq!(h.next_delay(&s), Duration::from_secs(2));
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.state(), Falling(2));
        assert!(h.is_up());
        assert_eq!(h.observe(false), Some(Transition::WentDown));
        assert!(!h.is_up());
    }

    #[test]
    fn a_broken_streak_resets_the_count() {
        let s = sched(3, 2);
        let mut h = ServerHealth::new(&s);
        h.observe(true);
        h.observe(true);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.state(), Down);
        h.observe(true);
        h.observe(true);
        assert_eq!(h.observe(true), Some(Transition::WentUp));
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(true), None);
        assert_eq!(h.state(), Up);
    }

    #[test]
    fn rise_and_fall_of_one_flip_at_once() {
        let s = sched(1, 1);
        let mut h = ServerHealth::new(&s);
        assert_eq!(h.observe(true), Some(Transition::WentUp));
        assert_eq!(h.observe(false), Some(Transition::WentDown));
    }

    #[test]
    fn validation() {
        assert!(sched(1, 1).validate().is_ok());
        assert_eq!(
            sched(0, 1).validate().unwrap_err().to_string(),
            "rise and fall must be at least 1"
        );
        let mut s = sched(1, 1);
        s.timeout = Duration::ZERO;
        assert_eq!(
            s.validate().unwrap_err().to_string(),
            "timeout must be greater than zero"
        );
    }

    #[test]
    fn resume_clamps_counts_to_the_new_schedule() {
        let s = sched(3, 3);
        assert_eq!(ServerHealth::resume(&s, Up).state(), Up);
        assert_eq!(ServerHealth::resume(&s, Rising(2)).state(), Rising(2));
        let s = sched(2, 2);
        assert_eq!(ServerHealth::resume(&s, Rising(4)).state(), Rising(1));
        assert_eq!(ServerHealth::resume(&s, Falling(4)).state(), Falling(1));
        let s = sched(1, 1);
        assert_eq!(ServerHealth::resume(&s, Rising(1)).state(), Down);
        assert_eq!(ServerHealth::resume(&s, Falling(1)).state(), Up);
    }
}
