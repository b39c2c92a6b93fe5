//! `canopy bench failover`: kill the root leader again and again under continuous
//! publishing, with the LAN Raft timers and with the WAN timers over a delayed link between
//! the candidates, and measure each failover: time to a serving root, to the first multicast
//! across the new root, to the old root's children being back; subtrees rebuilt (by
//! assignment ids, over a window that outlasts the orphan grace); multicasts owed and
//! delivered meanwhile within a subtree and across the root.
//!
//! Exits 2 when a goal is missed: a subtree rebuilt, a multicast within a subtree lost or
//! duplicated, or a profile's failover p99 over its goal.

mod plot;
mod round;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use canopy_node::key_tag;
use canopy_node::local::{fast_tree_config, LocalCluster, LocalClusterSpec};
use canopy_raft::RaftTimers;
use canopy_tree::NodeId;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use round::{kill_once, KillResult, PublishLog, Published};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Raft's LAN timers, candidates on plain loopback.
    Lan,
    /// Raft's WAN timers, candidates `--wan-rtt-ms` apart through a UDP relay.
    Wan,
}

#[derive(Args)]
pub struct FailoverArgs {
    /// How many times to kill the leader, per profile (the killed candidate restarts after
    /// each round).
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Timer profiles to measure, side by side.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Profile::Lan, Profile::Wan])]
    profiles: Vec<Profile>,
    /// Round trip between candidates for the WAN profile.
    #[arg(long, default_value_t = 140)]
    wan_rtt_ms: u64,
    /// Failover p99 goals (ms) per profile.
    #[arg(long, default_value_t = 500.0)]
    lan_goal_ms: f64,
    #[arg(long, default_value_t = 2000.0)]
    wan_goal_ms: f64,
    /// Root candidates in the Raft group.
    #[arg(long, default_value_t = 3)]
    candidates: usize,
    #[arg(long, default_value_t = 6)]
    routers: usize,
    #[arg(long, default_value_t = 24)]
    clients: usize,
    /// Milliseconds between publishes (clients take turns).
    #[arg(long, default_value_t = 5)]
    interval_ms: u64,
    /// Write the per-kill failover times as an SVG plot here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Print one JSON object as the last stdout line.
    #[arg(long)]
    json: bool,
}

/// Nearest-rank percentile.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[derive(Debug, Clone, Serialize)]
pub struct ProfileResult {
    pub profile: Profile,
    pub timers: RaftTimers,
    /// Round trip added between candidates.
    pub candidate_rtt_ms: u64,
    pub kills: usize,
    pub goal_ms: f64,
    pub serving_ms_p50: f64,
    pub serving_ms_p99: f64,
    pub failover_ms_p50: f64,
    pub failover_ms_p99: f64,
    pub reattach_ms_p50: f64,
    pub reattach_ms_p99: f64,
    pub subtrees_rebuilt: usize,
    pub within_owed: u64,
    pub within_delivered: u64,
    pub across_owed: u64,
    pub across_delivered: u64,
    pub duplicates: u64,
    pub per_kill: Vec<KillResult>,
}

impl ProfileResult {
    fn new(
        profile: Profile,
        timers: RaftTimers,
        rtt: u64,
        goal: f64,
        kills: Vec<KillResult>,
    ) -> Self {
        let pick = |f: fn(&KillResult) -> f64| kills.iter().map(f).collect::<Vec<f64>>();
        let sum = |f: fn(&KillResult) -> u64| kills.iter().map(f).sum::<u64>();
        let (serving, failover, reattach) = (
            pick(|k| k.serving_ms),
            pick(|k| k.failover_ms),
            pick(|k| k.reattach_ms),
        );
        ProfileResult {
            profile,
            timers,
            candidate_rtt_ms: rtt,
            kills: kills.len(),
            goal_ms: goal,
            serving_ms_p50: percentile(&serving, 0.5),
            serving_ms_p99: percentile(&serving, 0.99),
            failover_ms_p50: percentile(&failover, 0.5),
            failover_ms_p99: percentile(&failover, 0.99),
            reattach_ms_p50: percentile(&reattach, 0.5),
            reattach_ms_p99: percentile(&reattach, 0.99),
            subtrees_rebuilt: kills.iter().map(|k| k.subtrees_rebuilt).sum(),
            within_owed: sum(|k| k.within_owed),
            within_delivered: sum(|k| k.within_delivered),
            across_owed: sum(|k| k.across_owed),
            across_delivered: sum(|k| k.across_delivered),
            duplicates: sum(|k| k.duplicates),
            per_kill: kills,
        }
    }

    /// The goals this profile missed, in words.
    fn misses(&self) -> Vec<String> {
        let mut misses = Vec::new();
        let name = format!("{:?}", self.profile).to_lowercase();
        if self.subtrees_rebuilt > 0 {
            misses.push(format!(
                "{name}: {} links below the root rebuilt",
                self.subtrees_rebuilt
            ));
        }
        if self.within_delivered < self.within_owed || self.duplicates > 0 {
            misses.push(format!(
                "{name}: {} of {} deliveries within subtrees during failover, {} duplicates",
                self.within_delivered, self.within_owed, self.duplicates
            ));
        }
        // A NaN p99 (no failover measured) misses the goal too.
        let within_goal = self.failover_ms_p99.is_finite() && self.failover_ms_p99 <= self.goal_ms;
        if !within_goal {
            misses.push(format!(
                "{name}: failover p99 {:.0} ms over the goal of {:.0} ms",
                self.failover_ms_p99, self.goal_ms
            ));
        }
        misses
    }
}

pub async fn run(args: FailoverArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(
        args.candidates >= 3,
        "--candidates must be at least 3 to survive a kill"
    );
    anyhow::ensure!(args.clients >= 2, "--clients must be at least 2");
    anyhow::ensure!(args.kills >= 1, "--kills must be at least 1");
    anyhow::ensure!(!args.profiles.is_empty(), "--profiles names no profile");
    let progress = ProgressBar::new((args.kills * args.profiles.len()) as u64).with_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} kills {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut results = Vec::new();
    for &profile in &args.profiles {
        let (timers, rtt, goal) = match profile {
            Profile::Lan => (RaftTimers::lan(), 0, args.lan_goal_ms),
            Profile::Wan => (RaftTimers::wan(), args.wan_rtt_ms, args.wan_goal_ms),
        };
        let kills = run_profile(&args, profile, timers, rtt, &progress).await?;
        results.push(ProfileResult::new(profile, timers, rtt, goal, kills));
    }
    progress.finish_and_clear();
    print_table(&results);
    if let Some(path) = &args.plot {
        plot::write(&results, path).map_err(anyhow::Error::msg)?;
        eprintln!("wrote {}", path.display());
    }
    let misses: Vec<String> = results.iter().flat_map(ProfileResult::misses).collect();
    let lan = results.iter().find(|r| r.profile == Profile::Lan);
    let summary = serde_json::json!({
        "kills": args.kills,
        "candidates": args.candidates,
        "routers": args.routers,
        "clients": args.clients,
        "failover_ms_p50": lan.map(|r| r.failover_ms_p50),
        "failover_ms_p99": lan.map(|r| r.failover_ms_p99),
        "subtrees_rebuilt": results.iter().map(|r| r.subtrees_rebuilt).sum::<usize>(),
        "goals_met": misses.is_empty(),
        "misses": misses,
        "profiles": results,
    });
    if args.json {
        println!("{summary}");
    }
    if misses.is_empty() {
        Ok(std::process::ExitCode::SUCCESS)
    } else {
        for miss in &misses {
            eprintln!("goal missed: {miss}");
        }
        Ok(std::process::ExitCode::from(2))
    }
}

fn print_table(results: &[ProfileResult]) {
    println!(
        "{:>7} {:>4} {:>7} {:>8} {:>10} {:>11} {:>11} {:>7} {:>17} {:>17}",
        "profile",
        "kill",
        "killed",
        "new root",
        "serving ms",
        "failover ms",
        "reattach ms",
        "rebuilt",
        "within del/owed",
        "across del/owed"
    );
    for r in results {
        for (i, k) in r.per_kill.iter().enumerate() {
            println!(
                "{:>7} {:>4} {:>7} {:>8} {:>10.0} {:>11.0} {:>11.0} {:>7} {:>17} {:>17}",
                format!("{:?}", r.profile).to_lowercase(),
                i + 1,
                k.killed,
                k.new_root,
                k.serving_ms,
                k.failover_ms,
                k.reattach_ms,
                k.subtrees_rebuilt,
                format!("{}/{}", k.within_delivered, k.within_owed),
                format!("{}/{}", k.across_delivered, k.across_owed),
            );
        }
        println!(
            "{:>7}: failover p50 {:.0} ms, p99 {:.0} ms over {} kills (goal {:.0}); serving p99 {:.0} ms; reattach p99 {:.0} ms; {} links rebuilt; within subtrees {}/{} delivered during failover",
            format!("{:?}", r.profile).to_lowercase(),
            r.failover_ms_p50,
            r.failover_ms_p99,
            r.kills,
            r.goal_ms,
            r.serving_ms_p99,
            r.reattach_ms_p99,
            r.subtrees_rebuilt,
            r.within_delivered,
            r.within_owed
        );
    }
}

async fn run_profile(
    args: &FailoverArgs,
    profile: Profile,
    timers: RaftTimers,
    rtt_ms: u64,
    progress: &ProgressBar,
) -> anyhow::Result<Vec<KillResult>> {
    let mut tree = fast_tree_config();
    // Half the routers under the root, the rest one level down: links below the root exist
    // between routers as well as to clients.
    tree.max_child_routers = args.routers.div_ceil(2).max(1);
    tree.max_clients = args.clients.div_ceil(args.routers.max(1)) + 2;
    // The window after each kill outlasts the orphan grace and a rebalance, so a subtree
    // dropped and placed again late is still counted.
    let window = tree.orphan_grace + tree.rebalance_interval * 2;
    let spec = LocalClusterSpec {
        tree,
        candidates: args.candidates,
        raft: timers,
        ..LocalClusterSpec::default()
    };
    let name = format!("{profile:?}").to_lowercase();
    progress.set_message(format!("{name}: building the tree"));
    let mut cluster = LocalCluster::start(spec).await?;
    let result = async {
        if rtt_ms > 0 {
            cluster
                .delay_between_candidates(Duration::from_millis(rtt_ms))
                .await?;
        }
        drive(&mut cluster, args, &name, window, progress).await
    }
    .await;
    cluster.shutdown().await;
    result
}

async fn drive(
    cluster: &mut LocalCluster,
    args: &FailoverArgs,
    name: &str,
    window: Duration,
    progress: &ProgressBar,
) -> anyhow::Result<Vec<KillResult>> {
    let candidates: Vec<NodeId> = cluster.candidates().iter().map(|c| c.id).collect();
    let tag = key_tag(cluster.name(), "failover");
    cluster.wait_for_root(Duration::from_secs(30)).await?;
    for _ in 0..args.routers {
        cluster.add_router().await?;
    }
    cluster
        .wait_for_tree(1 + args.routers, Duration::from_secs(30), |_, _| {})
        .await
        .map_err(anyhow::Error::msg)?;
    let mut publishers = Vec::new();
    for _ in 0..args.clients {
        publishers.push(cluster.add_client(vec![tag]).await?);
    }
    let subscribers: Vec<NodeId> = publishers.iter().map(|p| p.identity.node_id).collect();
    cluster
        .wait_for_tree(
            1 + args.routers + args.clients,
            Duration::from_secs(60),
            |_, _| {},
        )
        .await
        .map_err(anyhow::Error::msg)?;
    // Let the tree settle (rebalancing done) before the first kill.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let base = Instant::now();
    let log: PublishLog = Arc::new(Mutex::new(Vec::new()));
    let interval = Duration::from_millis(args.interval_ms.max(1));
    let publishing = {
        let log = log.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            for turn in 0u64.. {
                tick.tick().await;
                let publisher = &publishers[turn as usize % publishers.len()];
                let at = Instant::now();
                let mut payload = BytesMut::with_capacity(16);
                payload.put_u64(at.duration_since(base).as_nanos() as u64);
                payload.put_u64(turn);
                if let Ok(mut log) = log.lock() {
                    log.push(Published {
                        turn,
                        origin: publisher.identity.node_id,
                        at,
                    });
                }
                publisher.handle.publish(tag, Bytes::from(payload)).await;
            }
        })
    };
    let mut results = Vec::new();
    let outcome = async {
        for kill in 1..=args.kills {
            progress.set_message(format!("{name}: kill {kill}"));
            let result = kill_once(cluster, &candidates, &subscribers, &log, window).await?;
            progress.set_message(format!("{name}: restarting candidate {}", result.killed));
            cluster
                .restart_candidate(result.killed)
                .await
                .with_context(|| format!("restarting candidate {}", result.killed))?;
            // Let the restarted candidate catch up with the group before the next kill.
            tokio::time::sleep(Duration::from_secs(2)).await;
            results.push(result);
            progress.inc(1);
        }
        anyhow::Ok(())
    }
    .await;
    publishing.abort();
    outcome?;
    Ok(results)
}
