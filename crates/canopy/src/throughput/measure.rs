//! One throughput measurement: build the layout, publish for a while (paced or windowed),
//! count every delivery once, and drain.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::{BufMut, Bytes, BytesMut};
use canopy_node::local::{fast_tree_config, LocalCluster, LocalClusterSpec, ROOT_ID};
use canopy_node::{key_tag, NodeCounters};
use canopy_tree::NodeId;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::Layout;
use crate::report;

/// Bytes at the head of every payload: the send time (ns since the run began) and the
/// publisher's sequence number.
pub const HEADER: usize = 16;

/// Fewer latency samples than this give no p99 (and fewer than ten times it no p99.9).
const MIN_P99_SAMPLES: u64 = 100;

/// Multicasts published but not yet delivered everywhere before a saturating publisher
/// waits.
const WINDOW: u64 = 128;

/// An open-loop publisher stops adding load past this many multicasts owed but not yet
/// delivered (the run then reports what it could offer).
const MAX_IN_FLIGHT: u64 = 100_000;

/// How long to wait for what is still owed after publishing stops.
const DRAIN: Duration = Duration::from_secs(10);

pub struct Spec {
    pub layout: Layout,
    pub clients: usize,
    pub payload: usize,
    pub seconds: u64,
    pub rate: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThroughputResult {
    pub layout: Layout,
    /// Writes went through the replicas (sealed, signed, durable, verified, opened).
    pub sealed: bool,
    pub routers: usize,
    pub tree_depth: usize,
    /// Multicasts/s asked for (`None`: saturating).
    pub offered_rate: Option<f64>,
    pub published: u64,
    pub publish_seconds: f64,
    /// Deliveries owed (published × receivers), made (each (receiver, multicast) once),
    /// made more than once, and never made.
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub duplicates: u64,
    pub lost: u64,
    /// What arrived while publishing, per second of publishing (the drain is not in it).
    pub multicasts_per_sec: f64,
    pub deliveries_per_sec: f64,
    /// From the end of publishing until the last owed delivery (or the drain timeout).
    pub drain_ms: f64,
    pub latency_p50_ms: f64,
    /// `None` with fewer than 100 samples (p99.9: fewer than 1,000).
    pub latency_p99_ms: Option<f64>,
    pub latency_p999_ms: Option<f64>,
    pub latency_max_ms: f64,
    pub latency_samples: u64,
    pub root_msgs_per_multicast: f64,
    pub max_node_msgs_per_multicast: f64,
}

/// One delivery: when, to whom, which multicast, and when it was sent.
struct Arrival {
    at: tokio::time::Instant,
    receiver: u64,
    payload: Bytes,
}

/// Where a measurement's arrivals come from: raw deliveries, or changes the receivers'
/// replicas applied (stamped when their application got them).
enum Arrivals {
    Raw,
    Sealed(tokio::sync::mpsc::UnboundedReceiver<Arrival>),
}

impl Arrivals {
    async fn next(&mut self, cluster: &mut LocalCluster, wait: Duration) -> Option<Arrival> {
        match self {
            Arrivals::Raw => cluster.next_delivery(wait).await.map(|d| Arrival {
                at: d.received_at,
                receiver: d.receiver,
                payload: d.payload,
            }),
            Arrivals::Sealed(rx) => tokio::time::timeout(wait, rx.recv()).await.ok().flatten(),
        }
    }

    fn take(&mut self, cluster: &mut LocalCluster) -> Vec<Arrival> {
        match self {
            Arrivals::Raw => cluster
                .take_deliveries()
                .into_iter()
                .map(|d| Arrival {
                    at: d.received_at,
                    receiver: d.receiver,
                    payload: d.payload,
                })
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

pub async fn measure(spec: Spec) -> anyhow::Result<ThroughputResult> {
    let routers = match spec.layout {
        Layout::Star => 0,
        Layout::Tree | Layout::Sealed => 6,
    };
    let mut tree = fast_tree_config();
    // Two child routers each and six routers: routers fill depths 1 and 2, so clients sit
    // at depth 2 or 3.
    tree.max_child_routers = 2;
    tree.max_clients = spec.clients.div_ceil(routers.max(1)) + 2;
    let cluster_spec = LocalClusterSpec {
        tree,
        ..LocalClusterSpec::default()
    };
    let mut cluster = LocalCluster::start(cluster_spec).await?;
    let result = drive(&mut cluster, routers, &spec).await;
    cluster.shutdown().await;
    result
}

/// What the receivers got: each (receiver, multicast) once, with latencies.
struct Tally {
    base: Instant,
    seen: HashSet<(u64, u64)>,
    duplicates: u64,
    in_window: u64,
    latency_us: Histogram<u64>,
}

impl Tally {
    fn absorb(&mut self, arrival: Arrival, publishing: bool) {
        let Some(header) = arrival.payload.get(..HEADER) else {
            return;
        };
        let field = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&header[at..at + 8]);
            u64::from_be_bytes(bytes)
        };
        let (sent_ns, seq) = (field(0), field(8));
        if !self.seen.insert((arrival.receiver, seq)) {
            self.duplicates += 1;
            return;
        }
        if publishing {
            self.in_window += 1;
        }
        let sent = self.base + Duration::from_nanos(sent_ns);
        let latency = arrival.at.into_std().saturating_duration_since(sent);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.saturating_record(micros.max(1));
    }
}

async fn drive(
    cluster: &mut LocalCluster,
    routers: usize,
    spec: &Spec,
) -> anyhow::Result<ThroughputResult> {
    let tag = key_tag(cluster.name(), "bench");
    for _ in 0..routers {
        cluster.add_router().await?;
    }
    cluster
        .wait_for_tree(1 + routers, Duration::from_secs(30), |_, _| {})
        .await
        .map_err(anyhow::Error::msg)?;
    let (publisher, mut arrivals) = match spec.layout {
        Layout::Tree | Layout::Star => {
            let mut handles = Vec::new();
            for _ in 0..spec.clients {
                handles.push(cluster.add_client(vec![tag]).await?.handle);
            }
            (Publisher::Raw(handles[0].clone(), tag), Arrivals::Raw)
        }
        Layout::Sealed => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let publisher = cluster.add_kv_client(&[]).await?;
            for receiver in 1..spec.clients as u64 {
                let client = cluster.add_kv_client(&[]).await?;
                let mut changes = client.kv.changes(SEALED_CHANNEL).await?;
                let tx = tx.clone();
                tokio::spawn(async move {
                    while let Some(change) = changes.recv().await {
                        let arrival = Arrival {
                            at: tokio::time::Instant::now(),
                            receiver,
                            payload: change.value.unwrap_or_default(),
                        };
                        if tx.send(arrival).is_err() {
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
        .wait_for_tree(
            1 + routers + spec.clients,
            Duration::from_secs(60),
            |_, _| {},
        )
        .await
        .map_err(anyhow::Error::msg)?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before: HashMap<NodeId, NodeCounters> = cluster.counters().await;
    arrivals.take(cluster);

    let receivers = (spec.clients - 1) as u64;
    let base = Instant::now();
    let mut tally = Tally {
        base,
        seen: HashSet::new(),
        duplicates: 0,
        in_window: 0,
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
    };
    let publish_for = Duration::from_secs(spec.seconds);
    let mut published = 0u64;
    loop {
        let now = Instant::now();
        let elapsed = now - base;
        if elapsed >= publish_for {
            break;
        }
        let owed = (published * receivers).saturating_sub(tally.seen.len() as u64);
        let due = match spec.rate {
            // Paced: everything whose time has come (the timer's granularity is about a
            // millisecond, so publishes go out in small bursts at their scheduled times).
            Some(rate) => ((elapsed.as_secs_f64() * rate) as u64 + 1).saturating_sub(published),
            None => u64::from(owed / receivers.max(1) < WINDOW),
        };
        if due == 0 || owed / receivers.max(1) >= MAX_IN_FLIGHT {
            let wait = match spec.rate {
                Some(rate) => Duration::from_secs_f64(1.0 / rate).min(Duration::from_millis(1)),
                None => Duration::from_millis(500),
            };
            if let Some(a) = arrivals.next(cluster, wait).await {
                tally.absorb(a, true);
            }
            for a in arrivals.take(cluster) {
                tally.absorb(a, true);
            }
            continue;
        }
        for _ in 0..due {
            let mut buf = BytesMut::with_capacity(spec.payload);
            buf.put_u64(base.elapsed().as_nanos() as u64);
            buf.put_u64(published);
            buf.resize(spec.payload, 0xAB);
            publisher.publish(published, Bytes::from(buf)).await;
            published += 1;
        }
        for a in arrivals.take(cluster) {
            tally.absorb(a, true);
        }
    }
    let publish_seconds = base.elapsed().as_secs_f64();
    if publisher.failed() > 0 {
        bail!("{} writes failed at the publisher", publisher.failed());
    }
    let expected = published * receivers;
    let drain_began = Instant::now();
    let mut last_arrival = drain_began;
    while (tally.seen.len() as u64) < expected && drain_began.elapsed() < DRAIN {
        if let Some(a) = arrivals.next(cluster, Duration::from_millis(200)).await {
            tally.absorb(a, false);
            last_arrival = Instant::now();
        }
    }
    // Late copies of what already arrived count as duplicates too.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for a in arrivals.take(cluster) {
        tally.absorb(a, false);
    }
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
    let hist = &tally.latency_us;
    let samples = hist.len();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let delivered = tally.seen.len() as u64;
    Ok(ThroughputResult {
        layout: spec.layout,
        sealed: spec.layout == Layout::Sealed,
        routers,
        tree_depth: shape.depth,
        offered_rate: spec.rate,
        published,
        publish_seconds,
        expected_deliveries: expected,
        deliveries: delivered,
        duplicates: tally.duplicates,
        lost: expected.saturating_sub(delivered),
        multicasts_per_sec: tally.in_window as f64 / receivers as f64 / publish_seconds,
        deliveries_per_sec: tally.in_window as f64 / publish_seconds,
        drain_ms: last_arrival.duration_since(drain_began).as_secs_f64() * 1000.0,
        latency_p50_ms: ms(0.5),
        latency_p99_ms: (samples >= MIN_P99_SAMPLES).then(|| ms(0.99)),
        latency_p999_ms: (samples >= 10 * MIN_P99_SAMPLES).then(|| ms(0.999)),
        latency_max_ms: hist.max() as f64 / 1000.0,
        latency_samples: samples,
        root_msgs_per_multicast: root,
        max_node_msgs_per_multicast: max_node,
    })
}
