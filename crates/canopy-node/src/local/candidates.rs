//! The root candidates of a local cluster: their Raft groups, kills and restarts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use canopy_net::{CertRole, NetEndpoint};
use canopy_raft::{GroupConfig, RootGroup};
use canopy_tree::{NodeId, RootCandidate};

use super::{LocalCluster, LocalNode};
use crate::spawn_candidate;

impl LocalCluster {
    /// Runs `f` where the tasks it spawns (and the endpoints it binds) go to candidate
    /// `id`'s own runtime, one thread, started on first use.
    pub(super) fn on_candidate_runtime<T>(
        &mut self,
        id: NodeId,
        f: impl FnOnce(&mut Self) -> T,
    ) -> anyhow::Result<T> {
        let handle = match self.candidate_runtimes.get(&id) {
            Some(runtime) => runtime.handle().clone(),
            None => {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name(format!("candidate-{id}"))
                    .enable_all()
                    .build()?;
                let handle = runtime.handle().clone();
                self.candidate_runtimes.insert(id, runtime);
                handle
            }
        };
        let _entered = handle.enter();
        Ok(f(self))
    }

    pub(super) async fn open_group(&self, endpoint: &NetEndpoint) -> anyhow::Result<RootGroup> {
        let id = endpoint.identity().node_id;
        let config = GroupConfig {
            id,
            data_dir: self.data_dir.join(format!("candidate-{id}")),
            timers: self.spec.raft,
            tree: Arc::new(self.spec.tree.clone()),
            snapshot_every: self.spec.snapshot_every,
        };
        let open = RootGroup::open(config, endpoint.clone());
        let group = match self.candidate_runtimes.get(&id) {
            Some(runtime) => runtime.spawn(open).await??,
            None => open.await?,
        };
        Ok(group)
    }

    pub(super) fn spawn_candidate(
        &mut self,
        endpoint: NetEndpoint,
        events: canopy_net::NetEvents,
        group: RootGroup,
    ) -> anyhow::Result<LocalNode> {
        let id = endpoint.identity().node_id;
        self.on_candidate_runtime(id, |cluster| {
            cluster.spawn_candidate_here(endpoint, events, group)
        })?
    }

    fn spawn_candidate_here(
        &mut self,
        endpoint: NetEndpoint,
        events: canopy_net::NetEvents,
        group: RootGroup,
    ) -> anyhow::Result<LocalNode> {
        let identity = endpoint.identity().clone();
        let seed = self.node_seed(identity.node_id);
        let (handle, _deliveries) = spawn_candidate(
            endpoint,
            events,
            self.spec.tree.clone(),
            self.roots.clone(),
            seed,
            group,
            self.spec.limits.clone(),
        )?;
        let node = LocalNode {
            identity,
            handle,
            subscriptions: Vec::new(),
        };
        self.nodes
            .retain(|n| n.identity.node_id != node.identity.node_id);
        self.nodes.push(node.clone());
        Ok(node)
    }

    /// Restarts a stopped or killed root candidate on its old address, from its Raft state
    /// on disk.
    pub async fn restart_candidate(&mut self, id: NodeId) -> anyhow::Result<LocalNode> {
        let address: SocketAddr = self
            .roots
            .iter()
            .find(|r| r.id == id)
            .ok_or_else(|| anyhow::anyhow!("{id} is not a root candidate"))?
            .address
            .parse()?;
        // Drop our handles on the old incarnation so its socket (and Raft store) can close.
        self.nodes.retain(|n| n.identity.node_id != id);
        let creds = self.credentials(id, CertRole::RootCandidate)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let (endpoint, events) = loop {
            let net = self.spec.net.clone();
            match self
                .on_candidate_runtime(id, |_| NetEndpoint::bind(address, creds.clone(), net))?
            {
                Ok(bound) => break bound,
                // The killed incarnation's socket closes once its connections drain.
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(%e, "address still in use; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let group = loop {
            match self.open_group(&endpoint).await {
                Ok(group) => break group,
                // sled's lock on the old incarnation's store goes with its last handle.
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(%e, "Raft store still open; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let node = self.spawn_candidate(endpoint, events, group)?;
        self.route_through_relays(id);
        Ok(node)
    }

    /// Puts `rtt` of delay (half each way) between every two root candidates: each one's
    /// Raft traffic to another goes through a [`super::UdpRelay`]. Tree links (routers and
    /// clients to the root) stay direct. Kept across restarts.
    pub async fn delay_between_candidates(&mut self, rtt: Duration) -> anyhow::Result<()> {
        self.candidate_relays.clear();
        for from in &self.roots {
            for to in &self.roots {
                if from.id == to.id {
                    continue;
                }
                let target: SocketAddr = to.address.parse()?;
                let relay = super::UdpRelay::start(target, rtt / 2).await?;
                self.candidate_relays.insert((from.id, to.id), relay);
            }
        }
        let ids: Vec<NodeId> = self.roots.iter().map(|r| r.id).collect();
        for id in ids {
            self.route_through_relays(id);
        }
        Ok(())
    }

    /// Makes candidate `id` dial the other candidates through its relays, if there are any.
    fn route_through_relays(&self, id: NodeId) {
        let Some(group) = self.node(id).and_then(|n| n.handle.group()) else {
            return;
        };
        for (&(from, to), relay) in &self.candidate_relays {
            if from == id {
                group.set_peer_address(to, Some(relay.address().to_string()));
            }
        }
    }

    /// The root candidates (id and address).
    pub fn candidates(&self) -> &[RootCandidate] {
        &self.roots
    }

    /// The candidate serving as root right now, if exactly one does.
    pub async fn serving_root(&self) -> Option<NodeId> {
        let serving = super::serving_roots(&self.statuses().await);
        match serving[..] {
            [one] => Some(one),
            _ => None,
        }
    }

    /// Waits until some candidate serves as root.
    pub async fn wait_for_root(&self, timeout: Duration) -> anyhow::Result<NodeId> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(root) = self.serving_root().await {
                return Ok(root);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "no candidate served as root within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills a node abruptly (see [`NodeHandle::kill`]).
    pub async fn kill(&self, id: NodeId) {
        if let Some(node) = self.node(id) {
            node.handle.kill().await;
        }
    }
}
