//! The replicated root in the simulator: leader kills and pauses under publishing.

use canopy_sim::failover::{self, FailoverParams, Fault};

fn params(fault: Fault, seed: u64) -> FailoverParams {
    FailoverParams {
        clients: 600,
        routers: None,
        candidates: 3,
        kills: 3,
        fault,
        pause_ms: 1500,
        commit_delay_ms: 2,
        interest_fraction: 0.2,
        publish_every_ms: 25,
        window_ms: Some(2500),
        max_child_routers: 4,
        max_clients: 16,
        seed,
    }
}

#[test]
fn a_killed_leader_is_replaced_and_only_its_children_move() {
    let result = failover::run(&params(Fault::Kill, 7), &mut |_| {}).expect("runs");
    assert_eq!(result.rounds.len(), 3);
    assert_eq!(result.stale_root_actions, 0);
    for (i, round) in result.rounds.iter().enumerate() {
        assert_ne!(round.new_root, round.old_root, "round {i}");
        // Vote lease 300 ms, then a commit: well under half a second, and not before the
        // lease could have run out.
        assert!(
            (300.0..500.0).contains(&round.serving_ms),
            "round {i}: {round:?}"
        );
        assert!(round.reattached_ms < 500.0, "round {i}: {round:?}");
        assert!(round.reattached > 0, "round {i}: {round:?}");
        assert_eq!(round.links_changed_below, 0, "round {i}: {round:?}");
        assert!(round.within_owed > 0, "round {i}: {round:?}");
        assert_eq!(
            round.within_delivered, round.within_owed,
            "round {i}: {round:?}"
        );
        assert_eq!(round.duplicates, 0, "round {i}");
        assert_eq!(round.max_concurrent_roots, 1, "round {i}");
    }
    assert!(result.goals_met());
}

#[test]
fn a_paused_leader_never_acts_as_root_after_it_wakes() {
    let result = failover::run(&params(Fault::Pause, 8), &mut |_| {}).expect("runs");
    assert_eq!(result.stale_root_actions, 0);
    for round in &result.rounds {
        assert_eq!(round.max_concurrent_roots, 1, "{round:?}");
        assert_eq!(round.links_changed_below, 0, "{round:?}");
        assert_eq!(round.within_delivered, round.within_owed, "{round:?}");
    }
    assert!(result.goals_met());
}

#[test]
fn a_run_is_the_same_for_the_same_seed() {
    let a = failover::run(&params(Fault::Kill, 11), &mut |_| {}).expect("runs");
    let b = failover::run(&params(Fault::Kill, 11), &mut |_| {}).expect("runs");
    assert_eq!(a, b);
    let c = failover::run(&params(Fault::Kill, 12), &mut |_| {}).expect("runs");
    assert_ne!(a.events, c.events, "another seed, another run");
}
