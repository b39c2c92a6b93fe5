//! `canopy-chaos`: chaos scenarios against real `canopy run` processes. Each scenario file
//! (`chaos/scenarios/*.toml`) describes regions of root candidates, routers and clients, a
//! write load through the clients' application API, and faults; the harness starts the
//! processes on their own 127.0.0.0/8 addresses, injects the faults under load, watches who
//! acts as root through every node's `/metrics`, then reads every replica back and reports
//! what was lost, duplicated or disagreed, as JSON (last stdout line) and a markdown table.
//! It exits 2 when a scenario's checks fail, and never leaves a process behind.
//!
//! It depends on the `canopy` binary and the client API only, never on the tree's internals.

mod cluster;
mod probe;
mod report;
mod run;
mod scenario;
mod wan;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::report::Report;
use crate::scenario::Scenario;

#[derive(Parser)]
#[command(
    name = "canopy-chaos",
    about = "Chaos scenarios against real canopy processes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one scenario file.
    Run {
        scenario: PathBuf,
        /// Print the report as one JSON line last.
        #[arg(long)]
        json: bool,
        /// Where the latency plot goes (default: no plot).
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Keep the cluster's directory (configs, logs, data) after the run.
        #[arg(long)]
        keep: bool,
    },
    /// Run every scenario in a directory and print the table.
    Suite {
        #[arg(default_value = "chaos/scenarios")]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
        /// Where each scenario's latency plot goes.
        #[arg(long)]
        plot_dir: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    // One thread: every process is forked from it, so PR_SET_PDEATHSIG ties them to the
    // harness's life and not to a worker thread's.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tokio::select! {
            result = command(cli.command) => result,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("interrupted: every process is being stopped");
                Ok(ExitCode::from(130))
            }
        }
    })
}

async fn command(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            scenario,
            json,
            plot,
            keep,
        } => {
            let scenario = Scenario::load(&scenario)?;
            let report = run_one(&scenario, plot.as_deref(), keep).await?;
            print!("{}{}", Report::markdown_header(), report.markdown_row());
            if json {
                println!("{}", serde_json::to_string(&report)?);
            }
            Ok(exit(report.passed))
        }
        Command::Suite {
            dir,
            json,
            plot_dir,
        } => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            let mut reports = Vec::new();
            let mut errors = Vec::new();
            for file in files {
                let scenario = Scenario::load(&file)?;
                let plot = plot_dir
                    .as_ref()
                    .map(|d| d.join(format!("chaos-{}.svg", scenario.name)));
                match run_one(&scenario, plot.as_deref(), false).await {
                    Ok(report) => reports.push(report),
                    Err(e) => {
                        eprintln!("{}: {e:#}", scenario.name);
                        errors.push(scenario.name.clone());
                    }
                }
            }
            print!("{}", Report::markdown_header());
            for report in &reports {
                print!("{}", report.markdown_row());
            }
            for name in &errors {
                println!("| {name} | could not run: see stderr | | | | | | | | | | **no** |");
            }
            if json {
                println!("{}", serde_json::to_string(&reports)?);
            }
            Ok(exit(errors.is_empty() && reports.iter().all(|r| r.passed)))
        }
    }
}

async fn run_one(
    scenario: &Scenario,
    plot: Option<&std::path::Path>,
    keep: bool,
) -> anyhow::Result<Report> {
    let name = scenario.name.clone();
    let progress = move |line: &str| eprintln!("[{name}] {line}");
    let (report, cluster) = run::run(scenario, keep, &progress).await?;
    if let Some(path) = plot {
        report.plot(path)?;
        eprintln!("wrote {}", path.display());
    }
    if keep {
        eprintln!("kept {}", cluster.root.display());
    }
    Ok(report)
}

fn exit(passed: bool) -> ExitCode {
    if passed {
        ExitCode::SUCCESS
    } else {
        eprintln!("a check failed: a write was lost or duplicated, replicas disagree, two roots acted at once, or the tree did not come back whole");
        ExitCode::from(2)
    }
}
