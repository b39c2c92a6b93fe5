//! `canopy run`: one node from a configuration file, until Ctrl-C or SIGTERM (either leaves
//! the tree gracefully).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use canopy_net::{CertRole, Credentials, NetConfig, NetEndpoint};
use canopy_node::kv::{replica_config, spawn_kv, KvNode, NodeApi, NodeCredentials};
use canopy_node::metrics::MetricsSources;
use canopy_node::{spawn_candidate, spawn_node, Delivery, NodeConfig, NodeHandle};
use canopy_raft::{GroupConfig, RootGroup};
use canopy_tree::RootCandidate;
use tracing::{debug, info, warn};

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
        dial_via: std::sync::Arc::new(config.dial_via.iter().map(|d| (d.to, d.via)).collect()),
        ..NetConfig::default()
    });
    let files = config.tls.files();
    let (endpoint, events) = NetEndpoint::bind(config.listen, creds, net_config)
        .with_context(|| format!("binding {}", config.listen))?;
    if files.crl.is_some() {
        // At start a list that does not load is an error; later, a broken file keeps the
        // lists in force.
        files
            .apply(&endpoint)
            .context("loading the revocation list")?;
    }
    let reload_now = std::sync::Arc::new(tokio::sync::Notify::new());
    let watcher = canopy_node::reload::spawn_watcher(
        endpoint.clone(),
        files,
        std::time::Duration::from_millis(config.tls.reload_ms),
        reload_now.clone(),
    );
    let _watcher = AbortOnDrop(watcher);
    let signals = spawn_signal_handler(reload_now)?;
    let _signals = AbortOnDrop(signals.0);
    let mut terminate = signals.1;
    let roots: Vec<RootCandidate> = config
        .root_candidates
        .iter()
        .map(|r| RootCandidate {
            id: r.id,
            address: r.address.to_string(),
        })
        .collect();
    let limits = config.limits.clone();
    if identity.role != CertRole::Client {
        if let Some(keys) = &config.kv.group_keys {
            anyhow::bail!(
                "{}: kv.group_keys: a {} must not hold the group key file ({}); only client \
                 nodes open what the tree carries",
                config_path.display(),
                identity.role.as_str(),
                keys.display()
            );
        }
        if !config.subscribe.is_empty() {
            anyhow::bail!(
                "{}: subscribe: only client nodes subscribe to keys (this is a {})",
                config_path.display(),
                identity.role.as_str()
            );
        }
    }
    let authority = endpoint.authority().clone();
    let mut metrics_group = None;
    let (handle, deliveries) = if identity.role == CertRole::RootCandidate {
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
        metrics_group = Some(group.clone());
        spawn_candidate(
            endpoint.clone(),
            events,
            tree,
            roots,
            seed_from_clock(),
            group,
            limits,
        )?
    } else {
        spawn_node(
            endpoint.clone(),
            events,
            tree,
            roots,
            seed_from_clock(),
            Vec::new(),
            limits,
        )?
    };
    let (kv, mut deliveries) = match (&config.kv.group_keys, identity.role) {
        (Some(keys), CertRole::Client) => {
            let keys = canopy_kv::GroupKeys::load(keys)?;
            let replica = canopy_kv::Replica::open(
                &config.kv.data_dir,
                replica_config(),
                std::sync::Arc::new(NodeCredentials::new(authority, identity.node_id)),
                keys,
            )
            .with_context(|| format!("opening the replica in {}", config.kv.data_dir.display()))?;
            let kv = spawn_kv(handle.clone(), deliveries, replica);
            for pattern in &config.subscribe {
                kv.subscribe(pattern).await.with_context(|| {
                    format!("{}: subscribe: {pattern:?}", config_path.display())
                })?;
            }
            (Some(kv), None)
        }
        (None, CertRole::Client) => {
            warn!(
                "{}: no kv.group_keys: this client holds no replica and cannot read what it \
                 receives (create the file with `canopy keys init`)",
                config_path.display()
            );
            (None, Some(deliveries))
        }
        _ => (None, Some(deliveries)),
    };
    info!(
        node = identity.node_id,
        role = identity.role.as_str(),
        listen = %handle.address(),
        "node running"
    );
    let _metrics = match config.metrics.listen {
        Some(listen) => {
            let sources = MetricsSources {
                node: handle.clone(),
                net: endpoint,
                group: metrics_group,
            };
            let (address, task) = canopy_node::metrics::serve(listen, sources)
                .await
                .with_context(|| {
                    format!(
                        "{}: metrics.listen: binding {listen}",
                        config_path.display()
                    )
                })?;
            info!(%address, "serving metrics at /metrics");
            Some(AbortOnDrop(task))
        }
        None => None,
    };
    let api = serve_api(&config, &handle, identity.role, kv.clone());
    let replica_ended = async {
        match &kv {
            Some(kv) => kv.stopped().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = api => result?,
        () = drain(deliveries.as_mut()) => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => info!("SIGTERM"),
        () = replica_ended => {
            // A client that cannot apply what it receives must not look healthy: leave, so
            // that a supervisor restarts it.
            tracing::error!("the replica stopped; leaving the tree");
            handle.leave().await;
            return Ok(ExitCode::FAILURE);
        }
    }
    info!("leaving the tree");
    if let Some(kv) = &kv {
        kv.stop().await;
    }
    handle.leave().await;
    Ok(ExitCode::SUCCESS)
}

/// Serves the application API on the configured socket until the node stops.
async fn serve_api(
    config: &NodeConfig,
    handle: &NodeHandle,
    role: CertRole,
    kv: Option<KvNode>,
) -> anyhow::Result<()> {
    let api = NodeApi::new(handle.clone(), role.as_str(), kv);
    info!(socket = %config.api.socket.display(), "serving the application API");
    canopy_api::serve(
        &config.api.socket,
        std::sync::Arc::new(api),
        std::future::pending(),
    )
    .await
    .with_context(|| format!("serving the API on {}", config.api.socket.display()))
}

/// Deliveries nobody opens (a router, or a client without group keys) are only logged.
async fn drain(deliveries: Option<&mut tokio::sync::mpsc::Receiver<Delivery>>) {
    let Some(deliveries) = deliveries else {
        return std::future::pending().await;
    };
    while let Some(d) = deliveries.recv().await {
        debug!(
            origin = d.origin,
            seq = d.origin_seq,
            bytes = d.payload.len(),
            "delivery"
        );
    }
}

/// A seed for the node's placement tie-breaking; it need not be secret, only differ
/// between nodes and runs.
/// The node's seed: OS randomness (std's `RandomState` keys) mixed with the clock. It also
/// keys the permutation of its link sets' slot numbers, so peers must not be able to guess it.
fn seed_from_clock() -> u64 {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    std::collections::hash_map::RandomState::new().hash_one(nanos ^ u64::from(std::process::id()))
}

/// Aborts a background task when the node stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `SIGHUP` reloads the certificate, key, CA bundle and revocation list now; `SIGTERM` (what
/// service managers send) arrives on the returned channel and leaves the tree like Ctrl-C.
fn spawn_signal_handler(
    reload_now: std::sync::Arc<tokio::sync::Notify>,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, tokio::sync::mpsc::Receiver<()>)> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(()) = hangup.recv() => {
                    info!("SIGHUP: reloading credentials");
                    reload_now.notify_one();
                }
                Some(()) = term.recv() => {
                    let _ = tx.send(()).await;
                }
                else => break,
            }
        }
    });
    Ok((task, rx))
}
