//! `canopy-sim`: run the simulator's experiments from the command line.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use canopy_sim::congestion::{self, CongestionParams, CongestionResult, Progress, Topology};
use canopy_sim::failover::{self, FailoverParams};
use canopy_sim::figures::{self, FigureName, FigureOptions};
use canopy_sim::working_sets::{self, WorkloadParams};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "canopy-sim",
    about = "Deterministic simulator of the Canopy tree protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Messages per multicast at the root and every node, tree against star.
    Congestion {
        #[command(flatten)]
        params: CongestionParams,
        /// Print one JSON object as the last stdout line.
        #[arg(long)]
        json: bool,
    },
    /// Kill (or pause) the replicated root's leader again and again under publishing: time to
    /// a serving root, nodes that reattached, links changed below the root's children, and
    /// deliveries within subtrees during each failover. Exits 2 if a goal is missed.
    Failover {
        #[command(flatten)]
        params: FailoverParams,
        /// Print one JSON object as the last stdout line.
        #[arg(long)]
        json: bool,
        /// Also write failover-sim.json and failover-sim.md here.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Run a W(S×K) workload (the seed's §8.3) and count the messages every router handles.
    Workload {
        #[command(flatten)]
        params: WorkloadParams,
        /// Print one JSON object as the last stdout line.
        #[arg(long)]
        json: bool,
    },
    /// Draw one of the seed's figures (or the filter table): an SVG, its JSON data and a
    /// Markdown table under `--out-dir`. Exits 2 if a run's own checks failed.
    Figure {
        #[arg(value_enum)]
        name: FigureName,
        #[command(flatten)]
        options: FigureOptions,
    },
}

fn progress_bar(label: String) -> (ProgressBar, impl FnMut(Progress)) {
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>12} {msg:>14} [{bar:40}] {pos}/{len} sim-ms {elapsed}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(label);
    let handle = bar.clone();
    let update = move |p: Progress| {
        handle.set_message(p.phase);
        handle.set_length(p.total);
        handle.set_position(p.done);
    };
    (bar, update)
}

fn run_one(params: &CongestionParams, topology: Topology) -> anyhow::Result<CongestionResult> {
    let label = format!("{topology:?} {}", params.clients).to_lowercase();
    let (bar, mut update) = progress_bar(label);
    let result = congestion::run(params, topology, &mut update)
        .map_err(|e| anyhow::anyhow!("{topology:?} run failed: {e}"))?;
    bar.finish_and_clear();
    Ok(result)
}

fn run_failover(
    params: FailoverParams,
    json: bool,
    out_dir: Option<PathBuf>,
) -> anyhow::Result<std::process::ExitCode> {
    if !(0.0..=1.0).contains(&params.interest_fraction) {
        bail!("--interest-fraction must be between 0 and 1");
    }
    let started = Instant::now();
    let (bar, mut update) = progress_bar(format!("failover {}", params.clients));
    let result = failover::run(&params, &mut update)
        .map_err(|e| anyhow::anyhow!("failover run failed: {e}"))?;
    bar.finish_and_clear();
    eprintln!("finished in {:.1} s", started.elapsed().as_secs_f64());
    let table = failover::markdown_table(&result);
    if !json {
        println!("{table}");
    }
    if let Some(dir) = out_dir {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let json_path = dir.join("failover-sim.json");
        std::fs::write(&json_path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", json_path.display()))?;
        let md_path = dir.join("failover-sim.md");
        std::fs::write(&md_path, &table)
            .with_context(|| format!("writing {}", md_path.display()))?;
        eprintln!("wrote {} and {}", json_path.display(), md_path.display());
    }
    let met = result.goals_met();
    if json {
        println!(
            "{}",
            serde_json::json!({ "goals_met": met, "result": result })
        );
    }
    if !met {
        eprintln!("a goal was missed: a link below the root's children changed, a delivery within a subtree was lost or duplicated, two roots acted at once, or a deposed root acted");
        return Ok(std::process::ExitCode::from(2));
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn run_workload(params: &WorkloadParams, json: bool) -> anyhow::Result<std::process::ExitCode> {
    let label = format!("{} {:?}", params.workload, params.topology).to_lowercase();
    let (bar, mut update) = progress_bar(label);
    let result = working_sets::run(params, &mut update).map_err(anyhow::Error::msg)?;
    bar.finish_and_clear();
    let c = &result.congestion;
    let d = &result.deliveries;
    if json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "{} on a {:?} of {} routers (depth {}): per write IR_r {:.2}, IR_0 {:.2}, IR_1 {:.2}, \
             routers {:.2}, all nodes {:.2}; delivered {}/{} (duplicates {}, unwanted {}); \
             link interest {} entries in {} bytes ({:.1} bits each)",
            result.workload,
            result.topology,
            result.routers,
            result.tree_depth,
            c.root,
            c.ir0,
            c.ir1,
            c.routers_total,
            c.all_total,
            d.delivered,
            d.expected,
            d.duplicates,
            d.unwanted,
            result.link_interest.entries,
            result.link_interest.bytes,
            result.link_interest.bits_per_entry(),
        );
    }
    if !d.exact() {
        eprintln!("deliveries were not exact: an owed copy was lost, duplicated or misrouted");
        return Ok(std::process::ExitCode::from(2));
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    match Cli::parse().command {
        Command::Failover {
            params,
            json,
            out_dir,
        } => return run_failover(params, json, out_dir),
        Command::Workload { params, json } => return run_workload(&params, json),
        Command::Congestion { params, json } => {
            if params.clients == 0 {
                bail!("--clients must be at least 1");
            }
            if !(0.0..=1.0).contains(&params.interest_fraction) {
                bail!("--interest-fraction must be between 0 and 1");
            }
            let started = Instant::now();
            let tree = run_one(&params, Topology::Tree)?;
            let star = run_one(&params, Topology::Star)?;
            eprintln!("finished in {:.1} s", started.elapsed().as_secs_f64());
            if !json {
                for r in [&tree, &star] {
                    println!(
                        "{:>5}: root {:>10.1}  max node {:>10.1}  total {:>12.1} msgs/multicast, \
                         delivered {}/{} (duplicates {}, unwanted {})",
                        format!("{:?}", r.topology).to_lowercase(),
                        r.root_msgs_per_multicast,
                        r.max_node_msgs_per_multicast,
                        r.total_msgs_per_multicast,
                        r.delivered,
                        r.expected,
                        r.duplicates,
                        r.unwanted
                    );
                }
            }
            let summary = serde_json::json!({
                "clients": params.clients,
                "routers": params.routers,
                "multicasts": params.multicasts,
                "results": [tree, star],
            });
            println!("{summary}");
        }
        Command::Figure { name, options } => {
            let started = Instant::now();
            let (bar, mut update) = progress_bar(name.file_stem().to_owned());
            let (figure, written) =
                figures::draw(name, &options, &mut update).map_err(anyhow::Error::msg)?;
            bar.finish_and_clear();
            println!("{}", figure.markdown);
            let paths: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
            eprintln!(
                "wrote {} in {:.1} s",
                paths.join(", "),
                started.elapsed().as_secs_f64()
            );
            if !figure.checks_held {
                eprintln!("a run's checks failed: a delivery was lost, duplicated or misrouted, or a tree was unsound");
                return Ok(std::process::ExitCode::from(2));
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
