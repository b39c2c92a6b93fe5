//! A hostile router between a writer and its subscribers: it flips bytes, replays, rewrites
//! origins, drops and reorders records. Receivers refuse what was tampered with, ignore
//! replays, never show their application anything twice or forged, and converge through
//! catch-up. Every rejection shows in the receivers' counters.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use canopy_kv::ReplicaCounters;
use canopy_node::MulticastTamper;
use canopy_proto::v1::Multicast;

use crate::support::{flip_sealed_byte, record_header, serial, KvTree};

const WRITER: usize = 0;
const RECEIVERS: [usize; 2] = [1, 2];
const WRITES: usize = 9;

/// Runs one attack: the router applies `tamper` while the writer writes [`WRITES`] records
/// named `name`, then behaves, and the writer writes one more. Both receivers must end up
/// with every value, each change seen once; returns each receiver's counters before and after.
async fn attack(
    tree: &KvTree,
    name: &str,
    tamper: MulticastTamper,
) -> Vec<(ReplicaCounters, ReplicaCounters)> {
    let mut before = Vec::new();
    for i in RECEIVERS {
        before.push(tree.counters(i).await);
    }
    let router = &tree.routers[0].handle;
    router.set_multicast_tamper(Some(tamper));
    let mut keys = tree.write(WRITER, name, WRITES).await;
    router.set_multicast_tamper(None);
    // One honest record after the attack, so that a receiver can see a gap at the end too.
    keys.extend(tree.write(WRITER, &format!("{name}-tail"), 1).await);
    let mut expected = BTreeMap::new();
    for key in &keys {
        let value = tree
            .value(WRITER, key)
            .await
            .expect("the writer holds its write");
        expected.insert(key.clone(), value);
    }
    let writer = tree.client(WRITER).id();
    let mut out = Vec::new();
    for (i, before) in RECEIVERS.into_iter().zip(before) {
        tree.converge(i, &expected).await;
        tree.assert_no_duplicates(i);
        let from_writer = tree
            .seen(i)
            .iter()
            .filter(|c| c.origin == writer && c.key.contains(name))
            .count();
        assert_eq!(
            from_writer,
            keys.len(),
            "client {} saw {from_writer} of the {} writes of {name}",
            tree.client(i).id(),
            keys.len()
        );
        out.push((before, tree.counters(i).await));
    }
    out
}

/// The writer's record number (its per-origin sequence) carried by `m`, if it is a record.
fn record_seq(m: &Multicast) -> Option<u64> {
    record_header(m).map(|h| h.origin_seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_router_cannot_forge_replay_or_silently_drop_records() {
    let _serial = serial().await;
    let tree = KvTree::start(1, 1, 3).await;
    let writer = tree.client(WRITER).id();
    let victim = tree.client(RECEIVERS[0]).id();
    // Each write is a new record, so the writer's sequence numbers keep rising from attack
    // to attack: base each rule on the record's sequence number.

    // 1. A flipped byte in every third record's sealed body: the signature over the header
    //    no longer verifies.
    let counts = attack(
        &tree,
        "flip",
        Box::new(|_to, m| match record_seq(&m) {
            Some(seq) if seq % 3 == 1 => vec![flip_sealed_byte(m)],
            _ => vec![m],
        }),
    )
    .await;
    for (before, after) in &counts {
        assert!(after.bad_signature > before.bad_signature, "{after:?}");
        assert!(
            after.records_recovered > before.records_recovered,
            "{after:?}"
        );
    }

    // 2. Every record is followed by a replay of the first one the router saw.
    let first: Arc<Mutex<HashMap<u64, Multicast>>> = Arc::default();
    let counts = attack(
        &tree,
        "replay",
        Box::new(move |to, m| {
            if record_seq(&m).is_none() {
                return vec![m];
            }
            let Ok(mut first) = first.lock() else {
                return vec![m];
            };
            let old = first.entry(to).or_insert_with(|| m.clone()).clone();
            vec![m, old]
        }),
    )
    .await;
    for (before, after) in &counts {
        assert!(after.replay >= before.replay + 3, "{after:?}");
    }

    // 3. Every third record's tree origin is rewritten to another client.
    let counts = attack(
        &tree,
        "origin",
        Box::new(move |_to, mut m| {
            if record_seq(&m).is_some_and(|seq| seq % 3 == 2) {
                m.origin = victim;
            }
            vec![m]
        }),
    )
    .await;
    // The victim's own tree drops a multicast claiming to be from itself; the other
    // receiver's replica refuses the mismatch.
    let (before, after) = &counts[1];
    assert!(after.forged_origin > before.forged_origin, "{after:?}");

    // 4. Every third record is dropped.
    let counts = attack(
        &tree,
        "drop",
        Box::new(|_to, m| match record_seq(&m) {
            Some(seq) if seq % 3 == 0 => Vec::new(),
            _ => vec![m],
        }),
    )
    .await;
    for (before, after) in &counts {
        assert!(
            after.records_recovered >= before.records_recovered + 3,
            "{after:?}"
        );
    }

    // 5. Records are swapped in pairs: each one is held back until the next has gone.
    let held: Arc<Mutex<HashMap<u64, Multicast>>> = Arc::default();
    let counts = attack(
        &tree,
        "reorder",
        Box::new(move |to, m| {
            if record_seq(&m).is_none() {
                return vec![m];
            }
            let Ok(mut held) = held.lock() else {
                return vec![m];
            };
            match held.remove(&to) {
                Some(earlier) => vec![m, earlier],
                None => {
                    held.insert(to, m);
                    Vec::new()
                }
            }
        }),
    )
    .await;
    for (before, after) in &counts {
        assert!(after.parked > before.parked, "{after:?}");
    }

    // Nothing was ever opened from a tampered record: every value each receiver holds is
    // the writer's own.
    for i in RECEIVERS {
        for change in tree.seen(i) {
            let own = tree.value(WRITER, &change.key).await;
            assert_eq!(change.origin, writer);
            assert_eq!(change.value, own, "{change:?}");
        }
    }
    tree.shutdown().await;
}
