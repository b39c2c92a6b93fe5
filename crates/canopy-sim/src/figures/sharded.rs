//! The seed's Fig. 6: a "sharded broadcast domain" (every client a child of the root, one
//! filter per link) against the tree, over network sizes, with a workload of 16 working
//! sets; the unsharded star (every client wants every write) for scale.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::plot::{LineChart, Panel as _, Series};
use super::{Figure, FigureOptions};
use crate::congestion::{Progress, Topology};
use crate::working_sets::{self, Allocation, WorkloadParams, WorkloadResult};
use crate::workload::Workload;

#[derive(Debug, Clone, Serialize)]
pub struct ShardedPoint {
    pub clients: usize,
    pub broadcast_star: WorkloadResult,
    pub sharded_star: WorkloadResult,
    pub tree: WorkloadResult,
}

pub fn figure(
    options: &FigureOptions,
    svg: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Figure, String> {
    let sizes: &[usize] = if options.quick {
        &[100, 300, 1_000]
    } else {
        &[100, 300, 1_000, 3_000, 10_000, 30_000]
    };
    let sharded = Workload::new(16, 4);
    let mut points = Vec::new();
    for &clients in sizes {
        let params = |workload, topology| WorkloadParams {
            workload,
            clients,
            routers: clients.div_ceil(48),
            max_child_routers: 4,
            max_clients: 64,
            writes: 200,
            rate: 200.0,
            seed: options.seed,
            topology,
            upward_filters: false,
            allocation: Allocation::Spread,
            reallocate: false,
            warmup_s: 0.0,
        };
        points.push(ShardedPoint {
            clients,
            broadcast_star: working_sets::run(
                &params(Workload::new(1, 1), Topology::Star),
                progress,
            )?,
            sharded_star: working_sets::run(&params(sharded, Topology::Star), progress)?,
            tree: working_sets::run(&params(sharded, Topology::Tree), progress)?,
        });
    }
    let line = |label: &str, f: fn(&ShardedPoint) -> &WorkloadResult| Series {
        label: label.into(),
        points: points
            .iter()
            .map(|p| (p.clients as f64, f(p).congestion.root.max(0.1)))
            .collect(),
    };
    LineChart {
        title: "Root messages per write: star, sharded star, tree",
        x_label: "clients",
        y_label: "root multicast messages per write",
        log_x: true,
        log_y: true,
        series: vec![
            line("star, every client wants every write", |p| {
                &p.broadcast_star
            }),
            line("sharded star, W(16×4)", |p| &p.sharded_star),
            line("canopy tree, W(16×4)", |p| &p.tree),
        ],
    }
    .write(svg)?;
    let mut md = String::from(
        "| clients | root: star | root: sharded star | root: tree | busiest router: tree | all nodes: sharded star | all nodes: tree | delivered / owed (tree) |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for p in &points {
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} / {} |",
            p.clients,
            p.broadcast_star.congestion.root,
            p.sharded_star.congestion.root,
            p.tree.congestion.root,
            p.tree.congestion.router_max,
            p.sharded_star.congestion.all_total,
            p.tree.congestion.all_total,
            p.tree.deliveries.delivered,
            p.tree.deliveries.expected,
        );
    }
    md.push_str(
        "\nMessages per write (sent + received); the tree has one router per 48 clients.\n",
    );
    let held = points.iter().all(|p| {
        [&p.broadcast_star, &p.sharded_star, &p.tree]
            .iter()
            .all(|r| r.deliveries.exact())
    });
    Figure::new(&points, md, held)
}
