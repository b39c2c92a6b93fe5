//! The hostile suite's harness: a small real tree on loopback, a rogue endpoint holding a
//! valid certificate of the cluster, and the check that after an attack the tree is whole
//! and every owed delivery arrives.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use canopy_net::{CertRole, Credentials, NetConfig, NetEndpoint, NetEvent, NetEvents};
use canopy_node::key_tag;
use canopy_node::local::{LocalCluster, LocalClusterSpec, LocalNode};
use canopy_node::NodeCounters;
use canopy_proto::ControlMessage;
use canopy_tree::{KeyTag, NodeId};

/// Generous: these machines are shared and slow.
pub const SETTLE: Duration = Duration::from_secs(60);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs the suite's tests one at a time: each drives a whole cluster (the flood test at full
/// speed), and two at once on a small machine would starve each other's heartbeats.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// A running tree: the candidates, routers and clients of a local cluster; every client
/// wants [`Tree::tag`].
pub struct Tree {
    pub cluster: LocalCluster,
    pub routers: Vec<LocalNode>,
    pub clients: Vec<LocalNode>,
    pub tag: KeyTag,
}

impl Tree {
    pub async fn start(candidates: usize, routers: usize, clients: usize) -> Tree {
        Self::start_with(
            LocalClusterSpec {
                candidates,
                ..LocalClusterSpec::default()
            },
            routers,
            clients,
        )
        .await
    }

    pub async fn start_with(spec: LocalClusterSpec, routers: usize, clients: usize) -> Tree {
        let cluster = LocalCluster::start(spec).await.expect("cluster starts");
        let tag = key_tag(cluster.name(), "hostile");
        let mut tree = Tree {
            cluster,
            routers: Vec::new(),
            clients: Vec::new(),
            tag,
        };
        for _ in 0..routers {
            let router = tree.cluster.add_router().await.expect("router");
            tree.routers.push(router);
        }
        tree.settle(1 + routers).await;
        for _ in 0..clients {
            let client = tree.cluster.add_client(vec![tag]).await.expect("client");
            tree.clients.push(client);
        }
        tree.settle(1 + routers + clients).await;
        tree
    }

    /// Waits for one sound tree of `nodes` nodes (the serving root included).
    pub async fn settle(&self, nodes: usize) {
        self.cluster
            .wait_for_tree(nodes, SETTLE, |_, _| {})
            .await
            .expect("the tree forms");
    }

    /// Nodes in the tree when it is whole: the serving root, routers, clients.
    pub fn size(&self) -> usize {
        1 + self.routers.len() + self.clients.len()
    }

    /// The serving root's id.
    pub async fn root(&self) -> NodeId {
        self.cluster
            .wait_for_root(SETTLE)
            .await
            .expect("a candidate serves as root")
    }

    /// The counters of one node.
    pub async fn counters(&self, id: NodeId) -> NodeCounters {
        self.status(id).await.counters
    }

    /// A node's status.
    pub async fn status(&self, id: NodeId) -> canopy_node::NodeStatus {
        self.cluster
            .node(id)
            .expect("known node")
            .handle
            .status()
            .await
            .expect("node runs")
    }

    /// The assignment id under which `parent` keeps `child`, if it does.
    pub async fn assignment_under(&self, parent: NodeId, child: NodeId) -> Option<u64> {
        self.status(parent)
            .await
            .children
            .iter()
            .find(|c| c.id == child)
            .map(|c| c.assignment_id)
    }

    /// The parent of one node.
    pub async fn parent(&self, id: NodeId) -> Option<NodeId> {
        self.cluster.node(id)?.handle.status().await?.parent
    }

    /// The address a node listens on.
    pub fn address(&self, id: NodeId) -> SocketAddr {
        self.cluster.node(id).expect("known node").handle.address()
    }

    /// The tree is whole (every node placed, one root) and every client's multicast reaches
    /// every other client exactly once.
    pub async fn assert_whole_and_delivering(&mut self) {
        self.settle(self.size()).await;
        // Interest snapshots travel with the placements; give them a heartbeat to settle.
        tokio::time::sleep(Duration::from_millis(600)).await;
        self.cluster.take_deliveries();
        let mut owed = HashSet::new();
        for publisher in &self.clients {
            assert!(
                publisher
                    .handle
                    .publish(self.tag, Bytes::from_static(b"sealed"))
                    .await
            );
            for receiver in &self.clients {
                if receiver.identity.node_id != publisher.identity.node_id {
                    owed.insert((receiver.identity.node_id, publisher.identity.node_id));
                }
            }
        }
        let mut got = HashSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while got.len() < owed.len() && tokio::time::Instant::now() < deadline {
            if let Some(d) = self.cluster.next_delivery(Duration::from_millis(200)).await {
                assert!(
                    got.insert((d.receiver, d.origin)),
                    "duplicate delivery {} <- {}",
                    d.receiver,
                    d.origin
                );
            }
        }
        let missing: Vec<_> = owed.difference(&got).collect();
        assert!(missing.is_empty(), "owed deliveries missing: {missing:?}");
        assert!(got.is_subset(&owed), "unowed deliveries: {got:?}");
    }

    pub async fn shutdown(self) {
        self.cluster.shutdown().await;
    }
}

/// An insider: a raw endpoint with a valid certificate of the cluster that sends whatever it
/// likes.
pub struct Rogue {
    pub endpoint: NetEndpoint,
    pub events: NetEvents,
    /// The assignment id of the rogue's last placement.
    pub assignment_id: u64,
}

impl Rogue {
    pub fn new(tree: &Tree, id: NodeId, role: CertRole) -> Rogue {
        let creds = tree.cluster.credentials(id, role).expect("credentials");
        Self::with_credentials(creds)
    }

    pub fn with_credentials(creds: Credentials) -> Rogue {
        Self::with_config(creds, NetConfig::default())
    }

    pub fn with_config(creds: Credentials, config: NetConfig) -> Rogue {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let (endpoint, events) = NetEndpoint::bind(addr, creds, config).expect("rogue binds");
        Rogue {
            endpoint,
            events,
            assignment_id: 0,
        }
    }

    pub fn id(&self) -> NodeId {
        self.endpoint.identity().node_id
    }

    /// Sends one message to `to` at `addr` (dialling if needed).
    pub fn send(&self, to: NodeId, addr: SocketAddr, msg: ControlMessage) {
        // A full queue or a closed link is part of what the tests look at; not an error here.
        let _ = self.endpoint.send(to, Some(addr), msg);
    }

    /// Waits for `peer` to close the link; returns the reason, or `None` if it did not
    /// within `timeout`.
    pub async fn closed_by(&mut self, peer: NodeId, timeout: Duration) -> Option<String> {
        tokio::time::timeout(timeout, async {
            loop {
                match self.events.recv().await {
                    Some(NetEvent::LinkClosed { peer: p, reason }) if p == peer => return reason,
                    Some(_) => continue,
                    None => return String::from("rogue endpoint closed"),
                }
            }
        })
        .await
        .ok()
    }

    pub async fn shutdown(self) {
        self.endpoint.shutdown().await;
    }
}

/// A Raft request body as a peer would encode it (CBOR), written as JSON for readability.
pub fn raft_body(json: &str) -> Bytes {
    let value: serde_json::Value = serde_json::from_str(json).expect("test JSON");
    Bytes::from(canopy_raft::wire::encode(&value).expect("encodes"))
}
