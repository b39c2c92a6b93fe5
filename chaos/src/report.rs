//! What a scenario run found: per fault its timings, and for the run the writes issued,
//! lost and duplicated, who acted as root, per-node message counts and delivery latency.
//! Printed as JSON (the last line of stdout) and as a markdown table, with a latency plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::probe::Metrics;
use crate::scenario::{FaultKind, Scenario};

#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub kind: FaultKind,
    pub at_ms: u64,
    /// The node faulted (0: all of them in turn).
    pub target: u64,
    /// Until another candidate served as root (leader faults).
    pub failover_ms: Option<u64>,
    /// From the injection until one root served and every running node had a running parent
    /// again (a restart of the killed node included).
    pub reconverge_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeCounts {
    pub multicasts_sent: u64,
    pub multicasts_received: u64,
    pub control_sent: u64,
    pub control_received: u64,
}

impl NodeCounts {
    pub fn from_metrics(m: &Metrics) -> NodeCounts {
        NodeCounts {
            multicasts_sent: m.get("canopy_multicasts_sent_total") as u64,
            multicasts_received: m.get("canopy_multicasts_received_total") as u64,
            control_sent: m.get("canopy_control_sent_total") as u64,
            control_received: m.get("canopy_control_received_total") as u64,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub nodes: usize,
    pub regions: usize,
    pub faults: Vec<FaultRecord>,
    pub kills: usize,
    pub writes: usize,
    pub failed_puts: u64,
    pub lost: usize,
    pub duplicates: usize,
    pub disagreements: usize,
    pub max_concurrent_roots: usize,
    pub whole_at_end: bool,
    pub reconverge_ms_p50: u64,
    pub reconverge_ms_p99: u64,
    pub failover_ms_p50: Option<u64>,
    pub failover_ms_p99: Option<u64>,
    /// Leader faults timed: under 100, the p99 is their maximum (reconverge likewise, over
    /// every fault).
    pub failover_samples: usize,
    pub delivery_ms_p50: f64,
    pub delivery_ms_p99: f64,
    pub delivery_samples: usize,
    pub node_counts: BTreeMap<u64, NodeCounts>,
    #[serde(skip)]
    pub latencies: Vec<(f64, f64)>,
    pub passed: bool,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        scenario: &Scenario,
        faults: Vec<FaultRecord>,
        writes: usize,
        failed_puts: u64,
        lost: usize,
        duplicates: usize,
        disagreements: usize,
        max_concurrent_roots: usize,
        whole_at_end: bool,
        latencies: Vec<(f64, f64)>,
        node_counts: BTreeMap<u64, NodeCounts>,
    ) -> Report {
        let reconverge: Vec<u64> = faults.iter().map(|f| f.reconverge_ms).collect();
        let failover: Vec<u64> = faults.iter().filter_map(|f| f.failover_ms).collect();
        let kills = faults
            .iter()
            .filter(|f| matches!(f.kind, FaultKind::KillLeader | FaultKind::KillRouter))
            .count();
        let delays: Vec<f64> = latencies.iter().map(|&(_, ms)| ms).collect();
        let passed = lost == 0
            && duplicates == 0
            && disagreements == 0
            && max_concurrent_roots <= 1
            && whole_at_end
            && writes > 0;
        Report {
            scenario: scenario.name.clone(),
            nodes: scenario
                .regions
                .iter()
                .map(|r| r.candidates + r.routers + r.clients)
                .sum(),
            regions: scenario.regions.len(),
            kills,
            writes,
            failed_puts,
            lost,
            duplicates,
            disagreements,
            max_concurrent_roots,
            whole_at_end,
            reconverge_ms_p50: percentile(&reconverge, 0.5).unwrap_or(0),
            reconverge_ms_p99: percentile(&reconverge, 0.99).unwrap_or(0),
            failover_ms_p50: percentile(&failover, 0.5),
            failover_ms_p99: percentile(&failover, 0.99),
            failover_samples: failover.len(),
            delivery_ms_p50: percentile_f(&delays, 0.5),
            delivery_ms_p99: percentile_f(&delays, 0.99),
            delivery_samples: delays.len(),
            faults,
            node_counts,
            latencies,
            passed,
        }
    }

    pub fn markdown_header() -> String {
        "| scenario | nodes | faults | writes | lost | dup | disagree | max roots | failover p50/p99 ms | reconverge p50/p99 ms | delivery p50/p99 ms | passed |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
            .into()
    }

    pub fn markdown_row(&self) -> String {
        let opt = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
        let mut row = String::new();
        let _ = writeln!(
            row,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {}/{} | {:.0}/{:.0} | {} |",
            self.scenario,
            self.nodes,
            self.faults.len(),
            self.writes,
            self.lost,
            self.duplicates,
            self.disagreements,
            self.max_concurrent_roots,
            opt(self.failover_ms_p50),
            opt(self.failover_ms_p99),
            self.reconverge_ms_p50,
            self.reconverge_ms_p99,
            self.delivery_ms_p50,
            self.delivery_ms_p99,
            if self.passed { "yes" } else { "**no**" },
        );
        row
    }

    /// Delivery latency of every write through the run, faults marked.
    pub fn plot(&self, path: &Path) -> anyhow::Result<()> {
        let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let end = self.latencies.iter().map(|&(t, _)| t).fold(1.0, f64::max);
        let top = self
            .latencies
            .iter()
            .map(|&(_, ms)| ms)
            .fold(10.0, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "{}: delivery latency to every live replica (faults marked)",
                    self.scenario
                ),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..end, 0.0..top)?;
        chart
            .configure_mesh()
            .x_desc("seconds into the run (write sent)")
            .y_desc("ms until the last replica had it")
            .draw()?;
        chart.draw_series(
            self.latencies
                .iter()
                .map(|&(t, ms)| Circle::new((t, ms), 2, BLUE.filled())),
        )?;
        for fault in &self.faults {
            let t = fault.at_ms as f64 / 1000.0;
            chart.draw_series(LineSeries::new([(t, 0.0), (t, top)], RED.stroke_width(1)))?;
        }
        root.present()?;
        Ok(())
    }
}

fn percentile(values: &[u64], q: f64) -> Option<u64> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let i = ((sorted.len() as f64 * q).ceil() as usize).checked_sub(1)?;
    sorted.get(i.min(sorted.len().checked_sub(1)?)).copied()
}

fn percentile_f(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let Some(last) = sorted.len().checked_sub(1) else {
        return 0.0;
    };
    let i = ((sorted.len() as f64 * q).ceil() as usize)
        .saturating_sub(1)
        .min(last);
    sorted[i]
}
