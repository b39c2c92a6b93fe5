//! `canopy bench`: measurements on loopback with real QUIC and mutual TLS.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::{BufMut, Bytes, BytesMut};
use canopy_node::local::{fast_tree_config, LocalCluster, LocalClusterSpec, ROOT_ID};
use canopy_node::{key_tag, NodeCounters};
use canopy_tree::NodeId;
use clap::Subcommand;
use serde::Serialize;

use crate::report;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Multicast throughput and latency: a depth-3 tree against a star, in one run.
    Throughput {
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Payload bytes per multicast (at least 8: the send time travels in it).
        #[arg(long, default_value_t = 256)]
        payload: usize,
        /// Seconds of publishing per topology.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Print one JSON object as the last stdout line.
        #[arg(long)]
        json: bool,
    },
    /// Root failover: kill the Raft leader K times under continuous publishing.
    Failover(crate::failover::FailoverArgs),
}

#[derive(Debug, Clone, Serialize)]
struct ThroughputResult {
    topology: &'static str,
    routers: usize,
    tree_depth: usize,
    published: u64,
    deliveries: u64,
    expected_deliveries: u64,
    multicasts_per_sec: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    root_msgs_per_multicast: f64,
    max_node_msgs_per_multicast: f64,
}

/// Multicasts published but not yet delivered everywhere before the publisher waits.
const WINDOW: u64 = 128;

async fn measure(
    topology: &'static str,
    routers: usize,
    clients: usize,
    payload: usize,
    seconds: u64,
) -> anyhow::Result<ThroughputResult> {
    let mut tree = fast_tree_config();
    // Two child routers each and six routers: routers fill depths 1 and 2, so clients sit
    // at depth 2 or 3.
    tree.max_child_routers = 2;
    tree.max_clients = clients.div_ceil(routers.max(1)) + 2;
    let spec = LocalClusterSpec {
        tree,
        ..LocalClusterSpec::default()
    };
    let mut cluster = LocalCluster::start(spec).await?;
    let result = drive(&mut cluster, topology, routers, clients, payload, seconds).await;
    cluster.shutdown().await;
    result
}

async fn drive(
    cluster: &mut LocalCluster,
    topology: &'static str,
    routers: usize,
    clients: usize,
    payload: usize,
    seconds: u64,
) -> anyhow::Result<ThroughputResult> {
    let tag = key_tag(cluster.name(), "bench");
    for _ in 0..routers {
        cluster.add_router().await?;
    }
    cluster
        .wait_for_tree(1 + routers, Duration::from_secs(30), |_, _| {})
        .await
        .map_err(anyhow::Error::msg)?;
    let mut ids = Vec::new();
    for _ in 0..clients {
        ids.push(cluster.add_client(vec![tag]).await?.identity.node_id);
    }
    let shape = cluster
        .wait_for_tree(1 + routers + clients, Duration::from_secs(60), |_, _| {})
        .await
        .map_err(anyhow::Error::msg)?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before: HashMap<NodeId, NodeCounters> = cluster.counters().await;
    cluster.take_deliveries();

    let publisher = cluster
        .node(ids[0])
        .map(|n| n.handle.clone())
        .ok_or_else(|| anyhow::anyhow!("publisher missing"))?;
    let receivers = (clients - 1) as u64;
    let base = Instant::now();
    let stop_at = base + Duration::from_secs(seconds);
    let mut published = 0u64;
    let mut deliveries = 0u64;
    let mut latencies: Vec<Duration> = Vec::new();
    let mut absorb = |d: canopy_node::Delivery, deliveries: &mut u64| {
        *deliveries += 1;
        if let Some(bytes) = d.payload.get(..8) {
            let mut sent = [0u8; 8];
            sent.copy_from_slice(bytes);
            let sent = base + Duration::from_nanos(u64::from_be_bytes(sent));
            latencies.push(d.received_at.into_std().saturating_duration_since(sent));
        }
    };
    while Instant::now() < stop_at {
        if published.saturating_sub(deliveries / receivers) >= WINDOW {
            if let Some(d) = cluster.next_delivery(Duration::from_millis(500)).await {
                absorb(d, &mut deliveries);
            }
            continue;
        }
        let mut buf = BytesMut::with_capacity(payload);
        buf.put_u64(base.elapsed().as_nanos() as u64);
        buf.resize(payload, 0xAB);
        publisher.publish(tag, Bytes::from(buf)).await;
        published += 1;
        for d in cluster.take_deliveries() {
            absorb(d, &mut deliveries);
        }
    }
    let expected = published * receivers;
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    while deliveries < expected && Instant::now() < drain_deadline {
        if let Some(d) = cluster.next_delivery(Duration::from_millis(200)).await {
            absorb(d, &mut deliveries);
        }
    }
    let elapsed = base.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let statuses = cluster.statuses().await;
    let per_node = |s: &canopy_node::NodeStatus| {
        let c = report::diff(&s.counters, before.get(&s.id));
        (c.multicast_sent + c.multicast_received) as f64 / published.max(1) as f64
    };
    let root = statuses
        .iter()
        .find(|s| s.id == ROOT_ID)
        .map_or(0.0, per_node);
    let max_node = statuses.iter().map(per_node).fold(0.0, f64::max);
    Ok(ThroughputResult {
        topology,
        routers,
        tree_depth: shape.depth,
        published,
        deliveries,
        expected_deliveries: expected,
        multicasts_per_sec: deliveries as f64 / receivers as f64 / elapsed,
        latency_p50_ms: pct(0.50),
        latency_p99_ms: pct(0.99),
        root_msgs_per_multicast: root,
        max_node_msgs_per_multicast: max_node,
    })
}

pub async fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Throughput {
            clients,
            payload,
            seconds,
            json,
        } => throughput(clients, payload, seconds, json).await,
        BenchCommand::Failover(args) => crate::failover::run(args).await,
    }
}

async fn throughput(
    clients: usize,
    payload: usize,
    seconds: u64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if clients < 2 {
        bail!("--clients must be at least 2");
    }
    if payload < 8 {
        bail!("--payload must be at least 8 bytes");
    }
    eprintln!("tree: root, 6 routers (2 per router), {clients} clients; {seconds} s of publishing");
    let tree = measure("tree", 6, clients, payload, seconds).await?;
    eprintln!("star: root unicasting to {clients} clients; {seconds} s of publishing");
    let star = measure("star", 0, clients, payload, seconds).await?;
    println!(
        "{:<5} {:>6} {:>12} {:>12} {:>9} {:>9} {:>12} {:>14}",
        "",
        "depth",
        "multicast/s",
        "deliveries",
        "p50 ms",
        "p99 ms",
        "root msgs/mc",
        "max node msgs/mc"
    );
    for r in [&tree, &star] {
        println!(
            "{:<5} {:>6} {:>12.1} {:>12} {:>9.2} {:>9.2} {:>12.2} {:>14.2}",
            r.topology,
            r.tree_depth,
            r.multicasts_per_sec,
            format!("{}/{}", r.deliveries, r.expected_deliveries),
            r.latency_p50_ms,
            r.latency_p99_ms,
            r.root_msgs_per_multicast,
            r.max_node_msgs_per_multicast
        );
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let ratios = serde_json::json!({
        "multicasts_per_sec": ratio(tree.multicasts_per_sec, star.multicasts_per_sec),
        "latency_p50": ratio(tree.latency_p50_ms, star.latency_p50_ms),
        "latency_p99": ratio(tree.latency_p99_ms, star.latency_p99_ms),
        "max_node_msgs_per_multicast": ratio(tree.max_node_msgs_per_multicast, star.max_node_msgs_per_multicast),
    });
    println!("tree/star ratios: {ratios}");
    let complete = [&tree, &star]
        .iter()
        .all(|r| r.deliveries == r.expected_deliveries);
    if json {
        let summary = serde_json::json!({
            "clients": clients,
            "payload": payload,
            "seconds": seconds,
            "results": [tree, star],
            "tree_over_star": ratios,
        });
        println!("{summary}");
    }
    Ok(if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
