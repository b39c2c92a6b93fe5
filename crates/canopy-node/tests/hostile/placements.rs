//! Placements carry the serving root's authority: no peer can move a node, and nothing a
//! peer sends wedges a node so that it refuses the root's genuine placements.

use std::time::Duration;

use canopy_net::{Authority, CertRole};
use canopy_proto::prost::Message;
use canopy_proto::v1::{AdoptChild, AssignParent, Cull, Placement, Role, SignedPlacement};
use canopy_proto::{Body, ControlMessage};
use canopy_tree::NodeId;

use crate::support::{Rogue, Tree};

fn placement(child: NodeId, parent: NodeId, assignment_id: u64, root: NodeId) -> Vec<u8> {
    Placement {
        child_id: child,
        parent_id: parent,
        parent_address: String::new(),
        assignment_id,
        root_id: root,
        issued_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        topology_epoch: 1,
    }
    .encode_to_vec()
}

/// A grant for `placement` signed by `signer`'s own certificate key.
fn signed_by(signer: &Authority, placement: Vec<u8>) -> SignedPlacement {
    SignedPlacement {
        signature: signer.sign(&placement).expect("sign").into(),
        signer_certificate: signer.certificate().to_vec().into(),
        placement: placement.into(),
    }
}

fn assign(victim: NodeId, parent: NodeId, grant: Option<SignedPlacement>) -> ControlMessage {
    ControlMessage::new(Body::AssignParent(AssignParent {
        child_id: victim,
        parent_id: parent,
        parent_address: String::new(),
        assignment_id: u64::MAX,
        topology_epoch: u64::MAX,
        grant,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_assignments_move_nobody_and_wedge_nobody() {
    let _serial = crate::support::serial().await;
    let mut tree = Tree::start(1, 2, 3).await;
    let root = tree.root().await;
    let victim = tree.clients[0].identity.node_id;
    let victim_addr = tree.address(victim);
    let parent = tree.parent(victim).await.expect("placed");

    // A router assigns itself as the victim's parent with the highest assignment id, first
    // without a grant, then with a grant it signed itself in the root's name.
    let mut router = Rogue::new(&tree, 950, CertRole::Router);
    router.send(victim, victim_addr, assign(victim, 950, None));
    let reason = router.closed_by(victim, Duration::from_secs(10)).await;
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("no placement grant")),
        "{reason:?}"
    );
    // The victim now refuses router 950 for a while; another router certificate tries.
    let mut router_b = Rogue::new(&tree, 954, CertRole::Router);
    let forged = signed_by(
        &router_b.endpoint.authority(),
        placement(victim, 954, u64::MAX, root),
    );
    router_b.send(victim, victim_addr, assign(victim, 954, Some(forged)));
    let reason = router_b.closed_by(victim, Duration::from_secs(10)).await;
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("not a root candidate")),
        "{reason:?}"
    );
    // A root-candidate certificate that is not one of the configured candidates signs a
    // grant in its own name: the signature is good, the authority is not.
    let stranger = Rogue::new(&tree, 951, CertRole::RootCandidate);
    let grant = signed_by(
        &stranger.endpoint.authority(),
        placement(victim, 951, u64::MAX, 951),
    );
    stranger.send(victim, victim_addr, assign(victim, 951, Some(grant)));
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert_eq!(
        tree.parent(victim).await,
        Some(parent),
        "nobody moved the victim"
    );
    let counters = tree.counters(victim).await;
    assert_eq!(counters.grants_refused, 2);
    assert!(counters.dropped >= 1, "the stranger's grant was ignored");

    // The victim still obeys the root: its parent dies and the root places it elsewhere.
    if let Some(pos) = tree
        .routers
        .iter()
        .position(|r| r.identity.node_id == parent)
    {
        let dead = tree.routers.remove(pos);
        dead.handle.kill().await;
        let new_parent = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match tree.parent(victim).await {
                    Some(p) if p != parent => return p,
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
        .await
        .expect("the victim takes the root's new placement");
        assert!(new_parent != 950 && new_parent != 954);
    }
    tree.assert_whole_and_delivering().await;
    router.shutdown().await;
    router_b.shutdown().await;
    stranger.shutdown().await;
    tree.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_serving_root_adopts_and_culls() {
    let _serial = crate::support::serial().await;
    let mut tree = Tree::start(1, 2, 4).await;
    let router = tree.routers[0].identity.node_id;
    let router_addr = tree.address(router);
    let children_before = tree.status(router).await.children.len();

    // A root-candidate certificate that does not serve asks a router to adopt a node and
    // to cull its clients.
    let stranger = Rogue::new(&tree, 952, CertRole::RootCandidate);
    let grant = signed_by(
        &stranger.endpoint.authority(),
        placement(999, router, 7, 952),
    );
    let adopt = ControlMessage::new(Body::AdoptChild(AdoptChild {
        child_id: 999,
        role: Role::Client as i32,
        region: "local".into(),
        address: "127.0.0.1:9".into(),
        assignment_id: 7,
        grant: Some(grant),
    }));
    stranger.send(router, router_addr, adopt);
    stranger.send(
        router,
        router_addr,
        ControlMessage::new(Body::Cull(Cull { count: 100 })),
    );
    // A client may not cull at all: its link is closed.
    let mut client = Rogue::new(&tree, 953, CertRole::Client);
    client.send(
        router,
        router_addr,
        ControlMessage::new(Body::Cull(Cull { count: 100 })),
    );
    let reason = client.closed_by(router, Duration::from_secs(10)).await;
    assert!(
        reason.as_deref().is_some_and(|r| r.contains("cull")),
        "{reason:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let status = tree.status(router).await;
    assert!(status.children.iter().all(|c| c.id != 999), "no adoption");
    assert_eq!(status.children.len(), children_before, "no cull");
    assert!(status.counters.dropped >= 2);
    assert!(status.counters.refused >= 1);
    tree.assert_whole_and_delivering().await;
    stranger.shutdown().await;
    client.shutdown().await;
    tree.shutdown().await;
}
