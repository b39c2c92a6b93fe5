//! A client that asks to join again while attached, and never leaves its old parent, is
//! placed anew and its old parent lets it go (the root's `ReleaseChild`): it sits under one
//! parent only and gets one copy of each multicast.

use std::time::Duration;

use canopy_net::{CertRole, NetEvent};
use canopy_proto::Body;
use canopy_tree::NodeId;

use crate::support::{Rogue, Tree};

const ROGUE: NodeId = 985;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_sit_under_two_parents() {
    let _serial = crate::support::serial().await;
    let tree = Tree::start(1, 2, 2).await;
    let root = tree.root().await;
    let mut rogue = Rogue::new(&tree, ROGUE, CertRole::Client);
    let first = rogue.get_placed(&tree).await;
    rogue.attach(first.0, first.1, vec![tree.tag]);
    let first_beats = rogue.keep_alive(first.0, first.1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Join again (a retry, so the root avoids the current parent) without leaving.
    let second = rogue.get_placed_at(&tree, 1).await;
    assert_ne!(first.0, second.0, "placed elsewhere");
    rogue.attach(second.0, second.1, vec![tree.tag]);
    let second_beats = rogue.keep_alive(second.0, second.1);

    // Keep both links alive for a few seconds (several child timeouts).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut attached_at = Vec::new();
    for parent in [first.0, second.0] {
        let status = tree.status(parent).await;
        if status.children.iter().any(|c| c.id == ROGUE && c.attached) {
            attached_at.push(parent);
        }
    }
    let view = tree.status(root).await.view_size;
    assert!(view.is_some());

    // An honest client publishes once on the tag the rogue asked for: the rogue gets a copy
    // from each parent.
    while rogue.events.try_recv().is_some() {}
    let publisher = &tree.clients[0];
    publisher
        .handle
        .publish(tree.tag, bytes::Bytes::from_static(b"x"))
        .await;
    let mut copies = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        let left = deadline - tokio::time::Instant::now();
        match tokio::time::timeout(left, rogue.events.recv()).await {
            Ok(Some(NetEvent::Message { from, msg })) => {
                if let Some(Body::Multicast(m)) = msg.body {
                    if m.origin == publisher.identity.node_id {
                        copies.push(from.node_id);
                    }
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(
        attached_at,
        vec![second.0],
        "attached under its new parent only"
    );
    assert_eq!(copies, vec![second.0], "one copy, from the new parent");
    first_beats.abort();
    second_beats.abort();
    rogue.shutdown().await;
    let mut tree = tree;
    tree.assert_whole_and_delivering().await;
    tree.shutdown().await;
}
