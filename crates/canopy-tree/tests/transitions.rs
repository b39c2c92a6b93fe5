//! State transitions of `canopy_tree::Node` around membership: starting, joining, placement,
//! join retries, false parents, heartbeats, timeouts, strangers and leaving.
//!
//! Every test drives real nodes through `Node::handle` and moves their messages by hand
//! (see `common::Net`), so the order of deliveries is the test's choice.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use canopy_tree::proto::v1::{disconnect::Reason, Heartbeat, SubtreeSize};
use canopy_tree::proto::Body;
use canopy_tree::{node_tag, DropReason, Input, NodeId, RemovalReason, Role, Time, TreeEvent};
use common::*;

// ---------------------------------------------------------------------------------------
// Root start and the first join.

#[test]
fn root_start_serves_without_joining() {
    let config = Arc::new(config());
    let mut root = node(ROOT, Role::Root, &config, 7);
    assert!(root.view().is_none(), "no view before start");

    let out = root.handle(Input::Start, ms(0));
    assert!(sends(&out).is_empty(), "the root asks nobody for a parent");
    assert!(!events(&out)
        .iter()
        .any(|e| matches!(e, TreeEvent::JoinSent { .. })));
    let wake = wakes(&out);
    assert_eq!(
        wake.len(),
        1,
        "the root asks for a wake-up (heartbeats, rebalance)"
    );
    assert!(wake[0] <= config.rebalance_interval);

    assert_eq!(root.epoch(), 1);
    assert_eq!(root.parent(), None);
    assert!(!root.is_joining());
    assert_eq!(root.child_count(), 0);
    let view = root.view().expect("a started root has a view");
    assert_eq!(view.root(), ROOT);
    assert_eq!(view.len(), 1);
    assert_eq!(view.get(ROOT).map(|e| e.role), Some(Role::Root));
    assert_eq!(view.attached_routers(), 0);
    assert!(root.interest().wants_locally(node_tag(ROOT)));

    // Starting twice changes nothing.
    let again = root.handle(Input::Start, ms(1));
    assert!(sends(&again).is_empty());
    assert_eq!(root.view().map(|v| v.len()), Some(1));
}

#[test]
fn router_join_is_placed_directly_under_the_root() {
    let mut net = Net::new(config(), 1);

    // The router asks the root.
    let out = net.start(10, Role::Router);
    let joins = sent(&out, join_request);
    assert_eq!(joins.len(), 1);
    let (to, req) = &joins[0];
    assert_eq!(*to, ROOT);
    assert_eq!(req.node_id, 10);
    assert_eq!(req.role, Role::Router.to_proto() as i32);
    assert_eq!(req.region, REGION);
    assert_eq!(req.attempt, 0);
    assert!(events(&out).contains(&TreeEvent::JoinSent {
        root: ROOT,
        attempt: 0
    }));
    assert!(net.node(10).is_joining());
    assert_eq!(net.parent(10), None);

    // The root places it under itself and adopts it at once.
    let (_, out) = net.deliver_one().expect("join request on the wire");
    let out = out.expect("delivered");
    let ev = events(&out);
    let assignment_id = match ev.iter().find(|e| matches!(e, TreeEvent::Placed { .. })) {
        Some(TreeEvent::Placed {
            node,
            parent,
            assignment_id,
        }) => {
            assert_eq!((*node, *parent), (10, ROOT));
            *assignment_id
        }
        _ => panic!("no Placed event in {ev:?}"),
    };
    assert!(ev.contains(&TreeEvent::ChildAdopted { child: 10 }));
    assert!(
        sent(&out, adopt_child).is_empty(),
        "no AdoptChild when the root is the parent"
    );
    let assigns = sent(&out, assign_parent);
    assert_eq!(assigns.len(), 1);
    let (to, assign) = &assigns[0];
    assert_eq!(*to, 10);
    assert_eq!(assign.child_id, 10);
    assert_eq!(assign.parent_id, ROOT);
    assert_eq!(assign.assignment_id, assignment_id);
    assert_eq!(assign.topology_epoch, 1);
    assert_eq!(net.view_parent(10), Some(ROOT));
    assert_eq!(net.root().view().unwrap().get(10).unwrap().depth, 1);
    let child = net
        .root()
        .children()
        .next()
        .expect("the root keeps the child");
    assert_eq!(
        (child.id, child.role, child.attached),
        (10, Role::Router, false)
    );
    assert_eq!(child.assignment_id, assignment_id);

    // The router obeys and reattaches.
    let (_, out) = net.deliver_one().expect("assign on the wire");
    let out = out.expect("delivered");
    let reattaches = sent(&out, reattach);
    assert_eq!(reattaches.len(), 1);
    let (to, re) = &reattaches[0];
    assert_eq!(*to, ROOT);
    assert_eq!(re.node_id, 10);
    assert_eq!(re.assignment_id, assignment_id);
    assert_eq!(
        re.subtree,
        Some(SubtreeSize {
            clients: 0,
            routers: 1
        })
    );
    let snapshot = re.interest.as_ref().expect("reattach carries a snapshot");
    assert!(
        snapshot.tags.contains(&node_tag(10)),
        "own id tag advertised"
    );
    let ev = events(&out);
    assert!(ev.contains(&TreeEvent::ParentChanged {
        parent: ROOT,
        previous: None
    }));
    assert!(ev.contains(&TreeEvent::EpochChanged { epoch: 1 }));
    assert_eq!(net.parent(10), Some(ROOT));
    assert!(!net.node(10).is_joining());
    assert_eq!(net.node(10).epoch(), 1);

    // The root marks it attached and learns its interest.
    net.deliver_one().expect("reattach on the wire");
    assert!(net.queue.is_empty());
    let child = net.root().children().next().unwrap();
    assert!(child.attached);
    assert_eq!((child.subtree_clients, child.subtree_routers), (0, 1));
    assert_eq!(net.root().child_advertised(10, node_tag(10)), Some(true));
    assert_eq!(net.root().child_may_want(10, node_tag(10)), Some(true));
    assert!(net.root().interest().subtree_wants(node_tag(10)));
    assert_eq!(
        net.root().subtree(),
        SubtreeSize {
            clients: 0,
            routers: 2
        }
    );
}

#[test]
fn router_join_below_a_router_goes_through_adopt_child() {
    let mut net = Net::new(config(), 1);
    net.join(10, Role::Router);
    net.join(11, Role::Router);

    // The root is full (max_child_routers = 2): the third router goes one level down.
    net.start(12, Role::Router);
    let (_, out) = net.deliver_one().unwrap();
    let out = out.unwrap();
    let (parent, assignment_id) = match events(&out).as_slice() {
        [TreeEvent::Placed {
            node: 12,
            parent,
            assignment_id,
        }] => (*parent, *assignment_id),
        other => panic!("expected only Placed, got {other:?}"),
    };
    assert!(parent == 10 || parent == 11, "placed under {parent}");
    assert!(
        sent(&out, assign_parent).is_empty(),
        "the root does not assign directly"
    );
    let adopts = sent(&out, adopt_child);
    assert_eq!(adopts.len(), 1);
    let (to, adopt) = &adopts[0];
    assert_eq!(*to, parent);
    assert_eq!(adopt.child_id, 12);
    assert_eq!(adopt.role, Role::Router.to_proto() as i32);
    assert_eq!(adopt.assignment_id, assignment_id);
    assert_eq!(net.view_parent(12), Some(parent));

    // The chosen parent adopts and assigns.
    let (_, out) = net.deliver_one().unwrap();
    let out = out.unwrap();
    assert!(events(&out).contains(&TreeEvent::ChildAdopted { child: 12 }));
    let assigns = sent(&out, assign_parent);
    assert_eq!(assigns.len(), 1);
    assert_eq!(assigns[0].0, 12);
    assert_eq!(assigns[0].1.parent_id, parent);
    assert_eq!(assigns[0].1.assignment_id, assignment_id);
    assert_eq!(assigns[0].1.topology_epoch, 1);
    let info = net.node(parent).children().find(|c| c.id == 12).unwrap();
    assert!(!info.attached);

    // The child obeys and reattaches to it, not to the root.
    let (_, out) = net.deliver_one().unwrap();
    let out = out.unwrap();
    let reattaches = sent(&out, reattach);
    assert_eq!(reattaches.len(), 1);
    assert_eq!(reattaches[0].0, parent);
    net.run();
    assert_eq!(net.parent(12), Some(parent));
    let info = net.node(parent).children().find(|c| c.id == 12).unwrap();
    assert!(info.attached);
    assert_eq!(info.assignment_id, assignment_id);
    assert_eq!(net.child_ids(ROOT), vec![10, 11]);
}

// ---------------------------------------------------------------------------------------
// Placement.

#[test]
fn routers_fill_the_top_levels_breadth_first() {
    let mut net = Net::new(config(), 3);
    // With max_child_routers = 2: levels hold 2, 4, 8 routers.
    let expected_depths = [1, 1, 2, 2, 2, 2, 3];
    for (i, &depth) in expected_depths.iter().enumerate() {
        let id = 10 + i as NodeId;
        net.join(id, Role::Router);
        let view = net.root().view().unwrap();
        assert_eq!(view.get(id).unwrap().depth, depth, "router {id}");
        assert_eq!(net.view_parent(id), net.parent(id), "view and node agree");
    }
    assert_eq!(net.child_ids(ROOT), vec![10, 11]);
    for level1 in [10, 11] {
        let routers: Vec<NodeId> = net.child_ids(level1);
        assert_eq!(routers.len(), 2, "router {level1} children {routers:?}");
        assert!(routers.iter().all(|r| (12..=15).contains(r)));
    }
    let deep = net.parent(16).unwrap();
    assert!((12..=15).contains(&deep));
    // Depth in the view is the number of hops to the root.
    let view = net.root().view().unwrap();
    let mut hops = 0;
    let mut at = 16;
    while let Some(p) = net.parent(at) {
        hops += 1;
        at = p;
    }
    assert_eq!(at, ROOT);
    assert_eq!(hops, view.get(16).unwrap().depth);
}

#[test]
fn clients_go_under_the_least_loaded_router() {
    let mut net = Net::new(config(), 5);
    net.join(10, Role::Router);
    for c in 100..103 {
        net.join(c, Role::Client);
        assert_eq!(net.parent(c), Some(10), "the only router");
    }
    net.join(11, Role::Router);
    assert_eq!(net.parent(11), Some(ROOT));
    // 11 is lighter until it has as many clients as 10.
    for c in 103..106 {
        net.join(c, Role::Client);
        assert_eq!(net.parent(c), Some(11), "client {c}");
        assert_eq!(net.view_parent(c), Some(11));
    }
    assert_eq!((net.view_clients(10), net.view_clients(11)), (3, 3));
    // From now on they alternate: no router gets two ahead.
    for c in 106..112 {
        net.join(c, Role::Client);
        let (a, b) = (net.view_clients(10), net.view_clients(11));
        assert!(a.abs_diff(b) <= 1, "loads {a} and {b} after client {c}");
    }
    assert_eq!((net.view_clients(10), net.view_clients(11)), (6, 6));
    for r in [10, 11] {
        let clients = net
            .node(r)
            .children()
            .filter(|c| c.role == Role::Client && c.attached)
            .count();
        assert_eq!(clients, 6, "router {r} agrees with the view");
    }
    assert!(net
        .root()
        .children()
        .all(|c| c.role == Role::Router && c.attached));
}

#[test]
fn clients_go_under_the_root_only_while_no_router_exists() {
    let mut net = Net::new(config(), 5);
    net.start(100, Role::Client);
    let (_, out) = net.deliver_one().unwrap();
    let out = out.unwrap();
    assert!(events(&out).iter().any(|e| matches!(
        e,
        TreeEvent::Placed {
            node: 100,
            parent: ROOT,
            ..
        }
    )));
    assert!(sent(&out, adopt_child).is_empty());
    assert_eq!(sent(&out, assign_parent).len(), 1);
    net.run();
    assert_eq!(net.parent(100), Some(ROOT));
    assert_eq!(net.view_clients(ROOT), 1);

    net.join(10, Role::Router);
    for c in 101..105 {
        net.join(c, Role::Client);
        assert_eq!(net.parent(c), Some(10), "a router exists now");
    }
    assert_eq!(net.view_clients(ROOT), 1, "no new client under the root");
}

/// Where client 100 lands with two equally loaded routers, for one root seed.
fn tie_choice(root_seed: u64) -> NodeId {
    let mut net = Net::new(config(), root_seed);
    net.join(10, Role::Router);
    net.join(11, Role::Router);
    net.join(100, Role::Client);
    net.parent(100).unwrap()
}

#[test]
fn placement_ties_are_broken_by_the_seeded_rng() {
    let choices: BTreeSet<NodeId> = (0..64).map(tie_choice).collect();
    assert_eq!(
        choices,
        BTreeSet::from([10, 11]),
        "different seeds pick different routers"
    );
    for seed in 0..16 {
        assert_eq!(tie_choice(seed), tie_choice(seed), "seed {seed} replays");
    }
}

// ---------------------------------------------------------------------------------------
// Join retries.

#[test]
fn join_is_resent_on_timeout_with_backoff() {
    let config = Arc::new(config());
    let mut client = node(100, Role::Client, &config, 9);
    let jt = config.join_timeout;
    let out = client.handle(Input::Start, ms(0));
    assert_eq!(sent(&out, join_request)[0].1.attempt, 0);

    // Nothing before the first timeout.
    let out = client.handle(Input::Tick, jt - ms(1));
    assert!(sent(&out, join_request).is_empty());
    assert!(client.is_joining());

    // After at most 1.5 x join_timeout (jitter): attempt 1, to the same (only) root.
    let t1 = jt.mul_f64(1.5);
    let out = client.handle(Input::Tick, t1);
    let joins = sent(&out, join_request);
    assert_eq!(joins.len(), 1);
    assert_eq!(joins[0].0, ROOT);
    assert_eq!(joins[0].1.attempt, 1);
    assert_eq!(joins[0].1.node_id, 100);
    assert!(events(&out).contains(&TreeEvent::JoinSent {
        root: ROOT,
        attempt: 1
    }));

    // The wait doubles: nothing for 2 x join_timeout, then attempt 2.
    let out = client.handle(Input::Tick, t1 + jt * 2 - ms(1));
    assert!(sent(&out, join_request).is_empty());
    let t2 = t1 + (jt * 2).mul_f64(1.5);
    let out = client.handle(Input::Tick, t2);
    assert_eq!(sent(&out, join_request)[0].1.attempt, 2);
}

#[test]
fn join_backoff_follows_the_requested_wakeups_and_is_capped() {
    let config = Arc::new(config());
    let mut client = node(100, Role::Client, &config, 11);
    // A driver that ticks the node only when it asked to be woken, exactly then.
    let mut now = ms(0);
    let mut input = Input::Start;
    let mut join_times: Vec<(Time, u32)> = Vec::new();
    while join_times.len() < 7 {
        let out = client.handle(input, now);
        if let Some((_, j)) = sent(&out, join_request).first() {
            join_times.push((now, j.attempt));
        }
        let wake = wakes(&out);
        assert_eq!(wake.len(), 1, "every tick asks for the next one");
        assert!(wake[0] > now, "wake-up not in the future");
        now = wake[0];
        input = Input::Tick;
    }
    let attempts: Vec<u32> = join_times.iter().map(|&(_, a)| a).collect();
    assert_eq!(attempts, vec![0, 1, 2, 3, 4, 5, 6]);
    let jt = config.join_timeout;
    let max = config.join_backoff_max;
    for (i, pair) in join_times.windows(2).enumerate() {
        let gap = pair[1].0 - pair[0].0;
        let base = (jt * (1 << i)).min(max);
        assert!(
            gap >= base && gap <= base.mul_f64(1.5),
            "gap {i}: {gap:?} outside [{base:?}, 1.5 x {base:?}]"
        );
    }
    // The last gaps are capped at join_backoff_max (plus jitter).
    let last = join_times[6].0 - join_times[5].0;
    assert!(last <= max.mul_f64(1.5));
}

#[test]
fn join_while_the_chosen_parent_dies_is_placed_elsewhere() {
    let mut net = Net::new(config(), 2);
    net.join(10, Role::Router);
    net.join(11, Role::Router);

    net.start(100, Role::Client);
    let (_, out) = net.deliver_one().unwrap();
    let (dead, first_assignment) = match events(&out.unwrap()).as_slice() {
        [TreeEvent::Placed {
            node: 100,
            parent,
            assignment_id,
        }] => (*parent, *assignment_id),
        other => panic!("{other:?}"),
    };
    let alive = if dead == 10 { 11 } else { 10 };
    // The chosen parent dies before it can answer the AdoptChild.
    net.down.insert(dead);
    net.run();
    assert_eq!(net.lost.len(), 1);
    assert!(adopt_child(net.lost[0].body()).is_some());
    assert!(net.node(100).is_joining());

    // The joiner times out and retries.
    net.now = config().join_timeout.mul_f64(1.5);
    let out = net.input(100, Input::Tick);
    let joins = sent(&out, join_request);
    assert_eq!(joins.len(), 1);
    assert!(joins[0].1.attempt > 0);

    // The root does not pick the silent parent again.
    let (_, out) = net.deliver_one().unwrap();
    let out = out.unwrap();
    match events(&out).as_slice() {
        [TreeEvent::Placed {
            node: 100,
            parent,
            assignment_id,
        }] => {
            assert_eq!(*parent, alive);
            assert!(*assignment_id > first_assignment);
        }
        other => panic!("{other:?}"),
    }
    let view = net.root().view().unwrap();
    assert_eq!(view.get(100).unwrap().parent, Some(alive));
    assert!(!view.get(dead).unwrap().children().any(|c| c == 100));
    assert_eq!(view.get(dead).unwrap().direct_clients, 0);
    net.run();
    assert_eq!(net.parent(100), Some(alive));
    assert!(!net.node(100).is_joining());
    assert!(net
        .node(alive)
        .children()
        .any(|c| c.id == 100 && c.attached));
}

// ---------------------------------------------------------------------------------------
// False parents: a node assigned twice.

/// Client 100 assigned twice: first (the root's first answer) under one router, then, after
/// a retry, under the other. Returns the net with both AdoptChilds still on the wire, the
/// first parent and assignment, and the second parent and assignment.
fn assigned_twice() -> (Net, common::Sent, common::Sent) {
    let mut net = Net::new(config(), 2);
    net.join(10, Role::Router);
    net.join(11, Role::Router);
    net.start(100, Role::Client);
    net.deliver_one().unwrap();
    let first = net.take(|s| adopt_child(s.body()).is_some());
    assert_eq!(first.len(), 1);
    // The first AdoptChild is slow; the joiner retries and is placed elsewhere.
    net.now = config().join_timeout.mul_f64(1.5);
    net.input(100, Input::Tick);
    net.deliver_one().unwrap();
    let second = net.take(|s| adopt_child(s.body()).is_some());
    assert_eq!(second.len(), 1);
    // The root's release to the first parent is lost too: these tests exercise what settles
    // false parents without it.
    let released = net.take(|s| matches!(s.body(), Body::ReleaseChild(_)));
    assert_eq!(released.len(), 1);
    assert_ne!(first[0].to, second[0].to);
    let a1 = adopt_child(first[0].body()).unwrap().assignment_id;
    let a2 = adopt_child(second[0].body()).unwrap().assignment_id;
    assert!(a2 > a1);
    (net, first[0].clone(), second[0].clone())
}

#[test]
fn stale_assign_parent_is_refused_with_not_a_neighbour() {
    let (mut net, first, second) = assigned_twice();
    let (stale, real) = (first.to, second.to);
    let stale_id = adopt_child(first.body()).unwrap().assignment_id;
    let real_id = adopt_child(second.body()).unwrap().assignment_id;

    // The newer assignment arrives first and is obeyed.
    net.deliver(second);
    net.run();
    assert_eq!(net.parent(100), Some(real));

    // The older one arrives late: the stale parent adopts and assigns...
    net.deliver(first);
    let stale_assign = net.take(|s| s.to == 100);
    assert_eq!(stale_assign.len(), 1);
    assert_eq!(
        assign_parent(stale_assign[0].body()).unwrap().assignment_id,
        stale_id
    );
    assert!(net
        .node(stale)
        .children()
        .any(|c| c.id == 100 && !c.attached));

    // ...and the node refuses it: no reattach, a NOT_A_NEIGHBOUR disconnect instead.
    let (_, out) = net.deliver(stale_assign[0].clone());
    let out = out.unwrap();
    assert!(events(&out).contains(&TreeEvent::Dropped {
        from: stale,
        kind: "assign_parent",
        reason: DropReason::StaleAssignment
    }));
    assert!(sent(&out, reattach).is_empty());
    let disconnects = sent(&out, disconnect);
    assert_eq!(disconnects.len(), 1);
    assert_eq!(disconnects[0].0, stale);
    assert!(is_disconnect(
        &disconnects[0].1,
        Reason::NotANeighbour,
        false
    ));
    assert_eq!(net.parent(100), Some(real));
    assert!(!events(&out)
        .iter()
        .any(|e| matches!(e, TreeEvent::ParentChanged { .. })));

    // It heartbeats only its real parent.
    let disconnect_msg = net.take(|_| true);
    net.now += config().heartbeat_interval;
    let out = net.input(100, Input::Tick);
    let hbs = sent(&out, heartbeat);
    assert_eq!(hbs.len(), 1);
    assert_eq!(hbs[0].0, real);
    assert_eq!(hbs[0].1.assignment_id, real_id);
    net.take(|_| true);

    // The stale parent drops it on the disconnect, and its report changes nothing at the root.
    let (_, out) = net.deliver(disconnect_msg[0].clone());
    let out = out.unwrap();
    assert!(events(&out).contains(&TreeEvent::ChildRemoved {
        child: 100,
        reason: RemovalReason::Left
    }));
    assert!(!net.node(stale).children().any(|c| c.id == 100));
    let reports = sent(&out, child_removed);
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].0, ROOT);
    assert_eq!(reports[0].1.assignment_id, stale_id);
    net.run();
    assert_eq!(net.view_parent(100), Some(real));
    assert_eq!(
        net.root().view().unwrap().get(100).unwrap().assignment_id,
        real_id
    );
    assert!(net.node(real).children().any(|c| c.id == 100 && c.attached));
}

#[test]
fn newer_assign_parent_replaces_the_older_one() {
    let (mut net, first, second) = assigned_twice();
    let (old, new) = (first.to, second.to);

    // The older assignment arrives first and is obeyed...
    net.deliver(first);
    net.run();
    assert_eq!(net.parent(100), Some(old));
    assert!(net.node(old).children().any(|c| c.id == 100 && c.attached));

    // ...until the newer one arrives: the node moves and says goodbye to the old parent.
    net.deliver(second);
    let assign = net.take(|s| s.to == 100);
    let (_, out) = net.deliver(assign[0].clone());
    let out = out.unwrap();
    assert!(events(&out).contains(&TreeEvent::ParentChanged {
        parent: new,
        previous: Some(old)
    }));
    let disconnects = sent(&out, disconnect);
    assert_eq!(disconnects.len(), 1);
    assert_eq!(disconnects[0].0, old);
    assert!(is_disconnect(&disconnects[0].1, Reason::Leaving, false));
    assert_eq!(sent(&out, reattach)[0].0, new);
    net.run();
    assert_eq!(net.parent(100), Some(new));
    assert!(!net.node(old).children().any(|c| c.id == 100));
    assert!(net.node(new).children().any(|c| c.id == 100 && c.attached));
    assert_eq!(net.view_parent(100), Some(new));

    // A replay of the old assignment is now refused.
    let stale = net
        .delivered_between(old, 100, assign_parent)
        .pop()
        .unwrap();
    let out = net.inject(old, 100, Body::AssignParent(stale));
    assert!(events(&out).iter().any(|e| matches!(
        e,
        TreeEvent::Dropped {
            reason: DropReason::StaleAssignment,
            ..
        }
    )));
    assert_eq!(net.parent(100), Some(new));
}

#[test]
fn false_parent_drops_a_silent_child_on_timeout() {
    let (mut net, first, second) = assigned_twice();
    let (stale, real) = (first.to, second.to);
    net.deliver(second);
    net.run();
    // The stale parent adopts, but nothing between it and the node gets through any more.
    net.deliver(first);
    net.partition(stale, 100);
    net.run();
    assert!(net.node(stale).children().any(|c| c.id == 100));

    net.advance(config().child_timeout + config().heartbeat_interval * 2);
    assert!(net.events_of(stale).contains(&TreeEvent::ChildRemoved {
        child: 100,
        reason: RemovalReason::Timeout
    }));
    assert!(!net.node(stale).children().any(|c| c.id == 100));
    assert!(
        net.delivered_between(100, stale, heartbeat).is_empty(),
        "the node never heartbeats a false parent"
    );
    // The real placement is untouched.
    assert_eq!(net.parent(100), Some(real));
    assert_eq!(net.view_parent(100), Some(real));
    assert!(net.node(real).children().any(|c| c.id == 100 && c.attached));
}

#[test]
fn false_parent_heartbeat_gets_a_not_a_neighbour_answer() {
    let (mut net, first, second) = assigned_twice();
    let (stale, real) = (first.to, second.to);
    net.deliver(second);
    net.run();
    net.deliver(first);
    // The stale AssignParent is lost; the stale parent's heartbeat reaches the node.
    let lost = net.take(|s| s.to == 100);
    assert_eq!(lost.len(), 1);
    let out = net.inject(
        stale,
        100,
        Body::Heartbeat(Heartbeat {
            sender_id: stale,
            subtree: None,
            topology_epoch: 1,
            interest: None,
            assignment_id: 3,
            root_id: 0,
        }),
    );
    assert!(events(&out).contains(&TreeEvent::Dropped {
        from: stale,
        kind: "heartbeat",
        reason: DropReason::NotANeighbour
    }));
    let d = sent(&out, disconnect);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].0, stale);
    assert!(is_disconnect(&d[0].1, Reason::NotANeighbour, false));
    net.run();
    assert!(!net.node(stale).children().any(|c| c.id == 100));
    assert_eq!(net.parent(100), Some(real));
}

// ---------------------------------------------------------------------------------------
// Heartbeats.

#[test]
fn heartbeats_carry_subtree_sizes_up() {
    let mut net = Net::new(config(), 4);
    net.join(10, Role::Router);
    net.join(100, Role::Client);
    net.join(101, Role::Client);
    assert_eq!(net.parent(101), Some(10));
    net.advance(ms(50));

    // A router's heartbeat to its parent carries its subtree; to children, the epoch.
    net.now += config().heartbeat_interval;
    let out = net.input(10, Input::Tick);
    let hbs = sent(&out, heartbeat);
    let up: Vec<_> = hbs.iter().filter(|(to, _)| *to == ROOT).collect();
    assert_eq!(up.len(), 1);
    let up = &up[0].1;
    assert_eq!(up.sender_id, 10);
    assert_eq!(
        up.subtree,
        Some(SubtreeSize {
            clients: 2,
            routers: 1
        })
    );
    assert_eq!(
        up.assignment_id,
        net.root().children().next().unwrap().assignment_id
    );
    let down: BTreeSet<NodeId> = hbs
        .iter()
        .filter(|(_, hb)| hb.subtree.is_none() && hb.topology_epoch == 1)
        .map(|(to, _)| *to)
        .collect();
    assert_eq!(down, BTreeSet::from([100, 101]));

    // A client's heartbeat counts itself.
    let out = net.input(100, Input::Tick);
    let hbs = sent(&out, heartbeat);
    assert_eq!(hbs.len(), 1);
    assert_eq!(hbs[0].0, 10);
    assert_eq!(
        hbs[0].1.subtree,
        Some(SubtreeSize {
            clients: 1,
            routers: 0
        })
    );
    net.run();

    // A third client shows up at the root through the router's next heartbeat.
    net.join(102, Role::Client);
    let before = net.root().children().next().unwrap();
    assert_eq!(before.subtree_clients, 2);
    net.advance(config().heartbeat_interval * 2);
    let after = net.root().children().next().unwrap();
    assert_eq!((after.subtree_clients, after.subtree_routers), (3, 1));
    assert_eq!(
        net.root().subtree(),
        SubtreeSize {
            clients: 3,
            routers: 2
        }
    );
}

#[test]
fn heartbeats_carry_the_topology_epoch_down() {
    let mut net = Net::new(config(), 4);
    net.join(10, Role::Router);
    net.join(100, Role::Client);
    net.advance(ms(50));
    net.events.clear();

    // The epoch above changed (as after a root failover): it arrives in the parent's heartbeat.
    let out = net.inject(
        ROOT,
        10,
        Body::Heartbeat(Heartbeat {
            sender_id: ROOT,
            subtree: None,
            topology_epoch: 5,
            interest: None,
            assignment_id: 1,
            root_id: 0,
        }),
    );
    assert_eq!(events(&out), vec![TreeEvent::EpochChanged { epoch: 5 }]);
    assert!(sends(&out).is_empty());
    assert_eq!(net.node(10).epoch(), 5);

    // The router passes it down with its next heartbeats.
    net.take(|_| true);
    let before = net.delivered_between(10, 100, heartbeat).len();
    net.advance(config().heartbeat_interval * 2);
    assert_eq!(net.node(100).epoch(), 5);
    assert_eq!(
        net.events_of(100),
        vec![TreeEvent::EpochChanged { epoch: 5 }],
        "the change is reported once"
    );
    let after = net.delivered_between(10, 100, heartbeat);
    assert!(after.len() > before);
    assert!(after[before..].iter().all(|hb| hb.topology_epoch == 5));

    // An older epoch never goes back.
    let out = net.inject(
        ROOT,
        10,
        Body::Heartbeat(Heartbeat {
            sender_id: ROOT,
            subtree: None,
            topology_epoch: 2,
            interest: None,
            assignment_id: 1,
            root_id: 0,
        }),
    );
    assert!(events(&out).is_empty());
    assert_eq!(net.node(10).epoch(), 5);
}

// ---------------------------------------------------------------------------------------
// Timeouts.

#[test]
fn silent_child_is_evicted_and_reported_to_the_root() {
    let mut net = Net::new(config(), 4);
    net.join(10, Role::Router);
    net.join(100, Role::Client);
    net.join(101, Role::Client);
    net.advance(ms(200));
    let assignment = net
        .node(10)
        .children()
        .find(|c| c.id == 100)
        .unwrap()
        .assignment_id;
    assert!(net.node(10).interest().subtree_wants(node_tag(100)));

    // Client 100 dies.
    net.down.insert(100);
    net.advance(config().child_timeout + config().heartbeat_interval * 2);

    assert!(net.events_of(10).contains(&TreeEvent::ChildRemoved {
        child: 100,
        reason: RemovalReason::Timeout
    }));
    assert_eq!(net.child_ids(10), vec![101]);
    let reports = net.delivered_between(10, ROOT, child_removed);
    assert_eq!(reports.len(), 1);
    assert_eq!(
        (
            reports[0].parent_id,
            reports[0].child_id,
            reports[0].assignment_id
        ),
        (10, 100, assignment)
    );
    let view = net.root().view().unwrap();
    assert!(view.get(100).is_none(), "the root forgot the child");
    assert_eq!(view.get(10).unwrap().direct_clients, 1);
    // Its interest is withdrawn, up to the root.
    assert!(!net.node(10).interest().subtree_wants(node_tag(100)));
    assert_eq!(net.root().child_advertised(10, node_tag(100)), Some(false));
    // Nobody else was disturbed.
    assert_eq!(net.parent(10), Some(ROOT));
    assert_eq!(net.parent(101), Some(10));
    assert!(!net
        .events
        .iter()
        .any(|(_, e)| matches!(e, TreeEvent::Orphaned { .. })));
}

#[test]
fn orphan_rejoins_after_parent_timeout_with_its_subtree() {
    let mut net = Net::new(config(), 4);
    net.join(10, Role::Router);
    net.join(100, Role::Client);
    net.join(101, Role::Client);
    net.advance(ms(200));
    net.events.clear();

    // The router stops hearing the root.
    net.cut.insert((ROOT, 10));
    let limit = net.now + config().parent_timeout + config().heartbeat_interval * 2;
    while !net
        .events_of(10)
        .contains(&TreeEvent::Orphaned { previous: ROOT })
    {
        assert!(net.now < limit, "router never noticed the silent parent");
        net.advance(ms(5));
    }
    assert_eq!(net.parent(10), None);
    assert!(net.node(10).is_joining());
    // It kept its children, and asks to rejoin with its subtree.
    assert_eq!(net.child_ids(10), vec![100, 101]);
    let joins = net.delivered_between(10, ROOT, join_request);
    assert_eq!(joins.len(), 2, "the first join and the rejoin");
    assert_eq!(joins[1].attempt, 0);
    assert_eq!(
        joins[1].subtree,
        Some(SubtreeSize {
            clients: 2,
            routers: 1
        })
    );

    net.cut.clear();
    net.advance(config().join_backoff_max * 2);
    assert_eq!(net.parent(10), Some(ROOT));
    assert!(!net.node(10).is_joining());
    let info = net.root().children().find(|c| c.id == 10).unwrap();
    assert!(info.attached);
    assert_eq!(info.subtree_clients, 2);
    // The clients never noticed.
    assert_eq!(net.parent(100), Some(10));
    assert_eq!(net.parent(101), Some(10));
    for c in [100, 101] {
        assert!(!net
            .events_of(c)
            .iter()
            .any(|e| matches!(e, TreeEvent::Orphaned { .. } | TreeEvent::JoinSent { .. })));
        assert_eq!(net.view_parent(c), Some(10));
    }
    assert_eq!(net.view_clients(10), 2);
}

#[test]
fn partitioned_router_rejoins_and_the_root_view_keeps_its_subtree() {
    let mut net = Net::new(config(), 4);
    net.join(10, Role::Router);
    net.join(100, Role::Client);
    net.join(101, Role::Client);
    net.advance(ms(200));

    // Root and router lose each other both ways: each times the other out.
    net.partition(ROOT, 10);
    net.advance(config().parent_timeout + config().heartbeat_interval * 3);
    assert!(net
        .events_of(10)
        .contains(&TreeEvent::Orphaned { previous: ROOT }));
    assert!(net.events_of(ROOT).contains(&TreeEvent::ChildRemoved {
        child: 10,
        reason: RemovalReason::Timeout
    }));
    assert_eq!(net.child_ids(10), vec![100, 101]);

    net.heal(ROOT, 10);
    net.advance(config().join_backoff_max * 2);
    assert_eq!(net.parent(10), Some(ROOT));
    assert_eq!(net.parent(100), Some(10));
    assert_eq!(net.parent(101), Some(10));
    // The root's view matches the tree: the router came back with its clients.
    assert_eq!(net.view_parent(10), Some(ROOT));
    assert_eq!(net.view_parent(100), Some(10));
    assert_eq!(net.view_parent(101), Some(10));
    assert_eq!(net.view_clients(10), 2);

    // And keeps matching once the grace period for detached nodes has passed.
    net.advance(config().orphan_grace + config().rebalance_interval * 2);
    assert_eq!(net.view_parent(100), Some(10));
    assert_eq!(net.view_clients(10), 2);
    assert_eq!(net.root().view().unwrap().len(), 4);
}

/// Follows parent links from `id`; the hops to the root, or `None` on a cycle or a dead end.
fn hops_to_root(net: &Net, id: NodeId) -> Option<usize> {
    let mut at = id;
    for hops in 0..=net.nodes.len() {
        if at == ROOT {
            return Some(hops);
        }
        at = net.parent(at)?;
    }
    None
}

#[test]
fn rejoining_router_is_never_placed_inside_its_own_subtree() {
    // Routers form a chain (one child router each): root - 10 - 11 - 12.
    for seed in 0..12 {
        let mut config = config();
        config.max_child_routers = 1;
        let mut net = Net::new(config.clone(), seed);
        for r in [10, 11, 12] {
            net.join(r, Role::Router);
        }
        assert_eq!(hops_to_root(&net, 12), Some(3));
        net.advance(ms(100));

        // 10 is cut off from the root; both sides time out. The root forgets 10, but 11
        // and 12 still hang below it.
        net.partition(ROOT, 10);
        net.advance(config.child_timeout + config.heartbeat_interval * 3);
        assert!(net.root().view().unwrap().get(10).is_none());
        // New routers take the free places above, down to 12's depth.
        for r in [20, 21, 22] {
            net.join(r, Role::Router);
        }
        assert_eq!(hops_to_root(&net, 22), Some(3));

        // 10 comes back. Its subtree (11, 12) is intact and must not become its parent.
        net.heal(ROOT, 10);
        net.advance(config.join_backoff_max * 3);
        for r in [10, 11, 12, 20, 21, 22] {
            assert!(
                hops_to_root(&net, r).is_some(),
                "seed {seed}: router {r} is not connected to the root (10 under {:?})",
                net.parent(10)
            );
            assert_eq!(net.view_parent(r), net.parent(r), "seed {seed}: router {r}");
        }
        assert_eq!(net.parent(11), Some(10));
        assert_eq!(net.parent(12), Some(11));
    }
}

#[test]
fn nothing_is_placed_below_a_router_the_root_lost() {
    for seed in 0..6 {
        let mut config = config();
        config.max_child_routers = 1;
        let mut net = Net::new(config.clone(), seed);
        for r in [10, 11, 12] {
            net.join(r, Role::Router);
        }
        for c in 100..103 {
            net.join(c, Role::Client);
        }
        let deep_client = net.child_ids(12)[0];
        net.advance(ms(100));

        // The root loses 10 (and with it, the subtree 11, 12 and their clients).
        net.partition(ROOT, 10);
        net.advance(config.child_timeout + config.heartbeat_interval * 3);
        assert!(net.root().view().unwrap().get(10).is_none());
        // A client deep in that subtree leaves; its parent tells the root.
        net.input(deep_client, Input::Leave);
        net.run();
        assert!(net.root().view().unwrap().get(deep_client).is_none());

        // Newcomers go where the root can reach them.
        net.join(20, Role::Router);
        assert_eq!(net.parent(20), Some(ROOT));
        for c in 200..204 {
            net.join(c, Role::Client);
            assert_eq!(net.parent(c), Some(20), "seed {seed}: client {c}");
        }
        net.join(21, Role::Router);
        assert_eq!(net.parent(21), Some(20), "seed {seed}");
    }
}

#[test]
fn closed_link_orphans_the_child_and_drops_it_at_the_parent() {
    let mut net = Net::new(config(), 4);
    net.join(10, Role::Router);
    net.join(11, Role::Router);
    net.join(100, Role::Client);
    let parent = net.parent(100).unwrap();
    let other = if parent == 10 { 11 } else { 10 };

    // The transport reports the link gone on both ends.
    let out = net.input(parent, Input::LinkClosed { peer: 100 });
    assert!(events(&out).contains(&TreeEvent::ChildRemoved {
        child: 100,
        reason: RemovalReason::LinkClosed
    }));
    assert_eq!(sent(&out, child_removed).len(), 1);
    assert!(!net.node(parent).children().any(|c| c.id == 100));
    net.run();
    assert!(net.root().view().unwrap().get(100).is_none());

    let out = net.input(100, Input::LinkClosed { peer: parent });
    assert!(events(&out).contains(&TreeEvent::Orphaned { previous: parent }));
    let joins = sent(&out, join_request);
    assert_eq!(joins.len(), 1);
    assert_eq!(joins[0].0, ROOT);
    assert_eq!(net.parent(100), None);
    net.run();
    assert!(net.parent(100).is_some());
    assert_eq!(net.view_parent(100), net.parent(100));

    // A closed link to a stranger changes nothing.
    let children: Vec<_> = net.node(other).children().collect();
    let out = net.input(other, Input::LinkClosed { peer: 999 });
    assert!(sends(&out).is_empty() && events(&out).is_empty());
    assert_eq!(net.node(other).children().collect::<Vec<_>>(), children);
}

// ---------------------------------------------------------------------------------------
// Strangers.

#[test]
fn heartbeat_from_a_non_neighbour_is_ignored_and_answered() {
    let mut net = Net::new(config(), 4);
    net.join(10, Role::Router);
    net.join(100, Role::Client);
    net.advance(ms(200));
    let children_before: Vec<_> = net.node(10).children().collect();
    let interest_before = net.node(10).interest().len();

    // A stranger heartbeats as if it were a child (it reports a subtree).
    let stranger = 999;
    let out = net.inject(
        stranger,
        10,
        Body::Heartbeat(Heartbeat {
            sender_id: stranger,
            subtree: Some(SubtreeSize {
                clients: 40,
                routers: 3,
            }),
            topology_epoch: 9,
            interest: Some(canopy_tree::proto::v1::InterestDelta {
                add: vec![77],
                remove: vec![node_tag(100)],
            }),
            assignment_id: 1,
            root_id: 0,
        }),
    );
    assert_eq!(
        events(&out),
        vec![TreeEvent::Dropped {
            from: stranger,
            kind: "heartbeat",
            reason: DropReason::NotANeighbour
        }]
    );
    let all = sends(&out);
    assert_eq!(all.len(), 1);
    let d = sent(&out, disconnect);
    assert_eq!(d[0].0, stranger);
    assert_eq!(d[0].1.sender_id, 10);
    assert!(is_disconnect(&d[0].1, Reason::NotANeighbour, true));

    // Nothing changed.
    assert_eq!(net.node(10).children().collect::<Vec<_>>(), children_before);
    assert_eq!(net.node(10).interest().len(), interest_before);
    assert!(!net.node(10).interest().subtree_wants(77));
    assert!(net.node(10).interest().subtree_wants(node_tag(100)));
    assert_eq!(net.node(10).epoch(), 1);
    assert_eq!(net.parent(10), Some(ROOT));

    // A stranger posing as a parent (no subtree) is told the same, without a rejoin hint.
    let out = net.inject(
        stranger,
        100,
        Body::Heartbeat(Heartbeat {
            sender_id: stranger,
            subtree: None,
            topology_epoch: 9,
            interest: None,
            assignment_id: 1,
            root_id: 0,
        }),
    );
    let d = sent(&out, disconnect);
    assert_eq!(d.len(), 1);
    assert!(is_disconnect(&d[0].1, Reason::NotANeighbour, false));
    assert_eq!(net.node(100).epoch(), 1);
    assert_eq!(net.parent(100), Some(10));
}

// ---------------------------------------------------------------------------------------
// Leaving.

#[test]
fn graceful_leave_of_a_router_moves_its_children() {
    let mut net = Net::new(config(), 6);
    net.join(10, Role::Router);
    net.join(11, Role::Router);
    for c in 100..104 {
        net.join(c, Role::Client);
    }
    net.advance(ms(200));
    let leaving = 10;
    let other = 11;
    let orphans = net.child_ids(leaving);
    assert_eq!(orphans.len(), 2);

    let out = net.input(leaving, Input::Leave);
    let d = sent(&out, disconnect);
    assert_eq!(d.len(), 3);
    let to_parent: Vec<_> = d.iter().filter(|(to, _)| *to == ROOT).collect();
    assert_eq!(to_parent.len(), 1);
    assert!(is_disconnect(&to_parent[0].1, Reason::Leaving, false));
    let to_children: BTreeSet<NodeId> = d
        .iter()
        .filter(|(_, m)| is_disconnect(m, Reason::Leaving, true))
        .map(|(to, _)| *to)
        .collect();
    assert_eq!(to_children, orphans.iter().copied().collect());
    assert!(net.node(leaving).has_left());
    assert_eq!(net.parent(leaving), None);
    assert_eq!(net.node(leaving).child_count(), 0);

    net.run();
    assert!(net.events_of(ROOT).contains(&TreeEvent::ChildRemoved {
        child: leaving,
        reason: RemovalReason::Left
    }));
    assert_eq!(net.child_ids(ROOT), vec![other]);
    assert!(net.root().view().unwrap().get(leaving).is_none());
    for &c in &orphans {
        assert!(net
            .events_of(c)
            .contains(&TreeEvent::Orphaned { previous: leaving }));
        assert_eq!(net.parent(c), Some(other), "client {c} rejoined");
        assert_eq!(net.view_parent(c), Some(other));
    }
    assert_eq!(net.child_ids(other).len(), 4);

    // The node that left ignores everything from now on.
    let out = net.input(leaving, Input::Tick);
    assert!(out.is_empty());
    let (log_mark, lost_mark) = (net.log.len(), net.lost.len());
    net.advance(config().child_timeout * 2);
    assert!(net.node(leaving).has_left());
    assert!(!net.log[log_mark..]
        .iter()
        .chain(&net.lost[lost_mark..])
        .any(|s| s.from == leaving || s.to == leaving));
}
