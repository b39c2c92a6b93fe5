//! `canopy run`: one node from a configuration file, until Ctrl-C.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use canopy_net::{CertRole, Credentials, NetConfig, NetEndpoint};
use canopy_node::{key_tag, spawn_candidate, spawn_node, NodeConfig};
use canopy_raft::{GroupConfig, RootGroup};
use canopy_tree::RootCandidate;
use tracing::info;

pub async fn run(config_path: &Path) -> anyhow::Result<ExitCode> {
    let config = NodeConfig::load(config_path)?;
    let tree = config
        .tree_config()
        .map_err(|(key, message)| anyhow::anyhow!("{}: {key}: {message}", config_path.display()))?;
    let creds = Credentials::load(&config.tls.ca, &config.tls.cert, &config.tls.key)?;
    let identity = creds.identity().clone();
    if !config.region.is_empty() && config.region != identity.region {
        anyhow::bail!(
            "{}: region: {:?} but the certificate says {:?}",
            config_path.display(),
            config.region,
            identity.region
        );
    }
    let net_config = config.limits.net_config(NetConfig {
        max_frame_len: config.max_frame_bytes,
        // Live links are re-checked (certificate expiry) once per heartbeat.
        recheck_interval: tree.heartbeat_interval,
        ..NetConfig::default()
    });
    let (endpoint, events) = NetEndpoint::bind(config.listen, creds, net_config)
        .with_context(|| format!("binding {}", config.listen))?;
    let roots: Vec<RootCandidate> = config
        .root_candidates
        .iter()
        .map(|r| RootCandidate {
            id: r.id,
            address: r.address.to_string(),
        })
        .collect();
    let limits = config.limits.clone();
    let tags = config
        .subscribe
        .iter()
        .map(|k| key_tag(&identity.cluster, k))
        .collect();
    let (handle, mut deliveries) = if identity.role == CertRole::RootCandidate {
        let timers = config.raft.timers().map_err(|(key, message)| {
            anyhow::anyhow!("{}: {key}: {message}", config_path.display())
        })?;
        let group_config = GroupConfig {
            id: identity.node_id,
            data_dir: config
                .raft
                .data_dir
                .join(format!("candidate-{}", identity.node_id)),
            timers,
            tree: std::sync::Arc::new(tree.clone()),
            snapshot_every: config.raft.snapshot_every,
        };
        let group = RootGroup::open(group_config, endpoint.clone())
            .await
            .with_context(|| {
                format!(
                    "opening the Raft state in {}",
                    config.raft.data_dir.display()
                )
            })?;
        if config.raft.bootstrap {
            let members = roots.iter().map(|r| (r.id, r.address.clone())).collect();
            group.initialize(members).await?;
        }
        spawn_candidate(
            endpoint,
            events,
            tree,
            roots,
            seed_from_clock(),
            group,
            limits,
        )?
    } else {
        spawn_node(
            endpoint,
            events,
            tree,
            roots,
            seed_from_clock(),
            tags,
            limits,
        )?
    };
    info!(
        node = identity.node_id,
        role = identity.role.as_str(),
        listen = %handle.address(),
        "node running"
    );
    loop {
        tokio::select! {
            d = deliveries.recv() => match d {
                Some(d) => info!(origin = d.origin, seq = d.origin_seq, bytes = d.payload.len(), "delivery"),
                None => break,
            },
            _ = tokio::signal::ctrl_c() => {
                info!("leaving the tree");
                handle.leave().await;
                break;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A seed for the node's placement tie-breaking; it need not be secret, only differ
/// between nodes and runs.
/// The node's seed: OS randomness (std's `RandomState` keys) mixed with the clock. It also
/// keys the node's filter hashing, so peers must not be able to guess it.
fn seed_from_clock() -> u64 {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    std::collections::hash_map::RandomState::new().hash_one(nanos ^ u64::from(std::process::id()))
}
