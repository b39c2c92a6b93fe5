//! The seed's Figs. 8 and 9: messages per write at IR_r, IR_0 and IR_1 for W(4×2), W(2×2),
//! W(1×2) and W(1×1) on the seed's height-3 binary tree, workers placed where they join
//! (Fig. 8) or moved by cache-aware reallocation (Fig. 9); and every routing scheme side by
//! side: the seed's tree, upward filters, reallocation, and both.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::plot::{write_stacked, BarChart, Panel as _};
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

/// Which of Canopy's additions to the seed's tree are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Scheme {
    pub upward_filters: bool,
    pub reallocate: bool,
}

impl Scheme {
    pub const SEED: Scheme = Scheme {
        upward_filters: false,
        reallocate: false,
    };
    pub const ALL: [Scheme; 4] = [
        Scheme::SEED,
        Scheme {
            upward_filters: true,
            reallocate: false,
        },
        Scheme {
            upward_filters: false,
            reallocate: true,
        },
        Scheme {
            upward_filters: true,
            reallocate: true,
        },
    ];

    pub fn label(self) -> &'static str {
        match (self.upward_filters, self.reallocate) {
            (false, false) => "seed's tree (static)",
            (true, false) => "upward filters",
            (false, true) => "reallocation",
            (true, true) => "reallocation + upward filters",
        }
    }
}

/// The seed's Fig. 7 tree: a root, two routers below it and two below each of those, with
/// 32 workers. Every scheme gets the same warm-up (reallocation acts during it).
pub fn seed_tree(workload: Workload, seed: u64, quick: bool, scheme: Scheme) -> WorkloadParams {
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
        upward_filters: scheme.upward_filters,
        allocation: Allocation::Spread,
        reallocate: scheme.reallocate,
        warmup_s: if quick { 12.0 } else { 30.0 },
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

fn rows_for(
    options: &FigureOptions,
    progress: &mut dyn FnMut(Progress),
    scheme: Scheme,
) -> Result<Vec<WorkloadRow>, String> {
    let quick = options.quick;
    rows(options, progress, |workload, seed, progress| {
        working_sets::run(&seed_tree(workload, seed, quick, scheme), progress)
    })
}

/// Fig. 8: static allocation.
pub fn figure(
    options: &FigureOptions,
    svg: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Figure, String> {
    let title = "Messages per write at IR_r, IR_0, IR_1 (static worker allocation)";
    ir_figure(options, svg, progress, Scheme::SEED, title)
}

/// Fig. 9: cache-aware reallocation (upward filters off, as in the seed's tree).
pub fn reallocation(
    options: &FigureOptions,
    svg: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Figure, String> {
    let title = "Messages per write at IR_r, IR_0, IR_1 (cache-aware reallocation)";
    ir_figure(options, svg, progress, Scheme::ALL[2], title)
}

fn ir_figure(
    options: &FigureOptions,
    svg: &Path,
    progress: &mut dyn FnMut(Progress),
    scheme: Scheme,
    title: &str,
) -> Result<Figure, String> {
    let rows = rows_for(options, progress, scheme)?;
    bar_chart(title, &rows, svg)?;
    let held = rows.iter().all(|r| r.deliveries.exact());
    Figure::new(&rows, table(&rows), held)
}

/// One scheme's rows, for the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct SchemeRows {
    pub scheme: Scheme,
    pub label: &'static str,
    pub rows: Vec<WorkloadRow>,
}

/// Every scheme on every workload: root and total router congestion, against the seed's tree.
pub fn schemes(
    options: &FigureOptions,
    svg: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Figure, String> {
    let runs = Scheme::ALL
        .iter()
        .map(|&scheme| {
            let rows = rows_for(options, progress, scheme)?;
            Ok(SchemeRows {
                scheme,
                label: scheme.label(),
                rows,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let categories: Vec<String> = runs[0].rows.iter().map(|r| r.workload.clone()).collect();
    let series = |f: fn(&WorkloadRow) -> f64| {
        runs.iter()
            .map(|s| (s.label.to_string(), s.rows.iter().map(f).collect()))
            .collect::<Vec<_>>()
    };
    let root = BarChart {
        title: "Root (IR_r) messages per write, by scheme",
        y_label: "messages per write",
        categories: categories.clone(),
        series: series(|r| r.ir_r),
    };
    let all = BarChart {
        title: "All routers' messages per write, by scheme",
        y_label: "messages per write",
        categories,
        series: series(|r| r.routers_total),
    };
    write_stacked(&[&root, &all], 560, svg)?;
    let mut md = String::from(
        "| workload | scheme | root | vs seed's tree | all routers | vs seed's tree | all nodes | delivered / owed | duplicates |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let change = |now: f64, before: f64| {
        if before > 0.0 {
            format!("{:+.0} %", (now / before - 1.0) * 100.0)
        } else {
            "–".into()
        }
    };
    for (i, category) in runs[0].rows.iter().enumerate() {
        for run in &runs {
            let (r, base) = (&run.rows[i], &runs[0].rows[i]);
            let d = &r.deliveries;
            let _ = writeln!(
                md,
                "| {} | {} | {:.2} | {} | {:.2} | {} | {:.2} | {} / {} | {} |",
                category.workload,
                run.label,
                r.ir_r,
                change(r.ir_r, base.ir_r),
                r.routers_total,
                change(r.routers_total, base.routers_total),
                r.all_total,
                d.delivered,
                d.expected,
                d.duplicates
            );
        }
    }
    md.push_str("\nMessages per write (sent + received), mean over seeds, counted after the same warm-up for every scheme.\n");
    let held = runs
        .iter()
        .all(|s| s.rows.iter().all(|r| r.deliveries.exact()));
    Figure::new(&runs, md, held)
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
