//! The congestion experiment of the design this project follows: build a tree (or a star,
//! the seed design's baseline in which the root unicasts to every client), publish
//! multicasts from random clients and count the messages every node handles.

use std::time::Duration;

use bytes::Bytes;
use canopy_tree::{Input, NodeId, Time, TreeConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::network::{self, Network};
use crate::tally::{DeliveryCounts, Tally};
use crate::Sim;

/// The key tag every interested client subscribes to.
pub const EXPERIMENT_TAG: u64 = 0x5EED_CAFE_F00D_0001;

/// Which layout to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// Routers between the root and the clients, as the protocol builds it.
    Tree,
    /// No routers: every client is a child of the root.
    Star,
}

/// One experiment's settings (also the `congestion` command's flags).
#[derive(Debug, Clone, clap::Args)]
pub struct CongestionParams {
    #[arg(long)]
    pub clients: usize,
    #[arg(long)]
    pub routers: usize,
    #[arg(long, default_value_t = 4)]
    pub max_child_routers: usize,
    #[arg(long, default_value_t = 64)]
    pub max_clients: usize,
    #[arg(long, default_value_t = 20)]
    pub multicasts: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Fraction of clients subscribed to the experiment's key.
    #[arg(long, default_value_t = 1.0)]
    pub interest_fraction: f64,
}

/// Measurements of one topology.
#[derive(Debug, Clone, Serialize)]
pub struct CongestionResult {
    pub topology: Topology,
    pub root_msgs_per_multicast: f64,
    pub max_node_msgs_per_multicast: f64,
    pub total_msgs_per_multicast: f64,
    /// Deliveries to interested clients (each client counted once per multicast).
    pub delivered: u64,
    /// Deliveries owed: interested live clients other than the publisher, per multicast.
    pub expected: u64,
    /// Copies delivered more than once to one client.
    pub duplicates: u64,
    /// Deliveries to clients that did not want the key (must be 0).
    pub unwanted: u64,
    pub tree_depth: usize,
    pub sim_seconds: f64,
    pub events: u64,
}

/// Progress of a running experiment, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub phase: &'static str,
    pub done: u64,
    pub total: u64,
}

/// Tree settings used by the experiment.
pub fn experiment_config(params: &CongestionParams) -> TreeConfig {
    TreeConfig {
        max_child_routers: params.max_child_routers,
        max_clients: params.max_clients,
        ..TreeConfig::default()
    }
}

/// Runs the experiment for one topology.
pub fn run(
    params: &CongestionParams,
    topology: Topology,
    progress: &mut dyn FnMut(Progress),
) -> Result<CongestionResult, String> {
    let mut rng = SmallRng::seed_from_u64(params.seed);
    let routers = match topology {
        Topology::Tree => params.routers,
        Topology::Star => 0,
    };
    let mut interested: Vec<bool> = Vec::with_capacity(params.clients);
    let mut subscribe = |sim: &mut Sim, id: NodeId, rng: &mut SmallRng| {
        let wants = rng.random::<f64>() < params.interest_fraction;
        if wants {
            sim.input_at(id, Input::Subscribe(EXPERIMENT_TAG), Time::ZERO);
        }
        interested.push(wants);
    };
    let Network {
        mut sim,
        clients,
        shape,
    } = network::build(
        experiment_config(params),
        params.seed,
        (routers, params.clients),
        &mut rng,
        &mut subscribe,
        progress,
    )?;
    let clients: Vec<(NodeId, bool)> = clients.iter().map(|&(_, id)| id).zip(interested).collect();
    let ms = Duration::from_millis;
    let settled = sim.now();

    sim.reset_counters();
    sim.take_deliveries();
    let gap = ms(20);
    let max_node = sim.node_ids().max().unwrap_or(1);
    let mut tally = Tally::new(max_node);
    for &(id, interested) in &clients {
        if interested {
            tally.join_group(id, 0);
        }
    }
    let mut publishes_by_origin: std::collections::HashMap<NodeId, u64> = Default::default();
    for i in 0..params.multicasts {
        let (publisher, _) = clients[rng.random_range(0..clients.len())];
        let seq = publishes_by_origin.entry(publisher).or_insert(0);
        *seq += 1;
        tally.owe(publisher, *seq, 0);
        let at = settled + gap * (i as u32 + 1);
        let payload = Bytes::from(format!("multicast {i}"));
        let publish = Input::Publish {
            key_tag: EXPERIMENT_TAG,
            payload,
        };
        sim.input_at(publisher, publish, at);
    }
    let end = settled + gap * (params.multicasts as u32 + 1) + ms(500);
    let start = sim.now();
    while sim.now() < end {
        sim.run_until((sim.now() + ms(20)).min(end));
        tally.absorb(sim.take_deliveries());
        progress(Progress {
            phase: "multicasting",
            done: sim.now().saturating_sub(start).as_millis() as u64,
            total: end.saturating_sub(start).as_millis() as u64,
        });
    }
    let DeliveryCounts {
        delivered,
        expected,
        duplicates,
        unwanted,
    } = tally.counts();
    let multicasts = params.multicasts.max(1) as f64;
    let mut max_node = 0u64;
    let mut total = 0u64;
    for id in sim.node_ids() {
        let count = sim.counters(id).multicast_total();
        max_node = max_node.max(count);
        total += count;
    }
    Ok(CongestionResult {
        topology,
        root_msgs_per_multicast: sim.counters(1).multicast_total() as f64 / multicasts,
        max_node_msgs_per_multicast: max_node as f64 / multicasts,
        total_msgs_per_multicast: total as f64 / multicasts,
        delivered,
        expected,
        duplicates,
        unwanted,
        tree_depth: shape.depth,
        sim_seconds: sim.now().as_secs_f64(),
        events: sim.events_processed(),
    })
}

pub(crate) fn run_in_steps(
    sim: &mut Sim,
    until: Time,
    phase: &'static str,
    progress: &mut dyn FnMut(Progress),
) {
    let start = sim.now();
    let total = until.saturating_sub(start).as_millis() as u64;
    let step = Duration::from_millis(50);
    while sim.now() < until {
        sim.run_until((sim.now() + step).min(until));
        progress(Progress {
            phase,
            done: sim.now().saturating_sub(start).as_millis() as u64,
            total,
        });
    }
}
