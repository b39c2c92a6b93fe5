//! One kill of the root leader and everything measured about it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canopy_node::local::LocalCluster;
use canopy_node::{Delivery, NodeStatus};
use canopy_tree::NodeId;
use serde::Serialize;

/// A publish the bench made: its turn number (in the payload), origin and time.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    pub turn: u64,
    pub origin: NodeId,
    pub at: Instant,
}

pub type PublishLog = Arc<Mutex<Vec<Published>>>;

/// What one kill cost.
#[derive(Debug, Clone, Serialize)]
pub struct KillResult {
    pub killed: NodeId,
    pub new_root: NodeId,
    /// Kill to a new candidate serving as root (vote lease, election, committing `NewRoot`).
    pub serving_ms: f64,
    /// Kill to the first multicast published after the kill that crossed the new root.
    pub failover_ms: f64,
    /// Kill to every child of the old root attached under the new one.
    pub reattach_ms: f64,
    /// Children of the old root (they move to the new root, keeping their assignment's
    /// subtree).
    pub reattached: usize,
    /// Links below the root's children whose (parent, assignment id) changed between the
    /// kill and the end of the window: a subtree that was rebuilt. The goal is 0.
    pub subtrees_rebuilt: usize,
    /// Multicasts published from the kill until the old root's children were back.
    pub published: usize,
    /// Deliveries owed and made for them within the publisher's subtree (below one child of
    /// the root) and across the root.
    pub within_owed: u64,
    pub within_delivered: u64,
    pub across_owed: u64,
    pub across_delivered: u64,
    pub duplicates: u64,
}

/// (parent, parent assignment) of every live node that is not a candidate.
pub fn links(
    statuses: &[NodeStatus],
    candidates: &[NodeId],
) -> HashMap<NodeId, (Option<NodeId>, Option<u64>)> {
    statuses
        .iter()
        .filter(|s| !candidates.contains(&s.id))
        .map(|s| (s.id, (s.parent, s.parent_assignment)))
        .collect()
}

/// The child of the root whose subtree holds `node`.
fn top(links: &HashMap<NodeId, (Option<NodeId>, Option<u64>)>, node: NodeId) -> Option<NodeId> {
    let mut current = node;
    for _ in 0..=links.len() {
        match links.get(&current).map(|l| l.0) {
            Some(Some(parent)) if links.contains_key(&parent) => current = parent,
            Some(Some(_)) => return Some(current),
            _ => return None,
        }
    }
    None
}

fn turn_of(d: &Delivery) -> Option<u64> {
    let bytes: [u8; 8] = d.payload.get(8..16)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Kills the leader, watches until the old root's children are back and then for `window`
/// in all (it must outlast the orphan grace), and counts.
pub async fn kill_once(
    cluster: &mut LocalCluster,
    candidates: &[NodeId],
    subscribers: &[NodeId],
    log: &PublishLog,
    window: Duration,
) -> anyhow::Result<KillResult> {
    let leader = cluster.wait_for_root(Duration::from_secs(30)).await?;
    let before = links(&cluster.statuses().await, candidates);
    let orphans: Vec<NodeId> = before
        .iter()
        .filter(|(_, l)| l.0 == Some(leader))
        .map(|(&id, _)| id)
        .collect();
    cluster.take_deliveries();
    let killed_at = Instant::now();
    cluster.kill(leader).await;
    let (mut serving, mut reattach, mut new_root) = (None, None, None);
    let deadline = killed_at + Duration::from_secs(60);
    while reattach.is_none() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the old root's children were not back within 60 s (serving: {serving:?})"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        let statuses = cluster.statuses().await;
        let root = statuses.iter().find(|s| s.serving_root).map(|s| s.id);
        if serving.is_none() && root.is_some() {
            serving = Some(killed_at.elapsed());
        }
        if let Some(root) = root {
            let by_id: HashMap<NodeId, Option<NodeId>> =
                statuses.iter().map(|s| (s.id, s.parent)).collect();
            if orphans.iter().all(|o| by_id.get(o) == Some(&Some(root))) {
                reattach = Some(killed_at.elapsed());
                new_root = Some(root);
            }
        }
    }
    let failover_end = Instant::now();
    let watch_until = killed_at + window;
    let mut deliveries = Vec::new();
    while Instant::now() < watch_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        deliveries.extend(cluster.take_deliveries());
    }
    let after = links(&cluster.statuses().await, candidates);
    let rebuilt = before
        .iter()
        .filter(|(id, l)| l.0 != Some(leader) && after.get(id).is_some_and(|now| now != *l))
        .count();

    // Multicasts published during the failover, and what was owed for them.
    let published: Vec<Published> = log
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.at >= killed_at && p.at <= failover_end)
        .collect();
    let tops: HashMap<NodeId, Option<NodeId>> =
        subscribers.iter().map(|&s| (s, top(&before, s))).collect();
    let same_subtree = |a: NodeId, b: NodeId| {
        let (ta, tb) = (
            tops.get(&a).copied().flatten(),
            tops.get(&b).copied().flatten(),
        );
        ta.is_some() && ta == tb
    };
    let (mut within_owed, mut across_owed) = (0u64, 0u64);
    for p in &published {
        for &s in subscribers.iter().filter(|&&s| s != p.origin) {
            if same_subtree(p.origin, s) {
                within_owed += 1;
            } else {
                across_owed += 1;
            }
        }
    }
    let turns: HashMap<u64, &Published> = published.iter().map(|p| (p.turn, p)).collect();
    let mut seen = HashSet::new();
    let (mut within, mut across, mut duplicates) = (0u64, 0u64, 0u64);
    let mut failover = None;
    for d in &deliveries {
        let Some(p) = turn_of(d).and_then(|t| turns.get(&t)) else {
            continue;
        };
        if !seen.insert((p.turn, d.receiver)) {
            duplicates += 1;
            continue;
        }
        if same_subtree(p.origin, d.receiver) {
            within += 1;
        } else {
            across += 1;
        }
    }
    // The first crossing of any multicast published after the kill (also after the
    // failover period: with a fast failover the first crossing may come from a later one).
    let all: Vec<Published> = log.lock().map(|l| l.clone()).unwrap_or_default();
    let by_turn: HashMap<u64, Published> = all
        .into_iter()
        .filter(|p| p.at >= killed_at)
        .map(|p| (p.turn, p))
        .collect();
    for d in &deliveries {
        let Some(p) = turn_of(d).and_then(|t| by_turn.get(&t)) else {
            continue;
        };
        if !same_subtree(p.origin, d.receiver) {
            let at = d
                .received_at
                .into_std()
                .saturating_duration_since(killed_at);
            failover = Some(failover.map_or(at, |f: Duration| f.min(at)));
        }
    }
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    Ok(KillResult {
        killed: leader,
        new_root: new_root.unwrap_or(0),
        serving_ms: ms(serving),
        failover_ms: ms(failover),
        reattach_ms: ms(reattach),
        reattached: orphans.len(),
        subtrees_rebuilt: rebuilt,
        published: published.len(),
        within_owed,
        within_delivered: within,
        across_owed,
        across_delivered: across,
        duplicates,
    })
}
