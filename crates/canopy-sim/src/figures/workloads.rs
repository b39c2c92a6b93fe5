//! The seed's Fig. 8: messages per write at IR_r, IR_0 and IR_1 for W(4×2), W(2×2), W(1×2)
//! and W(1×1) on the seed's height-3 binary tree, workers placed where they join.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::plot::BarChart;
use super::{mean, Figure, FigureOptions};
use crate::congestion::{Progress, Topology};
use crate::tally::DeliveryCounts;
use crate::working_sets::{self, Allocation, WorkloadParams};
use crate::workload::{Workload, SEED_WORKLOADS};

/// One workload's congestion, averaged over seeds.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadRow {
    pub workload: String,
    pub seeds: u64,
    pub ir_r: f64,
    pub ir_0: f64,
    pub ir_1: f64,
    pub routers_total: f64,
    pub all_total: f64,
    /// Summed over seeds.
    pub deliveries: DeliveryCounts,
}

/// The seed's Fig. 7 tree: a root, two routers below it and two below each of those, with
/// 32 workers.
pub fn seed_tree(workload: Workload, seed: u64, quick: bool) -> WorkloadParams {
    WorkloadParams {
        workload,
        clients: 32,
        routers: 6,
        max_child_routers: 2,
        max_clients: 8,
        writes: if quick { 300 } else { 2000 },
        rate: 500.0,
        seed,
        topology: Topology::Tree,
        upward_filters: false,
        allocation: Allocation::Spread,
        reallocate: false,
        warmup_s: 0.0,
    }
}

/// Runs every seed workload with `params_for` and averages over seeds.
pub fn rows(
    options: &FigureOptions,
    progress: &mut dyn FnMut(Progress),
    mut run: impl FnMut(
        Workload,
        u64,
        &mut dyn FnMut(Progress),
    ) -> Result<working_sets::WorkloadResult, String>,
) -> Result<Vec<WorkloadRow>, String> {
    let seeds = if options.quick { 1 } else { 5 };
    SEED_WORKLOADS
        .iter()
        .map(|&workload| {
            let results = (0..seeds)
                .map(|i| run(workload, options.seed + i, progress))
                .collect::<Result<Vec<_>, _>>()?;
            let of = |f: fn(&working_sets::Congestion) -> f64| {
                mean(&results.iter().map(|r| f(&r.congestion)).collect::<Vec<_>>())
            };
            let mut deliveries = DeliveryCounts::default();
            for r in &results {
                deliveries.delivered += r.deliveries.delivered;
                deliveries.expected += r.deliveries.expected;
                deliveries.duplicates += r.deliveries.duplicates;
                deliveries.unwanted += r.deliveries.unwanted;
            }
            Ok(WorkloadRow {
                workload: workload.to_string(),
                seeds,
                ir_r: of(|c| c.root),
                ir_0: of(|c| c.ir0),
                ir_1: of(|c| c.ir1),
                routers_total: of(|c| c.routers_total),
                all_total: of(|c| c.all_total),
                deliveries,
            })
        })
        .collect()
}

pub fn figure(
    options: &FigureOptions,
    svg: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Figure, String> {
    let quick = options.quick;
    let rows = rows(options, progress, |workload, seed, progress| {
        working_sets::run(&seed_tree(workload, seed, quick), progress)
    })?;
    bar_chart(
        "Messages per write at IR_r, IR_0, IR_1 (static worker allocation)",
        &rows,
        svg,
    )?;
    let held = rows.iter().all(|r| r.deliveries.exact());
    Figure::new(&rows, table(&rows), held)
}

pub fn bar_chart(title: &str, rows: &[WorkloadRow], svg: &Path) -> Result<(), String> {
    BarChart {
        title,
        y_label: "multicast messages per write (sent + received)",
        categories: rows.iter().map(|r| r.workload.clone()).collect(),
        series: vec![
            ("IR_r (root)".into(), rows.iter().map(|r| r.ir_r).collect()),
            ("IR_0".into(), rows.iter().map(|r| r.ir_0).collect()),
            ("IR_1".into(), rows.iter().map(|r| r.ir_1).collect()),
        ],
    }
    .write(svg)
}

pub fn table(rows: &[WorkloadRow]) -> String {
    let mut md = String::from(
        "| workload | IR_r | IR_0 | IR_1 | all routers | all nodes | delivered / owed | duplicates | unwanted |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let d = &r.deliveries;
        let _ = writeln!(
            md,
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} / {} | {} | {} |",
            r.workload,
            r.ir_r,
            r.ir_0,
            r.ir_1,
            r.routers_total,
            r.all_total,
            d.delivered,
            d.expected,
            d.duplicates,
            d.unwanted
        );
    }
    md.push_str("\nMessages per write (sent + received), mean over seeds.\n");
    md
}
