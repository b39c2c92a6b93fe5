//! The failover experiment: a tree under a replicated root, the leader killed (or paused)
//! again and again while clients publish, and what each failover cost: virtual time to a
//! serving root, which nodes reattached, which links below the root's children changed, and
//! whether every multicast published within a subtree was delivered meanwhile.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use canopy_tree::{check_structure, Input, NodeId, NodeSummary, Role, Time, TreeConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::congestion::{Progress, EXPERIMENT_TAG};
use crate::group::GroupSpec;
use crate::{LatencyModel, Sim};

/// What happens to the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    /// The leader dies (and is restarted as a follower after the round).
    Kill,
    /// The leader is paused for `--pause-ms` and then wakes up.
    Pause,
}

/// The experiment's settings (also the `failover` command's flags).
#[derive(Debug, Clone, clap::Args)]
pub struct FailoverParams {
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Routers (default: enough for three quarters of their client capacity).
    #[arg(long)]
    pub routers: Option<usize>,
    #[arg(long, default_value_t = 3)]
    pub candidates: usize,
    #[arg(long, default_value_t = 5)]
    pub kills: usize,
    #[arg(long, value_enum, default_value_t = Fault::Kill)]
    pub fault: Fault,
    /// How long a paused leader stays paused.
    #[arg(long, default_value_t = 2000)]
    pub pause_ms: u64,
    /// From a proposal to its commit in the simulated root group.
    #[arg(long, default_value_t = 2)]
    pub commit_delay_ms: u64,
    /// Fraction of clients subscribed to the published key.
    #[arg(long, default_value_t = 0.01)]
    pub interest_fraction: f64,
    /// Milliseconds between publishes during a failover.
    #[arg(long, default_value_t = 25)]
    pub publish_every_ms: u64,
    /// How long each round watches after the fault (it must outlast the orphan grace, so a
    /// late removal is seen).
    #[arg(long)]
    pub window_ms: Option<u64>,
    #[arg(long, default_value_t = 4)]
    pub max_child_routers: usize,
    #[arg(long, default_value_t = 64)]
    pub max_clients: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// One failover.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Round {
    pub old_root: NodeId,
    pub new_root: NodeId,
    /// Virtual time from the fault to a new candidate serving as root.
    pub serving_ms: f64,
    /// Virtual time from the fault to every live child of the old root attached to the new.
    pub reattached_ms: f64,
    /// Nodes whose parent changed (the old root's children, moving to the new root).
    pub reattached: usize,
    /// Links below the root's children that changed (parent or assignment id): the goal is 0.
    pub links_changed_below: usize,
    pub within_owed: u64,
    pub within_delivered: u64,
    pub across_owed: u64,
    pub across_delivered: u64,
    pub duplicates: u64,
    /// Most candidates acting as root at once (sampled every 5 ms of virtual time).
    pub max_concurrent_roots: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailoverResult {
    pub clients: usize,
    pub routers: usize,
    pub candidates: usize,
    pub fault: Fault,
    pub rounds: Vec<Round>,
    /// Root actions by a candidate the group did not consider its leader: the goal is 0.
    pub stale_root_actions: u64,
    pub elections: u64,
    pub events: u64,
    pub sim_seconds: f64,
}

impl FailoverResult {
    /// Whether the run met the experiment's goals: nothing below the root's children moved,
    /// every multicast within a subtree arrived, no duplicates, never two acting roots, no
    /// action by a deposed root.
    pub fn goals_met(&self) -> bool {
        self.stale_root_actions == 0
            && self.rounds.iter().all(|r| {
                r.links_changed_below == 0
                    && r.within_delivered == r.within_owed
                    && r.duplicates == 0
                    && r.max_concurrent_roots <= 1
                    && r.serving_ms.is_finite()
            })
    }
}

fn config(params: &FailoverParams) -> TreeConfig {
    TreeConfig {
        max_child_routers: params.max_child_routers,
        max_clients: params.max_clients,
        ..TreeConfig::default()
    }
}

/// (parent, parent assignment) of every live non-candidate node.
fn links(sim: &Sim, candidates: NodeId) -> HashMap<NodeId, (Option<NodeId>, Option<u64>)> {
    sim.live_nodes()
        .filter(|n| n.id() > candidates)
        .map(|n| (n.id(), (n.parent(), n.parent_assignment())))
        .collect()
}

/// The child of the root whose subtree holds each node (the root's children map to
/// themselves).
fn tops(
    links: &HashMap<NodeId, (Option<NodeId>, Option<u64>)>,
    root: NodeId,
) -> HashMap<NodeId, NodeId> {
    let mut top = HashMap::with_capacity(links.len());
    for &id in links.keys() {
        let mut current = id;
        for _ in 0..64 {
            match links.get(&current).and_then(|l| l.0) {
                Some(parent) if parent == root => {
                    top.insert(id, current);
                    break;
                }
                Some(parent) => current = parent,
                None => break,
            }
        }
    }
    top
}

fn same_subtree(top: &HashMap<NodeId, NodeId>, a: NodeId, b: NodeId) -> bool {
    top.get(&a).is_some_and(|ta| top.get(&b) == Some(ta))
}

/// Checks the live tree's structure under the serving root (followers are left out).
pub fn check(
    sim: &Sim,
    root: NodeId,
    candidates: NodeId,
) -> Result<canopy_tree::TreeShape, String> {
    let summaries: Vec<NodeSummary> = sim
        .live_nodes()
        .filter(|n| n.id() > candidates || n.id() == root)
        .map(|n| n.summary())
        .collect();
    check_structure(&summaries, root)
}

/// Runs the experiment.
pub fn run(
    params: &FailoverParams,
    progress: &mut dyn FnMut(Progress),
) -> Result<FailoverResult, String> {
    if params.candidates < 3 {
        return Err("--candidates must be at least 3 to survive a fault".into());
    }
    let config = config(params);
    config.validate().map_err(|e| e.to_string())?;
    let ms = Duration::from_millis;
    let mut rng = SmallRng::seed_from_u64(params.seed);
    let spec = GroupSpec {
        commit_delay: ms(params.commit_delay_ms),
        ..GroupSpec::lan(params.candidates)
    };
    let mut sim = Sim::replicated(config.clone(), LatencyModel::default(), params.seed, spec);
    let candidates = params.candidates as NodeId;
    for _ in 0..params.candidates {
        sim.add_node(Role::Root, "", Time::ZERO);
    }
    let routers = params
        .routers
        .unwrap_or_else(|| params.clients.div_ceil(params.max_clients * 3 / 4).max(1));
    for _ in 0..routers {
        sim.add_node(
            Role::Router,
            "",
            ms(10) + ms(1000).mul_f64(rng.random::<f64>()),
        );
    }
    let clients_start = ms(1500);
    let join_span = ms(1000).max(ms((params.clients / 500) as u64));
    let mut interested = HashSet::new();
    let mut clients = Vec::with_capacity(params.clients);
    for _ in 0..params.clients {
        let at = clients_start + join_span.mul_f64(rng.random::<f64>());
        let id = sim.add_node(Role::Client, "", at);
        if rng.random::<f64>() < params.interest_fraction {
            sim.input_at(id, Input::Subscribe(EXPERIMENT_TAG), Time::ZERO);
            interested.insert(id);
        }
        clients.push(id);
    }
    let settled = clients_start + join_span + config.heartbeat_interval * 4;
    step_until(&mut sim, settled, "building", progress);
    let window = params
        .window_ms
        .map(ms)
        .unwrap_or(config.orphan_grace + config.rebalance_interval + ms(500));
    let mut rounds = Vec::new();
    let mut seqs: HashMap<NodeId, u64> = HashMap::new();
    for round in 0..params.kills {
        let (leader, _) = sim.group_leader().ok_or("the group has no leader")?;
        if !sim.node(leader).is_some_and(|n| n.is_serving_root()) {
            return Err(format!("round {round}: leader {leader} does not serve"));
        }
        check(&sim, leader, candidates)?;
        let before = links(&sim, candidates);
        let top = tops(&before, leader);
        let old_children: Vec<NodeId> = before
            .iter()
            .filter(|(_, l)| l.0 == Some(leader))
            .map(|(&id, _)| id)
            .collect();
        sim.take_deliveries();
        let fault_at = sim.now();
        match params.fault {
            Fault::Kill => sim.crash(leader),
            Fault::Pause => sim.pause(leader),
        }
        // Publishes during the failover, from random clients.
        let mut published: HashMap<(NodeId, u64), NodeId> = HashMap::new();
        let mut owed = (0u64, 0u64);
        let publishing = ms(1000).max(ms(params.publish_every_ms));
        let count = (publishing.as_millis() / u128::from(params.publish_every_ms.max(1))) as u32;
        for i in 0..count {
            let origin = clients[rng.random_range(0..clients.len())];
            let seq = seqs.entry(origin).or_insert(0);
            *seq += 1;
            published.insert((origin, *seq), origin);
            for &receiver in &interested {
                if receiver == origin {
                    continue;
                }
                if same_subtree(&top, origin, receiver) {
                    owed.0 += 1;
                } else {
                    owed.1 += 1;
                }
            }
            let publish = Input::Publish {
                key_tag: EXPERIMENT_TAG,
                payload: Bytes::from_static(b"failover"),
            };
            sim.input_at(origin, publish, fault_at + ms(params.publish_every_ms) * i);
        }
        let mut seen = HashSet::new();
        let (mut within, mut across, mut duplicates) = (0u64, 0u64, 0u64);
        let (mut serving, mut reattached_at, mut new_root) = (None, None, None);
        let mut max_roots = 0usize;
        let end = fault_at + window;
        let mut resumed = params.fault == Fault::Kill;
        while sim.now() < end {
            if !resumed && sim.now() >= fault_at + ms(params.pause_ms) {
                // What waited for it is handed over by the next step, before anything is
                // sampled: a woken leader's first act decides whether it acts as root.
                sim.resume(leader);
                resumed = true;
            }
            sim.run_until((sim.now() + ms(5)).min(end));
            let acting = sim.acting_roots();
            max_roots = max_roots.max(acting.len());
            if serving.is_none() {
                if let Some(&root) = acting.iter().find(|&&r| r != leader) {
                    serving = Some(sim.now() - fault_at);
                    new_root = Some(root);
                }
            }
            if let (Some(root), None) = (new_root, reattached_at) {
                let home = old_children
                    .iter()
                    .filter(|&&c| sim.is_alive(c))
                    .all(|&c| sim.node(c).and_then(|n| n.parent()) == Some(root));
                if home {
                    reattached_at = Some(sim.now() - fault_at);
                }
            }
            for d in sim.take_deliveries() {
                if !published.contains_key(&(d.origin, d.origin_seq)) {
                    continue;
                }
                if !seen.insert((d.origin, d.origin_seq, d.receiver)) {
                    duplicates += 1;
                } else if same_subtree(&top, d.origin, d.receiver) {
                    within += 1;
                } else {
                    across += 1;
                }
            }
            progress(Progress {
                phase: "failover",
                done: (round as u64) * window.as_millis() as u64
                    + (sim.now() - fault_at).as_millis() as u64,
                total: params.kills as u64 * window.as_millis() as u64,
            });
        }
        let new_root = new_root.ok_or_else(|| format!("round {round}: no new root"))?;
        let after = links(&sim, candidates);
        let mut reattached = 0;
        let mut changed_below = 0;
        for (id, link) in &before {
            let Some(now) = after.get(id) else {
                continue;
            };
            if now != link {
                if link.0 == Some(leader) {
                    reattached += 1;
                } else {
                    changed_below += 1;
                }
            }
        }
        check(&sim, new_root, candidates)?;
        let millis = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
        rounds.push(Round {
            old_root: leader,
            new_root,
            serving_ms: millis(serving),
            reattached_ms: millis(reattached_at),
            reattached,
            links_changed_below: changed_below,
            within_owed: owed.0,
            within_delivered: within,
            across_owed: owed.1,
            across_delivered: across,
            duplicates,
            max_concurrent_roots: max_roots,
        });
        if params.fault == Fault::Kill {
            sim.restart(leader);
            let until = sim.now() + ms(1000);
            step_until(&mut sim, until, "restarting", progress);
        }
    }
    Ok(FailoverResult {
        clients: params.clients,
        routers,
        candidates: params.candidates,
        fault: params.fault,
        rounds,
        stale_root_actions: sim.stale_root_actions(),
        elections: sim.elections(),
        events: sim.events_processed(),
        sim_seconds: sim.now().as_secs_f64(),
    })
}

fn step_until(sim: &mut Sim, until: Time, phase: &'static str, progress: &mut dyn FnMut(Progress)) {
    let start = sim.now();
    let total = until.saturating_sub(start).as_millis() as u64;
    while sim.now() < until {
        sim.run_until((sim.now() + Duration::from_millis(50)).min(until));
        progress(Progress {
            phase,
            done: sim.now().saturating_sub(start).as_millis() as u64,
            total,
        });
    }
}

/// The rounds as a markdown table, with the run's totals.
pub fn markdown_table(result: &FailoverResult) -> String {
    let mut table = format!(
        "{} clients, {} routers, {} candidates, fault: {:?}; {} elections, {} root actions by a deposed leader, {:.0} s simulated, {} events\n\n",
        result.clients,
        result.routers,
        result.candidates,
        result.fault,
        result.elections,
        result.stale_root_actions,
        result.sim_seconds,
        result.events
    );
    table.push_str("| round | old root | new root | serving ms | reattached ms | reattached | links changed below | within subtree delivered / owed | across delivered / owed | duplicates | max acting roots |\n");
    table.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (i, r) in result.rounds.iter().enumerate() {
        table.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.1} | {} | {} | {} / {} | {} / {} | {} | {} |\n",
            i + 1,
            r.old_root,
            r.new_root,
            r.serving_ms,
            r.reattached_ms,
            r.reattached,
            r.links_changed_below,
            r.within_delivered,
            r.within_owed,
            r.across_delivered,
            r.across_owed,
            r.duplicates,
            r.max_concurrent_roots
        ));
    }
    table
}
