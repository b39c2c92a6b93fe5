//! A real tree on loopback: a root, 4 routers and 50 clients, each its own QUIC endpoint
//! with mutual TLS. Multicasts with key filtering reach exactly the interested clients, and
//! a router killed mid-run has its children reattached and delivery resumes.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use canopy_node::key_tag;
use canopy_node::local::{LocalCluster, LocalClusterSpec};
use canopy_tree::{KeyTag, NodeId, Role};

const KEYS: [&str; 3] = ["red", "green", "blue"];

struct Harness {
    cluster: LocalCluster,
    wants: HashMap<NodeId, HashSet<KeyTag>>,
    clients: Vec<NodeId>,
    seqs: HashMap<NodeId, u64>,
}

impl Harness {
    async fn start(routers: usize, clients: usize) -> Harness {
        let mut cluster = LocalCluster::start(LocalClusterSpec::default())
            .await
            .unwrap();
        for _ in 0..routers {
            cluster.add_router().await.unwrap();
        }
        cluster
            .wait_for_tree(1 + routers, Duration::from_secs(30), |_, _| {})
            .await
            .unwrap();
        let mut wants = HashMap::new();
        let mut ids = Vec::new();
        for i in 0..clients {
            // Client i wants key i % 3; every fifth client wants nothing at all.
            let tags: Vec<KeyTag> = if i % 5 == 4 {
                Vec::new()
            } else {
                vec![key_tag(cluster.name(), KEYS[i % KEYS.len()])]
            };
            let node = cluster.add_client(tags.clone()).await.unwrap();
            wants.insert(node.identity.node_id, tags.into_iter().collect());
            ids.push(node.identity.node_id);
        }
        cluster
            .wait_for_tree(1 + routers + clients, Duration::from_secs(60), |_, _| {})
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
        Harness {
            cluster,
            wants,
            clients: ids,
            seqs: HashMap::new(),
        }
    }

    /// Publishes `key` from `publisher` and returns who received it within the timeout.
    async fn publish_and_collect(
        &mut self,
        publisher: NodeId,
        key: &str,
    ) -> (HashSet<NodeId>, HashSet<NodeId>) {
        let tag = key_tag(self.cluster.name(), key);
        let seq = self.seqs.entry(publisher).or_insert(0);
        *seq += 1;
        let seq = *seq;
        let owed: HashSet<NodeId> = self
            .wants
            .iter()
            .filter(|(id, tags)| {
                **id != publisher && tags.contains(&tag) && self.cluster.node(**id).is_some()
            })
            .map(|(id, _)| *id)
            .collect();
        self.cluster.take_deliveries();
        let node = self.cluster.node(publisher).unwrap().handle.clone();
        assert!(node.publish(tag, Bytes::from_static(b"sealed")).await);
        let mut got = HashSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            let Some(d) = self.cluster.next_delivery(Duration::from_millis(100)).await else {
                if got.len() >= owed.len() {
                    break;
                }
                continue;
            };
            if d.origin == publisher && d.origin_seq == seq {
                assert!(
                    got.insert(d.receiver),
                    "duplicate delivery to {}",
                    d.receiver
                );
            }
        }
        (got, owed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multicasts_reach_exactly_the_interested_clients_and_survive_a_router_kill() {
    let mut h = Harness::start(4, 50).await;
    let shape = h.cluster.check().await.unwrap();
    assert_eq!(shape.routers, 4);
    assert_eq!(shape.clients, 50);
    assert_eq!(shape.root_clients, 0, "clients belong under routers");

    for (i, key) in KEYS.iter().enumerate() {
        let publisher = h.clients[i * 7];
        let (got, owed) = h.publish_and_collect(publisher, key).await;
        assert!(!owed.is_empty());
        assert_eq!(
            got, owed,
            "key {key}: delivered set differs from the interested set"
        );
    }

    // Kill the router with the most clients, abruptly.
    let statuses = h.cluster.statuses().await;
    let victim = statuses
        .iter()
        .filter(|s| s.role == Role::Router)
        .max_by_key(|s| s.children.iter().filter(|c| c.role == Role::Client).count())
        .unwrap();
    let orphans: Vec<NodeId> = victim.children.iter().map(|c| c.id).collect();
    assert!(!orphans.is_empty());
    let victim_id = victim.id;
    h.cluster.node(victim_id).unwrap().handle.kill().await;

    // Its children reattach elsewhere and the tree is whole again without it.
    let shape = h
        .cluster
        .wait_for_tree(1 + 3 + 50, Duration::from_secs(30), |_, _| {})
        .await
        .unwrap();
    assert_eq!(shape.routers, 3);
    for orphan in &orphans {
        let status = h
            .cluster
            .node(*orphan)
            .unwrap()
            .handle
            .status()
            .await
            .unwrap();
        assert!(matches!(status.parent, Some(p) if p != victim_id));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;

    // Delivery resumes, including to the orphans that want the key.
    for (i, key) in KEYS.iter().enumerate() {
        let publisher = h.clients[i * 11 + 1];
        let (got, owed) = h.publish_and_collect(publisher, key).await;
        assert_eq!(
            got, owed,
            "after the kill, key {key}: delivered set differs"
        );
    }
    assert!(
        orphans
            .iter()
            .any(|o| h.wants.get(o).is_some_and(|w| !w.is_empty())),
        "the scenario should include an interested orphan"
    );
    h.cluster.shutdown().await;
}

/// Waits until `receiver` gets a multicast to `tag` published by `publisher` (republishing
/// every half second), or panics after `timeout`.
async fn reaches(
    cluster: &mut LocalCluster,
    publisher: NodeId,
    receiver: NodeId,
    tag: KeyTag,
    timeout: Duration,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let handle = cluster.node(publisher).unwrap().handle.clone();
        handle.publish(tag, Bytes::from_static(b"probe")).await;
        let until = tokio::time::Instant::now() + Duration::from_millis(500);
        while tokio::time::Instant::now() < until {
            if let Some(d) = cluster.next_delivery(Duration::from_millis(50)).await {
                if d.receiver == receiver && d.key_tag == tag {
                    return;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no multicast to {tag:#x} reached {receiver} within {timeout:?}"
        );
    }
}

/// A client whose interest is far larger than one frame (300,000 tags: 2.4 MB of tags, the
/// frame limit is 1 MiB) reattaches after its parent dies: its snapshot goes up in chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subtree_of_300000_tags_reattaches_after_its_parent_dies() {
    const TAGS: u64 = 300_000;
    let mut spec = LocalClusterSpec::default();
    let limits = &mut spec.tree.limits;
    limits.max_tags_per_client_link = 400_000;
    limits.client_interest_tags_per_sec = 10_000_000.0;
    limits.router_interest_tags_per_sec = 10_000_000.0;
    spec.limits.max_tags_per_client_link = 400_000;
    spec.limits.client_interest_tags_per_sec = 10_000_000.0;
    spec.limits.router_interest_tags_per_sec = 10_000_000.0;
    let mut cluster = LocalCluster::start(spec).await.unwrap();
    for _ in 0..2 {
        cluster.add_router().await.unwrap();
    }
    cluster
        .wait_for_tree(3, Duration::from_secs(30), |_, _| {})
        .await
        .unwrap();
    let tags: Vec<KeyTag> = (1..=TAGS).map(|t| 0x7A65_0000_0000 + t).collect();
    let (first, middle, last) = (tags[0], tags[TAGS as usize / 2], tags[TAGS as usize - 1]);
    let big = cluster.add_client(tags).await.unwrap().identity.node_id;
    let publisher = cluster
        .add_client(Vec::new())
        .await
        .unwrap()
        .identity
        .node_id;
    cluster
        .wait_for_tree(5, Duration::from_secs(60), |_, _| {})
        .await
        .unwrap();
    reaches(&mut cluster, publisher, big, last, Duration::from_secs(60)).await;

    let parent_of = |cluster: &LocalCluster| {
        let handle = cluster.node(big).unwrap().handle.clone();
        async move { handle.status().await.unwrap().parent }
    };
    let parent = parent_of(&cluster).await.unwrap();
    assert_ne!(
        parent,
        canopy_node::local::ROOT_ID,
        "the client sits under a router"
    );
    cluster.node(parent).unwrap().handle.kill().await;
    // It reattaches under the other router (or the root) with its whole interest.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = parent_of(&cluster).await;
        if now.is_some_and(|p| p != parent) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never reattached");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for tag in [first, middle, last] {
        reaches(&mut cluster, publisher, big, tag, Duration::from_secs(60)).await;
    }
    cluster.shutdown().await;
}
