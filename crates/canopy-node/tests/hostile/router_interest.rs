//! A rogue router under an honest router tries to get its honest parent thrown out of the
//! tree while staying within its own link's bounds:
//!
//! - by advertising exactly `max_tags_per_router_link` tags, which would push the honest
//!   router's subtree over the same bound one level up: the honest router drops the child
//!   that brings the most tags;
//! - by alternating full and empty snapshots (the empty one was once free, although
//!   withdrawing a set costs as much as advertising it): snapshots are charged for the set
//!   they replace, and every node paces its own upward changes under its parent's budget.
//!
//! Either way the rogue loses its link and the honest router keeps its place.

use std::net::SocketAddr;
use std::time::Duration;

use canopy_net::CertRole;
use canopy_node::local::LocalClusterSpec;
use canopy_proto::v1::InterestSnapshot;
use canopy_proto::{Body, ControlMessage};
use canopy_tree::NodeId;

use crate::support::{Rogue, Tree};

/// Samples of the honest router's parent, 200 ms apart.
const SAMPLES: usize = 75;

/// Tags a router link may carry in these tests: small enough that a full snapshot fits one
/// frame.
const ROUTER_LINK_TAGS: usize = 50_000;

/// A tree whose root takes one router, that router (honest), and a rogue router placed under
/// it and attached with `tags`. Returns the tree, the rogue, the honest router and its
/// address.
async fn rogue_under_honest_router(tags: usize) -> (Tree, Rogue, NodeId, SocketAddr) {
    let mut spec = LocalClusterSpec::default();
    spec.tree.max_child_routers = 1;
    spec.tree.limits.max_tags_per_router_link = ROUTER_LINK_TAGS;
    let tree = Tree::start_with(spec, 1, 2).await;
    let root = tree.root().await;
    let honest = tree.routers[0].identity.node_id;
    assert_eq!(tree.parent(honest).await, Some(root));
    let mut rogue = Rogue::new(&tree, 970, CertRole::Router);
    let (parent, addr) = rogue.get_placed(&tree).await;
    assert_eq!(
        parent, honest,
        "the rogue router sits under the honest router"
    );
    rogue.attach(honest, addr, (1..=tags as u64).collect());
    (tree, rogue, honest, addr)
}

/// The root never evicted the honest router, the honest router cut the rogue off, and the
/// honest router was attached in every sample; then the tree is whole.
async fn assert_contained(mut tree: Tree, honest: NodeId, attached: usize) {
    let root = tree.root().await;
    let root_counters = tree.counters(root).await;
    let honest_counters = tree.counters(honest).await;
    let root_net = tree.cluster.node(root).unwrap().handle.net_stats();
    assert_eq!(
        root_counters.over_limit, 0,
        "the root never evicted the honest router"
    );
    assert_eq!(root_counters.rate_limited, 0);
    assert_eq!(root_net.refused_banned, 0);
    assert!(
        honest_counters.over_limit + honest_counters.rate_limited >= 1,
        "the honest router cut the rogue off"
    );
    assert_eq!(
        attached, SAMPLES,
        "the honest router stayed attached throughout"
    );
    tree.assert_whole_and_delivering().await;
    tree.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_cannot_push_its_parent_over_the_parents_bound() {
    let _serial = crate::support::serial().await;
    // Exactly the bound: the rogue's own link is within it.
    let (tree, rogue, honest, addr) = rogue_under_honest_router(ROUTER_LINK_TAGS).await;
    let beats = rogue.keep_alive(honest, addr);
    let attached = tree.attached_samples(honest, SAMPLES).await;
    beats.abort();
    rogue.shutdown().await;
    assert_contained(tree, honest, attached).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_churn_costs_the_churner_not_its_parent() {
    let _serial = crate::support::serial().await;
    // Most of the bound, so the honest router's own subtree stays under it.
    let n = ROUTER_LINK_TAGS * 5 / 6;
    let (tree, rogue, honest, addr) = rogue_under_honest_router(n).await;
    let beats = rogue.keep_alive(honest, addr);
    let endpoint = rogue.endpoint.clone();
    let churn = tokio::spawn(async move {
        let snapshot = |tags: Vec<u64>| {
            ControlMessage::new(Body::InterestSnapshot(InterestSnapshot {
                tags,
                more: false,
            }))
        };
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = endpoint.send(honest, Some(addr), snapshot(Vec::new()));
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = endpoint.send(honest, Some(addr), snapshot((1..=n as u64).collect()));
        }
    });
    let attached = tree.attached_samples(honest, SAMPLES).await;
    churn.abort();
    beats.abort();
    rogue.shutdown().await;
    assert_contained(tree, honest, attached).await;
}
