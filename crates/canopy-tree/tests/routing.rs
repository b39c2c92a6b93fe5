//! State transitions of `canopy_tree::Node` around multicast routing and interest:
//! forwarding up and filtered down, never back over the arrival link, deliveries only for
//! subscribed tags, interest deltas up the tree, unicast by node tag, strangers dropped.

mod common;

use std::collections::BTreeSet;

use bytes::Bytes;
use canopy_tree::proto::v1::{InterestDelta, Multicast};
use canopy_tree::proto::Body;
use canopy_tree::{node_tag, DropReason, Input, KeyTag, NodeId, Role, TreeEvent, BROADCAST_TAG};
use common::*;

const TAG: KeyTag = 0x5EED_0000_0000_0042;

/// A root, two routers and two clients under each router.
struct Tree {
    net: Net,
    /// Router of `a1`/`a2` and router of `b1`/`b2`.
    ra: NodeId,
    rb: NodeId,
    a1: NodeId,
    a2: NodeId,
    b1: NodeId,
    b2: NodeId,
}

fn tree() -> Tree {
    let mut net = Net::new(config(), 8);
    net.join(10, Role::Router);
    net.join(11, Role::Router);
    for c in 100..104 {
        net.join(c, Role::Client);
    }
    net.advance(ms(150));
    let under = |r: NodeId| -> Vec<NodeId> { net.child_ids(r) };
    let (ca, cb) = (under(10), under(11));
    assert_eq!((ca.len(), cb.len()), (2, 2), "{ca:?} {cb:?}");
    Tree {
        ra: 10,
        rb: 11,
        a1: ca[0],
        a2: ca[1],
        b1: cb[0],
        b2: cb[1],
        net,
    }
}

/// Subscribes `node` to `tag` and lets the interest settle up to the root.
fn subscribe(net: &mut Net, node: NodeId, tag: KeyTag) {
    net.input(node, Input::Subscribe(tag));
    net.advance(config().interest_batch_delay * 4);
}

fn unsubscribe(net: &mut Net, node: NodeId, tag: KeyTag) {
    net.input(node, Input::Unsubscribe(tag));
    net.advance(config().interest_batch_delay * 4);
}

/// Publishes at `origin`, delivers everything, and returns the multicast hops (from, to)
/// and the nodes that delivered it to their application.
fn publish(
    net: &mut Net,
    origin: NodeId,
    tag: KeyTag,
) -> (BTreeSet<(NodeId, NodeId)>, Vec<NodeId>) {
    let (log_mark, delivered_mark) = (net.log.len(), net.delivered.len());
    net.input(
        origin,
        Input::Publish {
            key_tag: tag,
            payload: Bytes::from_static(b"sealed"),
        },
    );
    net.run();
    let mut hops = BTreeSet::new();
    for s in &net.log[log_mark..] {
        if let Some(m) = multicast(s.body()) {
            assert_eq!(m.origin, origin);
            assert_eq!(m.key_tag, tag);
            assert!(
                hops.insert((s.from, s.to)),
                "a link carried the copy twice: {} -> {}",
                s.from,
                s.to
            );
        }
    }
    let receivers = net.delivered[delivered_mark..]
        .iter()
        .map(|(n, m)| {
            assert_eq!((m.origin, m.key_tag), (origin, tag));
            *n
        })
        .collect();
    (hops, receivers)
}

fn hops(pairs: &[(NodeId, NodeId)]) -> BTreeSet<(NodeId, NodeId)> {
    pairs.iter().copied().collect()
}

// ---------------------------------------------------------------------------------------
// Interest.

#[test]
fn subscribe_is_batched_then_carried_up_as_a_delta() {
    let Tree {
        mut net,
        ra,
        a1,
        a2,
        ..
    } = tree();

    // Subscribing sends nothing at once; the node asks to wake after the batch delay.
    let t0 = net.now;
    let out = net.input(a1, Input::Subscribe(TAG));
    assert!(sends(&out).is_empty());
    let batch = config().interest_batch_delay;
    assert!(wakes(&out).iter().all(|&w| w <= t0 + batch));
    assert!(net.node(a1).interest().wants_locally(TAG));
    assert!(net.node(a1).interest().has_pending());

    // At the batch tick the client heartbeats its parent with the delta.
    net.now = t0 + batch;
    let out = net.input(a1, Input::Tick);
    let hbs = sent(&out, heartbeat);
    assert_eq!(hbs.len(), 1);
    assert_eq!(hbs[0].0, ra);
    assert_eq!(
        hbs[0].1.interest,
        Some(InterestDelta {
            add: vec![TAG],
            remove: vec![]
        })
    );
    assert!(!net.node(a1).interest().has_pending());

    // The router records it per link and in its aggregate, and schedules its own delta.
    net.run();
    assert_eq!(net.node(ra).child_advertised(a1, TAG), Some(true));
    assert_eq!(net.node(ra).child_may_want(a1, TAG), Some(true));
    assert_eq!(net.node(ra).child_advertised(a2, TAG), Some(false));
    assert_eq!(net.node(ra).child_may_want(a2, TAG), Some(false));
    assert!(net.node(ra).interest().subtree_wants(TAG));
    assert!(!net.node(ra).interest().wants_locally(TAG));
    assert!(net.node(ra).interest().has_pending());
    assert_eq!(net.root().child_advertised(ra, TAG), Some(false));

    net.now += batch;
    let out = net.input(ra, Input::Tick);
    let up: Vec<_> = sent(&out, heartbeat)
        .into_iter()
        .filter(|(to, _)| *to == ROOT)
        .collect();
    assert_eq!(up.len(), 1);
    assert_eq!(
        up[0].1.interest,
        Some(InterestDelta {
            add: vec![TAG],
            remove: vec![]
        })
    );
    net.run();
    assert_eq!(net.root().child_advertised(ra, TAG), Some(true));
    assert_eq!(net.root().child_may_want(ra, TAG), Some(true));
    assert!(net.root().interest().subtree_wants(TAG));
}

#[test]
fn unsubscribe_withdraws_a_tag_only_when_no_child_wants_it() {
    let Tree {
        mut net,
        ra,
        a1,
        a2,
        ..
    } = tree();
    subscribe(&mut net, a1, TAG);
    assert_eq!(net.root().child_advertised(ra, TAG), Some(true));

    // A second subscriber below the same router: nothing new goes up.
    let mark = net.log.len();
    subscribe(&mut net, a2, TAG);
    assert_eq!(net.node(ra).child_advertised(a2, TAG), Some(true));
    let deltas_up: Vec<_> = net.log[mark..]
        .iter()
        .filter(|s| s.from == ra && s.to == ROOT)
        .filter_map(|s| heartbeat(s.body()))
        .filter_map(|hb| hb.interest)
        .collect();
    assert!(
        deltas_up.is_empty(),
        "no delta for a tag already advertised: {deltas_up:?}"
    );

    // One of them leaves: the router still wants the tag.
    let mark = net.log.len();
    unsubscribe(&mut net, a1, TAG);
    assert_eq!(net.node(ra).child_advertised(a1, TAG), Some(false));
    assert!(net.node(ra).interest().subtree_wants(TAG));
    assert_eq!(net.root().child_advertised(ra, TAG), Some(true));
    let removed_up = net.log[mark..]
        .iter()
        .filter(|s| s.from == ra && s.to == ROOT)
        .filter_map(|s| heartbeat(s.body()))
        .filter_map(|hb| hb.interest)
        .any(|d| d.remove.contains(&TAG));
    assert!(!removed_up);

    // The last one leaves: the tag is withdrawn up to the root.
    let mark = net.log.len();
    unsubscribe(&mut net, a2, TAG);
    assert!(!net.node(ra).interest().subtree_wants(TAG));
    let removed_up: Vec<_> = net.log[mark..]
        .iter()
        .filter(|s| s.from == ra && s.to == ROOT)
        .filter_map(|s| heartbeat(s.body()))
        .filter_map(|hb| hb.interest)
        .collect();
    assert_eq!(
        removed_up,
        vec![InterestDelta {
            add: vec![],
            remove: vec![TAG]
        }]
    );
    assert_eq!(net.root().child_advertised(ra, TAG), Some(false));
    assert!(!net.root().interest().subtree_wants(TAG));

    // A node never gives up its own id tag.
    net.input(a1, Input::Unsubscribe(node_tag(a1)));
    net.advance(config().interest_batch_delay * 4);
    assert!(net.node(a1).interest().wants_locally(node_tag(a1)));
    assert_eq!(net.node(ra).child_advertised(a1, node_tag(a1)), Some(true));
}

#[test]
fn subscriptions_made_before_joining_arrive_in_the_reattach_snapshot() {
    let mut net = Net::new(config(), 8);
    net.join(10, Role::Router);
    net.add(100, Role::Client, 100);
    net.input(100, Input::Subscribe(TAG));
    net.input(100, Input::Start);
    net.run();
    assert_eq!(net.parent(100), Some(10));
    let snapshots: Vec<_> = net
        .delivered_between(100, 10, reattach)
        .into_iter()
        .filter_map(|r| r.interest)
        .collect();
    assert_eq!(snapshots.len(), 1);
    let mut expected = vec![TAG, node_tag(100)];
    expected.sort_unstable();
    assert_eq!(snapshots[0].tags, expected);
    assert_eq!(net.node(10).child_advertised(100, TAG), Some(true));
    // Nothing is left pending: the snapshot superseded the batched delta.
    assert!(!net.node(100).interest().has_pending());
    net.advance(ms(200));
    let deltas: Vec<_> = net
        .delivered_between(100, 10, heartbeat)
        .into_iter()
        .filter_map(|hb| hb.interest)
        .collect();
    assert!(deltas.is_empty(), "{deltas:?}");
}

#[test]
fn heartbeat_from_a_child_that_has_not_reattached_is_ignored() {
    let mut net = Net::new(config(), 8);
    net.join(10, Role::Router);
    net.start(100, Role::Client);
    // Root answers, router adopts; the AssignParent to the client is held back.
    net.deliver_one().unwrap();
    net.deliver_one().unwrap();
    let held = net.take(|s| s.to == 100);
    assert_eq!(held.len(), 1);
    assert!(net.node(10).children().any(|c| c.id == 100 && !c.attached));

    let out = net.inject(
        100,
        10,
        Body::Heartbeat(canopy_tree::proto::v1::Heartbeat {
            sender_id: 100,
            subtree: Some(canopy_tree::proto::v1::SubtreeSize {
                clients: 1,
                routers: 0,
            }),
            topology_epoch: 1,
            interest: Some(InterestDelta {
                add: vec![TAG],
                remove: vec![],
            }),
            assignment_id: 2,
            root_id: 0,
        }),
    );
    assert_eq!(
        events(&out),
        vec![TreeEvent::Dropped {
            from: 100,
            kind: "heartbeat",
            reason: DropReason::UnexpectedMessage
        }]
    );
    assert!(sends(&out).is_empty());
    assert_eq!(net.node(10).child_advertised(100, TAG), Some(false));
    assert!(!net.node(10).interest().subtree_wants(TAG));

    // And it gets no multicasts until it has attached.
    let out = net.input(
        10,
        Input::Publish {
            key_tag: BROADCAST_TAG,
            payload: Bytes::new(),
        },
    );
    assert!(!sent(&out, multicast).iter().any(|(to, _)| *to == 100));
    net.deliver(held[0].clone());
    net.run();
    assert!(net.node(10).children().any(|c| c.id == 100 && c.attached));
}

// ---------------------------------------------------------------------------------------
// Multicast routing.

#[test]
fn multicast_goes_up_and_only_down_interested_links() {
    let Tree {
        mut net,
        ra,
        rb,
        a1,
        a2,
        b1,
        b2,
    } = tree();
    subscribe(&mut net, b1, TAG);
    assert_eq!(net.node(ra).child_may_want(a2, TAG), Some(false));
    assert_eq!(net.node(rb).child_may_want(b2, TAG), Some(false));

    // Step by step: the publisher sends one copy, to its parent.
    let out = net.input(
        a1,
        Input::Publish {
            key_tag: TAG,
            payload: Bytes::from_static(b"x"),
        },
    );
    let copies = sent(&out, multicast);
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].0, ra);
    let m = &copies[0].1;
    assert_eq!(
        (m.origin, m.key_tag, m.origin_seq, m.key_seq),
        (a1, TAG, 1, 1)
    );
    assert!(
        deliveries(&out).is_empty(),
        "never delivered to its own publisher"
    );

    // The router forwards up only (its other child does not want the tag) and keeps none.
    let (_, out) = net.deliver_one().unwrap();
    let out = out.unwrap();
    let copies = sent(&out, multicast);
    assert_eq!(
        copies.iter().map(|(to, _)| *to).collect::<Vec<_>>(),
        vec![ROOT]
    );
    assert!(deliveries(&out).is_empty(), "routers do not deliver");

    // The root sends it down the other side only, never back where it came from.
    let (_, out) = net.deliver_one().unwrap();
    let out = out.unwrap();
    let copies = sent(&out, multicast);
    assert_eq!(
        copies.iter().map(|(to, _)| *to).collect::<Vec<_>>(),
        vec![rb]
    );

    let (_, out) = net.deliver_one().unwrap();
    let copies = sent(out.as_ref().unwrap(), multicast);
    assert_eq!(
        copies.iter().map(|(to, _)| *to).collect::<Vec<_>>(),
        vec![b1]
    );

    // The subscriber delivers and forwards nothing.
    let (_, out) = net.deliver_one().unwrap();
    let out = out.unwrap();
    assert!(sends(&out).is_empty());
    let got = deliveries(&out);
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].origin, got[0].key_tag, got[0].payload.as_ref()),
        (a1, TAG, &b"x"[..])
    );
    assert!(net.queue.is_empty());

    // The same publish, seen whole.
    let (hops_seen, receivers) = publish(&mut net, a1, TAG);
    assert_eq!(
        hops_seen,
        hops(&[(a1, ra), (ra, ROOT), (ROOT, rb), (rb, b1)])
    );
    assert_eq!(receivers, vec![b1]);

    // Once b1 unsubscribes, nobody wants the tag. Nobody in ra's subtree wants it either, so
    // ra was never told it is local: the copy goes up and stops at the root.
    unsubscribe(&mut net, b1, TAG);
    let (hops_seen, receivers) = publish(&mut net, a1, TAG);
    assert_eq!(hops_seen, hops(&[(a1, ra), (ra, ROOT)]));
    assert!(receivers.is_empty());

    // Once a2 wants it, only ra's subtree does: ra's parent says the tag is local to ra
    // (upward filters), and a copy from a1 stays below ra.
    subscribe(&mut net, a2, TAG);
    let (hops_seen, receivers) = publish(&mut net, a1, TAG);
    assert_eq!(hops_seen, hops(&[(a1, ra), (ra, a2)]));
    assert_eq!(receivers, vec![a2]);
}

#[test]
fn multicast_never_returns_to_the_publisher() {
    let Tree {
        mut net,
        ra,
        rb,
        a1,
        a2,
        b1,
        ..
    } = tree();
    // The publisher, its sibling and one client on the other side all want the tag.
    for n in [a1, a2, b1] {
        subscribe(&mut net, n, TAG);
    }
    let (hops_seen, receivers) = publish(&mut net, a1, TAG);
    assert_eq!(
        hops_seen,
        hops(&[(a1, ra), (ra, ROOT), (ra, a2), (ROOT, rb), (rb, b1)])
    );
    assert!(!hops_seen.iter().any(|&(_, to)| to == a1));
    let receivers: BTreeSet<NodeId> = receivers.into_iter().collect();
    assert_eq!(receivers, BTreeSet::from([a2, b1]));

    // A copy that loops back to its origin anyway is dropped there.
    let looped = Multicast {
        origin: a1,
        key_tag: TAG,
        origin_seq: 1,
        key_seq: 1,
        payload: Bytes::from_static(b"x"),
    };
    let out = net.inject(ra, a1, Body::Multicast(looped));
    assert!(deliveries(&out).is_empty());
    assert!(sends(&out).is_empty());
    assert!(events(&out).iter().any(|e| matches!(
        e,
        TreeEvent::Dropped {
            kind: "multicast",
            ..
        }
    )));
}

#[test]
fn broadcast_tag_reaches_every_client() {
    let Tree {
        mut net,
        ra,
        rb,
        a1,
        a2,
        b1,
        b2,
    } = tree();
    let (hops_seen, receivers) = publish(&mut net, a1, BROADCAST_TAG);
    assert_eq!(
        hops_seen,
        hops(&[
            (a1, ra),
            (ra, ROOT),
            (ra, a2),
            (ROOT, rb),
            (rb, b1),
            (rb, b2)
        ])
    );
    let receivers: BTreeSet<NodeId> = receivers.into_iter().collect();
    assert_eq!(receivers, BTreeSet::from([a2, b1, b2]));

    // From the root, too: every client, no router.
    let (hops_seen, receivers) = publish(&mut net, ROOT, BROADCAST_TAG);
    assert_eq!(hops_seen.len(), 6);
    let receivers: BTreeSet<NodeId> = receivers.into_iter().collect();
    assert_eq!(receivers, BTreeSet::from([a1, a2, b1, b2]));
}

#[test]
fn delivery_only_for_subscribed_tags() {
    let Tree {
        mut net,
        a1,
        b1,
        b2,
        ..
    } = tree();
    subscribe(&mut net, b1, TAG);
    let other: KeyTag = 0x0DD0_0000_0000_0007;
    let (_, receivers) = publish(&mut net, a1, other);
    assert!(receivers.is_empty(), "nobody wants {other:#x}");
    let (_, receivers) = publish(&mut net, a1, TAG);
    assert_eq!(receivers, vec![b1]);
    assert!(!net.delivered.iter().any(|(n, _)| *n == b2 || *n == a1));
    // Sequence numbers count per origin and per (origin, tag).
    let (n, last) = net.delivered.last().unwrap();
    assert_eq!(*n, b1);
    assert_eq!((last.origin_seq, last.key_seq), (2, 1));
}

#[test]
fn unicast_is_a_multicast_to_the_node_tag() {
    let Tree {
        mut net,
        ra,
        rb,
        a1,
        b2,
        ..
    } = tree();
    let (hops_seen, receivers) = publish(&mut net, a1, node_tag(b2));
    assert_eq!(
        hops_seen,
        hops(&[(a1, ra), (ra, ROOT), (ROOT, rb), (rb, b2)])
    );
    assert_eq!(receivers, vec![b2]);

    // Down from the root to a router, which delivers what is addressed to it.
    let (hops_seen, receivers) = publish(&mut net, ROOT, node_tag(rb));
    assert_eq!(hops_seen, hops(&[(ROOT, rb)]));
    assert_eq!(receivers, vec![rb]);

    // Up from a client to the root.
    let (hops_seen, receivers) = publish(&mut net, b2, node_tag(ROOT));
    assert!(hops_seen.contains(&(rb, ROOT)));
    assert_eq!(receivers, vec![ROOT]);
}

#[test]
fn multicast_from_a_non_neighbour_is_dropped() {
    let Tree {
        mut net,
        ra,
        a1,
        b1,
        ..
    } = tree();
    subscribe(&mut net, a1, TAG);
    let children_before: Vec<_> = net.node(ra).children().collect();

    // A stranger, and a client of another router, both send straight to router ra.
    for stranger in [999, b1] {
        let m = Multicast {
            origin: stranger,
            key_tag: TAG,
            origin_seq: 1,
            key_seq: 1,
            payload: Bytes::from_static(b"forged"),
        };
        let out = net.inject(stranger, ra, Body::Multicast(m));
        assert_eq!(
            events(&out),
            vec![TreeEvent::Dropped {
                from: stranger,
                kind: "multicast",
                reason: DropReason::NotANeighbour
            }]
        );
        assert!(sends(&out).is_empty(), "nothing forwarded");
        assert!(deliveries(&out).is_empty());
    }
    // And straight to a client.
    let m = Multicast {
        origin: 999,
        key_tag: TAG,
        origin_seq: 1,
        key_seq: 1,
        payload: Bytes::from_static(b"forged"),
    };
    let out = net.inject(999, a1, Body::Multicast(m));
    assert!(deliveries(&out).is_empty());
    assert!(sends(&out).is_empty());
    assert_eq!(net.node(ra).children().collect::<Vec<_>>(), children_before);
}
