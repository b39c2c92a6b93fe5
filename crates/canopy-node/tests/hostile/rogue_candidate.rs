//! A configured root candidate that does not serve signs a grant in its own name, with the
//! highest assignment id, assigning itself as a client's parent, and sends a router a
//! `ReleaseChild` for another client. A node takes placements and releases only from the root
//! it follows (the one it asked to join, or the one named from above): neither moves anyone.

use std::time::Duration;

use canopy_net::CertRole;
use canopy_node::local::LocalClusterSpec;
use canopy_proto::prost::Message;
use canopy_proto::v1::{AssignParent, Placement, ReleaseChild, SignedPlacement};
use canopy_proto::{Body, ControlMessage};

use crate::support::{Rogue, Tree};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_that_does_not_serve_moves_nobody() {
    let _serial = crate::support::serial().await;
    let spec = LocalClusterSpec {
        candidates: 3,
        ..LocalClusterSpec::default()
    };
    let mut tree = Tree::start_with(spec, 1, 2).await;
    let root = tree.root().await;
    let follower = tree
        .cluster
        .candidates()
        .iter()
        .find(|c| c.id != root)
        .expect("a follower")
        .id;
    let rogue = Rogue::new(&tree, follower, CertRole::RootCandidate);
    let rogue_addr = rogue.endpoint.local_addr().to_string();
    let victim = tree.clients[0].identity.node_id;
    let honest_parent = tree.parent(victim).await.expect("placed");

    let placement = Placement {
        child_id: victim,
        parent_id: follower,
        parent_address: rogue_addr.clone(),
        assignment_id: u64::MAX,
        root_id: follower,
        issued_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
        topology_epoch: 1,
    }
    .encode_to_vec();
    let grant = SignedPlacement {
        signature: rogue.endpoint.authority().sign(&placement).unwrap().into(),
        signer_certificate: rogue.endpoint.authority().certificate().to_vec().into(),
        placement: placement.into(),
    };
    rogue.send(
        victim,
        tree.address(victim),
        ControlMessage::new(Body::AssignParent(AssignParent {
            child_id: victim,
            parent_id: follower,
            parent_address: rogue_addr,
            assignment_id: u64::MAX,
            topology_epoch: 1,
            grant: Some(grant),
        })),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        tree.parent(victim).await,
        Some(honest_parent),
        "the victim stays where the serving root put it"
    );

    // ReleaseChild from the same non-serving candidate detaches the other client.
    let other = tree.clients[1].identity.node_id;
    let other_parent = tree.parent(other).await.expect("placed");
    let before = tree.assignment_under(other_parent, other).await;
    rogue.send(
        other_parent,
        tree.address(other_parent),
        ControlMessage::new(Body::ReleaseChild(ReleaseChild {
            child_id: other,
            assignment_id: u64::MAX,
        })),
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    let victim_counters = tree.counters(victim).await;
    let after = tree.assignment_under(other_parent, other).await;
    assert!(victim_counters.dropped >= 1, "the placement was ignored");
    assert_eq!(before, after, "the release was ignored");
    rogue.shutdown().await;
    tree.assert_whole_and_delivering().await;
    tree.shutdown().await;
}
