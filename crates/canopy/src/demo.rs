//! `canopy demo`: a throwaway cluster on loopback that shows the tree working.

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use canopy_kv::Change;
use canopy_node::local::LocalKvClient;
use canopy_node::local::{LocalCluster, LocalClusterSpec};
use canopy_node::NodeCounters;
use canopy_tree::NodeId;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

use crate::report;
use crate::tap::{print_record_views, RouterTap};

const KEYS: [&str; 4] = ["alpha", "beta", "gamma", "delta"];

#[derive(Args)]
pub struct DemoArgs {
    #[arg(long, default_value_t = 4)]
    routers: usize,
    #[arg(long, default_value_t = 24)]
    clients: usize,
    #[arg(long, default_value_t = 40)]
    publishes: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Root candidates in the Raft group; the leader serves as root.
    #[arg(long, default_value_t = 3)]
    candidates: usize,
    /// Print one JSON object as the last stdout line.
    #[arg(long)]
    json: bool,
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>20} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Which keys client number `i` wants: one key, and every third client a second one.
fn client_keys(i: usize) -> Vec<&'static str> {
    let mut keys = vec![KEYS[i % KEYS.len()]];
    if i.is_multiple_of(3) {
        keys.push(KEYS[(i + 1) % KEYS.len()]);
    }
    keys
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    if args.clients < 2 {
        bail!("--clients must be at least 2");
    }
    let started = Instant::now();
    let spec = LocalClusterSpec {
        seed: args.seed,
        candidates: args.candidates,
        ..LocalClusterSpec::default()
    };
    let mut cluster = LocalCluster::start(spec).await?;
    let result = drive(&mut cluster, &args, started).await;
    cluster.shutdown().await;
    result
}

async fn drive(
    cluster: &mut LocalCluster,
    args: &DemoArgs,
    started: Instant,
) -> anyhow::Result<ExitCode> {
    eprintln!(
        "canopy demo: {} root candidates (Raft) + {} routers + {} clients on 127.0.0.1, QUIC \
         with mutual TLS (ring)",
        args.candidates, args.routers, args.clients
    );
    let root = cluster.wait_for_root(Duration::from_secs(30)).await?;
    eprintln!("root group elected candidate {root} as leader; it serves as root");
    // Routers first, so they take the top of the tree.
    for _ in 0..args.routers {
        cluster.add_router().await?;
    }
    let progress = bar((1 + args.routers) as u64, "routers attached");
    cluster
        .wait_for_tree(1 + args.routers, Duration::from_secs(30), |done, _| {
            progress.set_position(done as u64)
        })
        .await
        .map_err(anyhow::Error::msg)?;
    progress.finish_and_clear();
    let mut wants: HashMap<NodeId, HashSet<&'static str>> = HashMap::new();
    let mut clients = Vec::new();
    let (change_tx, mut changes) = mpsc::unbounded_channel::<(NodeId, Change)>();
    for i in 0..args.clients {
        let keys = client_keys(i);
        let client = cluster.add_kv_client(&[]).await?;
        for key in &keys {
            let mut watch = client.kv.changes(key).await?;
            let (tx, id) = (change_tx.clone(), client.id());
            tokio::spawn(async move {
                while let Some(change) = watch.recv().await {
                    if tx.send((id, change)).is_err() {
                        break;
                    }
                }
            });
        }
        wants.insert(client.id(), keys.into_iter().collect());
        clients.push(client);
    }
    let total = 1 + args.routers + args.clients;
    let progress = bar(total as u64, "nodes attached");
    let shape = cluster
        .wait_for_tree(total, Duration::from_secs(60), |done, _| {
            progress.set_position(done as u64)
        })
        .await
        .map_err(anyhow::Error::msg)?;
    progress.finish_and_clear();
    // Interest travels up in batched heartbeats; a few rounds are plenty on loopback.
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Whatever catch-up brought in while joining is not part of what is counted below.
    while changes.try_recv().is_ok() {}

    let tap = RouterTap::install(cluster);
    let before: HashMap<NodeId, NodeCounters> = cluster.counters().await;
    let mut rng = SmallRng::seed_from_u64(args.seed);
    let mut owed: HashMap<(NodeId, u64), HashSet<NodeId>> = HashMap::new();
    let mut shown: Option<(NodeId, u64, String, String)> = None;
    let mut expected = 0u64;
    for i in 0..args.publishes {
        let publisher = &clients[rng.random_range(0..clients.len())];
        let key = KEYS[rng.random_range(0..KEYS.len())];
        let value = format!("demo write {i} to {key}");
        let written = publisher.kv.put(key, Bytes::from(value.clone())).await?;
        // Every replica watching the key sees the write once, the writer's own included.
        let receivers: HashSet<NodeId> = wants
            .iter()
            .filter(|(_, keys)| keys.contains(key))
            .map(|(id, _)| *id)
            .collect();
        expected += receivers.len() as u64;
        if shown.is_none() && receivers.iter().any(|r| *r != publisher.id()) {
            shown = Some((written.origin, written.origin_seq, key.to_owned(), value));
        }
        owed.insert((written.origin, written.origin_seq), receivers);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let progress = bar(expected, "changes applied");
    let mut tally = Tally::default();
    let shown_id = shown.as_ref().map(|s| (s.0, s.1));
    let deadline = Instant::now() + Duration::from_secs(10);
    while tally.delivered < expected && Instant::now() < deadline {
        let next = tokio::time::timeout(Duration::from_millis(200), changes.recv()).await;
        if let Ok(Some((receiver, change))) = next {
            tally.count(&owed, shown_id, receiver, change);
            progress.set_position(tally.delivered);
        }
    }
    progress.finish_and_clear();
    // Late duplicates would show up now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok((receiver, change)) = changes.try_recv() {
        tally.count(&owed, shown_id, receiver, change);
    }
    let Tally {
        delivered,
        duplicates,
        unwanted,
        arrival,
        ..
    } = tally;
    let rejected = replica_rejections(&clients).await;
    tap.remove(cluster);
    if let Some((origin, seq, key, value)) = &shown {
        print_record_views(cluster, &tap, (*origin, *seq, key, value), arrival.as_ref());
    }

    let statuses = cluster.statuses().await;
    let publishes = args.publishes as u64;
    let per_node = |id: NodeId| {
        statuses.iter().find(|s| s.id == id).map_or(0.0, |s| {
            let c = report::diff(&s.counters, before.get(&s.id));
            (c.multicast_sent + c.multicast_received) as f64 / publishes.max(1) as f64
        })
    };
    let max_node = statuses.iter().map(|s| per_node(s.id)).fold(0.0, f64::max);
    let root = statuses
        .iter()
        .find(|s| s.serving_root)
        .map_or(root, |s| s.id);
    println!("tree (depth {}, root = Raft leader {root}):", shape.depth);
    print!("{}", report::tree_shape(&statuses, root));
    println!();
    print!("{}", report::message_table(&statuses, &before, publishes));
    println!();
    let ok = delivered == expected && duplicates == 0 && unwanted == 0 && rejected == 0;
    println!(
        "{}: {delivered}/{expected} owed changes applied (verified and opened), {duplicates} \
         duplicates, {unwanted} unwanted, {rejected} records rejected; busiest node handled \
         {max_node:.2} multicast messages per write ({:.1} s)",
        if ok { "OK" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    if args.json {
        let summary = serde_json::json!({
            "routers": args.routers,
            "clients": args.clients,
            "publishes": args.publishes,
            "delivered": delivered,
            "expected": expected,
            "duplicates": duplicates,
            "unwanted": unwanted,
            "rejected": rejected,
            "max_node_msgs_per_multicast": max_node,
            "root_msgs_per_multicast": per_node(root),
            "root": root,
            "candidates": args.candidates,
            "tree_depth": shape.depth,
            "elapsed_ms": started.elapsed().as_millis() as u64,
        });
        println!("{summary}");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Records the replicas refused as forged, tampered with, replayed or equivocated: none in
/// a healthy demo. (Duplicates between overlapping catch-up answers are normal.)
async fn replica_rejections(clients: &[LocalKvClient]) -> u64 {
    let mut rejected = 0;
    for client in clients {
        if let Some(c) = client.kv.counters().await {
            rejected += c.malformed
                + c.forged_origin
                + c.wrong_tag
                + c.bad_certificate
                + c.bad_signature
                + c.replay
                + c.chain_break
                + c.bad_seal;
        }
    }
    rejected
}

/// The changes the subscribers' applications saw, against what they were owed.
#[derive(Default)]
struct Tally {
    seen: HashSet<(NodeId, NodeId, u64)>,
    delivered: u64,
    duplicates: u64,
    unwanted: u64,
    /// The shown record as a subscriber other than its writer applied it.
    arrival: Option<(NodeId, Change)>,
}

impl Tally {
    fn count(
        &mut self,
        owed: &HashMap<(NodeId, u64), HashSet<NodeId>>,
        shown: Option<(NodeId, u64)>,
        receiver: NodeId,
        change: Change,
    ) {
        let record = (change.origin, change.origin_seq);
        if !owed.get(&record).is_some_and(|r| r.contains(&receiver)) {
            self.unwanted += 1;
        } else if self.seen.insert((receiver, record.0, record.1)) {
            self.delivered += 1;
            if shown == Some(record) && receiver != change.origin && self.arrival.is_none() {
                self.arrival = Some((receiver, change));
            }
        } else {
            self.duplicates += 1;
        }
    }
}
