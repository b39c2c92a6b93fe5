//! `canopy`: run a node, manage certificates, and run the demo and benchmarks.

mod bench;
mod certs;
mod cluster;
mod demo;
mod failover;
mod joins;
mod keys;
mod kv;
mod report;
mod run;
mod tap;
mod throughput;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "canopy", version, about = "Secure multicast tree overlay")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node from a TOML configuration file.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Create the cluster CA and issue node certificates.
    Certs {
        #[command(subcommand)]
        command: certs::CertsCommand,
    },
    /// Create and rotate the group key material client nodes seal records with.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// The root group: status and membership (needs an admin certificate).
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Start a throwaway cluster on loopback, publish, and check every delivery.
    Demo(demo::DemoArgs),
    /// Benchmarks on loopback with real QUIC.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Write a value through a running client node's API socket.
    Put(kv::PutArgs),
    /// Print a key's value from a running client node's replica (exit 1 if absent).
    Get(kv::GetArgs),
    /// Delete a key through a running client node's API socket.
    Del(kv::DelArgs),
    /// List the entries under a key prefix in a running client node's replica.
    Scan(kv::ScanArgs),
    /// A running node's status through its API socket (any role).
    Status(kv::StatusArgs),
    /// Print the changes to a key, or to a prefix ending in '/', as they happen.
    Watch(kv::WatchArgs),
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CANOPY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // openraft logs every RPC to a dead candidate as an error, and the benches kill
    // candidates and links on purpose: they print only errors of their own, the other
    // commands warnings too. CANOPY_LOG overrides.
    init_logging(match cli.command {
        Command::Run { .. } => "info",
        Command::Bench { .. } => "error,openraft=off",
        _ => "warn,openraft=error",
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run { config } => run::run(&config).await,
            Command::Certs { command } => certs::run(command).await,
            Command::Keys { command } => keys::run(command),
            Command::Cluster { command } => cluster::run(command).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Bench { command } => bench::run(command).await,
            Command::Put(args) => kv::put(args).await,
            Command::Get(args) => kv::get(args).await,
            Command::Del(args) => kv::del(args).await,
            Command::Scan(args) => kv::scan(args).await,
            Command::Watch(args) => kv::watch(args).await,
            Command::Status(args) => kv::status(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
