//! `canopy bench`: measurements on loopback with real QUIC and mutual TLS.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
    /// Writes went through the replicas: sealed, signed, durable at the writer, verified and
    /// opened at every receiver (`false`: raw multicasts of opaque bytes).
    sealed: bool,
    routers: usize,
    tree_depth: usize,
    published: u64,
    deliveries: u64,
    expected_deliveries: u64,
    multicasts_per_sec: f64,
    latency_p50_ms: f64,
    /// `None` with fewer than [`MIN_P99_SAMPLES`] latency samples.
    latency_p99_ms: Option<f64>,
    latency_samples: usize,
    root_msgs_per_multicast: f64,
    max_node_msgs_per_multicast: f64,
}

/// Fewer latency samples than this give no p99.
const MIN_P99_SAMPLES: usize = 100;

/// Multicasts published but not yet delivered everywhere before the publisher waits.
const WINDOW: u64 = 128;

/// What a measurement publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Opaque bytes straight into the tree.
    Raw,
    /// Replica writes: sealed, signed, stored, verified, opened, merged.
    Sealed,
}

/// Where a measurement's arrivals come from: raw deliveries, or changes the receivers'
/// replicas applied (stamped when their application got them).
enum Arrivals {
    Raw,
    Sealed(tokio::sync::mpsc::UnboundedReceiver<(tokio::time::Instant, Bytes)>),
}

impl Arrivals {
    async fn next(
        &mut self,
        cluster: &mut LocalCluster,
        wait: Duration,
    ) -> Option<(tokio::time::Instant, Bytes)> {
        match self {
            Arrivals::Raw => cluster
                .next_delivery(wait)
                .await
                .map(|d| (d.received_at, d.payload)),
            Arrivals::Sealed(rx) => tokio::time::timeout(wait, rx.recv()).await.ok().flatten(),
        }
    }

    fn take(&mut self, cluster: &mut LocalCluster) -> Vec<(tokio::time::Instant, Bytes)> {
        match self {
            Arrivals::Raw => cluster
                .take_deliveries()
                .into_iter()
                .map(|d| (d.received_at, d.payload))
                .collect(),
            Arrivals::Sealed(rx) => std::iter::from_fn(|| rx.try_recv().ok()).collect(),
        }
    }
}

/// The publisher: a raw node handle, or a replica whose writes are made concurrently (as
/// many applications would), so that its node can commit them in groups.
enum Publisher {
    Raw(canopy_node::NodeHandle, u64),
    Sealed(canopy_node::kv::KvNode, Arc<AtomicU64>),
}

impl Publisher {
    async fn publish(&self, n: u64, payload: Bytes) {
        match self {
            Publisher::Raw(handle, tag) => {
                handle.publish(*tag, payload).await;
            }
            Publisher::Sealed(kv, failed) => {
                let (kv, failed) = (kv.clone(), failed.clone());
                tokio::spawn(async move {
                    let key = format!("{SEALED_CHANNEL}{}", n % 16);
                    if kv.put(&key, payload).await.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        }
    }

    /// Writes the replica refused (none in a sound run).
    fn failed(&self) -> u64 {
        match self {
            Publisher::Raw(..) => 0,
            Publisher::Sealed(_, failed) => failed.load(Ordering::Relaxed),
        }
    }
}

/// The channel sealed measurements write to (16 keys under it).
const SEALED_CHANNEL: &str = "bench/";

async fn measure(
    topology: &'static str,
    routers: usize,
    clients: usize,
    payload: usize,
    seconds: u64,
    mode: Mode,
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
    let result = drive(
        &mut cluster,
        topology,
        routers,
        clients,
        payload,
        seconds,
        mode,
    )
    .await;
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
    mode: Mode,
) -> anyhow::Result<ThroughputResult> {
    let tag = key_tag(cluster.name(), "bench");
    for _ in 0..routers {
        cluster.add_router().await?;
    }
    cluster
        .wait_for_tree(1 + routers, Duration::from_secs(30), |_, _| {})
        .await
        .map_err(anyhow::Error::msg)?;
    let (publisher, mut arrivals) = match mode {
        Mode::Raw => {
            let mut ids = Vec::new();
            for _ in 0..clients {
                ids.push(cluster.add_client(vec![tag]).await?.handle);
            }
            (Publisher::Raw(ids[0].clone(), tag), Arrivals::Raw)
        }
        Mode::Sealed => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let publisher = cluster.add_kv_client(&[]).await?;
            for _ in 1..clients {
                let client = cluster.add_kv_client(&[]).await?;
                let mut changes = client.kv.changes(SEALED_CHANNEL).await?;
                let tx = tx.clone();
                tokio::spawn(async move {
                    while let Some(change) = changes.recv().await {
                        let arrived = tokio::time::Instant::now();
                        let payload = change.value.unwrap_or_default();
                        if tx.send((arrived, payload)).is_err() {
                            break;
                        }
                    }
                });
            }
            (
                Publisher::Sealed(publisher.kv, Arc::default()),
                Arrivals::Sealed(rx),
            )
        }
    };
    let shape = cluster
        .wait_for_tree(1 + routers + clients, Duration::from_secs(60), |_, _| {})
        .await
        .map_err(anyhow::Error::msg)?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before: HashMap<NodeId, NodeCounters> = cluster.counters().await;
    arrivals.take(cluster);

    let receivers = (clients - 1) as u64;
    let base = Instant::now();
    let stop_at = base + Duration::from_secs(seconds);
    let mut published = 0u64;
    let mut deliveries = 0u64;
    let mut latencies: Vec<Duration> = Vec::new();
    let mut absorb = |(received_at, payload): (tokio::time::Instant, Bytes),
                      deliveries: &mut u64| {
        *deliveries += 1;
        if let Some(bytes) = payload.get(..8) {
            let mut sent = [0u8; 8];
            sent.copy_from_slice(bytes);
            let sent = base + Duration::from_nanos(u64::from_be_bytes(sent));
            latencies.push(received_at.into_std().saturating_duration_since(sent));
        }
    };
    while Instant::now() < stop_at {
        if published.saturating_sub(deliveries / receivers) >= WINDOW {
            if let Some(a) = arrivals.next(cluster, Duration::from_millis(500)).await {
                absorb(a, &mut deliveries);
            }
            continue;
        }
        let mut buf = BytesMut::with_capacity(payload);
        buf.put_u64(base.elapsed().as_nanos() as u64);
        buf.resize(payload, 0xAB);
        publisher.publish(published, Bytes::from(buf)).await;
        published += 1;
        for a in arrivals.take(cluster) {
            absorb(a, &mut deliveries);
        }
    }
    if publisher.failed() > 0 {
        bail!("{} writes failed at the publisher", publisher.failed());
    }
    let expected = published * receivers;
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    while deliveries < expected && Instant::now() < drain_deadline {
        if let Some(a) = arrivals.next(cluster, Duration::from_millis(200)).await {
            absorb(a, &mut deliveries);
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
        sealed: mode == Mode::Sealed,
        routers,
        tree_depth: shape.depth,
        published,
        deliveries,
        expected_deliveries: expected,
        multicasts_per_sec: deliveries as f64 / receivers as f64 / elapsed,
        latency_p50_ms: pct(0.50),
        latency_p99_ms: (latencies.len() >= MIN_P99_SAMPLES).then(|| pct(0.99)),
        latency_samples: latencies.len(),
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
    let tree = measure("tree", 6, clients, payload, seconds, Mode::Raw).await?;
    eprintln!("star: root unicasting to {clients} clients; {seconds} s of publishing");
    let star = measure("star", 0, clients, payload, seconds, Mode::Raw).await?;
    eprintln!(
        "tree, sealed: the same tree, every publish a replica write (sealed, signed, durable, \
         verified, opened); {seconds} s"
    );
    let sealed = measure("tree+kv", 6, clients, payload, seconds, Mode::Sealed).await?;
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
    for r in [&tree, &star, &sealed] {
        println!(
            "{:<5} {:>6} {:>12.1} {:>12} {:>9.2} {:>9.2} {:>12.2} {:>14.2}",
            r.topology,
            r.tree_depth,
            r.multicasts_per_sec,
            format!("{}/{}", r.deliveries, r.expected_deliveries),
            r.latency_p50_ms,
            r.latency_p99_ms.unwrap_or(f64::NAN),
            r.root_msgs_per_multicast,
            r.max_node_msgs_per_multicast
        );
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let ratios = serde_json::json!({
        "multicasts_per_sec": ratio(tree.multicasts_per_sec, star.multicasts_per_sec),
        "latency_p50": ratio(tree.latency_p50_ms, star.latency_p50_ms),
        "latency_p99": p99_ratio(&tree, &star),
        "max_node_msgs_per_multicast": ratio(tree.max_node_msgs_per_multicast, star.max_node_msgs_per_multicast),
    });
    println!("tree/star ratios: {ratios}");
    let sealed_ratios = serde_json::json!({
        "multicasts_per_sec": ratio(sealed.multicasts_per_sec, tree.multicasts_per_sec),
        "latency_p50": ratio(sealed.latency_p50_ms, tree.latency_p50_ms),
        "latency_p99": p99_ratio(&sealed, &tree),
    });
    println!("sealed/raw ratios (same tree): {sealed_ratios}");
    let complete = [&tree, &star, &sealed]
        .iter()
        .all(|r| r.deliveries == r.expected_deliveries);
    if json {
        let summary = serde_json::json!({
            "clients": clients,
            "payload": payload,
            "seconds": seconds,
            "results": [tree, star, sealed],
            "tree_over_star": ratios,
            "sealed_over_raw": sealed_ratios,
        });
        println!("{summary}");
    }
    Ok(if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The ratio of two p99 latencies, when both had enough samples.
fn p99_ratio(a: &ThroughputResult, b: &ThroughputResult) -> Option<f64> {
    match (a.latency_p99_ms, b.latency_p99_ms) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}
