//! A replicated candidate's reigns decided in the core: taking over, stepping down, a paused
//! leader waking up, a commit that never comes, and asking for elections.

mod common;

use canopy_tree::proto::Body;
use canopy_tree::{
    Input, NodeId, Output, ReignConfig, Role, StepDownReason, Time, TreeEvent, ViewChange,
};
use common::*;

const CANDIDATES: [NodeId; 3] = [1, 2, 3];

fn reign() -> ReignConfig {
    ReignConfig::default()
}

fn takeover(out: &[Output]) -> Option<(u64, ViewChange)> {
    out.iter().find_map(|o| match o {
        Output::TakeOver { reign, change } => Some((*reign, change.clone())),
        _ => None,
    })
}

fn elections(out: &[Output]) -> usize {
    out.iter()
        .filter(|o| matches!(o, Output::Elect { .. }))
        .count()
}

fn stepped_down(out: &[Output]) -> Option<StepDownReason> {
    events(out).into_iter().find_map(|e| match e {
        TreeEvent::SteppedDown { reason, .. } => Some(reason),
        _ => None,
    })
}

fn leadership(term: u64, leader: Option<NodeId>, contact: Option<Time>) -> Input {
    Input::Leadership {
        term,
        leader,
        contact,
    }
}

#[test]
fn a_leader_within_its_lease_takes_over_only_once_its_new_root_commits() {
    let mut net = Net::replicated(config(), &CANDIDATES, false);
    net.term = 1;
    net.leader = Some(2);
    let out = net.news(2);
    let (number, change) = takeover(&out).expect("takes over");
    assert_eq!(
        change,
        ViewChange::NewRoot {
            root: 2,
            region: REGION.to_owned(),
            address: candidate_address(2),
        }
    );
    assert!(!net.node(2).is_serving_root(), "not before the commit");
    // Joiners are not sent anywhere meanwhile (the old leader may name this node).
    let redirect = net.inject(
        50,
        2,
        Body::JoinRequest(canopy_tree::proto::v1::JoinRequest {
            node_id: 50,
            role: Role::Router.to_proto() as i32,
            region: REGION.to_owned(),
            address: String::new(),
            attempt: 0,
            subtree: None,
        }),
    );
    assert_eq!(sent(&redirect, not_leader)[0].1.leader_hint, 0);

    // More news of the same reign does not start another takeover.
    assert!(takeover(&net.news(2)).is_none());

    net.raft_log.push(change);
    let view = net.replayed_view().expect("committed");
    let out = net.input(
        2,
        Input::BecomeRoot {
            reign: number,
            view: Box::new(view),
        },
    );
    assert!(events(&out).contains(&TreeEvent::BecameRoot {
        epoch: 1,
        reassigned: 0
    }));
    assert!(net.node(2).is_serving_root());
    assert_eq!(net.node(2).reign(), number);
}

#[test]
fn a_leader_without_a_fresh_quorum_contact_does_not_take_over() {
    let mut net = Net::replicated(config(), &CANDIDATES, false);
    net.now = ms(1000);
    let stale = net.now - reign().lease - ms(1);
    let out = net.input(2, leadership(1, Some(2), Some(stale)));
    assert!(takeover(&out).is_none(), "{out:?}");
    let out = net.input(2, leadership(1, Some(2), None));
    assert!(takeover(&out).is_none(), "{out:?}");
    let out = net.input(2, leadership(1, Some(2), Some(net.now)));
    assert!(takeover(&out).is_some(), "fresh contact: {out:?}");
}

#[test]
fn news_of_another_leader_ends_the_reign_and_sends_the_children_through_it() {
    let mut net = Net::serving_tree();
    let children = net.child_ids(1);
    net.term += 1;
    let out = net.input(1, leadership(net.term, Some(2), Some(net.now)));
    assert_eq!(stepped_down(&out), Some(StepDownReason::NotLeader));
    let mut told: Vec<NodeId> = sent(&out, disconnect)
        .into_iter()
        .map(|(to, _)| to)
        .collect();
    told.sort_unstable();
    assert_eq!(told, children);
    assert!(!net.node(1).is_serving_root());
    assert_eq!(net.node(1).known_leader(), Some(2));
    // An older term's news changes nothing afterwards.
    let out = net.input(1, leadership(1, Some(1), Some(net.now)));
    assert!(takeover(&out).is_none() && !net.node(1).is_serving_root());
}

#[test]
fn a_paused_leader_waking_up_steps_down_before_it_acts() {
    let mut net = Net::serving_tree();
    let before = net.node(1).view().expect("serving").clone();
    // The process stops: no news, no ticks. It wakes long after its lease, with a join
    // request and a child's heartbeat waiting, and the news it relays is the old one.
    net.now += reign().election_after * 10;
    let out = net.inject(
        60,
        1,
        Body::JoinRequest(canopy_tree::proto::v1::JoinRequest {
            node_id: 60,
            role: Role::Client.to_proto() as i32,
            region: REGION.to_owned(),
            address: String::new(),
            attempt: 0,
            subtree: None,
        }),
    );
    assert_eq!(stepped_down(&out), Some(StepDownReason::LeaseExpired));
    assert!(proposals(&out).is_empty(), "decided nothing: {out:?}");
    assert!(
        !events(&out)
            .iter()
            .any(|e| matches!(e, TreeEvent::Placed { .. })),
        "{out:?}"
    );
    assert!(
        sent(&out, adopt_child).is_empty() && sent(&out, assign_parent).is_empty(),
        "{out:?}"
    );
    assert!(!net.node(1).is_serving_root());
    // Stale news (contact from before the pause) does not bring it back.
    let stale = net.contact[&1];
    let out = net.input(1, leadership(net.term, Some(1), Some(stale)));
    assert!(takeover(&out).is_none(), "{out:?}");
    assert!(!net.node(1).is_serving_root());
    assert!(before.len() > 1);
}

#[test]
fn a_serving_root_wakes_itself_when_its_lease_runs_out() {
    let mut net = Net::serving_tree();
    let out = net.input(1, Input::Tick);
    let wake = wakes(&out);
    let lease_end = net.contact[&1] + reign().lease;
    assert!(
        wake.iter().all(|&w| w <= lease_end + ms(1)),
        "asks to be woken by the end of its lease: {wake:?}"
    );
    net.now = lease_end + ms(1);
    let out = net.input(1, Input::Tick);
    assert_eq!(stepped_down(&out), Some(StepDownReason::LeaseExpired));
}

#[test]
fn a_commit_that_never_comes_ends_the_reign() {
    let mut net = Net::serving_tree();
    net.auto_commit.clear();
    net.start(70, Role::Client);
    let (_, out) = net.deliver_one().expect("join");
    let out = out.expect("delivered");
    assert_eq!(proposals(&out).len(), 1);
    assert_eq!(net.node(1).held_actions(), 1);
    // The group keeps relaying fresh news (a quorum acknowledges the leader), but this
    // proposal never commits.
    net.advance(reign().commit_timeout + ms(20));
    let ended = net.events_of(1).contains(&TreeEvent::SteppedDown {
        leader: None,
        reason: StepDownReason::CommitFailed,
    });
    assert!(ended, "{:?}", net.events_of(1));
    assert!(
        net.delivered_between(1, 70, assign_parent).is_empty(),
        "the held placement was never sent"
    );
}

#[test]
fn a_failed_commit_of_the_current_reign_ends_it_and_a_stale_one_does_not() {
    let mut net = Net::serving_tree();
    let number = net.node(1).reign();
    let out = net.input(1, Input::CommitFailed { reign: number + 7 });
    assert!(stepped_down(&out).is_none());
    let out = net.input(
        1,
        Input::Committed {
            reign: number + 7,
            up_to: 1000,
        },
    );
    assert!(sends(&out).is_empty());
    assert!(net.node(1).is_serving_root());
    let out = net.input(1, Input::CommitFailed { reign: number });
    assert_eq!(stepped_down(&out), Some(StepDownReason::CommitFailed));
    // The next fresh news begins a new reign.
    let out = net.news(1);
    let (next, _) = takeover(&out).expect("a new takeover");
    assert!(next > number);
}

#[test]
fn a_takeover_that_never_commits_is_abandoned_and_tried_again() {
    let mut net = Net::replicated(config(), &CANDIDATES, false);
    net.term = 1;
    net.leader = Some(2);
    let (first, _) = takeover(&net.news(2)).expect("takes over");
    net.now += reign().commit_timeout + ms(1);
    net.input(2, Input::Tick);
    let out = net.news(2);
    let (second, _) = takeover(&out).expect("asks again");
    assert!(second > first);
    // The answer to the abandoned reign is not acted on.
    let mut view = None;
    ViewChange::NewRoot {
        root: 2,
        region: REGION.to_owned(),
        address: candidate_address(2),
    }
    .apply_to(&mut view, &config());
    let out = net.input(
        2,
        Input::BecomeRoot {
            reign: first,
            view: Box::new(view.clone().expect("a view")),
        },
    );
    assert!(!net.node(2).is_serving_root(), "{out:?}");
    net.input(
        2,
        Input::BecomeRoot {
            reign: second,
            view: Box::new(view.expect("a view")),
        },
    );
    assert!(net.node(2).is_serving_root());
}

#[test]
fn a_cull_waits_for_the_commit_of_the_decision() {
    let mut cfg = config();
    cfg.imbalance_bound = 1;
    let mut net = Net::replicated(cfg, &CANDIDATES, true);
    net.elect(1);
    net.join(10, Role::Router);
    for id in 100..=105 {
        net.join(id, Role::Client);
    }
    net.join(11, Role::Router);
    net.auto_commit.clear();
    let mark = net.proposals.len();
    net.advance(net.config.rebalance_interval + ms(10));
    let rebalance: Vec<_> = net.proposals[mark..]
        .iter()
        .filter(|(_, _, c)| matches!(c, ViewChange::Rebalance { .. }))
        .cloned()
        .collect();
    assert_eq!(rebalance.len(), 1, "{:?}", &net.proposals[mark..]);
    assert!(
        net.log.iter().all(|s| cull(s.body()).is_none()),
        "no cull before the commit"
    );
    let (_, seq, _) = rebalance[0].clone();
    let number = net.node(1).reign();
    let out = net.input(
        1,
        Input::Committed {
            reign: number,
            up_to: seq,
        },
    );
    assert_eq!(sent(&out, cull).len(), 1, "{out:?}");
}

// ---------------------------------------------------------------------------------------
// Elections.

#[test]
fn a_follower_asks_for_an_election_only_once_the_vote_lease_has_run_out() {
    let mut net = Net::serving_tree();
    let heard = net.now;
    net.crash(1);
    let config = reign();
    // Candidate 2 ranks first among the survivors, 3 one stagger later.
    let due = |rank: u32| heard + config.election_after + config.election_stagger * rank;
    while net.now < due(0) {
        net.advance(ms(5));
        if net.now < due(0) {
            assert!(
                net.elections.is_empty(),
                "{:?} at {:?}",
                net.elections,
                net.now
            );
        }
    }
    net.advance(ms(5));
    assert_eq!(net.elections.len(), 1, "{:?}", net.elections);
    assert_eq!(net.elections[0].0, 2);
    assert!(net.elections[0].1 >= due(0));
    // 2 wins: 3 hears from it and never asks.
    net.elect(2);
    net.advance(config.election_after * 3);
    assert!(
        net.elections.iter().all(|&(id, _)| id == 2),
        "{:?}",
        net.elections
    );
}

#[test]
fn if_the_first_does_not_win_the_next_rank_asks_and_turns_repeat() {
    let mut net = Net::serving_tree();
    let heard = net.now;
    net.crash(1);
    let config = reign();
    net.advance(config.election_after + config.election_stagger * 4 + ms(5));
    let who: Vec<NodeId> = net.elections.iter().map(|&(id, _)| id).collect();
    assert_eq!(&who[..3], &[2, 3, 2], "{:?}", net.elections);
    for (i, &(_, at)) in net.elections.iter().enumerate() {
        let turn = heard + config.election_after + config.election_stagger * i as u32;
        assert!(at >= turn && at < turn + ms(10), "attempt {i} at {at:?}");
    }
}

#[test]
fn a_restarted_candidate_waits_a_whole_vote_lease_before_asking() {
    let mut net = Net::replicated(config(), &CANDIDATES, true);
    net.now = ms(10_000);
    let mut fresh = canopy_tree::Node::new(
        3,
        Role::Root,
        REGION,
        candidate_address(3),
        std::sync::Arc::clone(&net.config),
        candidates(&CANDIDATES),
        3,
    )
    .replicated(reign());
    let start = net.now;
    let out = fresh.handle(Input::Start, start);
    assert_eq!(elections(&out), 0);
    let out = fresh.handle(Input::Tick, start + reign().election_after - ms(1));
    assert_eq!(elections(&out), 0, "{out:?}");
    let out = fresh.handle(Input::Tick, start + reign().election_after * 2);
    assert_eq!(elections(&out), 1, "{out:?}");
}

#[test]
fn a_placement_of_a_reign_deposed_before_its_commit_is_superseded_by_the_next_reign() {
    let mut net = Net::serving_tree();
    let top = net.child_ids(1);
    net.crash(1);
    // An election comes a vote lease after the leader's silence began.
    net.advance(ms(200));
    net.auto_commit.clear();
    // 2 takes over and places the old root's children under itself at once; it dies before
    // those placements commit (only its NewRoot did).
    net.elect(2);
    net.run();
    for &child in &top {
        assert_eq!(net.parent(child), Some(2), "child {child}");
    }
    net.crash(2);
    net.advance(ms(200));
    // 3 takes over from the committed log, in which the children still carry 1's ids.
    net.auto_commit.insert(3);
    net.elect(3);
    net.run();
    for &child in &top {
        assert_eq!(
            net.parent(child),
            Some(3),
            "child {child} obeys the later reign: {:?}",
            net.events_of(child)
        );
    }
    assert!(net.node(3).children().all(|c| c.attached));
}

#[test]
fn a_candidate_cannot_take_over_a_node_below_the_roots_children() {
    let mut net = Net::serving_tree();
    // A client two levels down (its parent is a router, not the root).
    let deep = (100..=107)
        .find(|&c| net.parent(c).is_some_and(|p| p != 1))
        .expect("a client under a router");
    let parent = net.parent(deep);
    let epoch = net.node(deep).epoch();
    // Candidate 3, which does not serve, claims a takeover at a later epoch.
    let grant = canopy_tree::placement_grant_at_epoch(
        3,
        deep,
        3,
        candidate_address(3),
        u64::MAX / 2,
        net.now,
        epoch + 1,
    );
    let out = net.inject(
        3,
        deep,
        Body::AssignParent(canopy_tree::proto::v1::AssignParent {
            child_id: deep,
            parent_id: 3,
            parent_address: candidate_address(3),
            assignment_id: u64::MAX / 2,
            topology_epoch: epoch + 1,
            grant: Some(grant),
        }),
    );
    assert!(
        events(&out).contains(&TreeEvent::Dropped {
            from: 3,
            kind: "assign_parent",
            reason: canopy_tree::DropReason::Unauthorized,
        }),
        "{out:?}"
    );
    assert_eq!(net.parent(deep), parent);
}
