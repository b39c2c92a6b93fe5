//! `canopy bench throughput`: multicast throughput and latency on loopback with real QUIC.
//!
//! One client publishes; every other client is subscribed. Saturating (no `--rate`): as fast
//! as a 128-multicast window allows. At a fixed offered load (`--rate R`): paced, open loop,
//! so latency is measured at that load and not at whatever the window lets through. Every
//! delivery is counted once per (receiver, multicast) — duplicates separately — and the
//! rates count only what arrived while publishing; the drain after it is reported on its
//! own. Latency percentiles come from an HDR histogram. Exits 1 if an owed delivery was lost
//! or duplicated, 2 if a `--p99-goal-ms` was missed.

mod measure;
mod plot;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, ValueEnum};
use serde::Serialize;

pub use measure::ThroughputResult;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Root, 6 routers (2 per router): clients at depth 2 or 3.
    Tree,
    /// Every client a child of the root.
    Star,
    /// The tree, every publish a replica write (sealed, signed, durable, verified, opened).
    Sealed,
}

#[derive(Args)]
pub struct ThroughputArgs {
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Payload bytes per multicast (at least 16: send time and sequence travel in it).
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// Seconds of publishing per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Offered load in multicasts/s, paced evenly; without it, as fast as the window allows.
    #[arg(long)]
    rate: Option<f64>,
    /// Offered loads to measure one after another (multicasts/s, comma-separated), on each
    /// layout; prints a table per load.
    #[arg(long, value_delimiter = ',')]
    sweep: Vec<f64>,
    /// Layouts to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Layout::Tree, Layout::Star, Layout::Sealed])]
    layouts: Vec<Layout>,
    /// Exit 2 if a measurement's p99 latency is above this (ms).
    #[arg(long)]
    p99_goal_ms: Option<f64>,
    /// Draw latency (p50, p99) against offered load to this SVG (with --sweep).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Print one JSON object as the last stdout line.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: ThroughputArgs) -> anyhow::Result<ExitCode> {
    if args.clients < 2 {
        bail!("--clients must be at least 2");
    }
    if args.payload < measure::HEADER {
        bail!("--payload must be at least {} bytes", measure::HEADER);
    }
    if args.layouts.is_empty() {
        bail!("--layouts needs at least one layout");
    }
    let rates: Vec<Option<f64>> = if args.sweep.is_empty() {
        vec![args.rate]
    } else {
        args.sweep.iter().map(|&r| Some(r)).collect()
    };
    if let Some(bad) = rates
        .iter()
        .flatten()
        .find(|r| !(r.is_finite() && **r > 0.0))
    {
        bail!("an offered rate must be a positive number, not {bad}");
    }
    let mut results = Vec::new();
    for rate in &rates {
        for &layout in &args.layouts {
            let load = rate.map_or("saturating".to_string(), |r| format!("{r} multicasts/s"));
            eprintln!(
                "{layout:?}: {} clients, {} B, {} s at {load}",
                args.clients, args.payload, args.seconds
            );
            let spec = measure::Spec {
                layout,
                clients: args.clients,
                payload: args.payload,
                seconds: args.seconds,
                rate: *rate,
            };
            results.push(measure::measure(spec).await?);
        }
    }
    print_table(&results);
    if let Some(path) = &args.plot {
        plot::write(&results, path).map_err(anyhow::Error::msg)?;
        eprintln!("figure written to {}", path.display());
    }
    let sound = results.iter().all(|r| r.lost == 0 && r.duplicates == 0);
    let goal_met = args.p99_goal_ms.is_none_or(|goal| {
        results
            .iter()
            .all(|r| r.latency_p99_ms.is_some_and(|p99| p99 <= goal))
    });
    if args.json {
        let summary = serde_json::json!({
            "clients": args.clients,
            "payload": args.payload,
            "seconds": args.seconds,
            "p99_goal_ms": args.p99_goal_ms,
            "goal_met": goal_met,
            "results": results,
        });
        println!("{summary}");
    }
    Ok(if !sound {
        ExitCode::FAILURE
    } else if !goal_met {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_table(results: &[ThroughputResult]) {
    println!(
        "{:<7} {:>6} {:>10} {:>11} {:>13} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>9} {:>9}",
        "layout",
        "depth",
        "offered/s",
        "multicast/s",
        "deliveries/s",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "max ms",
        "drain ms",
        "lost",
        "dups",
        "root/mc"
    );
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    for r in results {
        println!(
            "{:<7} {:>6} {:>10} {:>11.0} {:>13.0} {:>8} {:>8} {:>8} {:>8} {:>9.0} {:>8} {:>9} {:>9.2}",
            format!("{:?}", r.layout).to_lowercase(),
            r.tree_depth,
            r.offered_rate.map_or("max".into(), |v| format!("{v:.0}")),
            r.multicasts_per_sec,
            r.deliveries_per_sec,
            ms(Some(r.latency_p50_ms)),
            ms(r.latency_p99_ms),
            ms(r.latency_p999_ms),
            ms(Some(r.latency_max_ms)),
            r.drain_ms,
            r.lost,
            r.duplicates,
            r.root_msgs_per_multicast
        );
    }
}
