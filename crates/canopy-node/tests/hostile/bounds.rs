//! Every quantity a peer controls is bounded; going over a bound costs only the offender
//! its link, and is counted.

use std::time::Duration;

use canopy_net::CertRole;
use canopy_proto::v1::{
    Heartbeat, InterestDelta, InterestSnapshot, JoinRequest, Multicast, Role, SubtreeSize,
};
use canopy_proto::{Body, ControlMessage};
use canopy_tree::NodeId;

use crate::support::{Rogue, Tree};

fn join(id: NodeId, region: &str, address: String) -> ControlMessage {
    ControlMessage::new(Body::JoinRequest(JoinRequest {
        node_id: id,
        role: Role::Client as i32,
        region: region.into(),
        address,
        attempt: 0,
        subtree: None,
    }))
}

fn heartbeat(id: NodeId, subtree: SubtreeSize, interest: Option<InterestDelta>) -> ControlMessage {
    ControlMessage::new(Body::Heartbeat(Heartbeat {
        sender_id: id,
        subtree: Some(subtree),
        topology_epoch: 0,
        interest,
        assignment_id: 0,
        root_id: 0,
    }))
}

const ONE_CLIENT: SubtreeSize = SubtreeSize {
    clients: 1,
    routers: 0,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_requests_are_bounded_in_size_fields_and_rate() {
    let _serial = crate::support::serial().await;
    let mut tree = Tree::start(1, 1, 2).await;
    let root = tree.root().await;
    let root_addr = tree.address(root);
    let view_before = tree
        .cluster
        .node(root)
        .unwrap()
        .handle
        .status()
        .await
        .unwrap()
        .view_size;

    // (rogue id, region, address or None for the rogue's own, what the refusal names)
    let cases = [
        (970, "local", Some("1".repeat(30_000)), "bytes"),
        (971, "elsewhere", None, "region"),
        (
            972,
            "local",
            Some("example.org:7000".to_string()),
            "ip:port",
        ),
        (
            973,
            "local",
            Some("127.0.0.2:7000".to_string()),
            "not on the host",
        ),
    ];
    for (id, region, address, expected) in cases {
        let mut rogue = Rogue::new(&tree, id, CertRole::Client);
        let addr = address.unwrap_or_else(|| rogue.endpoint.local_addr().to_string());
        rogue.send(root, root_addr, join(id, region, addr));
        let reason = rogue.closed_by(root, Duration::from_secs(10)).await;
        assert!(
            reason.as_deref().is_some_and(|r| r.contains(expected)),
            "{id}: {reason:?}"
        );
        rogue.shutdown().await;
    }
    let status = tree
        .cluster
        .node(root)
        .unwrap()
        .handle
        .status()
        .await
        .unwrap();
    assert_eq!(status.view_size, view_before, "nothing was placed");
    assert_eq!(status.counters.refused, 4);

    // Join requests faster than the per-peer rate.
    let mut flooder = Rogue::new(&tree, 974, CertRole::Client);
    let own = flooder.endpoint.local_addr().to_string();
    for _ in 0..40 {
        flooder.send(root, root_addr, join(974, "local", own.clone()));
    }
    let reason = flooder.closed_by(root, Duration::from_secs(10)).await;
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("join requests over")),
        "{reason:?}"
    );
    flooder.shutdown().await;
    let counters = tree.counters(root).await;
    assert_eq!(counters.rate_limited, 1);
    tree.assert_whole_and_delivering().await;
    tree.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interest_and_subtree_reports_are_bounded() {
    let _serial = crate::support::serial().await;
    let mut tree = Tree::start(1, 1, 2).await;
    let limits = canopy_node::limits::PeerLimits::default();
    let over_tags = limits.max_tags_per_client_link as u64 + 1;
    let over_delta = limits.max_tags_per_delta as u64 + 1;
    let snapshot = |i: u64| {
        ControlMessage::new(Body::InterestSnapshot(InterestSnapshot {
            tags: vec![i + 1],
            more: false,
        }))
    };
    let huge = SubtreeSize {
        clients: u64::MAX,
        routers: u64::MAX,
    };
    // (rogue id, tags it attaches with, what it sends then, what the refusal names)
    let cases: Vec<(NodeId, Vec<u64>, Vec<ControlMessage>, &str)> = vec![
        (980, (1..=over_tags).collect(), vec![], "tags"),
        (
            981,
            vec![42],
            vec![heartbeat(
                981,
                ONE_CLIENT,
                Some(InterestDelta {
                    add: (1..=over_delta).collect(),
                    remove: vec![],
                }),
            )],
            "delta",
        ),
        (982, vec![], vec![heartbeat(982, huge, None)], "subtree"),
        (
            983,
            vec![],
            (0..40).map(snapshot).collect(),
            "interest snapshots over",
        ),
    ];
    let mut parents = std::collections::BTreeSet::new();
    for (id, tags, then, expected) in cases {
        let mut rogue = Rogue::new(&tree, id, CertRole::Client);
        let (parent, addr) = rogue.get_placed(&tree).await;
        parents.insert(parent);
        rogue.attach(parent, addr, tags);
        for msg in then {
            rogue.send(parent, addr, msg);
        }
        let reason = rogue.closed_by(parent, Duration::from_secs(10)).await;
        assert!(
            reason.as_deref().is_some_and(|r| r.contains(expected)),
            "{id}: {reason:?}"
        );
        rogue.shutdown().await;
    }
    let (mut over_limit, mut rate_limited) = (0, 0);
    for id in parents {
        let c = tree.counters(id).await;
        over_limit += c.over_limit;
        rate_limited += c.rate_limited;
    }
    assert_eq!(over_limit, 3, "tags, delta and subtree each closed a link");
    assert_eq!(rate_limited, 1);
    tree.assert_whole_and_delivering().await;
    tree.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_publish_as_another() {
    let _serial = crate::support::serial().await;
    let mut tree = Tree::start(1, 1, 2).await;
    let victim = tree.clients[0].identity.node_id;
    let mut rogue = Rogue::new(&tree, 990, CertRole::Client);
    let (parent, addr) = rogue.get_placed(&tree).await;
    rogue.attach(parent, addr, vec![]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    tree.cluster.take_deliveries();
    let forged = Multicast {
        origin: victim,
        key_tag: tree.tag,
        origin_seq: 1,
        key_seq: 1,
        payload: bytes::Bytes::from_static(b"forged"),
    };
    rogue.send(parent, addr, ControlMessage::new(Body::Multicast(forged)));
    let reason = rogue.closed_by(parent, Duration::from_secs(10)).await;
    assert!(
        reason.as_deref().is_some_and(|r| r.contains("claims node")),
        "{reason:?}"
    );
    assert!(
        tree.cluster
            .next_delivery(Duration::from_millis(500))
            .await
            .is_none(),
        "the forged multicast reached nobody"
    );
    rogue.shutdown().await;
    tree.assert_whole_and_delivering().await;
    tree.shutdown().await;
}

/// A node whose interest changes exceed one delta sends them in several heartbeats, and its
/// parent ends up with every tag: nothing is lost (real nodes, a small per-delta bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interest_changes_larger_than_a_delta_arrive_whole() {
    let _serial = crate::support::serial().await;
    let mut spec = canopy_node::local::LocalClusterSpec::default();
    spec.tree.limits.max_tags_per_delta = 500;
    let mut tree = Tree::start_with(spec, 1, 2).await;
    let (subscriber, publisher) = (tree.clients[0].clone(), tree.clients[1].clone());
    let tags: Vec<u64> = (0..3000u64)
        .map(|i| canopy_tree::node_tag(1_000_000 + i))
        .collect();
    for &tag in &tags {
        assert!(subscriber.handle.subscribe(tag).await);
    }
    // 3,000 tags at 500 a heartbeat, one heartbeat every interest_batch_delay.
    tokio::time::sleep(Duration::from_secs(2)).await;
    tree.cluster.take_deliveries();
    for &tag in [tags[0], tags[1499], tags[2999]].iter() {
        assert!(
            publisher
                .handle
                .publish(tag, bytes::Bytes::from_static(b"x"))
                .await
        );
    }
    let mut got = Vec::new();
    while let Some(d) = tree.cluster.next_delivery(Duration::from_secs(5)).await {
        got.push((d.receiver, d.key_tag));
        if got.len() == 3 {
            break;
        }
    }
    let want: Vec<_> = [tags[0], tags[1499], tags[2999]]
        .iter()
        .map(|&t| (subscriber.identity.node_id, t))
        .collect();
    assert_eq!(got, want, "every tag made it up, in pieces");
    let parent = tree
        .parent(subscriber.identity.node_id)
        .await
        .expect("attached");
    assert_eq!(tree.counters(parent).await.over_limit, 0);
    tree.assert_whole_and_delivering().await;
    tree.shutdown().await;
}
