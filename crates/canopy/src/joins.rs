//! `canopy bench joins`: a join storm. Starts a root group, then every router and client at
//! once, and measures how long until all of them are attached in one sound tree, how many
//! Raft entries the joins cost, and whether the root group stayed stable (leader changes,
//! elections asked, term changes during the storm).
//!
//! Exits 2 when a goal is missed: not every node attached within the timeout, the storm took
//! longer than `--goal-s`, or the leader changed.

use std::process::ExitCode;
use std::time::Duration;

use canopy_node::local::{LocalCluster, LocalClusterSpec};
use canopy_raft::RaftTimers;
use canopy_tree::TreeConfig;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

#[derive(Args)]
pub struct JoinsArgs {
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    #[arg(long, default_value_t = 200)]
    routers: usize,
    /// Root candidates in the Raft group.
    #[arg(long, default_value_t = 3)]
    candidates: usize,
    /// Seconds within which every node must be attached.
    #[arg(long, default_value_t = 15.0)]
    goal_s: f64,
    /// Seconds to wait before giving up.
    #[arg(long, default_value_t = 120)]
    timeout_s: u64,
    /// Print one JSON object as the last stdout line.
    #[arg(long)]
    json: bool,
    /// Every second, print to stderr how many are attached and each root candidate's
    /// handshakes (in progress, queued, refused as busy).
    #[arg(long)]
    trace: bool,
}

#[derive(Debug, Serialize)]
struct JoinsResult {
    clients: usize,
    routers: usize,
    candidates: usize,
    /// Nodes attached (with a parent) when the run ended, and how many were started.
    attached: usize,
    expected: usize,
    /// The tree under the serving root was sound and held every node.
    sound: bool,
    tree_depth: Option<usize>,
    /// From the burst of starts to every node attached in a sound tree.
    seconds: Option<f64>,
    /// When half and 99 % of the nodes had a parent.
    p50_attached_s: Option<f64>,
    p99_attached_s: Option<f64>,
    joins_per_sec: Option<f64>,
    /// Log entries the Raft group appended during the storm, and per node started.
    raft_entries: u64,
    raft_entries_per_join: f64,
    /// Candidates that began serving as root during the storm (0 in a stable group).
    leader_changes: u64,
    /// Raft term at the start and at the end.
    term_before: u64,
    term_after: u64,
    elections_asked: u64,
    /// Join requests the nodes sent (first tries and retries).
    join_requests: u64,
    goal_s: f64,
    goal_met: bool,
}

/// What the root group looks like at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct GroupSample {
    term: u64,
    last_log_index: u64,
    became_root: u64,
    elections_asked: u64,
}

async fn sample_group(cluster: &LocalCluster) -> GroupSample {
    let mut sample = GroupSample::default();
    for candidate in cluster.candidates() {
        let Some(node) = cluster.node(candidate.id) else {
            continue;
        };
        if let Some(group) = node.handle.group() {
            let status = group.status().await;
            sample.term = sample.term.max(status.term);
            sample.last_log_index = sample
                .last_log_index
                .max(status.last_log_index.unwrap_or(0));
        }
        let status = tokio::time::timeout(Duration::from_secs(1), node.handle.status()).await;
        if let Ok(Some(status)) = status {
            sample.became_root += status.counters.became_root;
            sample.elections_asked += status.counters.elections_asked;
        }
    }
    sample
}

fn trace_line(cluster: &LocalCluster, began: tokio::time::Instant, attached: usize) {
    let candidates: Vec<String> = cluster
        .candidates()
        .iter()
        .filter_map(|c| cluster.node(c.id))
        .map(|node| {
            let net = node.handle.net_stats();
            format!(
                "{}:{}/{}/{}",
                node.handle.id(),
                net.handshakes,
                net.handshakes_waiting,
                net.refused_busy
            )
        })
        .collect();
    eprintln!(
        "{:6.1} s attached {attached:6}  candidates (handshaking/queued/refused) {}",
        began.elapsed().as_secs_f64(),
        candidates.join(" ")
    );
}

/// Tree settings for a storm: the production defaults, with room for every client.
fn storm_tree(routers: usize, clients: usize) -> TreeConfig {
    let mut tree = TreeConfig::default();
    let per_router = clients.div_ceil(routers.max(1));
    tree.max_clients = tree.max_clients.max(per_router + per_router / 4 + 2);
    tree
}

pub async fn run(args: JoinsArgs) -> anyhow::Result<ExitCode> {
    let tree = storm_tree(args.routers, args.clients);
    let spec = LocalClusterSpec {
        tree: tree.clone(),
        candidates: args.candidates,
        raft: RaftTimers::lan(),
        net: canopy_net::NetConfig {
            recheck_interval: tree.heartbeat_interval,
            ..canopy_net::NetConfig::default()
        },
        ..LocalClusterSpec::default()
    };
    let mut cluster = LocalCluster::start(spec).await?;
    let result = storm(&mut cluster, &args).await;
    eprintln!("stopping {} nodes", cluster.nodes().len());
    cluster.shutdown().await;
    let result = result?;
    report(&result, args.json)?;
    Ok(if result.goal_met {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

async fn storm(cluster: &mut LocalCluster, args: &JoinsArgs) -> anyhow::Result<JoinsResult> {
    let expected = args.routers + args.clients;
    let bar = ProgressBar::new(expected as u64).with_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {elapsed}")?
            .progress_chars("=> "),
    );
    bar.set_message("certificates");
    let before = sample_group(cluster).await;
    let first = cluster.nodes().len();
    let began =
        cluster.add_nodes_at_once(args.routers, vec![Vec::new(); args.clients], |n, _| {
            if n % 256 == 0 {
                bar.set_position(n as u64)
            }
        })?;
    let joiners: Vec<_> = cluster.nodes()[first..]
        .iter()
        .map(|n| n.handle.topology())
        .collect();
    bar.set_message("attached");
    bar.set_position(0);
    let deadline = began + Duration::from_secs(args.timeout_s);
    let (mut p50, mut p99, mut seconds, mut shape) = (None, None, None, None);
    let mut attached;
    let mut next_trace = began;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        attached = joiners
            .iter()
            .filter(|t| t.borrow().parent.is_some())
            .count();
        bar.set_position(attached as u64);
        if args.trace && tokio::time::Instant::now() >= next_trace {
            next_trace += Duration::from_secs(1);
            bar.suspend(|| trace_line(cluster, began, attached));
        }
        let elapsed = began.elapsed().as_secs_f64();
        if p50.is_none() && attached * 2 >= expected {
            p50 = Some(elapsed);
        }
        if p99.is_none() && attached * 100 >= expected * 99 {
            p99 = Some(elapsed);
        }
        if attached == expected {
            // Every node has a parent: the tree must also be sound (one root, no loops,
            // parents and children agreeing).
            bar.set_message("checking");
            let checked = tokio::time::timeout(Duration::from_secs(10), cluster.check()).await;
            bar.set_message("attached");
            if let Ok(Ok(tree)) = checked {
                if tree.live_nodes == expected + 1 {
                    seconds = Some(elapsed);
                    shape = Some(tree);
                    break;
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    bar.finish_and_clear();
    eprintln!(
        "{attached}/{expected} attached after {:.1} s; collecting counters",
        began.elapsed().as_secs_f64()
    );
    let after = sample_group(cluster).await;
    let join_requests = cluster.nodes()[first..]
        .iter()
        .map(|n| n.handle.clone())
        .collect::<Vec<_>>();
    let mut asking = tokio::task::JoinSet::new();
    for handle in join_requests {
        asking.spawn(async move {
            tokio::time::timeout(Duration::from_secs(5), handle.status())
                .await
                .ok()
                .flatten()
                .map(|status| status.counters.join_requests)
        });
    }
    let (mut sent, mut silent) = (0, 0);
    while let Some(answer) = asking.join_next().await {
        match answer {
            Ok(Some(requests)) => sent += requests,
            _ => silent += 1,
        }
    }
    if silent > 0 {
        eprintln!("{silent} nodes did not answer a status request within 1 s");
    }
    let raft_entries = after.last_log_index.saturating_sub(before.last_log_index);
    let leader_changes = after.became_root.saturating_sub(before.became_root);
    let goal_met =
        seconds.is_some_and(|s| s <= args.goal_s) && leader_changes == 0 && shape.is_some();
    Ok(JoinsResult {
        clients: args.clients,
        routers: args.routers,
        candidates: args.candidates,
        attached,
        expected,
        sound: shape.is_some(),
        tree_depth: shape.as_ref().map(|s| s.depth),
        seconds,
        p50_attached_s: p50,
        p99_attached_s: p99,
        joins_per_sec: seconds.map(|s| expected as f64 / s.max(1e-9)),
        raft_entries,
        raft_entries_per_join: raft_entries as f64 / expected.max(1) as f64,
        leader_changes,
        term_before: before.term,
        term_after: after.term,
        elections_asked: after.elections_asked.saturating_sub(before.elections_asked),
        join_requests: sent,
        goal_s: args.goal_s,
        goal_met,
    })
}

fn report(result: &JoinsResult, json: bool) -> anyhow::Result<()> {
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    println!(
        "join storm: {} routers + {} clients, {} root candidates",
        result.routers, result.clients, result.candidates
    );
    println!(
        "  attached {}/{} in a sound tree: {} (depth {})",
        result.attached,
        result.expected,
        if result.sound { "yes" } else { "NO" },
        result.tree_depth.map_or("-".into(), |d| d.to_string())
    );
    println!(
        "  all attached after {} s (goal {} s); half after {} s, 99 % after {} s; {} joins/s",
        opt(result.seconds),
        result.goal_s,
        opt(result.p50_attached_s),
        opt(result.p99_attached_s),
        result
            .joins_per_sec
            .map_or("-".into(), |v| format!("{v:.0}"))
    );
    println!(
        "  raft: {} entries ({:.3} per join), term {} -> {}, {} leader changes, {} elections asked",
        result.raft_entries,
        result.raft_entries_per_join,
        result.term_before,
        result.term_after,
        result.leader_changes,
        result.elections_asked
    );
    println!("  join requests sent: {}", result.join_requests);
    println!("  goal {}", if result.goal_met { "met" } else { "MISSED" });
    if json {
        println!("{}", serde_json::to_string(result)?);
    }
    Ok(())
}
