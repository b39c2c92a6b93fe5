//! Two chart shapes the figures share: lines over a numeric x axis, and groups of bars.

use std::path::Path;

use plotters::prelude::*;

/// A named line of (x, y) points.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

pub struct LineChart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub log_x: bool,
    pub log_y: bool,
    pub series: Vec<Series>,
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(200, 30, 30),
    RGBColor(30, 80, 200),
    RGBColor(0, 140, 60),
    RGBColor(230, 140, 0),
    RGBColor(120, 40, 160),
    RGBColor(90, 90, 90),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn bounds(values: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (if log { 1.0 } else { 0.0 }, 1.0);
    }
    if log {
        (lo.max(1e-3) / 1.5, hi.max(1e-3) * 1.5)
    } else {
        let top = if hi > 0.0 { hi * 1.1 } else { 1.0 };
        (lo.min(0.0), top)
    }
}

impl Panel for LineChart<'_> {
    fn draw(
        &self,
        area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
        path: &Path,
    ) -> Result<(), String> {
        let err = |e: &dyn std::fmt::Display| format!("plotting {}: {e}", path.display());
        let all = || self.series.iter().flat_map(|s| s.points.iter());
        let (x0, x1) = bounds(all().map(|p| p.0), self.log_x);
        let (y0, y1) = bounds(all().map(|p| p.1), self.log_y);
        let mut builder = ChartBuilder::on(area);
        builder
            .caption(self.title, ("sans-serif", 22))
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(70);
        // Each axis combination is its own chart type, so the drawing is a macro.
        macro_rules! draw {
            ($chart:expr) => {{
                let mut chart = $chart.map_err(|e| err(&e))?;
                chart
                    .configure_mesh()
                    .x_desc(self.x_label)
                    .y_desc(self.y_label)
                    .x_label_formatter(&|x| format!("{x}"))
                    .draw()
                    .map_err(|e| err(&e))?;
                for (i, s) in self.series.iter().enumerate() {
                    let c = color(i);
                    chart
                        .draw_series(LineSeries::new(s.points.clone(), c.stroke_width(2)))
                        .map_err(|e| err(&e))?
                        .label(s.label.clone())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
                    if s.points.len() <= 60 {
                        chart
                            .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, c.filled())))
                            .map_err(|e| err(&e))?;
                    }
                }
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .position(SeriesLabelPosition::UpperLeft)
                    .draw()
                    .map_err(|e| err(&e))?;
            }};
        }
        match (self.log_x, self.log_y) {
            (false, false) => draw!(builder.build_cartesian_2d(x0..x1, y0..y1)),
            (true, false) => draw!(builder.build_cartesian_2d((x0..x1).log_scale(), y0..y1)),
            (false, true) => draw!(builder.build_cartesian_2d(x0..x1, (y0..y1).log_scale())),
            (true, true) => {
                draw!(builder.build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale()))
            }
        }
        Ok(())
    }
}

/// Groups of bars: one group per category, one bar per series in each group.
pub struct BarChart<'a> {
    pub title: &'a str,
    pub y_label: &'a str,
    pub categories: Vec<String>,
    /// (label, one value per category)
    pub series: Vec<(String, Vec<f64>)>,
}

impl Panel for BarChart<'_> {
    fn draw(
        &self,
        area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
        path: &Path,
    ) -> Result<(), String> {
        let err = |e: &dyn std::fmt::Display| format!("plotting {}: {e}", path.display());
        let groups = self.categories.len().max(1);
        let bars = self.series.len().max(1);
        let top = self
            .series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .fold(1.0f64, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(self.title, ("sans-serif", 22))
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..groups as f64, 0f64..top)
            .map_err(|e| err(&e))?;
        let categories = self.categories.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(groups * 2 + 1)
            .x_label_formatter(&move |x| {
                let centre = x - x.floor();
                if (centre - 0.5).abs() < 0.01 {
                    categories
                        .get(x.floor() as usize)
                        .cloned()
                        .unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc(self.y_label)
            .draw()
            .map_err(|e| err(&e))?;
        let width = 0.8 / bars as f64;
        for (b, (label, values)) in self.series.iter().enumerate() {
            let c = color(b);
            let rects = values.iter().enumerate().map(move |(g, &v)| {
                let x = g as f64 + 0.1 + width * b as f64;
                Rectangle::new([(x, 0.0), (x + width * 0.9, v)], c.filled())
            });
            chart
                .draw_series(rects)
                .map_err(|e| err(&e))?
                .label(label.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], c.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| err(&e))?;
        Ok(())
    }
}

/// A chart that can draw itself into one panel of a figure.
pub trait Panel {
    fn draw(
        &self,
        area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
        path: &Path,
    ) -> Result<(), String>;

    /// The chart alone in an SVG.
    fn write(&self, path: &Path) -> Result<(), String>
    where
        Self: Sized,
    {
        write_stacked(&[self], 560, path)
    }
}

/// Charts one above the other in one SVG, each `panel_height` high.
pub fn write_stacked(charts: &[&dyn Panel], panel_height: u32, path: &Path) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("plotting {}: {e}", path.display());
    let panels = charts.len().max(1);
    let area = SVGBackend::new(path, (900, panel_height * panels as u32)).into_drawing_area();
    area.fill(&WHITE).map_err(|e| err(&e))?;
    for (chart, panel) in charts.iter().zip(area.split_evenly((panels, 1))) {
        chart.draw(&panel, path)?;
    }
    area.present().map_err(|e| err(&e))
}
