//! Hostile clients, each with a valid client certificate: one that claims another's origin,
//! one that replays what it received, and one that subscribes to another node's id tag to
//! read its catch-up answers.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use canopy_node::MulticastTamper;

use crate::support::{record_header, serial, KvTree, CHANNEL};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_cannot_forge_replay_or_read_others_unicasts() {
    let _serial = serial().await;
    let mut tree = KvTree::start(1, 1, 3).await;
    let (honest, receiver) = (0, 1);
    let honest_id = tree.client(honest).id();
    let keys = tree.write(honest, "honest", 4).await;
    let mut expected = BTreeMap::new();
    for key in &keys {
        expected.insert(key.clone(), tree.value(honest, key).await.expect("written"));
    }
    tree.converge(receiver, &expected).await;

    // A client whose multicasts claim to come from the honest client: its parent refuses
    // the first one and closes its link (a client originates all it sends), so nothing it
    // wrote reaches anyone.
    let forger = tree.add_client(&[CHANNEL]).await;
    tree.settle().await;
    let router = tree.routers[0].handle.clone();
    let refused = router.status().await.expect("router runs").counters.refused;
    let rewrite: MulticastTamper = Box::new(move |_to, mut m| {
        m.origin = honest_id;
        vec![m]
    });
    forger.node.handle.set_multicast_tamper(Some(rewrite));
    for k in 0..3 {
        let key = format!("{CHANNEL}forged-{k}");
        forger
            .kv
            .put(&key, Bytes::from("forged"))
            .await
            .expect("local write");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let router_counters = router.status().await.expect("router runs").counters;
    assert!(router_counters.refused > refused, "{router_counters:?}");
    for k in 0..3 {
        let key = format!("{CHANNEL}forged-{k}");
        assert_eq!(tree.value(receiver, &key).await, None, "{key} was applied");
    }
    tree.kill(forger.id()).await;

    // Another client replays the honest client's records (perfect copies of what it
    // received) under its own origin, the only one its parent lets through: the replicas
    // refuse them as forged (the signed origin is not the sender), apply nothing twice.
    let replayer = tree.add_client(&[CHANNEL]).await;
    tree.settle().await;
    let before = tree.counters(receiver).await;
    let captured: std::sync::Arc<std::sync::Mutex<Vec<canopy_proto::v1::Multicast>>> =
        Default::default();
    let tap = captured.clone();
    router.set_multicast_tamper(Some(Box::new(move |_to, m| {
        if record_header(&m).is_some_and(|h| h.origin == honest_id) {
            if let Ok(mut tap) = tap.lock() {
                tap.push(m.clone());
            }
        }
        vec![m]
    })));
    tree.write(honest, "more", 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    router.set_multicast_tamper(None);
    let copies: Vec<_> = captured.lock().expect("tap").clone();
    assert!(
        !copies.is_empty(),
        "the router forwarded none of the honest records"
    );
    for copy in &copies {
        assert!(
            replayer
                .node
                .handle
                .publish(copy.key_tag, copy.payload.clone())
                .await
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = tree.counters(receiver).await;
    assert!(
        after.forged_origin >= before.forged_origin + copies.len() as u64,
        "{} replays, counters {after:?}",
        copies.len()
    );
    tree.assert_no_duplicates(receiver);

    // A client that subscribes to a newcomer's id tag gets the catch-up answers meant for
    // it, and can open none of them.
    let spy = tree.add_client(&[]).await;
    let newcomer = tree.add_client(&[]).await;
    tree.settle().await;
    assert!(
        spy.node
            .handle
            .subscribe(canopy_tree::node_tag(newcomer.id()))
            .await
    );
    tree.settle().await;
    let spy_before = spy.kv.counters().await.expect("spy runs");
    newcomer.kv.subscribe(CHANNEL).await.expect("subscribe");
    let newcomer_index = tree.clients.len() - 1;
    let mut all = expected.clone();
    for key in tree.write(honest, "late", 1).await {
        all.insert(
            key.clone(),
            tree.value(honest, &key).await.expect("written"),
        );
    }
    tree.converge(newcomer_index, &all).await;
    let spy_after = spy.kv.counters().await.expect("spy runs");
    let refused = (spy_after.bad_seal + spy_after.malformed + spy_after.not_subscribed)
        - (spy_before.bad_seal + spy_before.malformed + spy_before.not_subscribed);
    assert!(
        refused > 0,
        "the spy received no answer, so the test proves nothing: {spy_after:?}"
    );
    assert_eq!(spy_after.records_recovered, spy_before.records_recovered);
    for key in all.keys() {
        let held = spy.kv.get(key).await.expect("get");
        assert!(held.is_none(), "the spy holds {key}");
    }
    tree.shutdown().await;
}
