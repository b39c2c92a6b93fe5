//! `canopy bench failover`: kill the root leader under continuous publishing and measure how
//! long until multicasts cross the new root, how long until the old root's children have
//! reattached, and whether any link below the root changed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use canopy_node::local::{fast_tree_config, LocalCluster, LocalClusterSpec};
use canopy_node::{key_tag, Delivery, NodeStatus};
use canopy_tree::NodeId;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

#[derive(Args)]
pub struct FailoverArgs {
    /// How many times to kill the leader (the killed candidate restarts after each round).
    #[arg(long, default_value_t = 3)]
    kills: usize,
    /// Root candidates in the Raft group.
    #[arg(long, default_value_t = 3)]
    candidates: usize,
    #[arg(long, default_value_t = 6)]
    routers: usize,
    #[arg(long, default_value_t = 24)]
    clients: usize,
    /// Milliseconds between publishes (clients take turns).
    #[arg(long, default_value_t = 5)]
    interval_ms: u64,
    /// Print one JSON object as the last stdout line.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Serialize)]
struct KillResult {
    killed: NodeId,
    new_root: NodeId,
    /// Kill to a new candidate serving as root (election plus committing `NewRoot`).
    new_root_ms: f64,
    /// Kill to the first multicast published after the kill that crossed the new root.
    failover_ms: f64,
    /// Kill to every child of the old root attached under the new one.
    reattach_ms: f64,
    /// Links below the root that changed.
    subtrees_rebuilt: usize,
    /// Multicasts delivered inside a subtree between the kill and the first crossing.
    delivered_within_subtrees: u64,
}

/// Parent of every live node that is not a candidate.
fn parents(statuses: &[NodeStatus], candidates: &[NodeId]) -> HashMap<NodeId, Option<NodeId>> {
    statuses
        .iter()
        .filter(|s| !candidates.contains(&s.id))
        .map(|s| (s.id, s.parent))
        .collect()
}

/// The child of the root whose subtree holds `node`.
fn top(parents: &HashMap<NodeId, Option<NodeId>>, node: NodeId) -> Option<NodeId> {
    let mut current = node;
    for _ in 0..=parents.len() {
        match parents.get(&current) {
            Some(Some(parent)) if parents.contains_key(parent) => current = *parent,
            Some(Some(_)) => return Some(current),
            _ => return None,
        }
    }
    None
}

fn published_at(base: Instant, d: &Delivery) -> Option<Instant> {
    let bytes: [u8; 8] = d.payload.get(..8)?.try_into().ok()?;
    Some(base + Duration::from_nanos(u64::from_be_bytes(bytes)))
}

async fn kill_once(
    cluster: &mut LocalCluster,
    candidates: &[NodeId],
    base: Instant,
) -> anyhow::Result<KillResult> {
    let leader = cluster.wait_for_root(Duration::from_secs(20)).await?;
    let before = parents(&cluster.statuses().await, candidates);
    let orphans: Vec<NodeId> = before
        .iter()
        .filter(|(_, p)| **p == Some(leader))
        .map(|(&id, _)| id)
        .collect();
    cluster.take_deliveries();
    let killed_at = Instant::now();
    cluster.kill(leader).await;
    let (mut failover, mut reattach, mut new_root) = (None, None, None);
    let mut serving = None;
    let mut within = 0u64;
    let deadline = killed_at + Duration::from_secs(60);
    while failover.is_none() || reattach.is_none() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no failover within 60 s (crossing: {failover:?}, reattached: {reattach:?})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        for d in cluster.take_deliveries() {
            let received = d.received_at.into_std();
            if failover.is_some() || published_at(base, &d).is_none_or(|p| p < killed_at) {
                continue;
            }
            if top(&before, d.origin) == top(&before, d.receiver) {
                within += 1;
            } else {
                failover = Some(received.saturating_duration_since(killed_at));
            }
        }
        if reattach.is_none() {
            let statuses = cluster.statuses().await;
            let root = statuses.iter().find(|s| s.serving_root).map(|s| s.id);
            if serving.is_none() && root.is_some() {
                serving = Some(killed_at.elapsed());
            }
            let by_id: HashMap<NodeId, Option<NodeId>> =
                statuses.iter().map(|s| (s.id, s.parent)).collect();
            if let Some(root) = root {
                if orphans.iter().all(|o| by_id.get(o) == Some(&Some(root))) {
                    reattach = Some(killed_at.elapsed());
                    new_root = Some(root);
                }
            }
        }
    }
    let after = parents(&cluster.statuses().await, candidates);
    let rebuilt = before
        .iter()
        .filter(|(_, p)| p.is_some_and(|p| !candidates.contains(&p)))
        .filter(|(id, p)| after.get(id) != Some(p))
        .count();
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    Ok(KillResult {
        killed: leader,
        new_root: new_root.unwrap_or(0),
        new_root_ms: ms(serving),
        failover_ms: ms(failover),
        reattach_ms: ms(reattach),
        subtrees_rebuilt: rebuilt,
        delivered_within_subtrees: within,
    })
}

/// Nearest-rank percentile of a small sample.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub async fn run(args: FailoverArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(
        args.candidates >= 3,
        "--candidates must be at least 3 to survive a kill"
    );
    anyhow::ensure!(args.clients >= 2, "--clients must be at least 2");
    let mut tree = fast_tree_config();
    // Half the routers under the root, the rest one level down: links below the root exist
    // between routers as well as to clients.
    tree.max_child_routers = args.routers.div_ceil(2).max(1);
    tree.max_clients = args.clients.div_ceil(args.routers.max(1)) + 2;
    let spec = LocalClusterSpec {
        tree,
        candidates: args.candidates,
        ..LocalClusterSpec::default()
    };
    let mut cluster = LocalCluster::start(spec).await?;
    let result = drive(&mut cluster, &args).await;
    cluster.shutdown().await;
    let results = result?;
    let failover: Vec<f64> = results.iter().map(|r| r.failover_ms).collect();
    let reattach: Vec<f64> = results.iter().map(|r| r.reattach_ms).collect();
    let rebuilt: usize = results.iter().map(|r| r.subtrees_rebuilt).sum();
    println!(
        "{:>4} {:>7} {:>8} {:>12} {:>12} {:>12} {:>9} {:>16}",
        "kill",
        "killed",
        "new root",
        "serving ms",
        "failover ms",
        "reattach ms",
        "rebuilt",
        "within subtrees"
    );
    for (i, r) in results.iter().enumerate() {
        println!(
            "{:>4} {:>7} {:>8} {:>12.0} {:>12.0} {:>12.0} {:>9} {:>16}",
            i + 1,
            r.killed,
            r.new_root,
            r.new_root_ms,
            r.failover_ms,
            r.reattach_ms,
            r.subtrees_rebuilt,
            r.delivered_within_subtrees
        );
    }
    let summary = serde_json::json!({
        "kills": results.len(),
        "candidates": args.candidates,
        "routers": args.routers,
        "clients": args.clients,
        "failover_ms_p50": percentile(&failover, 0.50),
        "failover_ms_p99": percentile(&failover, 0.99),
        "reattach_ms_p50": percentile(&reattach, 0.50),
        "reattach_ms_p99": percentile(&reattach, 0.99),
        "subtrees_rebuilt": rebuilt,
        "delivered_within_subtrees_during_failover": results.iter().map(|r| r.delivered_within_subtrees).sum::<u64>(),
        "per_kill": results,
    });
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "failover p50 {:.0} ms, p99 {:.0} ms; reattach p50 {:.0} ms, p99 {:.0} ms; {} links below the root changed",
            summary["failover_ms_p50"].as_f64().unwrap_or(f64::NAN),
            summary["failover_ms_p99"].as_f64().unwrap_or(f64::NAN),
            summary["reattach_ms_p50"].as_f64().unwrap_or(f64::NAN),
            summary["reattach_ms_p99"].as_f64().unwrap_or(f64::NAN),
            rebuilt
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn drive(cluster: &mut LocalCluster, args: &FailoverArgs) -> anyhow::Result<Vec<KillResult>> {
    let candidates: Vec<NodeId> = cluster.candidates().iter().map(|c| c.id).collect();
    let tag = key_tag(cluster.name(), "failover");
    let progress = ProgressBar::new((args.kills + 1) as u64).with_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress.set_message("building the tree");
    cluster.wait_for_root(Duration::from_secs(20)).await?;
    for _ in 0..args.routers {
        cluster.add_router().await?;
    }
    cluster
        .wait_for_tree(1 + args.routers, Duration::from_secs(30), |_, _| {})
        .await
        .map_err(anyhow::Error::msg)?;
    let mut publishers = Vec::new();
    for _ in 0..args.clients {
        publishers.push(cluster.add_client(vec![tag]).await?.handle);
    }
    cluster
        .wait_for_tree(
            1 + args.routers + args.clients,
            Duration::from_secs(60),
            |_, _| {},
        )
        .await
        .map_err(anyhow::Error::msg)?;
    progress.inc(1);
    let base = Instant::now();
    let interval = Duration::from_millis(args.interval_ms.max(1));
    let publishing = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        for turn in 0usize.. {
            tick.tick().await;
            let mut payload = BytesMut::with_capacity(16);
            payload.put_u64(base.elapsed().as_nanos() as u64);
            payload.put_u64(turn as u64);
            let publisher = &publishers[turn % publishers.len()];
            publisher.publish(tag, Bytes::from(payload)).await;
        }
    });
    let mut results = Vec::new();
    let outcome = async {
        for kill in 1..=args.kills {
            progress.set_message(format!("kill {kill}: waiting for the new root"));
            let result = kill_once(cluster, &candidates, base).await?;
            progress.set_message(format!(
                "kill {kill}: restarting candidate {}",
                result.killed
            ));
            cluster
                .restart_candidate(result.killed)
                .await
                .with_context(|| format!("restarting candidate {}", result.killed))?;
            // Let the restarted candidate rejoin the group before the next kill.
            tokio::time::sleep(Duration::from_secs(2)).await;
            results.push(result);
            progress.inc(1);
        }
        anyhow::Ok(())
    }
    .await;
    publishing.abort();
    progress.finish_and_clear();
    outcome?;
    Ok(results)
}
