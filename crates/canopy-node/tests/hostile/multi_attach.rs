//! A client that asks to join again while attached, and never leaves its old parent, is
//! placed anew and its old parent lets it go (the root's `ReleaseChild`): it sits under one
//! parent only and gets one copy of each multicast.

use std::net::SocketAddr;
use std::time::Duration;

use canopy_net::{CertRole, NetEvent};
use canopy_proto::v1::{Heartbeat, InterestSnapshot, JoinRequest, Reattach, Role, SubtreeSize};
use canopy_proto::{Body, ControlMessage};
use canopy_tree::NodeId;

use crate::support::{Rogue, Tree, SETTLE};

const ROGUE: NodeId = 985;

async fn join(rogue: &mut Rogue, tree: &Tree, attempt: u32) -> (NodeId, SocketAddr, u64) {
    let root = tree.root().await;
    let join = ControlMessage::new(Body::JoinRequest(JoinRequest {
        node_id: ROGUE,
        role: Role::Client as i32,
        region: rogue.endpoint.identity().region.clone(),
        address: rogue.endpoint.local_addr().to_string(),
        attempt,
        subtree: None,
    }));
    rogue.send(root, tree.address(root), join);
    tokio::time::timeout(SETTLE, async {
        loop {
            if let Some(NetEvent::Message { from, msg }) = rogue.events.recv().await {
                if let Some(Body::AssignParent(a)) = msg.body {
                    return (
                        from.node_id,
                        a.parent_address.parse().unwrap(),
                        a.assignment_id,
                    );
                }
            }
        }
    })
    .await
    .expect("placed")
}

fn reattach(assignment_id: u64, tag: u64) -> ControlMessage {
    ControlMessage::new(Body::Reattach(Reattach {
        node_id: ROGUE,
        role: Role::Client as i32,
        assignment_id,
        subtree: Some(SubtreeSize {
            clients: 1,
            routers: 0,
        }),
        interest: Some(InterestSnapshot { tags: vec![tag] }),
    }))
}

fn heartbeat(assignment_id: u64) -> ControlMessage {
    ControlMessage::new(Body::Heartbeat(Heartbeat {
        sender_id: ROGUE,
        subtree: Some(SubtreeSize {
            clients: 1,
            routers: 0,
        }),
        topology_epoch: 0,
        interest: None,
        assignment_id,
        root_id: 0,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_sit_under_two_parents() {
    let _serial = crate::support::serial().await;
    let tree = Tree::start(1, 2, 2).await;
    let root = tree.root().await;
    let mut rogue = Rogue::new(&tree, ROGUE, CertRole::Client);
    let first = join(&mut rogue, &tree, 0).await;
    rogue.send(first.0, first.1, reattach(first.2, tree.tag));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Join again (a retry, so the root avoids the current parent) without leaving.
    let second = join(&mut rogue, &tree, 1).await;
    assert_ne!(first.0, second.0, "placed elsewhere");
    rogue.send(second.0, second.1, reattach(second.2, tree.tag));

    // Keep both links alive for a few seconds (several child timeouts).
    for _ in 0..20 {
        rogue.send(first.0, first.1, heartbeat(first.2));
        rogue.send(second.0, second.1, heartbeat(second.2));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut attached_at = Vec::new();
    for parent in [first.0, second.0] {
        let status = tree
            .cluster
            .node(parent)
            .unwrap()
            .handle
            .status()
            .await
            .unwrap();
        if status.children.iter().any(|c| c.id == ROGUE && c.attached) {
            attached_at.push(parent);
        }
    }
    let root_status = tree
        .cluster
        .node(root)
        .unwrap()
        .handle
        .status()
        .await
        .unwrap();
    assert!(root_status.view_size.is_some());

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
    rogue.shutdown().await;
    let mut tree = tree;
    tree.assert_whole_and_delivering().await;
    tree.shutdown().await;
}
