//! The seed's interest-routing experiment (§8.3, Figs. 8–9): a W(S×K) workload on a tree
//! (or a sharded star: every client a child of the root, one filter per link), counting the
//! multicast messages each router handles. IR_r is the root and IR_0, IR_1 its two child
//! routers (the seed's Fig. 7 binary tree; the paper never defines the labels).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use canopy_tree::{Input, NodeId, Role, TreeConfig};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde::Serialize;

use crate::congestion::{run_in_steps, Progress, Topology};
use crate::network::{self, Network};
use crate::tally::{DeliveryCounts, Tally};
use crate::workload::{schedule_writes, Workload};
use crate::Sim;

/// How working sets are laid over the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Allocation {
    /// Round robin over workers in join order: a set's workers land all over the tree (the
    /// seed's static allocation).
    Spread,
    /// By an oracle that knows the tree: workers in tree order get sets in contiguous
    /// blocks, so a set's workers share a subtree where they fit (a local workload).
    Local,
}

/// One run's settings (also the `workload` command's flags).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkloadParams {
    /// W(S×K) as SxK: S mutually exclusive working sets of K keys.
    #[arg(long, default_value = "4x2")]
    pub workload: Workload,
    /// Clients, each running one worker.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Routers below the root (6 with 2 child routers each: the seed's height-3 binary tree).
    #[arg(long, default_value_t = 6)]
    pub routers: usize,
    #[arg(long, default_value_t = 2)]
    pub max_child_routers: usize,
    #[arg(long, default_value_t = 8)]
    pub max_clients: usize,
    /// Writes in all, after the tree has settled.
    #[arg(long, default_value_t = 2000)]
    pub writes: usize,
    /// Writes per second over all workers.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, value_enum, default_value = "tree")]
    pub topology: Topology,
    /// Routers keep multicasts below them when nobody outside wants their key (`false`: every
    /// multicast climbs to the root, as in the seed design).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub upward_filters: bool,
    #[arg(long, value_enum, default_value = "spread")]
    pub allocation: Allocation,
    /// The root moves clients next to the other writers of their keys, from the traffic
    /// it sees (cache-aware reallocation).
    #[arg(long)]
    pub reallocate: bool,
    /// Seconds of the same workload before counting starts (reallocation acts meanwhile).
    #[arg(long, default_value_t = 0.0)]
    pub warmup_s: f64,
}

impl WorkloadParams {
    pub fn validate(&self) -> Result<(), String> {
        if self.clients == 0 || self.writes == 0 {
            return Err("--clients and --writes must be at least 1".into());
        }
        if !(self.warmup_s.is_finite() && (0.0..=3600.0).contains(&self.warmup_s)) {
            return Err("--warmup-s must be between 0 and 3600".into());
        }
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err("--rate must be a positive number of writes per second".into());
        }
        Ok(())
    }
}

/// Multicast messages (sent + received) per write.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Congestion {
    /// IR_r: the root.
    pub root: f64,
    /// IR_0 and IR_1: the root's two child routers with the lowest ids (0 when absent).
    pub ir0: f64,
    pub ir1: f64,
    /// Every router, the root included.
    pub routers_total: f64,
    /// Every node, clients included.
    pub all_total: f64,
    /// Percentiles over routers (the root included).
    pub router_p50: f64,
    pub router_p90: f64,
    pub router_max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkloadResult {
    pub workload: String,
    pub topology: Topology,
    pub clients: usize,
    pub routers: usize,
    pub writes: usize,
    pub congestion: Congestion,
    pub deliveries: DeliveryCounts,
    pub tree_depth: usize,
    pub sim_seconds: f64,
    /// Clients the root moved (reallocation), over the whole run.
    pub moves: u64,
    /// What every parent keeps of its child links' interest at the end of the run.
    pub link_interest: LinkInterestMemory,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LinkInterestMemory {
    /// Tags held per link, summed over every link of the tree.
    pub entries: u64,
    pub bytes: u64,
}

impl LinkInterestMemory {
    fn of(sim: &Sim) -> Self {
        sim.node_ids()
            .filter_map(|id| sim.node(id))
            .fold(Self::default(), |sum, node| {
                let (entries, bytes) = node.child_interest_memory();
                LinkInterestMemory {
                    entries: sum.entries + entries as u64,
                    bytes: sum.bytes + bytes as u64,
                }
            })
    }

    pub fn bits_per_entry(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.entries.max(1) as f64
    }
}

pub fn config(params: &WorkloadParams) -> TreeConfig {
    TreeConfig {
        max_child_routers: params.max_child_routers,
        max_clients: params.max_clients,
        upward_filters: params.upward_filters,
        reallocate: params.reallocate,
        ..TreeConfig::default()
    }
}

/// Builds the network and returns it with its clients in join order.
pub(crate) fn build(
    params: &WorkloadParams,
    rng: &mut SmallRng,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Sim, Vec<NodeId>), String> {
    let routers = match params.topology {
        Topology::Tree => params.routers,
        Topology::Star => 0,
    };
    let Network {
        sim, mut clients, ..
    } = network::build(
        config(params),
        params.seed,
        (routers, params.clients),
        rng,
        &mut |_, _, _| {},
        progress,
    )?;
    clients.sort_unstable();
    Ok((sim, clients.into_iter().map(|(_, id)| id).collect()))
}

/// Runs one workload on one topology.
pub fn run(
    params: &WorkloadParams,
    progress: &mut dyn FnMut(Progress),
) -> Result<WorkloadResult, String> {
    params.validate()?;
    let mut rng = SmallRng::seed_from_u64(params.seed);
    let (mut sim, workers) = build(params, &mut rng, progress)?;
    let workload = params.workload;
    let max_node = sim.node_ids().max().unwrap_or(1);
    let mut tally = Tally::new(max_node);
    let sets = allocate(&sim, &workers, &workload, params.allocation);
    for (&worker, &set) in workers.iter().zip(&sets) {
        tally.join_group(worker, set);
        for tag in workload.set_tags(set) {
            sim.input_at(worker, Input::Subscribe(tag), sim.now());
        }
    }
    // Interest travels up in batched heartbeats: let it settle before writing.
    let writing_from = sim.now() + sim.config().heartbeat_interval * 3;
    run_in_steps(&mut sim, writing_from, "subscribing", progress);
    let warmup = Duration::from_secs_f64(params.warmup_s);
    let warmup_writes = (params.rate * params.warmup_s).round() as usize;
    let writes = schedule_writes(
        &workload,
        &sets,
        warmup_writes + params.writes,
        params.rate,
        writing_from,
        &mut rng,
    );
    // Counting starts just before the first counted write (the Poisson arrivals of the
    // warm-up need not end exactly on time).
    let counting_from = writes
        .get(warmup_writes)
        .map_or(writing_from + warmup, |w| {
            w.at.saturating_sub(Duration::from_micros(100))
        });
    let mut seqs: HashMap<NodeId, u64> = HashMap::new();
    for (i, write) in writes.iter().enumerate() {
        let origin = workers[write.worker];
        let seq = seqs.entry(origin).or_insert(0);
        *seq += 1;
        if i >= warmup_writes {
            tally.owe(origin, *seq, write.set);
        }
        let payload = Bytes::from(format!("write {i}"));
        let publish = Input::Publish {
            key_tag: write.tag,
            payload,
        };
        sim.input_at(origin, publish, write.at);
    }
    if warmup_writes > 0 {
        run_in_steps(&mut sim, counting_from, "warming up", progress);
        sim.run_until(counting_from);
    }
    sim.reset_counters();
    sim.take_deliveries();
    let last = writes.last().map_or(counting_from, |w| w.at);
    let end = last + Duration::from_millis(500);
    while sim.now() < end {
        sim.run_until((sim.now() + Duration::from_millis(50)).min(end));
        tally.absorb(sim.take_deliveries());
        progress(Progress {
            phase: "writing",
            done: sim.now().saturating_sub(counting_from).as_millis() as u64,
            total: end.saturating_sub(counting_from).as_millis() as u64,
        });
    }
    let shape = crate::check::check_tree(&sim)?;
    Ok(WorkloadResult {
        workload: workload.to_string(),
        topology: params.topology,
        clients: params.clients,
        routers: shape.routers,
        writes: params.writes,
        congestion: measure(&sim, params.writes),
        deliveries: tally.counts(),
        tree_depth: shape.depth,
        sim_seconds: sim.now().as_secs_f64(),
        moves: sim.reallocations(),
        link_interest: LinkInterestMemory::of(&sim),
    })
}

/// The working set of each worker, in the order of `workers`.
fn allocate(sim: &Sim, workers: &[NodeId], workload: &Workload, how: Allocation) -> Vec<u32> {
    match how {
        Allocation::Spread => (0..workers.len())
            .map(|i| workload.set_of_worker(i))
            .collect(),
        Allocation::Local => {
            // Tree order: by the chain of ancestors from the root down.
            let path = |mut id: NodeId| {
                let mut chain = vec![id];
                while let Some(parent) = sim.node(id).and_then(|n| n.parent()) {
                    chain.push(parent);
                    id = parent;
                }
                chain.reverse();
                chain
            };
            let mut order: Vec<(Vec<NodeId>, usize)> = workers
                .iter()
                .enumerate()
                .map(|(i, &w)| (path(w), i))
                .collect();
            order.sort();
            let mut sets = vec![0; workers.len()];
            let n = workers.len().max(1);
            for (rank, (_, i)) in order.into_iter().enumerate() {
                sets[i] = (rank * workload.sets as usize / n) as u32;
            }
            sets
        }
    }
}

/// Messages per write at the root, its first two child routers and over all routers.
pub(crate) fn measure(sim: &Sim, writes: usize) -> Congestion {
    let per_write = |count: u64| count as f64 / writes.max(1) as f64;
    let root = sim.node(1);
    let mut root_routers: Vec<NodeId> = root
        .map(|r| {
            r.children()
                .filter(|c| c.role == Role::Router)
                .map(|c| c.id)
                .collect()
        })
        .unwrap_or_default();
    root_routers.sort_unstable();
    let at = |i: usize| {
        root_routers
            .get(i)
            .map_or(0.0, |&id| per_write(sim.counters(id).multicast_total()))
    };
    let mut router_counts: Vec<u64> = sim
        .live_nodes()
        .filter(|n| n.role().is_router())
        .map(|n| sim.counters(n.id()).multicast_total())
        .collect();
    router_counts.sort_unstable();
    let percentile = |p: f64| {
        let index = ((router_counts.len() as f64 - 1.0) * p).round() as usize;
        router_counts.get(index).map_or(0.0, |&c| per_write(c))
    };
    let all: u64 = sim
        .live_nodes()
        .map(|n| sim.counters(n.id()).multicast_total())
        .sum();
    Congestion {
        root: per_write(sim.counters(1).multicast_total()),
        ir0: at(0),
        ir1: at(1),
        routers_total: per_write(router_counts.iter().sum()),
        all_total: per_write(all),
        router_p50: percentile(0.5),
        router_p90: percentile(0.9),
        router_max: percentile(1.0),
    }
}
