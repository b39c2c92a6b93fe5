//! State transitions of `canopy_tree::Node` around culling: a router told `Cull(n)`, the
//! remainder passed down to child routers, culled clients rejoining through the root, and
//! the root's periodic rebalance.

mod common;

use std::collections::BTreeSet;

use canopy_tree::proto::v1::{disconnect::Reason, AdoptChild, Cull};
use canopy_tree::proto::Body;
use canopy_tree::{NodeId, RemovalReason, Role, TreeEvent};
use common::*;

fn cull_msg(count: u64) -> Body {
    Body::Cull(Cull { count })
}

#[test]
fn router_culls_exactly_n_clients_and_they_rejoin_through_the_root() {
    let mut net = Net::new(config(), 12);
    net.join(10, Role::Router);
    for c in 100..105 {
        net.join(c, Role::Client);
    }
    assert_eq!(net.child_ids(10), vec![100, 101, 102, 103, 104]);
    net.join(11, Role::Router);
    net.advance(ms(100));
    net.events.clear();

    let out = net.inject(ROOT, 10, cull_msg(2));
    let disconnects = sent(&out, disconnect);
    assert_eq!(disconnects.len(), 2);
    let culled: BTreeSet<NodeId> = disconnects.iter().map(|(to, _)| *to).collect();
    assert_eq!(culled.len(), 2);
    for (to, d) in &disconnects {
        assert!((100..105).contains(to));
        assert_eq!(d.sender_id, 10);
        assert!(is_disconnect(d, Reason::Culled, true));
    }
    let ev = events(&out);
    for &c in &culled {
        assert!(ev.contains(&TreeEvent::ChildRemoved {
            child: c,
            reason: RemovalReason::Culled
        }));
    }
    assert!(ev.contains(&TreeEvent::Culled { count: 2 }));
    let reports = sent(&out, child_removed);
    assert_eq!(reports.len(), 2);
    assert!(reports
        .iter()
        .all(|(to, r)| *to == ROOT && r.parent_id == 10));
    assert!(
        sent(&out, cull).is_empty(),
        "no child routers to pass a remainder to"
    );
    assert_eq!(net.node(10).child_count(), 3);
    assert!(net.child_ids(10).iter().all(|c| !culled.contains(c)));

    // The culled clients rejoin through the root, which puts them under the light router.
    net.run();
    for &c in &culled {
        assert!(net
            .events_of(c)
            .contains(&TreeEvent::Orphaned { previous: 10 }));
        assert!(net.delivered_between(c, ROOT, join_request).len() >= 2);
        assert_eq!(net.parent(c), Some(11));
        assert_eq!(net.view_parent(c), Some(11));
    }
    assert_eq!((net.view_clients(10), net.view_clients(11)), (3, 2));
    assert_eq!(net.child_ids(11).len(), 2);
}

#[test]
fn cull_is_refused_from_a_non_parent() {
    let mut net = Net::new(config(), 12);
    net.join(10, Role::Router);
    net.join(11, Role::Router);
    for c in 100..104 {
        net.join(c, Role::Client);
    }
    let before = net.child_ids(10);
    // A sibling router is no authority over 10's clients.
    let out = net.inject(11, 10, cull_msg(2));
    assert_eq!(
        events(&out),
        vec![TreeEvent::Dropped {
            from: 11,
            kind: "cull",
            reason: canopy_tree::DropReason::NotANeighbour
        }]
    );
    assert!(sends(&out).is_empty());
    assert_eq!(net.child_ids(10), before);
}

/// Router 10 under the root with one client of its own (100) and two child routers:
/// 20 with three clients (200..203) and 21 with one (210). The shape is forced by
/// AdoptChild messages injected as if from the root.
fn deep_tree() -> Net {
    let mut net = Net::new(config(), 13);
    net.join(10, Role::Router);
    let mut assignment = 100;
    let mut place = |net: &mut Net, child: NodeId, role: Role, parent: NodeId| {
        net.start(child, role);
        // The join request is not answered by the root: the test places the node.
        net.take(|s| s.from == child);
        assignment += 1;
        net.inject(
            ROOT,
            parent,
            Body::AdoptChild(AdoptChild {
                child_id: child,
                role: role.to_proto() as i32,
                region: REGION.into(),
                address: String::new(),
                assignment_id: assignment,
                grant: Some(canopy_tree::placement_grant(
                    ROOT,
                    child,
                    parent,
                    String::new(),
                    assignment,
                    net.now,
                )),
            }),
        );
        net.run();
        assert_eq!(net.parent(child), Some(parent));
    };
    place(&mut net, 20, Role::Router, 10);
    place(&mut net, 21, Role::Router, 10);
    place(&mut net, 100, Role::Client, 10);
    for c in 200..203 {
        place(&mut net, c, Role::Client, 20);
    }
    place(&mut net, 210, Role::Client, 21);
    // Let heartbeats carry the subtree sizes up.
    net.advance(ms(150));
    let size = |net: &Net, r: NodeId| {
        net.node(10)
            .children()
            .find(|c| c.id == r)
            .map(|c| c.subtree_clients)
    };
    assert_eq!(size(&net, 20), Some(3));
    assert_eq!(size(&net, 21), Some(1));
    assert_eq!(net.node(10).subtree().clients, 5);
    net.events.clear();
    net
}

#[test]
fn cull_beyond_own_clients_passes_the_remainder_to_the_largest_subtree() {
    let mut net = deep_tree();
    let out = net.inject(ROOT, 10, cull_msg(3));

    // Its own client first...
    let d = sent(&out, disconnect);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].0, 100);
    assert!(is_disconnect(&d[0].1, Reason::Culled, true));
    // ...then the remainder to the child router with the largest subtree only.
    let culls = sent(&out, cull);
    assert_eq!(culls.len(), 1);
    assert_eq!((culls[0].0, culls[0].1.count), (20, 2));
    let ev = events(&out);
    assert!(ev.contains(&TreeEvent::Culled { count: 1 }));
    assert!(ev.contains(&TreeEvent::Culled { count: 2 }));
    assert_eq!(net.child_ids(10), vec![20, 21]);

    // Router 20 carries it out on its own clients.
    let to_20 = net.take(|s| s.to == 20);
    let (_, out) = net.deliver(to_20[0].clone());
    let out = out.unwrap();
    let d = sent(&out, disconnect);
    assert_eq!(d.len(), 2);
    assert!(d
        .iter()
        .all(|(to, m)| (200..203).contains(to) && is_disconnect(m, Reason::Culled, true)));
    assert!(sent(&out, cull).is_empty());
    assert_eq!(net.node(20).child_count(), 1);
    assert_eq!(net.child_ids(21), vec![210]);
}

#[test]
fn cull_larger_than_the_subtree_disconnects_every_client_largest_subtree_first() {
    let mut net = deep_tree();
    let out = net.inject(ROOT, 10, cull_msg(9));
    let d = sent(&out, disconnect);
    assert_eq!(d.iter().map(|(to, _)| *to).collect::<Vec<_>>(), vec![100]);
    let culls: Vec<(NodeId, u64)> = sent(&out, cull)
        .into_iter()
        .map(|(to, c)| (to, c.count))
        .collect();
    assert_eq!(culls, vec![(20, 3), (21, 1)], "largest subtree first");

    // Deliver the culls only: the culled clients' rejoins would place them anew.
    for _ in 0..2 {
        for to_router in net.take(|s| s.to == 20 || s.to == 21) {
            net.deliver(to_router);
        }
    }
    assert_eq!(net.node(20).child_count(), 0);
    assert_eq!(net.node(21).child_count(), 0);
    let children = net.child_ids(10);
    assert!(
        children.contains(&20) && children.contains(&21) && !children.contains(&100),
        "routers are never culled: {children:?}"
    );
    net.run();
    for c in [100, 200, 201, 202, 210] {
        assert!(net
            .events
            .iter()
            .any(|(n, e)| *n == c && matches!(e, TreeEvent::Orphaned { .. })));
    }
}

#[test]
fn root_rebalance_culls_the_heavy_router() {
    let mut net = Net::new(config(), 14);
    net.join(10, Role::Router);
    for c in 100..105 {
        net.join(c, Role::Client);
    }
    net.join(11, Role::Router);
    assert_eq!((net.view_clients(10), net.view_clients(11)), (5, 0));

    // Nothing happens before the rebalance tick.
    let rebalance = config().rebalance_interval;
    net.advance(rebalance - ms(5));
    assert!(net.delivered_between(ROOT, 10, cull).is_empty());

    net.advance(ms(5));
    let culls = net.delivered_between(ROOT, 10, cull);
    assert_eq!(culls.len(), 1);
    // Culled down to the mean (rounding aside): 2 or 3 of the 5.
    let count = culls[0].count;
    assert!((2..=3).contains(&count), "cull {count}");
    assert!(net.events_of(ROOT).contains(&TreeEvent::Culled { count }));
    assert!(net.delivered_between(ROOT, 11, cull).is_empty());

    // The culled clients rejoin under the light router; the spread is within bound.
    net.advance(config().join_timeout);
    let (a, b) = (net.view_clients(10), net.view_clients(11));
    assert_eq!(u64::from(a), 5 - count);
    assert_eq!(a + b, 5);
    assert!(a.abs_diff(b) <= config().imbalance_bound);
    assert_eq!(net.child_ids(10).len() as u32, a);
    assert_eq!(net.child_ids(11).len() as u32, b);

    // The next rebalance finds nothing to do.
    net.advance(rebalance);
    assert_eq!(net.delivered_between(ROOT, 10, cull).len(), 1);
    assert!(net.delivered_between(ROOT, 11, cull).is_empty());
}

#[test]
fn root_rebalance_leaves_routers_within_the_bound_alone() {
    let mut net = Net::new(config(), 14);
    net.join(10, Role::Router);
    for c in 100..103 {
        net.join(c, Role::Client);
    }
    net.join(11, Role::Router);
    net.join(103, Role::Client);
    assert_eq!((net.view_clients(10), net.view_clients(11)), (3, 1));
    net.advance(config().rebalance_interval * 2);
    assert!(!net.log.iter().any(|s| cull(s.body()).is_some()));
    assert!(!net.log.iter().any(|s| disconnect(s.body()).is_some()));
}

#[test]
fn root_culls_its_own_clients_once_a_router_exists() {
    let mut net = Net::new(config(), 15);
    net.join(100, Role::Client);
    net.join(101, Role::Client);
    assert_eq!(net.child_ids(ROOT), vec![100, 101]);

    // Without routers the root keeps them through a rebalance.
    net.advance(config().rebalance_interval + ms(5));
    assert_eq!(net.child_ids(ROOT), vec![100, 101]);
    assert!(!net.log.iter().any(|s| disconnect(s.body()).is_some()));

    // A router joins; at the next rebalance the root sheds its clients to it.
    net.join(10, Role::Router);
    let mark = net.log.len();
    net.advance(config().rebalance_interval);
    let culled: BTreeSet<NodeId> = net.log[mark..]
        .iter()
        .filter(|s| s.from == ROOT)
        .filter_map(|s| disconnect(s.body()).map(|d| (s.to, d)))
        .map(|(to, d)| {
            assert!(is_disconnect(&d, Reason::Culled, true));
            to
        })
        .collect();
    assert_eq!(culled, BTreeSet::from([100, 101]));
    net.advance(config().join_timeout);
    assert_eq!(net.child_ids(ROOT), vec![10]);
    for c in [100, 101] {
        assert_eq!(net.parent(c), Some(10));
        assert_eq!(net.view_parent(c), Some(10));
    }
    assert_eq!(net.view_clients(ROOT), 0);
    assert_eq!(net.view_clients(10), 2);
    assert!(!net.node(10).is_joining());
}
