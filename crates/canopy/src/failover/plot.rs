//! The failover figure: time to the first multicast across the new root, per kill, one
//! series per timer profile, with each profile's goal as a dashed line.

use std::path::Path;

use plotters::prelude::*;

use super::{Profile, ProfileResult};

pub fn write(results: &[ProfileResult], path: &Path) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("plotting {}: {e}", path.display());
    let kills = results
        .iter()
        .map(|r| r.per_kill.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let highest = results
        .iter()
        .flat_map(|r| r.per_kill.iter().map(|k| k.failover_ms).chain([r.goal_ms]))
        .filter(|v| v.is_finite())
        .fold(100.0, f64::max);
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Root failover: kill to the first multicast across the new root",
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.5f64..kills as f64 + 0.5, 0f64..highest * 1.15)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("kill")
        .y_desc("failover (ms)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(|e| err(&e))?;
    for r in results {
        let (color, name) = match r.profile {
            Profile::Lan => (BLUE, "LAN timers"),
            Profile::Wan => (RED, "WAN timers"),
        };
        let label = format!(
            "{name} ({} ms RTT between candidates): p50 {:.0}, p99 {:.0} ms",
            r.candidate_rtt_ms, r.failover_ms_p50, r.failover_ms_p99
        );
        let points: Vec<(f64, f64)> = r
            .per_kill
            .iter()
            .enumerate()
            .filter(|(_, k)| k.failover_ms.is_finite())
            .map(|(i, k)| ((i + 1) as f64, k.failover_ms))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|xy| Circle::new(xy, 4, color.filled())),
            )
            .map_err(|e| err(&e))?;
        let goal = vec![(0.5, r.goal_ms), (kills as f64 + 0.5, r.goal_ms)];
        chart
            .draw_series(DashedLineSeries::new(goal, 6, 4, color.stroke_width(1)))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
