//! A cluster of real nodes in one process, on loopback: throwaway CA and certificates, one
//! QUIC endpoint per node on 127.0.0.1, real mutual TLS. Used by `canopy demo`, the
//! benchmarks and the integration tests.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use canopy_net::{CertRole, CertificateAuthority, Credentials, Identity, NetConfig, NetEndpoint};
use canopy_raft::RaftTimers;
use canopy_tree::{
    check_structure, KeyTag, NodeId, NodeSummary, RootCandidate, TreeConfig, TreeShape,
};
use tokio::sync::mpsc;

use crate::limits::PeerLimits;
use crate::{spawn_node, Delivery, NodeHandle, NodeStatus};

mod candidates;
mod kv;
mod relay;
mod storm;

pub use relay::{LinkShape, UdpRelay};

pub use kv::LocalKvClient;

/// Id of the first root candidate (candidates are 1, 2, …); routers and clients count up
/// from the constants below.
pub const ROOT_ID: NodeId = 1;
pub const FIRST_ROUTER_ID: NodeId = 100;
pub const FIRST_CLIENT_ID: NodeId = 10_000;

/// Settings of a local cluster.
#[derive(Debug, Clone)]
pub struct LocalClusterSpec {
    pub cluster: String,
    pub region: String,
    pub tree: TreeConfig,
    pub net: NetConfig,
    pub seed: u64,
    /// Root candidates in the Raft group (1, 3 or 5).
    pub candidates: usize,
    pub raft: RaftTimers,
    /// Where the candidates keep their Raft state (`<dir>/candidate-<id>`); a temporary
    /// directory removed with the cluster if `None`.
    pub data_dir: Option<PathBuf>,
    /// Raft snapshot after this many log entries.
    pub snapshot_every: u64,
    /// Per-peer rate bounds of every node.
    pub limits: PeerLimits,
}

impl Default for LocalClusterSpec {
    fn default() -> Self {
        LocalClusterSpec {
            cluster: "local".into(),
            region: "local".into(),
            tree: fast_tree_config(),
            // Live links are re-checked (certificate expiry) once per heartbeat.
            net: NetConfig {
                recheck_interval: fast_tree_config().heartbeat_interval,
                ..NetConfig::default()
            },
            seed: 1,
            candidates: 1,
            raft: RaftTimers::lan(),
            data_dir: None,
            snapshot_every: 1000,
            limits: PeerLimits::default(),
        }
    }
}

/// Timers for a loopback cluster: fast enough for a demo, slow enough for a loaded laptop.
pub fn fast_tree_config() -> TreeConfig {
    let ms = Duration::from_millis;
    TreeConfig {
        heartbeat_interval: ms(200),
        root_heartbeat_interval: ms(100),
        child_timeout: ms(1200),
        parent_timeout: ms(1200),
        join_timeout: ms(500),
        join_backoff_max: ms(4000),
        interest_batch_delay: ms(10),
        rebalance_interval: ms(1000),
        orphan_grace: ms(3000),
        max_child_routers: 4,
        max_clients: 16,
        imbalance_bound: 2,
        upward_filters: true,
        reallocate: false,
        limits: Default::default(),
    }
}

/// The nodes that say they serve as root (a sound cluster has exactly one).
pub fn serving_roots(statuses: &[NodeStatus]) -> Vec<NodeId> {
    statuses
        .iter()
        .filter(|s| s.serving_root)
        .map(|s| s.id)
        .collect()
}

/// A running node of a local cluster.
#[derive(Clone)]
pub struct LocalNode {
    pub identity: Identity,
    pub handle: NodeHandle,
    pub subscriptions: Vec<KeyTag>,
}

/// Real nodes on loopback sharing one throwaway CA.
pub struct LocalCluster {
    spec: LocalClusterSpec,
    ca: CertificateAuthority,
    roots: Vec<RootCandidate>,
    data_dir: PathBuf,
    _temp_dir: Option<tempfile::TempDir>,
    nodes: Vec<LocalNode>,
    next_router: NodeId,
    next_client: NodeId,
    delivery_tx: mpsc::UnboundedSender<Delivery>,
    deliveries: mpsc::UnboundedReceiver<Delivery>,
    /// The group key material every client of this cluster holds (routers never do).
    group_keys: canopy_kv::GroupKeys,
    /// Relays between root candidates, by (from, to), when their links are delayed.
    candidate_relays: BTreeMap<(NodeId, NodeId), UdpRelay>,
    kv_clients: Vec<LocalKvClient>,
    /// Each root candidate's own thread: on a real deployment each candidate is a process
    /// on a machine of its own, so a storm of thousands of nodes in this process must not
    /// starve the root group of CPU time any more than it would starve another machine.
    candidate_runtimes: BTreeMap<NodeId, tokio::runtime::Runtime>,
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for (_, runtime) in std::mem::take(&mut self.candidate_runtimes) {
            runtime.shutdown_background();
        }
    }
}

impl LocalCluster {
    /// Generates a CA and starts the root candidates; returns once the Raft group's leader
    /// serves as root.
    pub async fn start(spec: LocalClusterSpec) -> anyhow::Result<LocalCluster> {
        anyhow::ensure!(
            (1..=9).contains(&spec.candidates),
            "a local cluster needs 1 to 9 root candidates, not {}",
            spec.candidates
        );
        let ca = CertificateAuthority::generate(&spec.cluster)?;
        let (delivery_tx, deliveries) = mpsc::unbounded_channel();
        let (data_dir, temp_dir) = match &spec.data_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let temp = tempfile::Builder::new().prefix("canopy-raft-").tempdir()?;
                (temp.path().to_owned(), Some(temp))
            }
        };
        let mut cluster = LocalCluster {
            spec,
            ca,
            roots: Vec::new(),
            data_dir,
            _temp_dir: temp_dir,
            nodes: Vec::new(),
            next_router: FIRST_ROUTER_ID,
            next_client: FIRST_CLIENT_ID,
            delivery_tx,
            deliveries,
            group_keys: canopy_kv::GroupKeys::generate()?,
            kv_clients: Vec::new(),
            candidate_relays: BTreeMap::new(),
            candidate_runtimes: BTreeMap::new(),
        };
        let mut endpoints = Vec::new();
        for id in (ROOT_ID..).take(cluster.spec.candidates) {
            let (endpoint, events) =
                cluster.on_candidate_runtime(id, |c| c.bind(id, CertRole::RootCandidate))??;
            cluster.roots.push(RootCandidate {
                id,
                address: endpoint.local_addr().to_string(),
            });
            endpoints.push((endpoint, events));
        }
        let members: BTreeMap<NodeId, String> = cluster
            .roots
            .iter()
            .map(|r| (r.id, r.address.clone()))
            .collect();
        for (endpoint, events) in endpoints {
            let group = cluster.open_group(&endpoint).await?;
            group.initialize(members.clone()).await?;
            cluster.spawn_candidate(endpoint, events, group)?;
        }
        cluster.wait_for_root(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    fn node_seed(&self, id: NodeId) -> u64 {
        self.spec.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    /// The cluster's CA (to issue extra certificates in tests).
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.spec.cluster
    }

    /// The first root candidate's address (the root of a one-candidate cluster).
    pub fn root_address(&self) -> SocketAddr {
        self.nodes[0].handle.address()
    }

    /// Issues credentials for a node of this cluster.
    pub fn credentials(&self, id: NodeId, role: CertRole) -> anyhow::Result<Credentials> {
        let identity = Identity {
            cluster: self.spec.cluster.clone(),
            node_id: id,
            role,
            region: self.spec.region.clone(),
        };
        let (not_before, not_after) = canopy_net::default_validity();
        let issued = self.ca.issue(&identity, not_before, not_after)?;
        Ok(Credentials::from_pem(
            &self.ca.cert_pem,
            &issued.cert_pem,
            &issued.key_pem,
        )?)
    }

    fn bind(
        &self,
        id: NodeId,
        role: CertRole,
    ) -> anyhow::Result<(NetEndpoint, canopy_net::NetEvents)> {
        let creds = self.credentials(id, role)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Ok(NetEndpoint::bind(addr, creds, self.spec.net.clone())?)
    }

    fn spawn(
        &mut self,
        endpoint: NetEndpoint,
        events: canopy_net::NetEvents,
        subscriptions: Vec<KeyTag>,
        roots: Vec<RootCandidate>,
    ) -> anyhow::Result<LocalNode> {
        let (node, deliveries) = self.spawn_bare(endpoint, events, subscriptions, roots)?;
        let tx = self.delivery_tx.clone();
        let mut deliveries = deliveries;
        tokio::spawn(async move {
            while let Some(d) = deliveries.recv().await {
                if tx.send(d).is_err() {
                    break;
                }
            }
        });
        Ok(node)
    }

    /// Starts a node whose deliveries go to the caller.
    fn spawn_bare(
        &mut self,
        endpoint: NetEndpoint,
        events: canopy_net::NetEvents,
        subscriptions: Vec<KeyTag>,
        roots: Vec<RootCandidate>,
    ) -> anyhow::Result<(LocalNode, mpsc::Receiver<Delivery>)> {
        let identity = endpoint.identity().clone();
        let seed = self.node_seed(identity.node_id);
        let (handle, deliveries) = spawn_node(
            endpoint,
            events,
            self.spec.tree.clone(),
            roots,
            seed,
            subscriptions.clone(),
            self.spec.limits.clone(),
        )?;
        let node = LocalNode {
            identity,
            handle,
            subscriptions,
        };
        self.nodes.push(node.clone());
        Ok((node, deliveries))
    }

    /// Starts a router.
    pub async fn add_router(&mut self) -> anyhow::Result<LocalNode> {
        let id = self.next_router;
        self.next_router += 1;
        let (endpoint, events) = self.bind(id, CertRole::Router)?;
        self.spawn(endpoint, events, Vec::new(), self.roots.clone())
    }

    /// Starts a client that wants `subscriptions`.
    pub async fn add_client(&mut self, subscriptions: Vec<KeyTag>) -> anyhow::Result<LocalNode> {
        let id = self.next_client;
        self.next_client += 1;
        let (endpoint, events) = self.bind(id, CertRole::Client)?;
        self.spawn(endpoint, events, subscriptions, self.roots.clone())
    }

    /// Starts a client whose certificate is valid only until `not_after` (for tests of
    /// certificates that expire while their links live).
    pub async fn add_client_expiring(
        &mut self,
        not_after: time::OffsetDateTime,
        subscriptions: Vec<KeyTag>,
    ) -> anyhow::Result<LocalNode> {
        let id = self.next_client;
        self.next_client += 1;
        let identity = Identity {
            cluster: self.spec.cluster.clone(),
            node_id: id,
            role: CertRole::Client,
            region: self.spec.region.clone(),
        };
        let (not_before, _) = canopy_net::default_validity();
        let issued = self.ca.issue(&identity, not_before, not_after)?;
        let creds = Credentials::from_pem(&self.ca.cert_pem, &issued.cert_pem, &issued.key_pem)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let (endpoint, events) = NetEndpoint::bind(addr, creds, self.spec.net.clone())?;
        self.spawn(endpoint, events, subscriptions, self.roots.clone())
    }

    /// Starts a client that sends its first join request to candidate `first`.
    pub async fn add_client_asking_first(
        &mut self,
        first: NodeId,
        subscriptions: Vec<KeyTag>,
    ) -> anyhow::Result<LocalNode> {
        let id = self.next_client;
        self.next_client += 1;
        let (endpoint, events) = self.bind(id, CertRole::Client)?;
        let mut roots = self.roots.clone();
        roots.sort_by_key(|r| r.id != first);
        self.spawn(endpoint, events, subscriptions, roots)
    }

    /// Every node started (including stopped ones).
    pub fn nodes(&self) -> &[LocalNode] {
        &self.nodes
    }

    /// One node by id.
    pub fn node(&self, id: NodeId) -> Option<&LocalNode> {
        self.nodes.iter().find(|n| n.identity.node_id == id)
    }

    /// Status of every running node.
    pub async fn statuses(&self) -> Vec<NodeStatus> {
        let mut out = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            if let Some(status) = node.handle.status().await {
                out.push(status);
            }
        }
        out
    }

    /// Every running node's counters, to diff against later.
    pub async fn counters(&self) -> std::collections::HashMap<NodeId, crate::NodeCounters> {
        self.statuses()
            .await
            .into_iter()
            .map(|s| (s.id, s.counters))
            .collect()
    }

    /// Checks the tree formed by the running nodes under the candidate serving as root
    /// (candidates that do not serve are not part of the tree).
    pub async fn check(&self) -> Result<TreeShape, String> {
        let statuses = self.statuses().await;
        let serving = serving_roots(&statuses);
        let root = match serving[..] {
            [root] => root,
            [] => return Err("no candidate serves as root".into()),
            _ => return Err(format!("several candidates serve as root: {serving:?}")),
        };
        let summaries: Vec<NodeSummary> = statuses
            .into_iter()
            .filter(|s| s.serving_root || !self.is_candidate(s.id))
            .map(|s| NodeSummary {
                id: s.id,
                role: s.role,
                parent: s.parent,
                children: s.children,
            })
            .collect();
        check_structure(&summaries, root)
    }

    fn is_candidate(&self, id: NodeId) -> bool {
        self.roots.iter().any(|r| r.id == id)
    }

    /// Waits until the running nodes form one sound tree whose size is `expected` nodes,
    /// calling `progress(attached, total)` as it goes.
    pub async fn wait_for_tree(
        &self,
        expected: usize,
        timeout: Duration,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<TreeShape, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let statuses = self.statuses().await;
            let attached = statuses.iter().filter(|s| s.parent.is_some()).count() + 1;
            let expected = expected.max(1);
            progress(attached.min(expected), expected);
            let last = self.check().await;
            if let Ok(shape) = &last {
                if shape.live_nodes == expected {
                    return last;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "no sound tree of {expected} nodes within {timeout:?}: {last:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes every delivery received so far.
    pub fn take_deliveries(&mut self) -> Vec<Delivery> {
        let mut out = Vec::new();
        while let Ok(d) = self.deliveries.try_recv() {
            out.push(d);
        }
        out
    }

    /// Waits for the next delivery, up to `timeout`.
    pub async fn next_delivery(&mut self, timeout: Duration) -> Option<Delivery> {
        tokio::time::timeout(timeout, self.deliveries.recv())
            .await
            .ok()
            .flatten()
    }

    /// Stops every node.
    pub async fn shutdown(&self) {
        for client in &self.kv_clients {
            client.kv.stop().await;
        }
        let mut stopping = tokio::task::JoinSet::new();
        for node in &self.nodes {
            let handle = node.handle.clone();
            stopping.spawn(async move { handle.shutdown().await });
        }
        while stopping.join_next().await.is_some() {}
    }
}
