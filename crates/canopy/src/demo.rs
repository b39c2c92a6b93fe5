//! `canopy demo`: a throwaway cluster on loopback that shows the tree working.

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use canopy_node::local::{LocalCluster, LocalClusterSpec};
use canopy_node::{key_tag, NodeCounters};
use canopy_tree::{KeyTag, NodeId};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::report;

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
    if i % 3 == 0 {
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
    let name = cluster.name().to_owned();
    let tag_of = |key: &str| key_tag(&name, key);
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
    let mut wants: HashMap<NodeId, HashSet<KeyTag>> = HashMap::new();
    let mut clients = Vec::new();
    for i in 0..args.clients {
        let tags: Vec<KeyTag> = client_keys(i).into_iter().map(&tag_of).collect();
        let node = cluster.add_client(tags.clone()).await?;
        wants.insert(node.identity.node_id, tags.into_iter().collect());
        clients.push(node.identity.node_id);
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

    let before: HashMap<NodeId, NodeCounters> = cluster.counters().await;
    cluster.take_deliveries();
    let mut rng = SmallRng::seed_from_u64(args.seed);
    let mut owed: HashMap<(NodeId, u64), HashSet<NodeId>> = HashMap::new();
    let mut seqs: HashMap<NodeId, u64> = HashMap::new();
    let mut expected = 0u64;
    for i in 0..args.publishes {
        let publisher = clients[rng.random_range(0..clients.len())];
        let key = KEYS[rng.random_range(0..KEYS.len())];
        let tag = tag_of(key);
        let receivers: HashSet<NodeId> = wants
            .iter()
            .filter(|(id, tags)| **id != publisher && tags.contains(&tag))
            .map(|(id, _)| *id)
            .collect();
        expected += receivers.len() as u64;
        let seq = seqs.entry(publisher).or_insert(0);
        *seq += 1;
        owed.insert((publisher, *seq), receivers);
        if let Some(node) = cluster.node(publisher) {
            let payload = Bytes::from(format!("demo write {i} to {key}"));
            node.handle.publish(tag, payload).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let progress = bar(expected, "deliveries");
    let mut seen: HashSet<(NodeId, NodeId, u64)> = HashSet::new();
    let (mut delivered, mut duplicates, mut unwanted) = (0u64, 0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(10);
    while delivered < expected && Instant::now() < deadline {
        let Some(d) = cluster.next_delivery(Duration::from_millis(200)).await else {
            continue;
        };
        let owed_here = owed.get(&(d.origin, d.origin_seq));
        if !owed_here.is_some_and(|r| r.contains(&d.receiver)) {
            unwanted += 1;
        } else if seen.insert((d.receiver, d.origin, d.origin_seq)) {
            delivered += 1;
            progress.set_position(delivered);
        } else {
            duplicates += 1;
        }
    }
    progress.finish_and_clear();
    // Late duplicates would show up now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for d in cluster.take_deliveries() {
        if seen.contains(&(d.receiver, d.origin, d.origin_seq)) {
            duplicates += 1;
        } else {
            unwanted += 1;
        }
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
    let ok = delivered == expected && duplicates == 0 && unwanted == 0;
    println!(
        "{}: {delivered}/{expected} owed deliveries arrived, {duplicates} duplicates, {unwanted} \
         unwanted; busiest node handled {max_node:.2} multicast messages per publish ({:.1} s)",
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
