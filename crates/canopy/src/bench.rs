//! `canopy bench`: measurements on loopback with real QUIC and mutual TLS.

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Multicast throughput and latency: a depth-3 tree, a star and sealed replica writes,
    /// saturating or at an offered load (`--rate`, `--sweep`).
    Throughput(crate::throughput::ThroughputArgs),
    /// Root failover: kill the Raft leader K times under continuous publishing.
    Failover(crate::failover::FailoverArgs),
    /// A join storm: every router and client started at once; time until all are attached.
    Joins(crate::joins::JoinsArgs),
}

pub async fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Throughput(args) => crate::throughput::run(args).await,
        BenchCommand::Failover(args) => crate::failover::run(args).await,
        BenchCommand::Joins(args) => crate::joins::run(args).await,
    }
}
