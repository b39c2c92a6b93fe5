//! Cache-aware reallocation and upward filters on a small tree: the root moves a writer next
//! to the other writer of its key; the move loses and duplicates nothing; afterwards the key's
//! writes stay below one router and never reach the root.

mod common;

use bytes::Bytes;
use canopy_tree::proto::Body;
use canopy_tree::{Input, KeyTag, NodeId, Role, TreeConfig, TreeEvent};
use common::*;

const TAG: KeyTag = 0x5EED_0000_0000_0077;

fn reallocating() -> TreeConfig {
    TreeConfig {
        reallocate: true,
        ..config()
    }
}

/// A root, routers 10 and 11, clients 100..104 spread over them; returns the two clients
/// (one under each router) that share `TAG`.
fn spread_writers(net: &mut Net) -> (NodeId, NodeId) {
    net.join(10, Role::Router);
    net.join(11, Role::Router);
    for c in 100..104 {
        net.join(c, Role::Client);
    }
    net.advance(ms(150));
    let (a, b) = (net.child_ids(10)[0], net.child_ids(11)[0]);
    for w in [a, b] {
        net.input(w, Input::Subscribe(TAG));
    }
    net.advance(ms(100));
    (a, b)
}

fn publish(net: &mut Net, from: NodeId, n: u32) {
    let payload = Bytes::from(format!("write {n}"));
    net.input(
        from,
        Input::Publish {
            key_tag: TAG,
            payload,
        },
    );
}

fn multicasts_into(net: &Net, to: NodeId) -> usize {
    net.log
        .iter()
        .filter(|s| s.to == to && matches!(s.body(), Body::Multicast(_)))
        .count()
}

#[test]
fn the_root_moves_a_writer_next_to_its_keys_other_writer_and_loses_nothing() {
    let mut net = Net::new(reallocating(), 8);
    let (a, b) = spread_writers(&mut net);
    // Both write, every 50 ms, across the rebalance and the handoff that follows.
    let mut n = 0;
    for _ in 0..80 {
        publish(&mut net, a, n);
        publish(&mut net, b, n + 1);
        n += 2;
        net.advance(ms(50));
    }
    let moves: Vec<(NodeId, NodeId)> = net
        .events_of(ROOT)
        .into_iter()
        .filter_map(|e| match e {
            TreeEvent::Reallocated { client, to, .. } => Some((client, to)),
            _ => None,
        })
        .collect();
    assert_eq!(moves.len(), 1, "{moves:?}");
    assert_eq!(net.parent(a), net.parent(b), "the writers share a router");
    // The client that moved is no longer its old router's child.
    let (moved, to) = moves[0];
    let old = if to == 10 { 11 } else { 10 };
    assert!(!net.child_ids(old).contains(&moved));
    // Every write reached the other writer exactly once.
    for (receiver, writer) in [(a, b), (b, a)] {
        let mut seqs: Vec<u64> = net
            .delivered
            .iter()
            .filter(|(r, m)| *r == receiver && m.origin == writer)
            .map(|(_, m)| m.origin_seq)
            .collect();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=80).collect::<Vec<u64>>(),
            "at {receiver} from {writer}"
        );
    }
    // With upward filters, the key's writes now stay below the shared router.
    let before = multicasts_into(&net, ROOT);
    for i in 0..10 {
        publish(&mut net, a, 1000 + i);
        net.advance(ms(20));
    }
    assert_eq!(multicasts_into(&net, ROOT), before);
}

#[test]
fn without_reallocation_nobody_moves() {
    let mut net = Net::new(config(), 8);
    let (a, b) = spread_writers(&mut net);
    for n in 0..60 {
        publish(&mut net, a, n);
        net.advance(ms(50));
    }
    assert_ne!(net.parent(a), net.parent(b));
    assert!(!net
        .events_of(ROOT)
        .iter()
        .any(|e| matches!(e, TreeEvent::Reallocated { .. })));
}

#[test]
fn a_moved_client_forwards_nothing_its_old_parent_sends() {
    let mut net = Net::new(reallocating(), 8);
    let (a, b) = spread_writers(&mut net);
    for n in 0..40 {
        publish(&mut net, a, n);
        publish(&mut net, b, n);
        net.advance(ms(50));
    }
    assert!(net
        .events_of(ROOT)
        .iter()
        .any(|e| matches!(e, TreeEvent::Reallocated { .. })));
    // Whatever a client sent upward was its own: a client never relays.
    for client in [a, b] {
        let relayed = net.log.iter().any(|s| {
            s.from == client && matches!(s.body(), Body::Multicast(m) if m.origin != client)
        });
        assert!(!relayed, "client {client} relayed a multicast");
    }
}
