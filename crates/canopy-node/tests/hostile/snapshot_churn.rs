//! A snapshot is charged for the set it replaces as well as the one it carries, and a node
//! paces its own upward changes under its parent's budget: a router alternating full and
//! empty snapshots runs out of its budget at its honest parent, and the honest parent never
//! goes over its own budget at the root.

use std::time::Duration;

use canopy_net::{CertRole, NetEvent};
use canopy_node::local::LocalClusterSpec;
use canopy_proto::v1::{Heartbeat, InterestSnapshot, JoinRequest, Reattach, Role, SubtreeSize};
use canopy_proto::{Body, ControlMessage};

use crate::support::{Rogue, Tree, SETTLE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_churn_costs_the_churner_not_its_parent() {
    let _serial = crate::support::serial().await;
    let mut spec = LocalClusterSpec::default();
    // The root takes one router; the next router goes under it.
    spec.tree.max_child_routers = 1;
    // Under the aggregate bound of the honest router (its own tag and its clients' fit).
    let max = spec.tree.limits.max_tags_per_router_link - 100;
    let mut tree = Tree::start_with(spec, 1, 2).await;
    let root = tree.root().await;
    let honest = tree.routers[0].identity.node_id;
    assert_eq!(tree.parent(honest).await, Some(root));

    let mut rogue = Rogue::new(&tree, 970, CertRole::Router);
    let join = ControlMessage::new(Body::JoinRequest(JoinRequest {
        node_id: 970,
        role: Role::Router as i32,
        region: rogue.endpoint.identity().region.clone(),
        address: rogue.endpoint.local_addr().to_string(),
        attempt: 0,
        subtree: None,
    }));
    rogue.send(root, tree.address(root), join);
    let (parent, assignment_id) = tokio::time::timeout(SETTLE, async {
        loop {
            if let Some(NetEvent::Message { from, msg }) = rogue.events.recv().await {
                if let Some(Body::AssignParent(a)) = msg.body {
                    return (from.node_id, a.assignment_id);
                }
            }
        }
    })
    .await
    .expect("placed");
    assert_eq!(
        parent, honest,
        "the rogue router sits under the honest router"
    );
    let parent_addr = tree.address(honest);
    // Most of the bound: the rogue's own link is within it.
    let n = (max as u64) * 5 / 6;
    let tags: Vec<u64> = (1..=n).collect();
    rogue.send(
        honest,
        parent_addr,
        ControlMessage::new(Body::Reattach(Reattach {
            node_id: 970,
            role: Role::Router as i32,
            assignment_id,
            subtree: Some(SubtreeSize {
                clients: 0,
                routers: 1,
            }),
            interest: Some(InterestSnapshot { tags: tags.clone() }),
        })),
    );
    // Keep the link alive like an honest child.
    let endpoint = rogue.endpoint.clone();
    let beats = tokio::spawn(async move {
        loop {
            let hb = Heartbeat {
                sender_id: 970,
                subtree: Some(SubtreeSize {
                    clients: 0,
                    routers: 1,
                }),
                topology_epoch: 0,
                interest: None,
                assignment_id,
                root_id: 0,
            };
            let _ = endpoint.send(
                honest,
                Some(parent_addr),
                ControlMessage::new(Body::Heartbeat(hb)),
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    // Alternate: empty snapshot (charged 0 tags), full snapshot (charged n).
    let endpoint = rogue.endpoint.clone();
    let churn = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let _ = endpoint.send(
                honest,
                Some(parent_addr),
                ControlMessage::new(Body::InterestSnapshot(InterestSnapshot {
                    tags: Vec::new(),
                })),
            );
            tokio::time::sleep(Duration::from_millis(400)).await;
            let _ = endpoint.send(
                honest,
                Some(parent_addr),
                ControlMessage::new(Body::InterestSnapshot(InterestSnapshot {
                    tags: tags.clone(),
                })),
            );
        }
    });
    // Sample the honest router's parent for 15 s.
    let mut attached = 0;
    let samples = 75;
    for _ in 0..samples {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if tree.parent(honest).await.is_some() {
            attached += 1;
        }
    }
    churn.abort();
    let root_counters = tree.counters(root).await;
    let honest_counters = tree.counters(honest).await;
    let root_net = tree.cluster.node(root).unwrap().handle.net_stats();
    assert_eq!(
        root_counters.over_limit, 0,
        "the root never evicted the honest router"
    );
    assert_eq!(root_counters.rate_limited, 0);
    assert!(
        honest_counters.over_limit + honest_counters.rate_limited >= 1,
        "the honest router cut the churning rogue off"
    );
    assert_eq!(root_net.refused_banned, 0);
    assert_eq!(
        attached, samples,
        "the honest router stayed attached throughout"
    );
    beats.abort();
    rogue.shutdown().await;
    tree.assert_whole_and_delivering().await;
    tree.shutdown().await;
}
