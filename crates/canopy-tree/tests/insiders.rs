//! Credentialed insiders against the state machine: placements need the root's grant, a
//! forged or stale one never wedges a node, and every quantity a child reports is bounded.

mod common;

use canopy_tree::proto::v1::{disconnect::Reason, Disconnect};
use canopy_tree::proto::v1::{
    AssignParent, Cull, Heartbeat, InterestDelta, InterestSnapshot, SubtreeSize,
};
use canopy_tree::proto::Body;
use canopy_tree::{placement_grant, DropReason, Output, Role, TreeConfig, TreeEvent};
use common::*;

fn assign(child: u64, parent: u64, assignment_id: u64, grant_root: Option<u64>, net: &Net) -> Body {
    Body::AssignParent(AssignParent {
        child_id: child,
        parent_id: parent,
        parent_address: String::new(),
        assignment_id,
        topology_epoch: 1,
        grant: grant_root.map(|root| {
            placement_grant(root, child, parent, String::new(), assignment_id, net.now)
        }),
    })
}

/// `parent` tells client 100 it is no longer its parent (the client rejoins).
fn parent_lets_go(net: &mut Net, parent: u64, reason: Reason) {
    net.inject(
        parent,
        100,
        Body::Disconnect(Disconnect {
            sender_id: parent,
            reason: reason as i32,
            rejoin: true,
        }),
    );
}

fn unauthorized(net: &Net, id: u64) -> usize {
    net.events_of(id)
        .iter()
        .filter(|e| {
            matches!(
                e,
                TreeEvent::Dropped {
                    reason: DropReason::Unauthorized,
                    ..
                }
            )
        })
        .count()
}

/// A router that assigns itself as a victim's parent with the highest assignment id moves
/// nobody, and the victim still obeys the root's next genuine placement.
#[test]
fn a_router_cannot_move_a_node_or_wedge_it() {
    let mut net = Net::new(config(), 1);
    net.join(10, Role::Router);
    net.join(11, Role::Router);
    net.join(100, Role::Client);
    // No grant, a grant "from" the attacker, a grant for another node, a grant naming
    // another parent: all refused.
    let parent = net.parent(100);
    net.inject(11, 100, assign(100, 11, u64::MAX, None, &net));
    net.inject(11, 100, assign(100, 11, u64::MAX, Some(11), &net));
    let mut wrong_child = assign(100, 11, u64::MAX, Some(ROOT), &net);
    if let Body::AssignParent(a) = &mut wrong_child {
        a.grant = Some(placement_grant(
            ROOT,
            101,
            11,
            String::new(),
            u64::MAX,
            net.now,
        ));
    }
    net.inject(11, 100, wrong_child);
    let mut wrong_parent = assign(100, 11, u64::MAX, Some(ROOT), &net);
    if let Body::AssignParent(a) = &mut wrong_parent {
        a.grant = Some(placement_grant(
            ROOT,
            100,
            10,
            String::new(),
            u64::MAX,
            net.now,
        ));
    }
    net.inject(11, 100, wrong_parent);
    net.run();
    assert_eq!(unauthorized(&net, 100), 4);
    assert_eq!(net.parent(100), parent);
    // The victim still obeys the root: culled by its parent, it is placed again.
    let victim_parent = net.parent(100).expect("attached");
    parent_lets_go(&mut net, victim_parent, Reason::Culled);
    net.advance(ms(2000));
    let now_under = net.parent(100).expect("the victim rejoined");
    assert_eq!(net.view_parent(100), Some(now_under));
}

/// A former parent replaying the grant of its earlier placement after letting the node go
/// gets nothing: assignment ids only rise.
#[test]
fn replayed_grants_of_earlier_placements_are_stale() {
    let mut net = Net::new(config(), 1);
    net.join(10, Role::Router);
    net.join(100, Role::Client);
    let parent = net.parent(100).expect("attached");
    let replay = net
        .delivered_between(parent, 100, |b| match b {
            Body::AssignParent(a) => Some(a.clone()),
            _ => None,
        })
        .pop()
        .expect("the genuine assignment");
    parent_lets_go(&mut net, parent, Reason::Leaving);
    let out = net.inject(parent, 100, Body::AssignParent(replay));
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Event(TreeEvent::Dropped {
            reason: DropReason::StaleAssignment,
            ..
        })
    )));
    assert_eq!(
        net.parent(100),
        None,
        "still joining, not back under the replayer"
    );
}

/// The epoch and the root a placed node follows come from the root's grant, and a fresh
/// join forgets what a parent claimed.
#[test]
fn a_parent_cannot_poison_the_epoch_for_good() {
    let mut net = Net::new(config(), 1);
    net.join(10, Role::Router);
    net.join(100, Role::Client);
    let parent = net.parent(100).expect("attached");
    net.inject(
        parent,
        100,
        Body::Heartbeat(Heartbeat {
            sender_id: parent,
            subtree: None,
            topology_epoch: u64::MAX,
            interest: None,
            assignment_id: 0,
            root_id: 0,
        }),
    );
    assert_eq!(net.node(100).epoch(), u64::MAX);
    parent_lets_go(&mut net, parent, Reason::Leaving);
    net.advance(ms(2000));
    assert!(net.parent(100).is_some());
    assert_eq!(net.node(100).epoch(), net.root().epoch());
}

/// A node that asks to join again while attached is placed anew, and its old parent lets go:
/// no node sits under two parents.
#[test]
fn a_second_placement_releases_the_first() {
    let mut net = Net::new(config(), 1);
    net.join(10, Role::Router);
    net.join(11, Role::Router);
    net.join(100, Role::Client);
    let first = net.parent(100).expect("attached");
    // The client asks again (a retry: the root keeps it away from the parent it has).
    net.inject(
        100,
        ROOT,
        Body::JoinRequest(canopy_tree::proto::v1::JoinRequest {
            node_id: 100,
            role: canopy_tree::proto::v1::Role::Client as i32,
            region: REGION.into(),
            address: String::new(),
            attempt: 1,
            subtree: None,
        }),
    );
    net.run();
    let second = net.parent(100).expect("attached");
    assert_ne!(first, second);
    let holders: Vec<u64> = [ROOT, 10, 11]
        .into_iter()
        .filter(|&p| net.child_ids(p).contains(&100))
        .collect();
    assert_eq!(holders, vec![second], "exactly one parent keeps the client");
}

/// A child cannot raise the assignment id of its link (its removal would then never match
/// the root's view).
#[test]
fn a_child_cannot_raise_its_assignment_id() {
    let mut net = Net::new(config(), 1);
    net.join(10, Role::Router);
    net.join(100, Role::Client);
    let parent = net.parent(100).expect("attached");
    let out = net.inject(
        100,
        parent,
        Body::Reattach(canopy_tree::proto::v1::Reattach {
            node_id: 100,
            role: canopy_tree::proto::v1::Role::Client as i32,
            assignment_id: u64::MAX,
            subtree: None,
            interest: None,
        }),
    );
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Event(TreeEvent::Dropped {
            reason: DropReason::StaleAssignment,
            ..
        })
    )));
    let link = net
        .node(parent)
        .children()
        .find(|c| c.id == 100)
        .expect("still a child");
    assert!(link.assignment_id < u64::MAX);
}

/// A grant older than the configured age is refused: a placement recorded earlier cannot be
/// replayed to move a node that restarted.
#[test]
fn stale_grants_are_refused() {
    let mut net = Net::new(config(), 1);
    net.join(10, Role::Router);
    net.join(100, Role::Client);
    let old = placement_grant(ROOT, 100, 10, String::new(), 1_000, net.now);
    net.advance(config().limits.placement_max_age + ms(100));
    let before = net.parent(100);
    net.inject(
        10,
        100,
        Body::AssignParent(AssignParent {
            child_id: 100,
            parent_id: 10,
            parent_address: String::new(),
            assignment_id: 1_000,
            topology_epoch: 1,
            grant: Some(old),
        }),
    );
    assert_eq!(net.parent(100), before);
    assert_eq!(unauthorized(&net, 100), 1);
}

/// Only the parent or the serving root may cull.
#[test]
fn a_stranger_cannot_cull() {
    let mut net = Net::new(config(), 1);
    net.join(10, Role::Router);
    net.join(11, Role::Router);
    for c in 100..104 {
        net.join(c, Role::Client);
    }
    let before: usize = [10, 11].iter().map(|&r| net.child_ids(r).len()).sum();
    net.inject(11, 10, Body::Cull(Cull { count: 100 }));
    net.inject(100, 10, Body::Cull(Cull { count: 100 }));
    net.run();
    let after: usize = [10, 11].iter().map(|&r| net.child_ids(r).len()).sum();
    assert_eq!(before, after);
}

fn small_limits() -> TreeConfig {
    let mut config = config();
    config.limits.max_tags_per_client_link = 8;
    config.limits.max_tags_per_delta = 4;
    config.limits.max_subtree_nodes = 1000;
    config
}

fn child_of_router(net: &mut Net) -> (u64, u64) {
    net.join(10, Role::Router);
    net.join(100, Role::Client);
    let parent = net.parent(100).expect("attached");
    (parent, 100)
}

/// A client advertising more tags than its link allows loses the link, and its tags are
/// withdrawn; the other child keeps its place.
#[test]
fn too_many_tags_close_the_offenders_link() {
    let mut net = Net::new(small_limits(), 1);
    let (parent, child) = child_of_router(&mut net);
    net.join(101, Role::Client);
    let tags: Vec<u64> = (1000..1009).collect();
    let out = net.inject(
        child,
        parent,
        Body::InterestSnapshot(InterestSnapshot {
            tags: tags.clone(),
            more: false,
        }),
    );
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::CloseLink { peer, .. } if *peer == child)));
    assert!(!net.child_ids(parent).contains(&child));
    assert!(!net.node(parent).interest().subtree_wants(1000));
    assert_eq!(net.parent(101), Some(net.parent(101).unwrap_or(0)));
}

/// A delta larger than the bound, or one that grows the set over it, closes the link too.
#[test]
fn oversized_deltas_close_the_link() {
    let mut net = Net::new(small_limits(), 1);
    let (parent, child) = child_of_router(&mut net);
    let delta = |add: Vec<u64>| {
        Body::Heartbeat(Heartbeat {
            sender_id: child,
            subtree: Some(SubtreeSize {
                clients: 1,
                routers: 0,
            }),
            topology_epoch: 0,
            interest: Some(InterestDelta {
                add,
                remove: vec![],
            }),
            assignment_id: 0,
            root_id: 0,
        })
    };
    let out = net.inject(child, parent, delta((1..=5).collect()));
    assert!(out.iter().any(|o| matches!(o, Output::CloseLink { .. })));
    assert!(!net.child_ids(parent).contains(&child));
}

/// Subtree sizes a child reports are bounded, and a parent's own sum saturates.
#[test]
fn absurd_subtree_sizes_close_the_link() {
    let mut net = Net::new(small_limits(), 1);
    net.join(10, Role::Router);
    net.join(20, Role::Router);
    let parent = net.parent(20).expect("attached");
    let out = net.inject(
        20,
        parent,
        Body::Heartbeat(Heartbeat {
            sender_id: 20,
            subtree: Some(SubtreeSize {
                clients: u64::MAX,
                routers: u64::MAX,
            }),
            topology_epoch: 0,
            interest: None,
            assignment_id: 0,
            root_id: 0,
        }),
    );
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::CloseLink { peer: 20, .. })));
    let size = net.node(parent).subtree();
    assert!(size.clients < 1000 && size.routers < 1000);
}

/// A node wanting more tags than one delta may carry sends them in several heartbeats and
/// its parent ends up with every one of them.
#[test]
fn large_interest_changes_go_up_in_pieces() {
    let mut config = config();
    config.limits.max_tags_per_delta = 16;
    let mut net = Net::new(config, 1);
    let (parent, child) = child_of_router(&mut net);
    for tag in 5000..5100 {
        net.input(child, canopy_tree::Input::Subscribe(tag));
    }
    net.advance(ms(500));
    let deltas = net.delivered_between(child, parent, |b| match b {
        Body::Heartbeat(h) => h.interest.as_ref().map(|d| d.add.len() + d.remove.len()),
        _ => None,
    });
    assert!(deltas.iter().all(|&n| n <= 16), "{deltas:?}");
    assert!(deltas.len() >= 7);
    for tag in 5000..5100 {
        assert_eq!(net.node(parent).child_advertised(child, tag), Some(true));
    }
    assert!(net.child_ids(parent).contains(&child));
}

/// When a router's subtree would want more tags than the router may advertise, the child
/// bringing the most goes, not the sibling whose small change tipped the total over.
#[test]
fn the_largest_contributor_goes_when_a_subtree_overflows() {
    let mut config = config();
    config.limits.max_tags_per_router_link = 24;
    config.limits.max_tags_per_client_link = 20;
    let mut net = Net::new(config, 1);
    net.join(10, Role::Router);
    net.join(100, Role::Client);
    net.join(101, Role::Client);
    let (big, small) = (100, 101);
    let parent = net.parent(big).expect("attached");
    assert_eq!(net.parent(small), Some(parent));
    // The big one sits just under what its parent may advertise.
    for tag in 5000..5018 {
        net.input(big, canopy_tree::Input::Subscribe(tag));
    }
    net.advance(ms(200));
    assert!(net.child_ids(parent).contains(&big));
    // The small one adds a few: the total tips over. (Only its heartbeat is delivered: the
    // evicted one would rejoin and be evicted again, which the daemon's ban paces.)
    for tag in 6000..6004 {
        net.input(small, canopy_tree::Input::Subscribe(tag));
    }
    net.now += ms(50);
    net.input(small, canopy_tree::Input::Tick);
    for sent in net.take(|s| s.from == small && s.to == parent) {
        net.deliver(sent);
    }
    let children = net.child_ids(parent);
    assert!(
        !children.contains(&big),
        "the largest contributor was dropped"
    );
    assert!(
        children.contains(&small),
        "the small sibling kept its place"
    );
    assert!(net
        .closed
        .iter()
        .any(|(node, peer, _)| *node == parent && *peer == big));
}
