//! The seed's Fig. 4: root messages per multicast against network size, star against tree,
//! every client subscribed to the one key.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use plotters::prelude::*;

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
    let err = |e: &dyn std::fmt::Display| format!("plotting {}: {e}", path.display());
    let max_clients = points.iter().map(|p| p.clients).max().unwrap_or(100) as f64;
    let max_msgs = points
        .iter()
        .map(|p| {
            p.star
                .root_msgs_per_multicast
                .max(p.tree.root_msgs_per_multicast)
        })
        .fold(10.0, f64::max);
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Messages per multicast: star vs Canopy tree",
            ("sans-serif", 24),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (50f64..max_clients * 2.0).log_scale(),
            (1f64..max_msgs * 3.0).log_scale(),
        )
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("clients")
        .y_desc("messages per multicast (sent + received)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(|e| err(&e))?;
    let star_root: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (p.clients as f64, p.star.root_msgs_per_multicast.max(1.0)))
        .collect();
    let tree_root: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (p.clients as f64, p.tree.root_msgs_per_multicast.max(1.0)))
        .collect();
    let tree_busiest: Vec<(f64, f64)> = points
        .iter()
        .map(|p| {
            (
                p.clients as f64,
                p.tree.max_node_msgs_per_multicast.max(1.0),
            )
        })
        .collect();
    let green = RGBColor(0, 140, 60);
    for (data, color, label) in [
        (star_root, RED, "star: root (unicasts to every client)"),
        (tree_root, BLUE, "canopy tree: root"),
        (tree_busiest, green, "canopy tree: busiest node"),
    ] {
        chart
            .draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(
                data.into_iter()
                    .map(|xy| Circle::new(xy, 4, color.filled())),
            )
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
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
