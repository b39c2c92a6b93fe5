//! A cluster of real nodes in one process, on loopback: throwaway CA and certificates, one
//! QUIC endpoint per node on 127.0.0.1, real mutual TLS. Used by `canopy demo`, the
//! benchmarks and the integration tests.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use canopy_net::{CertRole, CertificateAuthority, Credentials, Identity, NetConfig, NetEndpoint};
use canopy_tree::{
    check_structure, KeyTag, NodeId, NodeSummary, RootCandidate, TreeConfig, TreeShape,
};
use tokio::sync::mpsc;

use crate::{spawn_node, Delivery, NodeHandle, NodeStatus};

/// Id of the root; routers and clients count up from these.
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
}

impl Default for LocalClusterSpec {
    fn default() -> Self {
        LocalClusterSpec {
            cluster: "local".into(),
            region: "local".into(),
            tree: fast_tree_config(),
            net: NetConfig::default(),
            seed: 1,
        }
    }
}

/// Timers for a loopback cluster: fast enough for a demo, slow enough for a loaded laptop.
pub fn fast_tree_config() -> TreeConfig {
    let ms = Duration::from_millis;
    TreeConfig {
        heartbeat_interval: ms(200),
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
        filter_fp_rate: 0.001,
    }
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
    nodes: Vec<LocalNode>,
    next_router: NodeId,
    next_client: NodeId,
    delivery_tx: mpsc::UnboundedSender<Delivery>,
    deliveries: mpsc::UnboundedReceiver<Delivery>,
}

impl LocalCluster {
    /// Generates a CA and starts the root.
    pub async fn start(spec: LocalClusterSpec) -> anyhow::Result<LocalCluster> {
        let ca = CertificateAuthority::generate(&spec.cluster)?;
        let (delivery_tx, deliveries) = mpsc::unbounded_channel();
        let mut cluster = LocalCluster {
            spec,
            ca,
            roots: Vec::new(),
            nodes: Vec::new(),
            next_router: FIRST_ROUTER_ID,
            next_client: FIRST_CLIENT_ID,
            delivery_tx,
            deliveries,
        };
        let (endpoint, events) = cluster.bind(ROOT_ID, CertRole::RootCandidate)?;
        cluster.roots = vec![RootCandidate {
            id: ROOT_ID,
            address: endpoint.local_addr().to_string(),
        }];
        cluster.spawn(endpoint, events, Vec::new())?;
        Ok(cluster)
    }

    /// The cluster's CA (to issue extra certificates in tests).
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.spec.cluster
    }

    /// The root's address.
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
    ) -> anyhow::Result<(NetEndpoint, mpsc::Receiver<canopy_net::NetEvent>)> {
        let creds = self.credentials(id, role)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Ok(NetEndpoint::bind(addr, creds, self.spec.net.clone())?)
    }

    fn spawn(
        &mut self,
        endpoint: NetEndpoint,
        events: mpsc::Receiver<canopy_net::NetEvent>,
        subscriptions: Vec<KeyTag>,
    ) -> anyhow::Result<LocalNode> {
        let identity = endpoint.identity().clone();
        let seed = self.spec.seed ^ identity.node_id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let (handle, mut deliveries) = spawn_node(
            endpoint,
            events,
            self.spec.tree.clone(),
            self.roots.clone(),
            seed,
            subscriptions.clone(),
        )?;
        let tx = self.delivery_tx.clone();
        tokio::spawn(async move {
            while let Some(d) = deliveries.recv().await {
                if tx.send(d).is_err() {
                    break;
                }
            }
        });
        let node = LocalNode {
            identity,
            handle,
            subscriptions,
        };
        self.nodes.push(node.clone());
        Ok(node)
    }

    /// Starts a router.
    pub async fn add_router(&mut self) -> anyhow::Result<LocalNode> {
        let id = self.next_router;
        self.next_router += 1;
        let (endpoint, events) = self.bind(id, CertRole::Router)?;
        self.spawn(endpoint, events, Vec::new())
    }

    /// Starts a client that wants `subscriptions`.
    pub async fn add_client(&mut self, subscriptions: Vec<KeyTag>) -> anyhow::Result<LocalNode> {
        let id = self.next_client;
        self.next_client += 1;
        let (endpoint, events) = self.bind(id, CertRole::Client)?;
        self.spawn(endpoint, events, subscriptions)
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

    /// Checks the tree formed by the running nodes.
    pub async fn check(&self) -> Result<TreeShape, String> {
        let summaries: Vec<NodeSummary> = self
            .statuses()
            .await
            .into_iter()
            .map(|s| NodeSummary {
                id: s.id,
                role: s.role,
                parent: s.parent,
                children: s.children,
            })
            .collect();
        check_structure(&summaries, ROOT_ID)
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
        let mut stopping = tokio::task::JoinSet::new();
        for node in &self.nodes {
            let handle = node.handle.clone();
            stopping.spawn(async move { handle.shutdown().await });
        }
        while stopping.join_next().await.is_some() {}
    }
}
