//! The seed's Figs. 2 and 3: random router and client joins (in expectation 10 % routers)
//! followed by random drop-outs until only the root is left, sampled over time: the largest
//! imbalance between sibling subtrees, the mean client distance from the root, and how many
//! nodes and clients are in the tree.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use canopy_tree::{NodeId, Role, Time, TreeConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::plot::{write_stacked, LineChart, Series};
use super::{Figure, FigureOptions};
use crate::congestion::Progress;
use crate::{LatencyModel, Sim};

#[derive(Debug, Clone, Serialize)]
pub struct ChurnSample {
    pub seconds: f64,
    /// Nodes attached to the tree (the root included).
    pub nodes: usize,
    pub clients: usize,
    /// Over routers with two or more child routers: the most clients in one child router's
    /// subtree minus the fewest (the seed's binary-tree definition, generalised).
    pub max_imbalance: u64,
    /// Mean hops from the root over attached clients.
    pub mean_client_depth: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChurnRun {
    pub joins: usize,
    pub routers: usize,
    pub seed: u64,
    pub samples: Vec<ChurnSample>,
    /// Every sample's tree passed the structural checks.
    pub sound: bool,
}

/// Joins over the first 60 s, drop-outs (crashes) over 90–150 s, sampled every 0.5 s.
pub fn run(joins: usize, seed: u64, progress: &mut dyn FnMut(Progress)) -> ChurnRun {
    let config = TreeConfig {
        max_child_routers: 2,
        max_clients: 8,
        ..TreeConfig::default()
    };
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut sim = Sim::new(config, LatencyModel::default(), seed);
    sim.add_node(Role::Root, "", Time::ZERO);
    let mut members = Vec::new();
    let mut routers = 0;
    for i in 0..joins {
        let role = if rng.random::<f64>() < 0.1 {
            routers += 1;
            Role::Router
        } else {
            Role::Client
        };
        let at = Duration::from_secs(1) + Duration::from_secs(59).mul_f64(i as f64 / joins as f64);
        members.push(sim.add_node(role, "", at));
    }
    // Drop-outs in random order, evenly spread.
    for i in (1..members.len()).rev() {
        members.swap(i, rng.random_range(0..=i));
    }
    let mut crashes: Vec<(Time, NodeId)> = members
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let at = Duration::from_secs(90)
                + Duration::from_secs(60).mul_f64(i as f64 / members.len() as f64);
            (at, id)
        })
        .collect();
    crashes.reverse();
    let end = Duration::from_secs(165);
    let step = Duration::from_millis(500);
    let mut samples = Vec::new();
    let mut sound = true;
    while sim.now() < end {
        let next = sim.now() + step;
        while crashes.last().is_some_and(|&(at, _)| at <= next) {
            if let Some((at, id)) = crashes.pop() {
                sim.run_until(at);
                sim.crash(id);
            }
        }
        sim.run_until(next);
        let (sample, ok) = sample(&sim);
        sound &= ok;
        samples.push(sample);
        progress(Progress {
            phase: "churn",
            done: sim.now().as_millis() as u64,
            total: end.as_millis() as u64,
        });
    }
    ChurnRun {
        joins,
        routers,
        seed,
        samples,
        sound,
    }
}

/// One sample of the tree; the bool says whether parent pointers formed a tree (no node is
/// its own ancestor).
fn sample(sim: &Sim) -> (ChurnSample, bool) {
    let nodes: HashMap<NodeId, (Role, Option<NodeId>)> = sim
        .live_nodes()
        .map(|n| (n.id(), (n.role(), n.parent())))
        .collect();
    // Depth of each node whose parent chain reaches the root; None for the unattached.
    let mut depth: HashMap<NodeId, Option<u32>> = HashMap::new();
    let mut sound = true;
    for &id in nodes.keys() {
        // `chain` holds the nodes walked, farthest first, below `at`.
        let mut chain = Vec::new();
        let mut at = id;
        let reached = loop {
            if let Some(&known) = depth.get(&at) {
                break known;
            }
            match nodes.get(&at) {
                Some((Role::Root, _)) => {
                    depth.insert(at, Some(0));
                    break Some(0);
                }
                Some((_, Some(parent))) if chain.len() < nodes.len() => {
                    chain.push(at);
                    at = *parent;
                }
                Some((_, Some(_))) => {
                    sound = false;
                    break None;
                }
                _ => break None,
            }
        };
        let len = chain.len();
        for (k, node) in chain.into_iter().enumerate() {
            depth.insert(node, reached.map(|d| d + (len - k) as u32));
        }
    }
    let attached = |id: &NodeId| depth.get(id).copied().flatten().is_some();
    // Clients per subtree, added up the parent chain.
    let mut subtree_clients: HashMap<NodeId, u64> = HashMap::new();
    let mut client_depths = Vec::new();
    for (&id, &(role, _)) in nodes.iter().filter(|(id, _)| attached(id)) {
        if role != Role::Client {
            continue;
        }
        client_depths.push(f64::from(depth[&id].unwrap_or(0)));
        let mut at = nodes[&id].1;
        while let Some(p) = at {
            *subtree_clients.entry(p).or_insert(0) += 1;
            at = nodes.get(&p).and_then(|n| n.1);
        }
    }
    let mut child_routers: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    for (&id, &(role, parent)) in nodes.iter().filter(|(id, _)| attached(id)) {
        if let (Role::Router, Some(p)) = (role, parent) {
            child_routers.entry(p).or_default().push(id);
        }
    }
    let max_imbalance = child_routers
        .values()
        .filter(|kids| kids.len() >= 2)
        .map(|kids| {
            let loads = kids
                .iter()
                .map(|k| subtree_clients.get(k).copied().unwrap_or(0));
            loads.clone().max().unwrap_or(0) - loads.min().unwrap_or(0)
        })
        .max()
        .unwrap_or(0);
    let sample = ChurnSample {
        seconds: sim.now().as_secs_f64(),
        nodes: nodes.keys().filter(|id| attached(id)).count(),
        clients: client_depths.len(),
        max_imbalance,
        mean_client_depth: super::mean(&client_depths),
    };
    (sample, sound)
}

fn runs(options: &FigureOptions, progress: &mut dyn FnMut(Progress)) -> Vec<ChurnRun> {
    let sizes: &[usize] = if options.quick { &[35] } else { &[35, 350] };
    sizes
        .iter()
        .map(|&joins| run(joins, options.seed, progress))
        .collect()
}

/// The metric over time above, the node count below (their scales differ tenfold).
fn chart(
    runs: &[ChurnRun],
    title: &str,
    svg: &Path,
    metric: (&str, fn(&ChurnSample) -> f64),
    count: (&str, fn(&ChurnSample) -> f64),
) -> Result<(), String> {
    let lines = |(name, f): (&str, fn(&ChurnSample) -> f64)| {
        runs.iter()
            .map(|run| Series {
                label: format!("{name}, {} joins", run.joins),
                points: run.samples.iter().map(|s| (s.seconds, f(s))).collect(),
            })
            .collect::<Vec<_>>()
    };
    let x_label = "seconds (joins 1–60 s, drop-outs 90–150 s)";
    let above = LineChart {
        title,
        x_label,
        y_label: metric.0,
        log_x: false,
        log_y: false,
        series: lines(metric),
    };
    let below = LineChart {
        title: "",
        y_label: count.0,
        series: lines(count),
        ..above
    };
    write_stacked(&[&above, &below], 480, svg)
}

fn table(
    runs: &[ChurnRun],
    (count_name, count): (&str, fn(&ChurnSample) -> usize),
    (column, f): (&str, fn(&ChurnSample) -> String),
) -> String {
    let headers: Vec<String> = runs
        .iter()
        .map(|r| format!("{count_name} ({0} joins) | {column} ({0} joins)", r.joins))
        .collect();
    let mut md = format!("| seconds | {} |\n|---:|", headers.join(" | "));
    md.push_str(&"---:|".repeat(runs.len() * 2));
    md.push('\n');
    let rows = runs.iter().map(|r| r.samples.len()).min().unwrap_or(0);
    for i in (0..rows).step_by(10) {
        let _ = write!(md, "| {:.1} |", runs[0].samples[i].seconds);
        for r in runs {
            let s = &r.samples[i];
            let _ = write!(md, " {} | {} |", count(s), f(s));
        }
        md.push('\n');
    }
    for r in runs {
        let _ = writeln!(
            md,
            "\n{} joins (seed {}): {} routers, the rest clients; every 5 s shown, every 0.5 s in the JSON.",
            r.joins, r.seed, r.routers
        );
    }
    md
}

pub fn imbalance(
    options: &FigureOptions,
    svg: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Figure, String> {
    let runs = runs(options, progress);
    chart(
        &runs,
        "Largest sibling-subtree imbalance (clients), and nodes in the tree",
        svg,
        ("max imbalance", |s| s.max_imbalance as f64),
        ("nodes", |s| s.nodes as f64),
    )?;
    let md = table(
        &runs,
        ("nodes", |s| s.nodes),
        ("max imbalance", |s| s.max_imbalance.to_string()),
    );
    let held = runs.iter().all(|r| r.sound);
    Figure::new(&runs, md, held)
}

pub fn depth(
    options: &FigureOptions,
    svg: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Figure, String> {
    let runs = runs(options, progress);
    chart(
        &runs,
        "Mean client distance from the root (hops), and clients in the tree",
        svg,
        ("mean client depth", |s| s.mean_client_depth),
        ("clients", |s| s.clients as f64),
    )?;
    let md = table(
        &runs,
        ("clients", |s| s.clients),
        ("mean client depth", |s| {
            format!("{:.2}", s.mean_client_depth)
        }),
    );
    let held = runs.iter().all(|r| r.sound);
    Figure::new(&runs, md, held)
}
