//! `canopy-sim`: run the simulator's experiments from the command line.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use canopy_sim::congestion::{self, CongestionParams, CongestionResult, Progress, Topology};
use canopy_sim::failover::{self, FailoverParams};
use canopy_sim::figure::{self, SizePoint};
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
    /// Reproduce the root-congestion figure at sizes from 100 to `--max-size` clients.
    Figure {
        #[arg(long, default_value_t = 1_000_000)]
        max_size: usize,
        #[arg(long, default_value_t = 20)]
        multicasts: usize,
        #[arg(long, default_value_t = 4)]
        max_child_routers: usize,
        #[arg(long, default_value_t = 64)]
        max_clients: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where the SVG and JSON go.
        #[arg(long, default_value = "docs/figures")]
        out_dir: PathBuf,
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

fn main() -> anyhow::Result<std::process::ExitCode> {
    match Cli::parse().command {
        Command::Failover {
            params,
            json,
            out_dir,
        } => return run_failover(params, json, out_dir),
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
        Command::Figure {
            max_size,
            multicasts,
            max_child_routers,
            max_clients,
            seed,
            out_dir,
        } => {
            let mut points = Vec::new();
            let sizes = [
                100, 300, 1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000,
            ];
            for &clients in sizes.iter().filter(|&&n| n <= max_size) {
                // Routers fill three quarters of their client capacity.
                let routers = clients.div_ceil(max_clients * 3 / 4).max(1);
                let params = CongestionParams {
                    clients,
                    routers,
                    max_child_routers,
                    max_clients,
                    multicasts,
                    seed,
                    interest_fraction: 1.0,
                };
                let started = Instant::now();
                let tree = run_one(&params, Topology::Tree)?;
                let star = run_one(&params, Topology::Star)?;
                let wall_seconds = started.elapsed().as_secs_f64();
                eprintln!(
                    "{clients:>9} clients: root msgs/multicast star {:.1}, tree {:.1} ({wall_seconds:.1} s)",
                    star.root_msgs_per_multicast, tree.root_msgs_per_multicast
                );
                points.push(SizePoint {
                    clients,
                    routers,
                    tree,
                    star,
                    wall_seconds,
                });
            }
            std::fs::create_dir_all(&out_dir)
                .with_context(|| format!("creating {}", out_dir.display()))?;
            let svg = out_dir.join("root-congestion.svg");
            figure::write_plot(&points, &svg).map_err(anyhow::Error::msg)?;
            let json_path = out_dir.join("root-congestion.json");
            std::fs::write(&json_path, serde_json::to_string_pretty(&points)?)
                .with_context(|| format!("writing {}", json_path.display()))?;
            let table = figure::markdown_table(&points);
            let table_path = out_dir.join("root-congestion.md");
            std::fs::write(&table_path, &table)
                .with_context(|| format!("writing {}", table_path.display()))?;
            println!("{table}");
            eprintln!(
                "wrote {}, {} and {}",
                svg.display(),
                json_path.display(),
                table_path.display()
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
