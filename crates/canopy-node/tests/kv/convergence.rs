//! Twenty replicas write overlapping keys while a router and then the root leader are
//! killed. After healing, every live replica holds the same value for every key, and every
//! acknowledged write reached every live replica's application exactly once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;

use crate::support::{serial, KvTree, CHANNEL, SETTLE};

const CLIENTS: usize = 20;
const KEYS: usize = 8;

/// One round: every client writes one of the shared keys; returns the acknowledged writes.
async fn round(tree: &KvTree, round: usize) -> Vec<(u64, u64)> {
    let mut written = Vec::new();
    for i in 0..tree.clients.len() {
        let key = format!("{CHANNEL}shared-{}", (i + round) % KEYS);
        let value = Bytes::from(format!("round {round} by client {i}"));
        let w = tree.client(i).kv.put(&key, value).await.expect("put");
        written.push((w.origin, w.origin_seq));
    }
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_converge_through_a_router_kill_and_a_root_failover() {
    let _serial = serial().await;
    let mut tree = KvTree::start(3, 3, CLIENTS).await;
    let mut written = round(&tree, 0).await;

    // A router dies with its clients attached: they reattach elsewhere while writing.
    let router = tree.routers[0].identity.node_id;
    tree.kill(router).await;
    written.extend(round(&tree, 1).await);
    tree.settle().await;
    written.extend(round(&tree, 2).await);

    // The root leader dies: a new leader takes over, a new epoch comes down the tree.
    let leader = tree.cluster.wait_for_root(SETTLE).await.expect("a root");
    tree.kill(leader).await;
    written.extend(round(&tree, 3).await);
    tree.settle().await;
    written.extend(round(&tree, 4).await);
    tree.settle().await;

    // Every replica holds every key, with one value across all of them.
    let deadline = tokio::time::Instant::now() + SETTLE;
    let keys: Vec<String> = (0..KEYS).map(|k| format!("{CHANNEL}shared-{k}")).collect();
    let owed: HashSet<(u64, u64)> = written.iter().copied().collect();
    loop {
        let mut values: Vec<BTreeMap<String, Option<Bytes>>> = Vec::new();
        for i in 0..CLIENTS {
            let mut held = BTreeMap::new();
            for key in &keys {
                held.insert(key.clone(), tree.value(i, key).await);
            }
            values.push(held);
        }
        let agreed =
            values.windows(2).all(|w| w[0] == w[1]) && values[0].values().all(Option::is_some);
        let complete = (0..CLIENTS).all(|i| {
            let seen: HashSet<(u64, u64)> = tree
                .seen(i)
                .iter()
                .map(|c| (c.origin, c.origin_seq))
                .collect();
            seen.is_superset(&owed)
        });
        if agreed && complete {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let mut missing: HashMap<u64, usize> = HashMap::new();
            for i in 0..CLIENTS {
                let seen: HashSet<(u64, u64)> = tree
                    .seen(i)
                    .iter()
                    .map(|c| (c.origin, c.origin_seq))
                    .collect();
                missing.insert(tree.client(i).id(), owed.difference(&seen).count());
            }
            panic!("no convergence: agreed {agreed}; writes missing per client {missing:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut recovered = 0;
    for i in 0..CLIENTS {
        tree.assert_no_duplicates(i);
        let counters = tree.counters(i).await;
        recovered += counters.records_recovered;
        let hostile = counters.bad_signature
            + counters.bad_seal
            + counters.forged_origin
            + counters.chain_break;
        assert_eq!(
            hostile, 0,
            "client {i} refused honest records: {counters:?}"
        );
    }
    // The writes the dead router and the failover swallowed came back through catch-up: if
    // none had to, the kills did not test it.
    assert!(recovered > 0, "nothing was recovered by catch-up");
    let new_leader = tree.cluster.wait_for_root(SETTLE).await.expect("a root");
    assert_ne!(new_leader, leader);
    eprintln!(
        "{} writes converged on {CLIENTS} replicas; {recovered} records recovered by catch-up",
        owed.len()
    );
    tree.shutdown().await;
}
