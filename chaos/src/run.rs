//! One scenario: bring the cluster up, start the load, inject the faults while watching who
//! acts as root, heal, read every replica back and count what was lost.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::task::JoinHandle;

use crate::cluster::{Cluster, Role};
use crate::probe::{scrape, Metrics};
use crate::report::{FaultRecord, NodeCounts, Report};
use crate::scenario::{FaultKind, FaultSpec, Scenario};
use crate::wan::Wan;
use crate::workload::{flood, read_replica, Load};

/// How often the root watch samples every candidate.
const ROOT_SAMPLE: Duration = Duration::from_millis(50);
/// How long the cluster may take to come up, or to reconverge after a fault.
const CONVERGE_LIMIT: Duration = Duration::from_secs(60);

pub async fn run(
    scenario: &Scenario,
    keep: bool,
    progress: &dyn Fn(&str),
) -> anyhow::Result<(Report, Cluster)> {
    let canopy = crate::cluster::canopy_binary()?;
    let mut cluster = Cluster::prepare(scenario, canopy)?;
    if keep {
        cluster.keep();
    }
    let (wan, dial_via) = Wan::start(&scenario.wan, &cluster).await?;
    cluster.write_configs(scenario, &dial_via)?;
    progress(&format!(
        "{}: a cluster of {} nodes in {}",
        scenario.description,
        cluster.nodes.len(),
        cluster.root.display()
    ));
    for id in cluster.ids(Role::Candidate) {
        cluster.start(id)?;
    }
    wait_for(&cluster, "a root serving", |s| {
        serving_roots(&cluster, s) == 1
    })
    .await?;
    for id in cluster.ids(Role::Router) {
        cluster.start(id)?;
    }
    for id in cluster.ids(Role::Client) {
        cluster.start(id)?;
    }
    let up = Instant::now();
    wait_for(&cluster, "every node attached", |s| whole(&cluster, s)).await?;
    progress(&format!(
        "tree whole in {:.1} s",
        up.elapsed().as_secs_f64()
    ));

    let started = Instant::now();
    let clients = cluster.ids(Role::Client);
    let socket = |id: u64| cluster.node(id).map(|n| (id, n.api_socket.clone()));
    let writers: Vec<_> = clients
        .iter()
        .take(scenario.workload.writers)
        .filter_map(|&id| socket(id))
        .collect();
    let readers: Vec<_> = clients.iter().filter_map(|&id| socket(id)).collect();
    let load = Load::start(
        started,
        &writers,
        &readers,
        scenario.workload.writes_per_second,
    );
    let roots = RootWatch::start(&cluster);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut faults = Vec::new();
    for spec in &scenario.faults {
        for round in 0..spec.repeat {
            let record = inject(&mut cluster, &wan, &load, spec, started).await?;
            progress(&format!(
                "{:?} {}/{}: node {}, failover {} ms, reconverged {} ms",
                spec.kind,
                round + 1,
                spec.repeat,
                record.target,
                record.failover_ms.map_or("-".into(), |v| v.to_string()),
                record.reconverge_ms
            ));
            faults.push(record);
            tokio::time::sleep(Duration::from_millis(spec.every_ms)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(scenario.settle_s)).await;
    load.stop_writing();
    let max_concurrent_roots = roots.stop();
    let whole_at_end = wait_for(&cluster, "the tree whole after the faults", |s| {
        whole(&cluster, s)
    })
    .await
    .is_ok();

    // Every live replica must hold every acknowledged write; give the last ones time.
    let acked = load
        .observed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .acked
        .clone();
    let live: Vec<_> = readers
        .iter()
        .filter(|(id, _)| cluster.node(*id).is_some_and(|n| n.is_running()))
        .cloned()
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (lost, disagreements) = loop {
        let mut replicas = Vec::new();
        for (id, socket) in &live {
            let entries = read_replica(socket, &acked)
                .await
                .map_err(|e| anyhow::anyhow!("replica {id}: {e}"))?;
            replicas.push(entries);
        }
        let lost = acked
            .iter()
            .filter(|w| replicas.iter().any(|r| r.get(&w.key) != Some(&w.value)))
            .count();
        let disagreements = disagreements(&replicas);
        if (lost == 0 && disagreements == 0) || Instant::now() > deadline {
            break (lost, disagreements);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let observed = load.finish();
    let observed = std::mem::take(&mut *observed.lock().unwrap_or_else(|p| p.into_inner()));
    let duplicates: usize = observed
        .seen
        .values()
        .flat_map(|keys| keys.values())
        .map(|arrivals| arrivals.len().saturating_sub(1))
        .sum();
    // Delivery latency of each write: until the last live reader had it.
    let latencies: Vec<(f64, f64)> = acked
        .iter()
        .filter_map(|w| {
            let last = live
                .iter()
                .map(|(id, _)| {
                    observed
                        .seen
                        .get(id)
                        .and_then(|k| k.get(&w.key))
                        .and_then(|a| a.first())
                        .copied()
                })
                .collect::<Option<Vec<Duration>>>()?
                .into_iter()
                .max()?;
            Some((
                w.at.as_secs_f64(),
                last.saturating_sub(w.at).as_secs_f64() * 1000.0,
            ))
        })
        .collect();
    let mut counts = BTreeMap::new();
    for node in &cluster.nodes {
        if let Some(m) = scrape(node.metrics_address()).await {
            counts.insert(node.id, NodeCounts::from_metrics(&m));
        }
    }
    let report = Report::new(
        scenario,
        faults,
        acked.len(),
        observed.failed_puts,
        lost,
        duplicates,
        disagreements,
        max_concurrent_roots,
        whole_at_end,
        latencies,
        counts,
    );
    Ok((report, cluster))
}

/// Keys held by some live replicas and not others.
fn disagreements(replicas: &[std::collections::HashMap<String, Vec<u8>>]) -> usize {
    let mut keys: BTreeMap<&String, usize> = BTreeMap::new();
    for replica in replicas {
        for key in replica.keys() {
            *keys.entry(key).or_default() += 1;
        }
    }
    keys.values().filter(|&&n| n != replicas.len()).count()
}

async fn inject(
    cluster: &mut Cluster,
    wan: &Wan,
    load: &Load,
    spec: &FaultSpec,
    started: Instant,
) -> anyhow::Result<FaultRecord> {
    let kind = spec.kind;
    let at = started.elapsed();
    let injected = Instant::now();
    let mut failover_ms = None;
    let target = match kind {
        FaultKind::KillLeader | FaultKind::PauseLeader => {
            let snapshot = scrape_all(cluster).await;
            let leader = cluster
                .ids(Role::Candidate)
                .into_iter()
                .find(|id| {
                    snapshot
                        .get(id)
                        .is_some_and(|m| m.flag("canopy_serving_root"))
                })
                .context("no candidate serves as root")?;
            if kind == FaultKind::KillLeader {
                cluster.kill(leader)?;
            } else {
                cluster.pause(leader, true)?;
            }
            failover_ms = Some(
                wait_for(cluster, "another candidate serving", |s| {
                    cluster.ids(Role::Candidate).iter().any(|&id| {
                        id != leader && s.get(&id).is_some_and(|m| m.flag("canopy_serving_root"))
                    })
                })
                .await?
                .as_millis() as u64,
            );
            if kind == FaultKind::PauseLeader {
                let paused_for =
                    Duration::from_millis(spec.duration_ms).saturating_sub(injected.elapsed());
                tokio::time::sleep(paused_for).await;
                cluster.pause(leader, false)?;
            }
            leader
        }
        FaultKind::KillRouter => {
            let routers = cluster.ids(Role::Router);
            anyhow::ensure!(
                !routers.is_empty(),
                "kill-router: the scenario has no router"
            );
            let router = routers[(at.as_millis() as usize) % routers.len()];
            cluster.kill(router)?;
            router
        }
        FaultKind::RollingRestart => {
            let ids: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
            for &id in &ids {
                cluster.terminate(id).await?;
                cluster.start(id)?;
                wait_for(cluster, "the restarted node back in the tree", |s| {
                    whole(cluster, s)
                })
                .await?;
            }
            0
        }
        FaultKind::RotateCertificates => {
            let ids: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
            for id in ids {
                cluster.rotate_certificate(id)?;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            0
        }
        FaultKind::Flood => {
            let writer = cluster.ids(Role::Client)[0];
            let socket = cluster
                .node(writer)
                .context("the flooding client")?
                .api_socket
                .clone();
            let duration = Duration::from_millis(spec.duration_ms);
            flood(writer, &socket, duration, started, load.observed.clone()).await;
            writer
        }
        FaultKind::Partition => {
            let region = spec.region.as_deref().unwrap_or_default();
            wan.partition(region, true)?;
            tokio::time::sleep(Duration::from_millis(spec.duration_ms)).await;
            wan.partition(region, false)?;
            0
        }
    };
    if matches!(kind, FaultKind::KillLeader | FaultKind::KillRouter) {
        // A killed node comes back with its state on disk, as a supervisor would restart it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.start(target)?;
    }
    wait_for(cluster, "the tree whole again", |s| whole(cluster, s)).await?;
    Ok(FaultRecord {
        kind,
        at_ms: at.as_millis() as u64,
        target,
        failover_ms,
        reconverge_ms: injected.elapsed().as_millis() as u64,
    })
}

/// Every running, unpaused node's metrics (those that answered).
async fn scrape_all(cluster: &Cluster) -> BTreeMap<u64, Metrics> {
    let mut all = BTreeMap::new();
    for node in cluster.nodes.iter().filter(|n| n.is_running() && !n.paused) {
        if let Some(m) = scrape(node.metrics_address()).await {
            all.insert(node.id, m);
        }
    }
    all
}

fn serving_roots(cluster: &Cluster, snapshot: &BTreeMap<u64, Metrics>) -> usize {
    cluster
        .ids(Role::Candidate)
        .iter()
        .filter(|id| {
            snapshot
                .get(id)
                .is_some_and(|m| m.flag("canopy_serving_root"))
        })
        .count()
}

/// One root serves; every running node answers and has a running parent (candidates that
/// do not serve have none); and each running node has exactly as many children as running
/// nodes name it their parent, so a restarted parent that its old children still name, but
/// no longer knows, does not pass.
fn whole(cluster: &Cluster, snapshot: &BTreeMap<u64, Metrics>) -> bool {
    let running: Vec<&crate::cluster::Node> = cluster
        .nodes
        .iter()
        .filter(|n| n.is_running() && !n.paused)
        .collect();
    if serving_roots(cluster, snapshot) != 1
        || running.iter().any(|n| !snapshot.contains_key(&n.id))
    {
        return false;
    }
    let mut claimed: BTreeMap<u64, u64> = BTreeMap::new();
    for node in running.iter().filter(|n| n.role != Role::Candidate) {
        let parent = snapshot[&node.id].get("canopy_parent") as u64;
        if !running.iter().any(|n| n.id == parent) {
            return false;
        }
        *claimed.entry(parent).or_default() += 1;
    }
    running.iter().all(|n| {
        snapshot[&n.id].get("canopy_children") as u64 == claimed.get(&n.id).copied().unwrap_or(0)
    })
}

/// Polls every node's metrics until `done` holds; returns how long it took.
async fn wait_for(
    cluster: &Cluster,
    what: &str,
    done: impl Fn(&BTreeMap<u64, Metrics>) -> bool,
) -> anyhow::Result<Duration> {
    let since = Instant::now();
    loop {
        let snapshot = scrape_all(cluster).await;
        if done(&snapshot) {
            return Ok(since.elapsed());
        }
        if since.elapsed() >= CONVERGE_LIMIT {
            let silent: Vec<u64> = cluster
                .nodes
                .iter()
                .filter(|n| n.is_running() && !n.paused && !snapshot.contains_key(&n.id))
                .map(|n| n.id)
                .collect();
            anyhow::bail!(
                "{what}: not within {CONVERGE_LIMIT:?} (nodes whose metrics did not answer: \
                 {silent:?}; their logs are node-ID.log under {}, kept with --keep)",
                cluster.root.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Samples every candidate's `canopy_serving_root` and keeps the most seen at once.
struct RootWatch {
    max: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl RootWatch {
    fn start(cluster: &Cluster) -> RootWatch {
        let candidates: Vec<_> = cluster
            .nodes
            .iter()
            .filter(|n| n.role == Role::Candidate)
            .map(|n| n.metrics_address())
            .collect();
        let max = Arc::new(AtomicUsize::new(0));
        let seen = max.clone();
        let task = tokio::spawn(async move {
            loop {
                let mut serving = 0;
                for &address in &candidates {
                    if scrape(address)
                        .await
                        .is_some_and(|m| m.flag("canopy_serving_root"))
                    {
                        serving += 1;
                    }
                }
                seen.fetch_max(serving, Ordering::Relaxed);
                tokio::time::sleep(ROOT_SAMPLE).await;
            }
        });
        RootWatch { max, task }
    }

    fn stop(self) -> usize {
        self.task.abort();
        self.max.load(Ordering::Relaxed)
    }
}
