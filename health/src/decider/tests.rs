//! Table tests of the decider's rules, one fact at a time.

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
    Some(MasterView {
        generation,
        master,
        hold: None,
    })
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
            master: None,
            hold: None,
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
            master: Some(a[1]),
            hold: None,
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
    assert_eq!(o.conflicts, vec![], "B is named but not yet confirmed");
    assert_eq!(d.no_master_since(), Some(t));
    let o = d.checked(1, false, true, t);
    assert_eq!(o.view, view(3, Some(a[1])));
    assert_eq!(
        o.conflicts,
        vec![a[0]],
        "A still passes while B is confirmed: two masters (a partition, say)"
    );
    assert_eq!(d.counters().changes, 3);
    assert_eq!(d.counters().no_master_episodes, 1);
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
    d.carry(
        Counters {
            changes: 4,
            conflicts: 2,
            no_master_episodes: 3,
            over_cap: 1,
        },
        None,
        &[],
    );
    assert_eq!(
        d.counters(),
        Counters {
            changes: 5,
            conflicts: 2,
            no_master_episodes: 3,
            over_cap: 1
        }
    );
}

#[test]
fn finding_the_carried_master_again_is_no_change() {
    let t = Instant::now();
    let (mut d, a) = with(Policy::Checks, 2, t);
    d.carry(Counters::default(), Some(a[1]), &[a[0]]);
    assert_eq!(d.checked(1, true, true, t).view, view(1, Some(a[1])));
    assert_eq!(
        d.checked(0, true, true, t).conflicts,
        vec![],
        "the episode goes on"
    );
    assert_eq!(d.counters().changes, 0, "a reload found the same master");
    d.checked(0, false, false, t);
    d.checked(1, false, false, t);
    assert_eq!(d.counters().changes, 1);
    assert_eq!(d.counters().no_master_episodes, 1);
    // Nobody takes over before the carried master's first check.
    let (mut d, a) = with(Policy::Checks, 2, t);
    d.carry(Counters::default(), Some(a[1]), &[a[0]]);
    assert_eq!(d.checked(0, true, true, t).view, None);
    assert_eq!(d.checked(1, true, true, t).view, view(1, Some(a[1])));
    assert_eq!(d.counters().changes, 0);
    // Its first check says it is down: the other one takes over.
    let (mut d, a) = with(Policy::Checks, 2, t);
    d.carry(Counters::default(), Some(a[1]), &[]);
    d.checked(0, true, true, t);
    assert_eq!(d.checked(1, false, false, t).view, view(1, Some(a[0])));
    assert_eq!(
        d.counters().changes,
        1,
        "another master than the carried one"
    );
}

#[test]
fn an_ordinary_failover_is_no_conflict() {
    // A dies; the Sentinels still name A while B (promoted) already passes; then name B.
    let t = Instant::now();
    let (mut d, a) = with(FENCED, 2, t);
    d.named(Some(a[0]), t);
    d.checked(0, true, true, t);
    d.checked(1, false, false, t);
    assert_eq!(d.checked(0, false, false, t).view, view(2, None), "A died");
    assert_eq!(d.checked(1, false, true, t).conflicts, vec![], "B promoted");
    assert_eq!(d.named(Some(a[1]), t).view, view(3, Some(a[1])));
    // A restarts as a master before it is demoted: that one is a conflict.
    assert_eq!(d.checked(0, false, true, t).conflicts, vec![a[0]]);
    assert_eq!(d.counters().conflicts, 1);
    assert_eq!(d.counters().no_master_episodes, 1);
}

#[test]
fn maint_is_never_routed_and_wins_over_the_sentinels() {
    let t = Instant::now();
    let (mut d, a) = with(FENCED, 2, t);
    d.named(Some(a[0]), t);
    d.checked(0, true, true, t);
    let o = d.set_admin(0, AdminState::Maint, t);
    assert_eq!(o.view, view(2, None));
    assert!(o.note.unwrap().contains("an operator put in maint"));
    assert_eq!(
        d.checked(0, true, true, t),
        Outcome::default(),
        "a check that was running says nothing"
    );
    assert_eq!(d.view().master, None);
    // Out of maintenance it is down until it passes again.
    assert_eq!(d.set_admin(0, AdminState::Ready, t).view, None);
    assert_eq!(d.note(), None);
    assert_eq!(d.checked(0, false, true, t).view, view(3, Some(a[0])));
    // Checks policy: a server in maint is not in conflict, and the other takes over.
    let (mut d, a) = with(Policy::Checks, 2, t);
    d.checked(0, true, true, t);
    d.checked(1, true, true, t);
    assert_eq!(d.counters().conflicts, 1);
    assert_eq!(
        d.set_admin(0, AdminState::Maint, t).view,
        view(2, Some(a[1]))
    );
    assert_eq!(d.counters().conflicts, 1);
}

#[test]
fn a_drained_master_stays_master_and_holds_new_sessions() {
    let t = Instant::now();
    let (mut d, a) = with(Policy::Checks, 2, t);
    d.checked(0, true, true, t);
    let o = d.set_admin(0, AdminState::Drain, t);
    let held = MasterView {
        generation: 1,
        master: Some(a[0]),
        hold: Some(Hold::Drain),
    };
    assert_eq!(o.view, Some(held), "same generation: no change of master");
    assert_eq!(d.checked(1, true, true, t).conflicts, vec![a[1]]);
    assert_eq!(d.view(), held, "B does not take over from a drained master");
    assert_eq!(
        d.set_admin(0, AdminState::Ready, t).view,
        view(1, Some(a[0]))
    );
    assert_eq!(d.counters().changes, 1);
}

#[test]
fn a_switchover_holds_until_the_next_master_and_is_no_conflict() {
    let t = Instant::now();
    let (mut d, a) = with(FENCED, 2, t);
    assert!(!d.switchover(true, t).0, "no master to switch from");
    d.named(Some(a[0]), t);
    d.checked(0, true, true, t);
    d.checked(1, false, false, t);
    let (ok, o) = d.switchover(true, t);
    assert!(ok);
    assert_eq!(o.view.unwrap().hold, Some(Hold::Switchover));
    // B is promoted and named while A, not yet demoted, still passes: no conflict.
    d.checked(1, false, true, t);
    let o = d.named(Some(a[1]), t);
    assert_eq!((o.view, o.conflicts), (view(2, Some(a[1])), vec![]));
    d.checked(0, true, true, t);
    assert_eq!(d.counters().conflicts, 0);
    // Demoted; should it claim master again later, that is a conflict.
    d.checked(0, false, false, t);
    assert_eq!(d.checked(0, true, true, t).conflicts, vec![a[0]]);
    // Given up: the old master takes sessions again.
    let (mut d, a) = with(FENCED, 2, t);
    d.named(Some(a[0]), t);
    d.checked(0, true, true, t);
    d.switchover(true, t);
    assert_eq!(d.switchover(false, t).1.view, view(1, Some(a[0])));
}
