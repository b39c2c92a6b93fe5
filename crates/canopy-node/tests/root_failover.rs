//! The root survives: three root candidates in a Raft group over real QUIC with mutual TLS.
//! Killing the leader abruptly hands the root to a new leader that holds the tree view, only
//! the old root's children reattach, and multicasts cross the new root; restarting every
//! candidate brings the view back from sled; a leader partitioned from the other candidates
//! cannot act while they elect another, so two roots never act at once.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use canopy_node::key_tag;
use canopy_node::local::{fast_tree_config, LocalCluster, LocalClusterSpec};
use canopy_tree::{NodeId, ViewSnapshot};

const WAIT: Duration = Duration::from_secs(40);

fn spec(data_dir: Option<std::path::PathBuf>) -> LocalClusterSpec {
    let mut tree = fast_tree_config();
    // Two routers under the root and two below them: links below the root exist.
    tree.max_child_routers = 2;
    tree.max_clients = 6;
    LocalClusterSpec {
        tree,
        candidates: 3,
        data_dir,
        ..LocalClusterSpec::default()
    }
}

/// A cluster of 3 candidates, `routers` routers and `clients` clients wanting "k".
async fn build(spec: LocalClusterSpec, routers: usize, clients: usize) -> LocalCluster {
    let mut cluster = LocalCluster::start(spec).await.unwrap();
    cluster.wait_for_root(WAIT).await.unwrap();
    for _ in 0..routers {
        cluster.add_router().await.unwrap();
    }
    cluster
        .wait_for_tree(1 + routers, WAIT, |_, _| {})
        .await
        .unwrap();
    let tag = key_tag(cluster.name(), "k");
    for _ in 0..clients {
        cluster.add_client(vec![tag]).await.unwrap();
    }
    cluster
        .wait_for_tree(1 + routers + clients, WAIT, |_, _| {})
        .await
        .unwrap();
    cluster
}

fn candidate_ids(cluster: &LocalCluster) -> Vec<NodeId> {
    cluster.candidates().iter().map(|c| c.id).collect()
}

/// `field` of every live node that is not a candidate.
async fn tree_nodes<T>(
    cluster: &LocalCluster,
    field: impl Fn(&canopy_node::NodeStatus) -> T,
) -> HashMap<NodeId, T> {
    let candidates = candidate_ids(cluster);
    cluster
        .statuses()
        .await
        .iter()
        .filter(|s| !candidates.contains(&s.id))
        .map(|s| (s.id, field(s)))
        .collect()
}

async fn parents(cluster: &LocalCluster) -> HashMap<NodeId, Option<NodeId>> {
    tree_nodes(cluster, |s| s.parent).await
}

async fn epochs(cluster: &LocalCluster) -> HashMap<NodeId, u64> {
    tree_nodes(cluster, |s| s.epoch).await
}

/// Waits until a candidate other than `old` serves and every node in `orphans` is its child.
async fn wait_for_reattach(cluster: &LocalCluster, old: NodeId, orphans: &[NodeId]) -> NodeId {
    let deadline = Instant::now() + WAIT;
    loop {
        let statuses = cluster.statuses().await;
        let by_id: HashMap<NodeId, Option<NodeId>> =
            statuses.iter().map(|s| (s.id, s.parent)).collect();
        let serving = canopy_node::local::serving_roots(&statuses);
        if let [root] = serving[..] {
            if root != old && orphans.iter().all(|o| by_id.get(o) == Some(&Some(root))) {
                return root;
            }
        }
        assert!(
            Instant::now() < deadline,
            "orphans {orphans:?} did not reattach; serving {serving:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes from `publisher` and returns who received it.
async fn publish_and_collect(cluster: &mut LocalCluster, publisher: NodeId) -> HashSet<NodeId> {
    cluster.take_deliveries();
    let tag = key_tag(cluster.name(), "k");
    let handle = cluster.node(publisher).unwrap().handle.clone();
    assert!(handle.publish(tag, Bytes::from_static(b"sealed")).await);
    let mut got = HashSet::new();
    while let Some(d) = cluster.next_delivery(Duration::from_secs(2)).await {
        assert!(
            got.insert(d.receiver),
            "duplicate delivery to {}",
            d.receiver
        );
    }
    got
}

fn clients_of(parents: &HashMap<NodeId, Option<NodeId>>) -> Vec<NodeId> {
    let mut ids: Vec<NodeId> = parents
        .keys()
        .copied()
        .filter(|&id| id >= canopy_node::local::FIRST_CLIENT_ID)
        .collect();
    ids.sort_unstable();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_hands_the_root_over_without_rebuilding_subtrees() {
    let mut cluster = build(spec(None), 4, 12).await;
    let old = cluster.wait_for_root(WAIT).await.unwrap();
    let before = parents(&cluster).await;
    let epochs_before = epochs(&cluster).await;
    let orphans: Vec<NodeId> = before
        .iter()
        .filter(|(_, p)| **p == Some(old))
        .map(|(&id, _)| id)
        .collect();
    assert_eq!(
        orphans.len(),
        2,
        "two routers sit under the root: {before:?}"
    );

    cluster.kill(old).await;
    let new = wait_for_reattach(&cluster, old, &orphans).await;

    let after = parents(&cluster).await;
    for (id, parent) in &before {
        if *parent != Some(old) {
            assert_eq!(
                after.get(id),
                Some(parent),
                "link of {id} below the root changed"
            );
        }
    }
    // The bumped epoch flows down to every node.
    let deadline = Instant::now() + WAIT;
    loop {
        let now = epochs(&cluster).await;
        if epochs_before
            .iter()
            .all(|(id, e)| now.get(id).is_some_and(|n| n > e))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "epoch did not flow down: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Multicasts cross the new root: a client's publish reaches every other client,
    // whichever subtree it sits in.
    let clients = clients_of(&after);
    let publisher = clients[0];
    let owed: HashSet<NodeId> = clients
        .iter()
        .copied()
        .filter(|&c| c != publisher)
        .collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let got = publish_and_collect(&mut cluster, publisher).await;
        if got == owed {
            break;
        }
        assert!(got.is_subset(&owed), "delivered to {got:?}, owed {owed:?}");
        assert!(Instant::now() < deadline, "missing {:?}", &owed - &got);
    }

    // The new root serves joins.
    let tag = key_tag(cluster.name(), "k");
    let joiner = cluster
        .add_client(vec![tag])
        .await
        .unwrap()
        .identity
        .node_id;
    let shape = cluster
        .wait_for_tree(1 + 4 + 13, WAIT, |_, _| {})
        .await
        .unwrap();
    assert_eq!(shape.clients, 13);
    let view = cluster
        .node(new)
        .and_then(|n| n.handle.group().and_then(|g| g.view()))
        .expect("the new root has a committed view");
    assert_eq!(view.root(), new);
    assert!(
        view.get(joiner).is_some(),
        "the joiner is in the committed view"
    );
    cluster.shutdown().await;
}

fn without_root(snapshot: &ViewSnapshot) -> Vec<(NodeId, Option<NodeId>)> {
    let mut links: Vec<(NodeId, Option<NodeId>)> = snapshot
        .records
        .iter()
        .filter(|r| r.id != snapshot.root)
        .map(|r| (r.id, r.parent.filter(|&p| p != snapshot.root)))
        .collect();
    links.sort_unstable();
    links
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_every_candidate_brings_the_view_back_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = build(spec(Some(dir.path().to_owned())), 2, 4).await;
    let root = cluster.wait_for_root(WAIT).await.unwrap();
    let view = |cluster: &LocalCluster, id: NodeId| {
        cluster
            .node(id)
            .and_then(|n| n.handle.group().and_then(|g| g.view()))
            .map(|v| v.to_snapshot())
    };
    let before = view(&cluster, root).expect("leader view");
    assert_eq!(before.records.len(), 1 + 2 + 4);

    let candidates = candidate_ids(&cluster);
    for &id in &candidates {
        cluster.node(id).unwrap().handle.shutdown().await;
    }
    for &id in &candidates {
        cluster.restart_candidate(id).await.unwrap();
    }
    let root = cluster.wait_for_root(WAIT).await.unwrap();
    let after = view(&cluster, root).expect("view after restart");
    assert_eq!(
        without_root(&after),
        without_root(&before),
        "every node and every link below the root came back"
    );
    assert!(after.epoch > before.epoch, "a new reign bumps the epoch");
    assert!(after.max_assignment >= before.max_assignment);
    cluster
        .wait_for_tree(1 + 2 + 4, WAIT, |_, _| {})
        .await
        .unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_cannot_act_and_two_roots_never_act_at_once() {
    let mut cluster = build(spec(None), 2, 4).await;
    let old = cluster.wait_for_root(WAIT).await.unwrap();
    let candidates = candidate_ids(&cluster);
    let others: Vec<SocketAddr> = cluster
        .candidates()
        .iter()
        .filter(|c| c.id != old)
        .map(|c| c.address.parse().unwrap())
        .collect();
    let counters = |statuses: &[canopy_node::NodeStatus], id: NodeId| {
        statuses
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.counters)
            .unwrap_or_default()
    };
    let start = cluster.statuses().await;
    let released_at_cut = counters(&start, old).root_actions_released;
    let proposals_at_cut = counters(&start, old).proposals;

    // Cut the leader off from the other candidates only: its tree links stay up, and a
    // joiner asks it first.
    cluster
        .node(old)
        .unwrap()
        .handle
        .set_blocked(others.clone());
    let tag = key_tag(cluster.name(), "k");
    let joiner = cluster
        .add_client_asking_first(old, vec![tag])
        .await
        .unwrap()
        .identity
        .node_id;

    // Until the partition heals, sample who serves and who acts.
    let mut previous: HashMap<NodeId, u64> = candidates
        .iter()
        .map(|&c| (c, counters(&start, c).root_actions_released))
        .collect();
    let mut old_stepped_down = false;
    let mut new_root = None;
    let deadline = Instant::now() + WAIT;
    while !(old_stepped_down && new_root.is_some() && cluster.check().await.is_ok()) {
        assert!(Instant::now() < deadline, "no new root took over");
        let statuses = cluster.statuses().await;
        let acting: Vec<NodeId> = candidates
            .iter()
            .copied()
            .filter(|&c| counters(&statuses, c).root_actions_released > previous[&c])
            .collect();
        assert!(acting.len() <= 1, "two roots acted at once: {acting:?}");
        for &c in &candidates {
            previous.insert(c, counters(&statuses, c).root_actions_released);
        }
        let old_status = statuses.iter().find(|s| s.id == old).unwrap();
        assert_eq!(
            old_status.counters.root_actions_released, released_at_cut,
            "the partitioned leader acted without a commit"
        );
        old_stepped_down |= !old_status.serving_root;
        new_root = statuses
            .iter()
            .find(|s| s.serving_root && s.id != old)
            .map(|s| s.id);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let after = cluster.statuses().await;
    assert!(
        counters(&after, old).proposals > proposals_at_cut,
        "the partitioned leader had decisions to make (the check above is not vacuous)"
    );
    let new_root = new_root.unwrap();
    let view = cluster
        .node(new_root)
        .and_then(|n| n.handle.group().and_then(|g| g.view()))
        .unwrap();
    assert!(
        view.get(joiner).is_some(),
        "the majority's root placed the joiner"
    );

    // Heal: the old leader follows the new one and every candidate ends with one view.
    cluster.node(old).unwrap().handle.set_blocked(Vec::new());
    let deadline = Instant::now() + WAIT;
    loop {
        let statuses = cluster.statuses().await;
        let serving = canopy_node::local::serving_roots(&statuses);
        assert!(serving.len() <= 1, "two roots after healing: {serving:?}");
        let views: Vec<Option<ViewSnapshot>> = candidates
            .iter()
            .map(|&c| {
                cluster
                    .node(c)
                    .and_then(|n| n.handle.group().and_then(|g| g.view()))
                    .map(|v| v.to_snapshot())
            })
            .collect();
        if views.iter().all(|v| v.is_some() && *v == views[0]) && serving == [new_root] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "views did not converge after healing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.shutdown().await;
}
