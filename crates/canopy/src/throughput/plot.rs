//! Latency against offered load: p50 and p99 per layout, one point per paced measurement
//! (saturating runs have no offered load and are left out).

use std::path::Path;

use plotters::prelude::*;

use super::{Layout, ThroughputResult};

pub fn write(results: &[ThroughputResult], path: &Path) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("plotting {}: {e}", path.display());
    let paced: Vec<&ThroughputResult> = results
        .iter()
        .filter(|r| r.offered_rate.is_some())
        .collect();
    if paced.is_empty() {
        return Err("nothing to plot: no measurement at an offered rate (use --sweep)".into());
    }
    let rate = |r: &ThroughputResult| r.offered_rate.unwrap_or(0.0);
    let highest_rate = paced.iter().map(|r| rate(r)).fold(1.0, f64::max);
    let highest_ms = paced
        .iter()
        .map(|r| r.latency_p99_ms.unwrap_or(r.latency_max_ms))
        .fold(0.1, f64::max);
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Multicast latency against offered load (loopback, one process)",
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..highest_rate * 1.05, 0f64..highest_ms * 1.15)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("offered multicasts/s")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.1}"))
        .draw()
        .map_err(|e| err(&e))?;
    for (layout, color) in [
        (Layout::Tree, BLUE),
        (Layout::Star, RED),
        (Layout::Sealed, GREEN),
    ] {
        let mine: Vec<&&ThroughputResult> = paced.iter().filter(|r| r.layout == layout).collect();
        if mine.is_empty() {
            continue;
        }
        let name = format!("{layout:?}").to_lowercase();
        let p50: Vec<(f64, f64)> = mine.iter().map(|r| (rate(r), r.latency_p50_ms)).collect();
        let p99: Vec<(f64, f64)> = mine
            .iter()
            .filter_map(|r| r.latency_p99_ms.map(|p| (rate(r), p)))
            .collect();
        chart
            .draw_series(LineSeries::new(p50.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(format!("{name} p50"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(p50.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| err(&e))?;
        let dashed = color.mix(0.5).stroke_width(2);
        chart
            .draw_series(LineSeries::new(p99.clone(), dashed))
            .map_err(|e| err(&e))?
            .label(format!("{name} p99"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], dashed));
        chart
            .draw_series(
                p99.iter()
                    .map(|&p| TriangleMarker::new(p, 4, color.filled())),
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
