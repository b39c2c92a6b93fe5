//! Adversarial tests for upward filters and cache-aware reallocation.

mod common;

use bytes::Bytes;
use canopy_tree::proto::v1::{InterestDelta, Multicast, OutsideInterest};
use canopy_tree::proto::Body;
use canopy_tree::{Input, KeyTag, NodeId, Role, TreeConfig, TreeEvent};
use common::*;

const T: KeyTag = 0x5EED_0000_0000_0077;

fn publish(net: &mut Net, node: NodeId, tag: KeyTag, payload: &'static [u8]) {
    net.input(
        node,
        Input::Publish {
            key_tag: tag,
            payload: Bytes::from_static(payload),
        },
    );
    net.run();
}

fn subscribe(net: &mut Net, node: NodeId, tag: KeyTag) {
    net.input(node, Input::Subscribe(tag));
    net.advance(ms(40));
}

/// Root 1, routers 10 and 11 under it, two clients under each: (net, [a1, a2], [b1, b2]).
fn tree(config: TreeConfig) -> (Net, [NodeId; 2], [NodeId; 2]) {
    let mut net = Net::new(config, 8);
    net.join(10, Role::Router);
    net.join(11, Role::Router);
    for c in 100..104 {
        net.join(c, Role::Client);
    }
    net.advance(ms(150));
    let (ca, cb) = (net.child_ids(10), net.child_ids(11));
    assert_eq!((ca.len(), cb.len()), (2, 2), "{ca:?} {cb:?}");
    (net, [ca[0], ca[1]], [cb[0], cb[1]])
}

fn reallocating() -> TreeConfig {
    TreeConfig {
        reallocate: true,
        ..config()
    }
}

fn reallocations(net: &Net) -> Vec<(NodeId, NodeId, NodeId)> {
    net.events_of(ROOT)
        .into_iter()
        .filter_map(|e| match e {
            TreeEvent::Reallocated { client, from, to } => Some((client, from, to)),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. Holder sentinels: a router whose certified id equals OWN (u64::MAX - 1) or
//    ABOVE (u64::MAX) is told a tag held only by its parent (or only above) is not wanted
//    outside it, and its whole subtree's multicasts for that tag are lost.

fn sentinel_router_case(router: NodeId) -> bool {
    let mut net = Net::new(config(), 8);
    net.join(router, Role::Router);
    net.join(100, Role::Client);
    net.advance(ms(150));
    assert_eq!(net.parent(100), Some(router));
    // Only the root itself (holder OWN at the root) wants T.
    subscribe(&mut net, ROOT, T);
    publish(&mut net, 100, T, b"x");
    net.delivered
        .iter()
        .any(|(n, m)| *n == ROOT && m.key_tag == T)
}

#[test]
fn control_an_ordinary_router_sends_its_parents_tags_up() {
    assert!(sentinel_router_case(12));
}

#[test]
fn a_router_whose_id_is_the_own_sentinel_loses_its_parents_tags() {
    assert!(
        sentinel_router_case(u64::MAX - 1),
        "the root wants T, but router u64::MAX-1 (== OWN) never sent its client's write up"
    );
}

#[test]
fn a_router_whose_id_is_the_above_sentinel_loses_tags_wanted_above() {
    // root 1 -> router 10 -> router MAX -> client 100; only the root wants T, so at router
    // 10 T is held only by ABOVE, whose XOR id equals the child's id.
    let mut net = Net::new(config(), 8);
    net.join(10, Role::Router);
    net.join(11, Role::Router);
    net.join(u64::MAX, Role::Router);
    let mid = net.parent(u64::MAX).unwrap();
    assert_ne!(mid, ROOT);
    // Fill the other routers so the client goes under MAX.
    let mut client = 100;
    loop {
        net.join(client, Role::Client);
        if net.parent(client) == Some(u64::MAX) {
            break;
        }
        client += 1;
        assert!(client < 140);
    }
    net.advance(ms(150));
    subscribe(&mut net, ROOT, T);
    publish(&mut net, client, T, b"x");
    assert!(
        net.delivered
            .iter()
            .any(|(n, m)| *n == ROOT && m.key_tag == T),
        "the root wants T, but router u64::MAX (== ABOVE) never sent it up"
    );
}

// ---------------------------------------------------------------------------------------
// 2. A parent floods deltas while a snapshot is pending: they must not go into `pending`
//    without bound.

#[test]
fn deltas_during_a_pending_snapshot_are_not_bounded() {
    let mut cfg = config();
    cfg.limits.max_tags_per_router_link = 64;
    cfg.limits.max_tags_per_client_link = 64;
    cfg.limits.max_tags_per_delta = 32;
    let mut net = Net::new(cfg, 8);
    net.join(10, Role::Router);
    net.advance(ms(150));
    // Router 10's own tag is wanted by nobody outside it: known, and local.
    let local = canopy_tree::node_tag(10);
    assert!(
        !net.node(10).interest().outside_wants(local),
        "known, local"
    );
    // The parent starts a new snapshot and never ends it...
    net.inject(
        ROOT,
        10,
        Body::OutsideInterest(OutsideInterest {
            snapshot: vec![1],
            first: true,
            more: true,
            ..Default::default()
        }),
    );
    // ...and sends 1000 x 32 = 32 000 distinct tags as deltas, 500 x the bound of 64.
    for i in 0..1000u64 {
        let add: Vec<KeyTag> = (0..32).map(|j| 1_000_000 + i * 32 + j).collect();
        net.inject(
            ROOT,
            10,
            Body::OutsideInterest(OutsideInterest {
                delta: Some(InterestDelta {
                    add,
                    remove: vec![],
                }),
                ..Default::default()
            }),
        );
    }
    // A node holding no more than its bound would have given up and sent everything up.
    assert!(
        net.node(10).interest().outside_wants(local),
        "router kept 32 000 pending tags (bound 64) without falling back to everything"
    );
}

// ---------------------------------------------------------------------------------------
// 3. Forged origins: the tree never checks `Multicast.origin`, and the root's affinity
//    table trusts it. A client makes the root move two clients that never wrote anything.

#[test]
fn a_client_forging_origins_makes_the_root_move_silent_clients() {
    let (mut net, [a1, a2], [b1, b2]) = tree(reallocating());
    // Someone under 11 wants T, so writes of T from 10's subtree climb to the root.
    subscribe(&mut net, b1, T);
    for seq in 1..=20u64 {
        for victim in [a2, b2] {
            net.inject(
                a1,
                10,
                Body::Multicast(Multicast {
                    origin: victim,
                    key_tag: T,
                    origin_seq: seq,
                    key_seq: seq,
                    payload: Bytes::from_static(b"forged"),
                }),
            );
        }
    }
    net.run();
    net.advance(ms(1100));
    let moved = reallocations(&net);
    assert!(
        moved.iter().all(|&(c, _, _)| c != a2 && c != b2),
        "the root moved clients that never published: {moved:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 4. Handoff de-duplication is keyed by the unauthenticated (origin, origin_seq): a client
//    pre-sends forged copies of an honest writer's next sequence numbers; the moved client
//    delivers the forgeries, and then drops the real multicasts as duplicates.

fn handoff_case(forge: bool) -> bool {
    let (mut net, [a1, a2], [b1, b2]) = tree(reallocating());
    // a2 and b2 write and read T from different subtrees: the root will gather them.
    subscribe(&mut net, a2, T);
    subscribe(&mut net, b2, T);
    if forge {
        // a1 forges b1's next multicasts (b1 has not published yet: seqs start at 1).
        for seq in 1..=3u64 {
            net.inject(
                a1,
                10,
                Body::Multicast(Multicast {
                    origin: b1,
                    key_tag: T,
                    origin_seq: seq,
                    key_seq: seq,
                    payload: Bytes::from_static(b"forged"),
                }),
            );
        }
        net.run();
    }
    for _ in 0..10 {
        publish(&mut net, a2, T, b"a2");
        publish(&mut net, b2, T, b"b2");
    }
    // Wait for the reallocation round.
    while reallocations(&net).is_empty() {
        net.advance(ms(5));
        assert!(net.now < ms(3000), "no reallocation happened");
    }
    let (moved, _from, _to) = reallocations(&net)[0];
    net.advance(ms(20)); // the move completes; the handoff is under way
    publish(&mut net, b1, T, b"real");
    net.advance(ms(500));
    net.delivered
        .iter()
        .any(|(n, m)| *n == moved && m.origin == b1 && m.payload.as_ref() == b"real")
}

#[test]
fn control_a_moved_client_gets_writes_during_its_handoff() {
    assert!(handoff_case(false));
}

#[test]
fn forged_copies_make_a_moved_client_drop_real_multicasts() {
    assert!(
        handoff_case(true),
        "the moved client never delivered b1's real multicast"
    );
}

// ---------------------------------------------------------------------------------------
// 5. A moved client whose new parent link breaks during the handoff rejoins, is placed
//    back under the parent it is leaving, and then says goodbye to it: its current parent.

#[test]
fn a_client_placed_back_under_the_parent_it_is_leaving_says_goodbye_to_it() {
    let (mut net, [_a1, a2], [_b1, b2]) = tree(reallocating());
    subscribe(&mut net, a2, T);
    subscribe(&mut net, b2, T);
    for _ in 0..10 {
        publish(&mut net, a2, T, b"a2");
        publish(&mut net, b2, T, b"b2");
    }
    while reallocations(&net).is_empty() {
        net.advance(ms(5));
        assert!(net.now < ms(3000), "no reallocation happened");
    }
    let (moved, from, to) = reallocations(&net)[0];
    let other = if moved == a2 { b2 } else { a2 };
    net.advance(ms(20));
    assert_eq!(net.parent(moved), Some(to));
    // The new parent's link breaks (a crash, a network blip).
    net.input(moved, Input::LinkClosed { peer: to });
    net.run();
    net.advance(ms(50));
    assert_eq!(
        net.parent(moved),
        Some(from),
        "placed back where it came from"
    );
    let mark = net.events.len();
    // `other` keeps writing T every 5 ms through the end of the handoff and beyond.
    let mut sent = 0;
    for _ in 0..80 {
        publish(&mut net, other, T, b"w");
        sent += 1;
        net.advance(ms(5));
    }
    let got = net.delivered[..]
        .iter()
        .filter(|(n, m)| *n == moved && m.origin == other && m.payload.as_ref() == b"w")
        .count();
    let goodbye = net.events[mark..].iter().any(|(n, e)| {
        *n == from && matches!(e, TreeEvent::ChildRemoved { child, .. } if *child == moved)
    });
    assert!(
        !goodbye && got == sent,
        "client {moved}, back under {from}, said goodbye to its own parent at the handoff's \
         leave_at (removed: {goodbye}); it got {got} of {sent} writes"
    );
}

// ---------------------------------------------------------------------------------------
// 6. The broadcast tag is wanted by every client: where its writers sit changes nothing,
//    yet the root counts it like any key and gathers its writers.

#[test]
fn broadcasting_clients_are_not_moved() {
    let (mut net, [_a1, a2], [_b1, b2]) = tree(reallocating());
    for _ in 0..10 {
        publish(&mut net, a2, canopy_tree::BROADCAST_TAG, b"hello");
        publish(&mut net, b2, canopy_tree::BROADCAST_TAG, b"hello");
    }
    net.advance(ms(1100));
    let moved = reallocations(&net);
    assert!(moved.is_empty(), "moved for broadcast traffic: {moved:?}");
}
