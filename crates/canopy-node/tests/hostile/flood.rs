//! One client floods its parent for 30 s with multicasts at twice its link's data bound and
//! with interest changes at the most its interest budget allows; the rest of the tree keeps
//! delivering everything it owes, and no heartbeat times out anywhere. (Going over the
//! interest budget closes the link: see `interest_churn`.)

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use canopy_net::{CertRole, NetConfig};
use canopy_node::local::LocalClusterSpec;
use canopy_proto::v1::{Heartbeat, InterestDelta, Multicast, SubtreeSize};
use canopy_proto::{Body, ControlMessage};
use canopy_tree::NodeId;

use crate::support::{Rogue, Tree};

const FLOOD: Duration = Duration::from_secs(30);
/// Multicasts per second the flooder tries to send: twice the per-link bound below.
const FLOOD_RATE: u64 = 20_000;
const DATA_RATE_PER_LINK: u32 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_does_not_stop_the_tree() {
    let _serial = crate::support::serial().await;
    let spec = LocalClusterSpec {
        net: NetConfig {
            data_rate_per_link: DATA_RATE_PER_LINK,
            ..NetConfig::default()
        },
        ..LocalClusterSpec::default()
    };
    let mut tree = Tree::start_with(spec, 2, 4).await;
    let creds = tree.cluster.credentials(999, CertRole::Client).unwrap();
    let roomy = NetConfig {
        data_queue: 1 << 20,
        max_queued_bytes_per_link: 512 << 20,
        ..NetConfig::default()
    };
    let mut rogue = Rogue::with_config(creds, roomy);
    let (parent, addr) = rogue.get_placed(&tree).await;
    rogue.attach(parent, addr, vec![]);
    tree.assert_whole_and_delivering().await;
    let before = tree.cluster.counters().await;

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flood = tokio::spawn(flood(rogue, parent, addr, stop.clone(), sent.clone()));

    // Every client publishes every 500 ms while the flood runs.
    let mut owed: HashSet<(NodeId, NodeId, u64)> = HashSet::new();
    let mut got: HashMap<(NodeId, NodeId, u64), u32> = HashMap::new();
    let clients: Vec<_> = tree.clients.clone();
    let started = tokio::time::Instant::now();
    let mut round = 0u64;
    while started.elapsed() < FLOOD {
        round += 1;
        for publisher in &clients {
            let payload = Bytes::from(round.to_be_bytes().to_vec());
            assert!(publisher.handle.publish(tree.tag, payload).await);
            for receiver in &clients {
                if receiver.identity.node_id != publisher.identity.node_id {
                    owed.insert((receiver.identity.node_id, publisher.identity.node_id, round));
                }
            }
        }
        let next = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Some(d) = tree
            .cluster
            .next_delivery(next.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            let round = u64::from_be_bytes(d.payload[..8].try_into().unwrap());
            *got.entry((d.receiver, d.origin, round)).or_default() += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let rogue = flood.await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while got.len() < owed.len() && tokio::time::Instant::now() < deadline {
        if let Some(d) = tree.cluster.next_delivery(Duration::from_millis(200)).await {
            let round = u64::from_be_bytes(d.payload[..8].try_into().unwrap());
            *got.entry((d.receiver, d.origin, round)).or_default() += 1;
        }
    }

    let flooded = sent.load(Ordering::SeqCst);
    let missing = owed.iter().filter(|k| !got.contains_key(k)).count();
    let duplicated = got.values().filter(|&&n| n > 1).count();
    println!(
        "flood: {flooded} multicasts in {FLOOD:?} from the flooder; owed {} deliveries, missing {missing}, duplicated {duplicated}",
        owed.len()
    );
    assert!(
        flooded > FLOOD.as_secs() * u64::from(DATA_RATE_PER_LINK) / 2,
        "the flood was real: {flooded}"
    );
    assert_eq!(missing, 0, "every owed delivery arrived");
    assert_eq!(duplicated, 0);
    let after = tree.cluster.counters().await;
    for (id, c) in &after {
        let b = before.get(id).copied().unwrap_or_default();
        assert_eq!(
            c.heartbeat_timeouts - b.heartbeat_timeouts,
            0,
            "node {id} saw a heartbeat timeout during the flood"
        );
    }
    let parent_stats = tree.cluster.node(parent).unwrap().handle.net_stats();
    assert!(
        parent_stats.data_throttled > 0,
        "the flood was throttled at the parent"
    );
    rogue.shutdown().await;
    tree.assert_whole_and_delivering().await;
    tree.shutdown().await;
}

/// Sends multicasts at `FLOOD_RATE` and, every 50 ms, an interest delta of 200 tags added
/// then removed (4,000 tags/s, just under the client interest budget), until `stop`.
async fn flood(
    rogue: Rogue,
    parent: NodeId,
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> Rogue {
    let id = rogue.id();
    let started = tokio::time::Instant::now();
    let mut seq = 0u64;
    let mut churn = 0u64;
    let mut next_delta = started;
    while !stop.load(Ordering::SeqCst) {
        let due = started.elapsed().as_secs_f64() * FLOOD_RATE as f64;
        while (seq as f64) < due {
            seq += 1;
            let m = Multicast {
                origin: id,
                key_tag: 0xF100D,
                origin_seq: seq,
                key_seq: seq,
                payload: Bytes::from_static(&[0u8; 64]),
            };
            rogue.send(parent, addr, ControlMessage::new(Body::Multicast(m)));
        }
        sent.store(seq, Ordering::SeqCst);
        if tokio::time::Instant::now() >= next_delta {
            next_delta += Duration::from_millis(50);
            churn += 1;
            let tags: Vec<u64> = (0..200).map(|i| 1_000_000 + i).collect();
            let delta = if churn % 2 == 1 {
                InterestDelta {
                    add: tags,
                    remove: vec![],
                }
            } else {
                InterestDelta {
                    add: vec![],
                    remove: tags,
                }
            };
            let hb = Heartbeat {
                sender_id: id,
                subtree: Some(SubtreeSize {
                    clients: 1,
                    routers: 0,
                }),
                topology_epoch: 0,
                interest: Some(delta),
                assignment_id: rogue.assignment_id,
                root_id: 0,
            };
            rogue.send(parent, addr, ControlMessage::new(Body::Heartbeat(hb)));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    rogue
}
