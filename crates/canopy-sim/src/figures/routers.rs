//! The seed's Fig. 5: a fixed number of clients under more and more routers, with a workload
//! whose working sets let filters prune, so that interior routers' load shows.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::plot::{LineChart, Panel as _, Series};
use super::{Figure, FigureOptions};
use crate::congestion::{Progress, Topology};
use crate::working_sets::{self, Allocation, WorkloadParams, WorkloadResult};
use crate::workload::Workload;

#[derive(Debug, Clone, Serialize)]
pub struct RoutersPoint {
    pub routers: usize,
    pub result: WorkloadResult,
}

pub fn figure(
    options: &FigureOptions,
    svg: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Figure, String> {
    let (clients, counts): (usize, &[usize]) = if options.quick {
        (256, &[0, 4, 16])
    } else {
        (1024, &[0, 2, 4, 8, 16, 32, 64, 128])
    };
    let workload = Workload::new(16, 4);
    let mut points = Vec::new();
    for &routers in counts {
        let params = WorkloadParams {
            workload,
            clients,
            routers,
            max_child_routers: 4,
            max_clients: 64,
            writes: if options.quick { 200 } else { 1000 },
            rate: 500.0,
            seed: options.seed,
            topology: if routers == 0 {
                Topology::Star
            } else {
                Topology::Tree
            },
            upward_filters: false,
            allocation: Allocation::Spread,
            reallocate: false,
            warmup_s: 0.0,
        };
        let result = working_sets::run(&params, progress)?;
        points.push(RoutersPoint { routers, result });
    }
    let line = |label: &str, f: fn(&WorkloadResult) -> f64| Series {
        label: label.into(),
        points: points
            .iter()
            .map(|p| (p.routers as f64, f(&p.result)))
            .collect(),
    };
    LineChart {
        title: &format!("{clients} clients, {workload}: congestion against routers"),
        x_label: "routers (0: every client a child of the root)",
        y_label: "multicast messages per write",
        log_x: false,
        log_y: true,
        series: vec![
            line("root", |r| r.congestion.root.max(0.01)),
            line("busiest router", |r| r.congestion.router_max.max(0.01)),
            line("90th percentile router", |r| {
                r.congestion.router_p90.max(0.01)
            }),
            line("median router", |r| r.congestion.router_p50.max(0.01)),
        ],
    }
    .write(svg)?;
    let mut md = String::from(
        "| routers | depth | root | busiest router | p90 router | median router | all routers | delivered / owed |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for p in &points {
        let (c, d) = (&p.result.congestion, &p.result.deliveries);
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {} / {} |",
            p.routers,
            p.result.tree_depth,
            c.root,
            c.router_max,
            c.router_p90,
            c.router_p50,
            c.routers_total,
            d.delivered,
            d.expected
        );
    }
    let _ = writeln!(
        md,
        "\n{clients} clients, {workload}, messages per write (sent + received); up to 4 child routers and 64 clients per router."
    );
    let held = points.iter().all(|p| p.result.deliveries.exact());
    Figure::new(&points, md, held)
}
