//! The seed's Fig. 4: root messages per multicast against network size, star against tree,
//! every client subscribed to the one key.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use super::plot::{LineChart, Panel as _, Series};
use super::{Figure, FigureOptions};
use crate::congestion::{self, CongestionParams, CongestionResult, Progress, Topology};

const SIZES: [usize; 9] = [
    100, 300, 1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000,
];

/// Measures both topologies at every size up to `--max-size` (3,000 with `--quick`).
pub fn figure(
    options: &FigureOptions,
    svg: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Figure, String> {
    let max_size = if options.quick {
        3_000
    } else {
        options.max_size
    };
    let (max_child_routers, max_clients) = (4, 64);
    let mut points = Vec::new();
    for &clients in SIZES.iter().filter(|&&n| n <= max_size) {
        // Routers fill three quarters of their client capacity.
        let routers = clients.div_ceil(max_clients * 3 / 4).max(1);
        let params = CongestionParams {
            clients,
            routers,
            max_child_routers,
            max_clients,
            multicasts: 20,
            seed: options.seed,
            interest_fraction: 1.0,
        };
        let started = Instant::now();
        let tree = congestion::run(&params, Topology::Tree, progress)?;
        let star = congestion::run(&params, Topology::Star, progress)?;
        points.push(SizePoint {
            clients,
            routers,
            tree,
            star,
            wall_seconds: started.elapsed().as_secs_f64(),
        });
    }
    write_plot(&points, svg)?;
    let held = points.iter().all(|p| {
        [&p.tree, &p.star]
            .iter()
            .all(|r| r.delivered == r.expected && r.duplicates == 0 && r.unwanted == 0)
    });
    Figure::new(&points, markdown_table(&points), held)
}

/// One network size measured with both topologies.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SizePoint {
    pub clients: usize,
    pub routers: usize,
    pub tree: CongestionResult,
    pub star: CongestionResult,
    pub wall_seconds: f64,
}

/// Writes the log-log plot of root messages per multicast against clients.
pub fn write_plot(points: &[SizePoint], path: &Path) -> Result<(), String> {
    let line = |label: &str, f: fn(&SizePoint) -> f64| Series {
        label: label.into(),
        points: points
            .iter()
            .map(|p| (p.clients as f64, f(p).max(1.0)))
            .collect(),
    };
    LineChart {
        title: "Messages per multicast: star vs Canopy tree",
        x_label: "clients",
        y_label: "messages per multicast (sent + received)",
        log_x: true,
        log_y: true,
        series: vec![
            line("star: root (unicasts to every client)", |p| {
                p.star.root_msgs_per_multicast
            }),
            line("canopy tree: root", |p| p.tree.root_msgs_per_multicast),
            line("canopy tree: busiest node", |p| {
                p.tree.max_node_msgs_per_multicast
            }),
        ],
    }
    .write(path)
}

/// The Markdown table of the measurements.
pub fn markdown_table(points: &[SizePoint]) -> String {
    let mut md = String::from(
        "| clients | routers | root msgs/multicast (star) | root msgs/multicast (tree) | \
         max node msgs/multicast (tree) | total msgs/multicast (star) | total msgs/multicast (tree) \
         | tree depth | delivered / expected (tree) | delivered / expected (star) | wall s |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for p in points {
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {} | {} / {} | {} / {} | {:.1} |",
            p.clients,
            p.routers,
            p.star.root_msgs_per_multicast,
            p.tree.root_msgs_per_multicast,
            p.tree.max_node_msgs_per_multicast,
            p.star.total_msgs_per_multicast,
            p.tree.total_msgs_per_multicast,
            p.tree.tree_depth,
            p.tree.delivered,
            p.tree.expected,
            p.star.delivered,
            p.star.expected,
            p.wall_seconds,
        );
    }
    md
}
