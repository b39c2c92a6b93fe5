//! Interest deltas are charged per tag: a client that keeps adding and removing a full
//! delta's worth of tags (each within every size bound) runs out of its interest budget and
//! loses its link, long before it can slow its parent down.

use std::time::{Duration, Instant};

use canopy_net::CertRole;
use canopy_proto::v1::{Heartbeat, InterestDelta, SubtreeSize};
use canopy_proto::{Body, ControlMessage};

use crate::support::{Rogue, Tree};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interest_churn_is_charged_per_tag() {
    let _serial = crate::support::serial().await;
    if std::env::var("CHURN_LOG").is_ok() {
        let _ = tracing_subscriber::fmt().with_env_filter("info").try_init();
    }
    let mut tree = Tree::start(1, 2, 4).await;
    let before = tree.cluster.counters().await;
    let timeouts_before: u64 = before.values().map(|c| c.heartbeat_timeouts).sum();

    let mut rogue = Rogue::new(&tree, 980, CertRole::Client);
    let (parent, addr) = rogue.get_placed(&tree).await;
    rogue.attach(parent, addr, vec![]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let max = canopy_tree::TreeLimits::default().max_tags_per_delta;
    let sets: Vec<Vec<u64>> = (0..2u64)
        .map(|s| (0..max as u64).map(|i| (s << 40) | (i * 2 + 1)).collect())
        .collect();
    let hb = |add: Vec<u64>, remove: Vec<u64>| {
        ControlMessage::new(Body::Heartbeat(Heartbeat {
            sender_id: 980,
            subtree: Some(SubtreeSize {
                clients: 1,
                routers: 0,
            }),
            topology_epoch: 0,
            interest: Some(InterestDelta { add, remove }),
            assignment_id: rogue.assignment_id,
            root_id: 0,
        }))
    };
    let add = hb(sets[0].clone(), vec![]);
    let remove = hb(vec![], sets[0].clone());

    // Far under the transport's control bound (2,000/s): 400 heartbeats a second, for 5 s.
    let rate: u64 = 400;
    let per_tick = rate / 100;
    let start = Instant::now();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut last_dial = start;
    while start.elapsed() < Duration::from_secs(5) {
        tick.tick().await;
        // The rogue and the tree share this process's two cores: while its link is closed
        // it only tries to reconnect (what it would encode meanwhile never reaches the
        // parent anyway).
        let linked = rogue.endpoint.connected_peers().contains(&parent);
        if !linked {
            if last_dial.elapsed() >= Duration::from_millis(100) {
                last_dial = Instant::now();
                rogue.send(parent, addr, hb(vec![], vec![]));
            }
            continue;
        }
        for i in 0..per_tick {
            let msg = if (sent + i).is_multiple_of(2) {
                &add
            } else {
                &remove
            };
            rogue.send(parent, addr, msg.clone());
        }
        sent += per_tick;
    }
    let after = tree.cluster.counters().await;
    let timeouts_after: u64 = after.values().map(|c| c.heartbeat_timeouts).sum();
    let p = after[&parent];
    println!(
        "interest churn: {sent} deltas of {max} tags sent in {:?}; parent over_limit {}",
        start.elapsed(),
        p.over_limit,
    );
    for (id, c) in &after {
        let b = before.get(id).map_or(0, |b| b.heartbeat_timeouts);
        if c.heartbeat_timeouts > b {
            println!(
                "interest churn: node {id} timed out {} links",
                c.heartbeat_timeouts - b
            );
        }
    }
    assert!(
        p.over_limit >= 1,
        "the parent charged the churn to the rogue"
    );
    assert_eq!(timeouts_after, timeouts_before, "no honest link timed out");
    rogue.shutdown().await;
    tree.assert_whole_and_delivering().await;
    tree.shutdown().await;
}
