//! A router advertising exactly `max_tags_per_router_link` tags (within its own link's
//! bound) would push its honest parent's interest over the same bound one level up. The
//! parent refuses the child that overflows its subtree, so the rogue loses its link and the
//! honest router keeps its place.

use std::time::Duration;

use canopy_net::{CertRole, NetEvent};
use canopy_node::local::LocalClusterSpec;
use canopy_proto::v1::{Heartbeat, InterestSnapshot, JoinRequest, Reattach, Role, SubtreeSize};
use canopy_proto::{Body, ControlMessage};

use crate::support::{Rogue, Tree, SETTLE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_cannot_push_its_parent_over_the_parents_bound() {
    let _serial = crate::support::serial().await;
    let mut spec = LocalClusterSpec::default();
    // The root takes one router; the next router goes under it.
    spec.tree.max_child_routers = 1;
    let max = spec.tree.limits.max_tags_per_router_link;
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
    // Exactly the bound: the rogue's own link is within it.
    let tags: Vec<u64> = (1..=max as u64).collect();
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
            interest: Some(InterestSnapshot { tags }),
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

    // Sample the honest router's parent for 15 s.
    let mut attached = 0;
    let samples = 75;
    for _ in 0..samples {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if tree.parent(honest).await.is_some() {
            attached += 1;
        }
    }
    let root_counters = tree.counters(root).await;
    let root_net = tree.cluster.node(root).unwrap().handle.net_stats();
    let honest_counters = tree.counters(honest).await;
    assert_eq!(
        root_counters.over_limit, 0,
        "the root never evicted the honest router"
    );
    assert!(
        honest_counters.over_limit >= 1,
        "the honest router evicted the rogue"
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
