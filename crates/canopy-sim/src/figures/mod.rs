//! The seed's evaluation, one figure per name: each run writes `<name>.svg`, `<name>.json`
//! and `<name>.md` (a Markdown table of the same numbers) into one directory.

pub mod churn;
pub mod filters;
pub mod plot;
pub mod root_congestion;
pub mod routers;
pub mod sharded;
pub mod workloads;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::congestion::Progress;

/// The figures `canopy-sim figure` can draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FigureName {
    /// Fig. 2: largest subtree imbalance and node count over random joins and removals.
    Imbalance,
    /// Fig. 3: mean client distance from the root and client count over the same run.
    Depth,
    /// Fig. 4: root messages per multicast against network size, star against tree.
    RootCongestion,
    /// Fig. 5: congestion against the number of routers in a fixed-size network.
    Routers,
    /// Fig. 6: a sharded broadcast domain (a star with one filter per link) against the tree.
    Sharded,
    /// Table 1: bits per key of the per-link filter against a Bloom filter's.
    Filters,
    /// Fig. 8: IR_r, IR_0 and IR_1 per W(S×K) workload, static worker allocation.
    Workloads,
    /// Fig. 9: the same with cache-aware reallocation.
    Reallocation,
    /// Root and total congestion of the seed's tree, upward filters, reallocation and both.
    Schemes,
}

impl FigureName {
    pub fn file_stem(self) -> &'static str {
        match self {
            FigureName::Imbalance => "imbalance",
            FigureName::Depth => "depth",
            FigureName::RootCongestion => "root-congestion",
            FigureName::Routers => "routers",
            FigureName::Sharded => "sharded",
            FigureName::Filters => "filters",
            FigureName::Workloads => "workloads",
            FigureName::Reallocation => "reallocation",
            FigureName::Schemes => "schemes",
        }
    }
}

/// Settings shared by every figure.
#[derive(Debug, Clone, clap::Args)]
pub struct FigureOptions {
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Smaller sizes and fewer repetitions: a check that the figure still runs, not the
    /// committed figure.
    #[arg(long)]
    pub quick: bool,
    /// Largest network of the root-congestion figure.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_size: usize,
    /// Where the SVG, JSON and Markdown go.
    #[arg(long, default_value = "docs/figures")]
    pub out_dir: PathBuf,
}

/// What a figure produced: its data, its table, and whether every check held (deliveries
/// exact, trees sound).
pub struct Figure {
    pub data: serde_json::Value,
    pub markdown: String,
    pub checks_held: bool,
}

impl Figure {
    pub fn new(
        data: &impl Serialize,
        markdown: String,
        checks_held: bool,
    ) -> Result<Figure, String> {
        let data = serde_json::to_value(data).map_err(|e| format!("encoding the data: {e}"))?;
        Ok(Figure {
            data,
            markdown,
            checks_held,
        })
    }
}

/// Runs one figure and writes its three files; returns the figure and the paths written.
pub fn draw(
    name: FigureName,
    options: &FigureOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Figure, Vec<PathBuf>), String> {
    let dir = &options.out_dir;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let stem = name.file_stem();
    let svg = dir.join(format!("{stem}.svg"));
    let figure = match name {
        FigureName::Imbalance => churn::imbalance(options, &svg, progress)?,
        FigureName::Depth => churn::depth(options, &svg, progress)?,
        FigureName::RootCongestion => root_congestion::figure(options, &svg, progress)?,
        FigureName::Routers => routers::figure(options, &svg, progress)?,
        FigureName::Sharded => sharded::figure(options, &svg, progress)?,
        FigureName::Filters => filters::figure(options, &svg)?,
        FigureName::Workloads => workloads::figure(options, &svg, progress)?,
        FigureName::Reallocation => workloads::reallocation(options, &svg, progress)?,
        FigureName::Schemes => workloads::schemes(options, &svg, progress)?,
    };
    let json = dir.join(format!("{stem}.json"));
    let text = serde_json::to_string_pretty(&figure.data)
        .map_err(|e| format!("encoding {}: {e}", json.display()))?;
    write(&json, &text)?;
    let md = dir.join(format!("{stem}.md"));
    write(&md, &figure.markdown)?;
    Ok((figure, vec![svg, json, md]))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// The mean of `values` (0 for none).
pub(crate) fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().sum::<f64>() / values.len() as f64
}
