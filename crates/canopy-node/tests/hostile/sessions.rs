//! Sessions: one live session per certificate, control-message rates per link, and
//! certificates re-checked while their links live.

use std::time::Duration;

use canopy_net::CertRole;
use canopy_proto::v1::{Heartbeat, SubtreeSize};
use canopy_proto::{Body, ControlMessage};
use canopy_tree::NodeId;

use crate::support::{Rogue, Tree};

fn heartbeat(id: NodeId) -> ControlMessage {
    ControlMessage::new(Body::Heartbeat(Heartbeat {
        sender_id: id,
        subtree: Some(SubtreeSize {
            clients: 1,
            routers: 0,
        }),
        topology_epoch: 0,
        interest: None,
        assignment_id: 0,
        root_id: 0,
    }))
}

/// Copies of live certificates connect where the real nodes have sessions: a node keeps one
/// session per certificate, so the copy's connection replaces the real node's session
/// explicitly (logged, counted, and seen by the tree as that link ending) and never shares
/// it silently; once the copies are gone the real nodes are back and the tree is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_certificate_never_shares_a_session_silently() {
    let _serial = crate::support::serial().await;
    let mut tree = Tree::start(1, 1, 3).await;
    let root = tree.root().await;

    // The parent dialled the client (to place it); the copy's later connection replaces
    // that session: the parent's traffic for the client no longer goes two ways.
    let victim = tree.clients[0].identity.node_id;
    let parent = tree.parent(victim).await.expect("placed");
    let parent_addr = tree.address(parent);
    tokio::time::sleep(canopy_net::SIMULTANEOUS_DIAL_WINDOW).await;
    let before = tree.cluster.node(parent).unwrap().handle.net_stats();
    let copy = Rogue::new(&tree, victim, CertRole::Client);
    copy.send(parent, parent_addr, heartbeat(victim));
    // The copy's certificate is another one for the same identity: the parent first waits
    // for an announcement that it moves its link (none comes), then replaces the session.
    let replaced_within = canopy_net::ANNOUNCEMENT_WAIT + Duration::from_millis(500);
    tokio::time::sleep(replaced_within).await;
    let after = tree.cluster.node(parent).unwrap().handle.net_stats();
    assert!(
        after.sessions_replaced > before.sessions_replaced,
        "{after:?}"
    );
    copy.shutdown().await;

    // The router dialled the root (to join): a copy's newer connection replaces that
    // session too.
    let router = tree.routers[0].identity.node_id;
    let before = tree.cluster.node(root).unwrap().handle.net_stats();
    let copy = Rogue::new(&tree, router, CertRole::Router);
    copy.send(root, tree.address(root), heartbeat(router));
    tokio::time::sleep(replaced_within).await;
    let after = tree.cluster.node(root).unwrap().handle.net_stats();
    assert!(
        after.sessions_replaced > before.sessions_replaced,
        "{after:?}"
    );
    copy.shutdown().await;
    tree.assert_whole_and_delivering().await;
    tree.shutdown().await;
}

/// A peer sending control messages faster than its link's bound is closed; the rest of
/// the tree does not notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_floods_close_the_flooders_link() {
    let _serial = crate::support::serial().await;
    let mut tree = Tree::start(1, 1, 2).await;
    let root = tree.root().await;
    // The rogue's own send queue holds the whole flood.
    let creds = tree.cluster.credentials(995, CertRole::Client).unwrap();
    let roomy = canopy_net::NetConfig {
        control_queue: 1 << 16,
        ..canopy_net::NetConfig::default()
    };
    let mut rogue = Rogue::with_config(creds, roomy);
    for _ in 0..20_000 {
        rogue.send(root, tree.address(root), heartbeat(995));
    }
    let reason = rogue.closed_by(root, Duration::from_secs(10)).await;
    // The close reason usually arrives; with the rogue still sending, QUIC may answer its
    // late packets with a stateless reset instead. The root's count is what tells.
    assert!(reason.is_some(), "the root closed the flooder's link");
    // The transport's control rate usually trips first; on a loaded machine the node's own
    // rate bound may see the flood first. Either way a rate bound closed it.
    let stats = tree.cluster.node(root).unwrap().handle.net_stats();
    let counters = tree.counters(root).await;
    assert!(
        stats.closed_control_rate + counters.rate_limited >= 1,
        "the flood was not stopped by a rate bound: {stats:?} {counters:?}"
    );
    rogue.shutdown().await;
    tree.assert_whole_and_delivering().await;
    tree.shutdown().await;
}

/// A client whose certificate expires while it is attached loses its links within about a
/// heartbeat and cannot come back; everyone else keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_loses_its_links() {
    let _serial = crate::support::serial().await;
    let mut tree = Tree::start(1, 1, 2).await;
    let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(6);
    let doomed = tree
        .cluster
        .add_client_expiring(expires, vec![tree.tag])
        .await
        .unwrap();
    let id = doomed.identity.node_id;
    tree.settle(tree.size() + 1).await;
    let parent = tree.parent(id).await.expect("attached before expiry");

    let wait = (expires - time::OffsetDateTime::now_utc()).unsigned_abs();
    tokio::time::sleep(wait + Duration::from_millis(1500)).await;
    let stats = tree.cluster.node(parent).unwrap().handle.net_stats();
    assert!(stats.closed_expired >= 1, "{stats:?}");
    let children = tree
        .cluster
        .node(parent)
        .unwrap()
        .handle
        .status()
        .await
        .unwrap()
        .children;
    assert!(
        children.iter().all(|c| c.id != id),
        "the expired client was dropped"
    );
    // It keeps trying to rejoin; every handshake is refused.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(tree.parent(id).await, None, "it did not come back");
    doomed.handle.shutdown().await;
    tree.assert_whole_and_delivering().await;
    tree.shutdown().await;
}

/// Connections in all are bounded: insiders holding many certificates cannot take every
/// slot for good, and once they leave the tree is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_bound_are_refused() {
    let _serial = crate::support::serial().await;
    let spec = canopy_node::local::LocalClusterSpec {
        net: canopy_net::NetConfig {
            max_connections: 12,
            ..canopy_node::local::LocalClusterSpec::default().net
        },
        ..canopy_node::local::LocalClusterSpec::default()
    };
    let mut tree = Tree::start_with(spec, 1, 2).await;
    let root = tree.root().await;
    let before = tree.cluster.node(root).unwrap().handle.net_stats();
    let mut rogues = Vec::new();
    for id in 0..16 {
        let rogue = Rogue::new(&tree, 2000 + id, CertRole::Client);
        rogue.send(root, tree.address(root), heartbeat(2000 + id));
        rogues.push(rogue);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = tree.cluster.node(root).unwrap().handle.net_stats();
    assert!(stats.connections <= 12, "{stats:?}");
    assert!(
        stats.refused_over_limit > before.refused_over_limit,
        "{stats:?}"
    );
    for rogue in rogues {
        rogue.shutdown().await;
    }
    tree.assert_whole_and_delivering().await;
    tree.shutdown().await;
}
