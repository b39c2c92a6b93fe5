//! Attacks on root failover decided in the core, each written (by an adversarial review)
//! before its fix: a credentialed root candidate that does not lead, and unlucky schedules
//! around reigns.

mod common;

use canopy_tree::proto::v1::AssignParent;
use canopy_tree::proto::Body;
use canopy_tree::{placement_grant_at_epoch, Input, NodeId, Output, Role, TreeEvent};
use common::*;

const CANDIDATES: [NodeId; 3] = [1, 2, 3];

/// What a root candidate `by` can sign on its own: "`victim` goes under me", at `epoch`.
fn self_placement(net: &Net, by: NodeId, victim: NodeId, assignment_id: u64, epoch: u64) -> Body {
    Body::AssignParent(AssignParent {
        child_id: victim,
        parent_id: by,
        parent_address: candidate_address(by),
        assignment_id,
        topology_epoch: epoch,
        grant: Some(placement_grant_at_epoch(
            by,
            victim,
            by,
            candidate_address(by),
            assignment_id,
            net.now,
            epoch,
        )),
    })
}

/// Candidate 3 is a follower (1 leads, with a fresh quorum): it is not the serving root,
/// so by the threat model its word places nobody. Yet the "takeover" exception of
/// `check_grant` accepts any candidate's self-placement at an epoch one above the victim's.
#[test]
fn a_candidate_that_does_not_lead_cannot_pull_a_node_under_itself() {
    let mut net = Net::serving_tree();
    assert!(!net.node(3).is_serving_root());
    assert_eq!(net.node(3).known_leader(), Some(1));
    let epoch = net.node(10).epoch() + 1;
    let id = net.node(1).view().unwrap().max_assignment() + (1 << 40);
    let body = self_placement(&net, 3, 10, id, epoch);
    net.inject(3, 10, body);
    assert_eq!(
        net.parent(10),
        Some(1),
        "router 10 (and its whole subtree) left the serving root for a follower: {:?}",
        net.events_of(10)
    );
}

/// The same insider, with the highest assignment id: the victim obeys it, and since a node
/// never obeys an assignment id at or below the best it obeyed (kept across rejoins), no
/// genuine placement by the serving root is ever obeyed again. The malicious candidate only
/// has to go silent afterwards.
#[test]
fn a_candidate_that_does_not_lead_cannot_wedge_a_node_for_good() {
    let mut net = Net::serving_tree();
    let body = self_placement(&net, 3, 10, u64::MAX, u64::MAX);
    net.inject(3, 10, body);
    // The insider keeps quiet: whatever the victim sends it is lost.
    net.crash(3);
    net.advance(ms(5_000));
    assert_eq!(
        net.parent(10),
        Some(1),
        "router 10 never reattaches to the serving root: {:?}",
        net.events_of(10).iter().rev().take(6).collect::<Vec<_>>()
    );
}

fn takeover(out: &[Output]) -> Option<u64> {
    out.iter().find_map(|o| match o {
        Output::TakeOver { reign, .. } => Some(*reign),
        _ => None,
    })
}

fn join_request(id: NodeId, role: Role) -> Body {
    Body::JoinRequest(canopy_tree::proto::v1::JoinRequest {
        node_id: id,
        role: role.to_proto() as i32,
        region: REGION.to_owned(),
        address: format!("addr-{id}"),
        attempt: 0,
        subtree: None,
    })
}

fn placed(out: &[Output]) -> Vec<u64> {
    events(out)
        .into_iter()
        .filter_map(|e| match e {
            TreeEvent::Placed { assignment_id, .. } => Some(assignment_id),
            _ => None,
        })
        .collect()
}

/// A leader's takeover commits, but its `BecomeRoot` is handled just after its relayed
/// lease ran out (the commit took longer than the lease, the next news not relayed yet).
/// The answer is refused, yet the reign stays "becoming": fresh news a moment later (the
/// same leader, a quorum acknowledging it) starts nothing, and the group has a leader but
/// the tree no root until the whole commit timeout (4 vote leases) has passed.
#[test]
fn a_become_root_refused_for_a_lapsed_lease_does_not_leave_the_leader_rootless() {
    let reign = canopy_tree::ReignConfig::default();
    let mut net = Net::replicated(config(), &CANDIDATES, false);
    net.term = 1;
    net.leader = Some(2);
    let out = net.news(2);
    let number = takeover(&out).expect("takes over");
    net.raft_log.push(canopy_tree::ViewChange::NewRoot {
        root: 2,
        region: REGION.to_owned(),
        address: candidate_address(2),
    });
    net.now += reign.lease + ms(5);
    let view = net.replayed_view().expect("committed");
    net.input(
        2,
        Input::BecomeRoot {
            reign: number,
            view: Box::new(view),
        },
    );
    assert!(
        !net.node(2).is_serving_root(),
        "refused: the lease had run out"
    );
    // Fresh news: 2 still leads the same term with a quorum.
    net.now += ms(5);
    let out = net.news(2);
    assert!(
        takeover(&out).is_some() || net.node(2).is_serving_root(),
        "the leader neither serves nor takes over again: {out:?}"
    );
}

/// Assignment ids of a reign once started at `epoch << 40`, which saturated from topology
/// epoch 2^24 on (every takeover, including a leader re-taking after a lease blip, a commit
/// timeout, or a new term, bumps the epoch: a flapping leader gets there in months). From
/// then on every reign starts at u64::MAX: the first placement takes the last id and the
/// next one overflows (a panic in debug builds; in release it wraps to 0, below every id
/// any node has obeyed, so no placement is obeyed again).
#[test]
fn assignment_ids_keep_rising_at_high_topology_epochs() {
    let mut net = Net::replicated(config(), &CANDIDATES, false);
    net.term = 1;
    net.leader = Some(2);
    let out = net.news(2);
    let number = takeover(&out).expect("takes over");
    let mut view = None;
    canopy_tree::ViewChange::NewRoot {
        root: 2,
        region: REGION.to_owned(),
        address: candidate_address(2),
    }
    .apply_to(&mut view, &net.config);
    let mut view = view.expect("a view");
    view.epoch = 1 << 24;
    net.input(
        2,
        Input::BecomeRoot {
            reign: number,
            view: Box::new(view),
        },
    );
    assert!(net.node(2).is_serving_root());
    let first = placed(&net.inject(50, 2, join_request(50, Role::Router)));
    let second = placed(&net.inject(51, 2, join_request(51, Role::Router)));
    assert_eq!((first.len(), second.len()), (1, 1));
    assert!(second[0] > first[0], "{first:?} then {second:?}");
}

/// Raft re-elects the serving leader in a new term (a follower's election timer fired and
/// the leader won again): nothing about the tree changed and the lease holds throughout.
/// The core ends the reign anyway and tells every top-level child to leave and rejoin
/// (`Disconnect{rejoin}`): each orphans, drops its epoch, sends its join to the *next*
/// candidate (the old parent was the leader) and is bounced back, before the new reign
/// re-places it. Every term change costs the whole top of the tree a disconnect.
#[test]
fn a_new_term_with_the_same_leader_does_not_disconnect_the_top_of_the_tree() {
    let mut net = Net::serving_tree();
    let top = net.child_ids(1);
    let mark = net.log.len();
    net.term += 1;
    let out = net.news(1);
    if let Some(number) = takeover(&out) {
        let change = out
            .iter()
            .find_map(|o| match o {
                Output::TakeOver { change, .. } => Some(change.clone()),
                _ => None,
            })
            .expect("a change");
        net.raft_log.push(change);
        let view = net.replayed_view().expect("committed");
        net.input(
            1,
            Input::BecomeRoot {
                reign: number,
                view: Box::new(view),
            },
        );
    }
    net.run();
    let orphaned: Vec<NodeId> = top
        .iter()
        .copied()
        .filter(|&c| {
            net.log[mark..]
                .iter()
                .any(|s| s.from == 1 && s.to == c && disconnect(s.body()).is_some())
        })
        .collect();
    assert!(
        orphaned.is_empty(),
        "children told to leave on a mere term change: {orphaned:?}"
    );
}
