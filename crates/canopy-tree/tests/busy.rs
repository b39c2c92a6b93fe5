//! A joiner refused by a busy root (`Input::Busy`): it waits a jittered, growing pause and
//! asks the same candidate again as the same attempt, instead of taking the refusal for a
//! dead root and moving on to the next candidate.

mod common;

use canopy_tree::{Input, NodeId, Role, TreeEvent};
use common::*;

const CANDIDATES: [NodeId; 3] = [1, 2, 3];

/// Joins sent in `out`: (to, attempt).
fn joins(out: &[canopy_tree::Output]) -> Vec<(NodeId, u32)> {
    sent(out, join_request)
        .into_iter()
        .map(|(to, j)| (to, j.attempt))
        .collect()
}

/// Ticks the joiner every millisecond until it sends a join; returns when and to whom.
fn next_join(net: &mut Net, id: NodeId, limit: std::time::Duration) -> Option<(u64, NodeId, u32)> {
    let end = net.now + limit;
    while net.now < end {
        net.now += ms(1);
        let out = net.input(id, Input::Tick);
        if let Some(&(to, attempt)) = joins(&out).first() {
            return Some((net.now.as_millis() as u64, to, attempt));
        }
    }
    None
}

#[test]
fn a_busy_root_is_asked_again_after_a_growing_jittered_pause() {
    let config = config();
    let quarter = config.join_timeout.as_millis() as u64 / 4;
    let mut pauses = Vec::new();
    for seed in 0..20u64 {
        let mut net = Net::replicated(config.clone(), &CANDIDATES, false);
        net.add(10, Role::Router, seed);
        let out = net.input(10, Input::Start);
        assert_eq!(joins(&out), vec![(1, 0)]);
        let mut previous = 0;
        for refusal in 0..3u32 {
            let at = net.now.as_millis() as u64;
            let out = net.input(10, Input::Busy { peer: 1 });
            assert!(joins(&out).is_empty(), "no join straight after a refusal");
            let (sent_at, to, attempt) =
                next_join(&mut net, 10, config.join_backoff_max).expect("asked again");
            // The same candidate, the same attempt: a busy root is not a dead one.
            assert_eq!((to, attempt), (1, 0), "seed {seed}, refusal {refusal}");
            let pause = sent_at - at;
            let full = (quarter << refusal).min(config.join_backoff_max.as_millis() as u64);
            assert!(
                pause >= full / 2 && pause <= full + 1,
                "pause {pause} ms after refusal {refusal} (full {full} ms)"
            );
            if refusal > 0 {
                assert!(
                    pause * 4 >= previous,
                    "pauses do not shrink: {previous} then {pause}"
                );
            }
            previous = pause;
            if refusal == 0 {
                pauses.push(pause);
            }
        }
    }
    pauses.sort_unstable();
    pauses.dedup();
    assert!(pauses.len() > 5, "the pause is drawn at random: {pauses:?}");
}

#[test]
fn a_refusal_from_another_candidate_or_after_attaching_changes_nothing() {
    let mut net = Net::replicated(config(), &CANDIDATES, false);
    net.add(10, Role::Router, 1);
    net.input(10, Input::Start);
    // Candidate 2 was not asked: its refusal is not about this join.
    let out = net.input(10, Input::Busy { peer: 2 });
    assert!(out.is_empty(), "{out:?}");
    // The regular retry still comes at the join timeout and moves on to the next candidate.
    let (_, to, attempt) = next_join(&mut net, 10, config().join_timeout * 2).expect("retry");
    assert_eq!((to, attempt), (2, 1));

    let mut net = Net::replicated(config(), &CANDIDATES, true);
    net.elect(1);
    net.join(10, Role::Router);
    assert_eq!(net.parent(10), Some(1));
    let out = net.input(10, Input::Busy { peer: 1 });
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(net.parent(10), Some(1));
    assert!(!net
        .events_of(10)
        .iter()
        .any(|e| matches!(e, TreeEvent::Orphaned { .. })));
}

#[test]
fn after_a_refusal_silence_still_moves_on_to_the_next_candidate() {
    let config = config();
    let mut net = Net::replicated(config.clone(), &CANDIDATES, false);
    net.add(10, Role::Router, 3);
    net.input(10, Input::Start);
    net.input(10, Input::Busy { peer: 1 });
    let (_, to, attempt) = next_join(&mut net, 10, config.join_backoff_max).expect("again");
    assert_eq!((to, attempt), (1, 0));
    // Candidate 1 took the connection this time but never answered: after the join
    // timeout the joiner gives up on it like on any silent candidate.
    let (_, to, attempt) = next_join(&mut net, 10, config.join_timeout * 2).expect("retry");
    assert_eq!((to, attempt), (2, 1));
}

/// The wait for the answer starts when the connection to the candidate asked is up
/// (`Input::LinkUp`): in a storm its handshake may have waited in the candidate's queue for
/// most of the join timeout. A candidate reached is alive: the retry stays with it.
#[test]
fn the_join_timer_runs_from_the_connection_coming_up() {
    let config = config();
    let timeout = config.join_timeout;
    let mut net = Net::replicated(config.clone(), &CANDIDATES, false);
    net.add(10, Role::Router, 7);
    let out = net.input(10, Input::Start);
    assert_eq!(joins(&out), vec![(1, 0)]);
    net.now += timeout.mul_f64(0.9);
    let up = net.now;
    net.input(10, Input::LinkUp { peer: 1 });
    let (sent_at, to, attempt) = next_join(&mut net, 10, timeout * 3).expect("a retry");
    assert!(
        sent_at >= (up + timeout).as_millis() as u64,
        "the timer ran from the link coming up"
    );
    assert_eq!((to, attempt), (1, 1));
}

/// A connection to another candidate, or one that closed again, changes nothing.
#[test]
fn only_a_live_connection_to_the_candidate_asked_counts() {
    let config = config();
    let timeout = config.join_timeout;
    let mut net = Net::replicated(config.clone(), &CANDIDATES, false);
    net.add(10, Role::Router, 7);
    net.input(10, Input::Start);
    net.input(10, Input::LinkUp { peer: 1 });
    net.input(10, Input::LinkClosed { peer: 1 });
    net.input(10, Input::LinkUp { peer: 3 });
    let (_, to, attempt) = next_join(&mut net, 10, timeout * 2).expect("a retry");
    assert_eq!((to, attempt), (2, 1), "a candidate not reached may be down");
}

/// A candidate whose connection is up but that never answers (silent, or knowing no
/// leader) is asked once more, then the join moves on: being reachable holds a joiner for
/// one retry, not for ever.
#[test]
fn a_reached_but_silent_candidate_is_asked_once_more_then_left() {
    let config = config();
    let mut net = Net::replicated(config.clone(), &CANDIDATES, false);
    net.add(10, Role::Router, 7);
    net.input(10, Input::Start);
    net.input(10, Input::LinkUp { peer: 1 });
    let limit = config.join_backoff_max * 2;
    let (_, to, attempt) = next_join(&mut net, 10, limit).expect("a retry");
    assert_eq!((to, attempt), (1, 1), "a reached candidate is asked again");
    let (_, to, attempt) = next_join(&mut net, 10, limit).expect("another retry");
    assert_eq!((to, attempt), (2, 2), "then the next one");
}
