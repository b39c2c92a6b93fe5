//! Test harness: root candidates on real canopy-net QUIC endpoints on 127.0.0.1, each with a
//! pump that feeds its endpoint's events into its group, and helpers that wait for elections
//! and convergence. Timeouts only keep a broken test from hanging.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use canopy_net::{
    default_validity, CertRole, CertificateAuthority, Credentials, Identity, NetConfig,
    NetEndpoint, NetEvent, NetEvents,
};
use canopy_raft::{CandidateId, GroupConfig, ProposeError, RaftTimers, RootGroup};
use canopy_tree::{Role, TreeConfig, ViewChange, ViewSnapshot};
use tokio::task::JoinHandle;

pub const CLUSTER: &str = "raft-test";
/// Generous bound on any single wait.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Runs one test on its own runtime, one test at a time (the machine has two cores and every
/// test runs three candidates on fast timers).
pub fn run<F: Future<Output = ()>>(test: F) {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    init_tracing();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(test);
}

/// Test timers: heartbeat 50 ms, election 200..400 ms.
pub fn fast_timers() -> RaftTimers {
    RaftTimers {
        heartbeat: Duration::from_millis(50),
        election_min: Duration::from_millis(200),
        election_max: Duration::from_millis(400),
    }
}

/// Feeds an endpoint's events to its group.
pub fn spawn_pump(group: RootGroup, mut events: NetEvents) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                NetEvent::Message { from, msg } => {
                    if let Some(body) = msg.body {
                        group.on_message(from.node_id, body);
                    }
                }
                NetEvent::LinkClosed { peer, .. } => group.on_link_closed(peer),
                NetEvent::LinkUp { .. } | NetEvent::Busy { .. } => {}
            }
        }
    })
}

pub struct Running {
    pub group: RootGroup,
    pub net: NetEndpoint,
    pump: JoinHandle<()>,
}

/// Three (or more) candidates sharing one throwaway CA and one temporary directory.
pub struct Cluster {
    ca: CertificateAuthority,
    dir: tempfile::TempDir,
    pub ids: Vec<CandidateId>,
    pub addrs: BTreeMap<CandidateId, SocketAddr>,
    pub nodes: BTreeMap<CandidateId, Running>,
    pub snapshot_every: u64,
}

impl Cluster {
    /// Starts candidates 1..=n and initializes the group on every one of them.
    pub async fn start(n: u64, snapshot_every: u64) -> Cluster {
        let mut cluster = Cluster {
            ca: CertificateAuthority::generate(CLUSTER).expect("CA"),
            dir: tempfile::tempdir().expect("tempdir"),
            ids: (1..=n).collect(),
            addrs: BTreeMap::new(),
            nodes: BTreeMap::new(),
            snapshot_every,
        };
        for id in cluster.ids.clone() {
            cluster.open(id).await;
        }
        let members: BTreeMap<CandidateId, String> = cluster
            .addrs
            .iter()
            .map(|(id, a)| (*id, a.to_string()))
            .collect();
        for node in cluster.nodes.values() {
            node.group
                .initialize(members.clone())
                .await
                .expect("initialize");
        }
        // A second call is a no-op.
        for node in cluster.nodes.values() {
            node.group
                .initialize(members.clone())
                .await
                .expect("initialize again");
        }
        cluster
    }

    pub fn data_dir(&self, id: CandidateId) -> PathBuf {
        self.dir.path().join(format!("candidate-{id}"))
    }

    pub fn credentials(&self, id: CandidateId) -> Credentials {
        let identity = Identity {
            cluster: CLUSTER.into(),
            node_id: id,
            role: CertRole::RootCandidate,
            region: "local".into(),
        };
        let (not_before, not_after) = default_validity();
        let cert = self
            .ca
            .issue(&identity, not_before, not_after)
            .expect("issue");
        Credentials::from_pem(&self.ca.cert_pem, &cert.cert_pem, &cert.key_pem).expect("creds")
    }

    /// Opens candidate `id` from its data directory on a fresh endpoint (a new port). Running
    /// peers learn the new address through `set_peer_address`, and the new group learns theirs.
    pub async fn open(&mut self, id: CandidateId) {
        let local: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let (net, events) =
            NetEndpoint::bind(local, self.credentials(id), NetConfig::default()).expect("bind");
        let addr = net.local_addr();
        let config = GroupConfig {
            id,
            data_dir: self.data_dir(id),
            timers: fast_timers(),
            tree: Arc::new(TreeConfig::default()),
            snapshot_every: self.snapshot_every,
        };
        let group = RootGroup::open(config, net.clone()).await.expect("open");
        // Every candidate id a test cluster uses; a pristine candidate hears only these.
        group.set_known_candidates((1..=9).collect());
        let moved = self.addrs.insert(id, addr).is_some();
        if moved {
            for (peer, node) in &self.nodes {
                node.group.set_peer_address(id, Some(addr.to_string()));
                group.set_peer_address(*peer, Some(self.addrs[peer].to_string()));
            }
        }
        let pump = spawn_pump(group.clone(), events);
        self.nodes.insert(id, Running { group, net, pump });
    }

    /// Shuts candidate `id` down cleanly (Raft, sled, endpoint).
    pub async fn stop(&mut self, id: CandidateId) {
        let node = self.nodes.remove(&id).expect("running");
        node.group.shutdown().await;
        node.net.shutdown().await;
        node.pump.abort();
    }

    /// Kills candidate `id` abruptly: its endpoint goes away and its group is dropped
    /// without `shutdown`.
    pub async fn kill(&mut self, id: CandidateId) {
        let node = self.nodes.remove(&id).expect("running");
        node.net.shutdown().await;
        node.pump.abort();
        drop(node);
    }

    pub async fn stop_all(&mut self) {
        let ids: Vec<CandidateId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }

    pub fn group(&self, id: CandidateId) -> &RootGroup {
        &self.nodes[&id].group
    }

    /// Waits until one running candidate leads and every running candidate names it.
    pub async fn leader(&self) -> CandidateId {
        wait_for("a leader all running candidates agree on", || {
            let seen: Vec<_> = self
                .nodes
                .values()
                .map(|n| n.group.leadership().borrow().clone())
                .collect();
            let leader = seen.iter().find(|l| l.is_leader)?.id;
            seen.iter()
                .all(|l| l.leader == Some(leader))
                .then_some(leader)
        })
        .await
    }

    /// Proposes through whoever leads, retrying across leader changes.
    pub async fn propose(&self, changes: Vec<ViewChange>) -> u64 {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let leader = self.leader().await;
            match self.group(leader).propose(changes.clone()).await {
                Ok(index) => return index,
                Err(e @ (ProposeError::NotLeader { .. } | ProposeError::Other(_))) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "could not propose: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// The leader and its view, once it has applied everything committed before its term.
    pub async fn settled(&self) -> (CandidateId, ViewSnapshot) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let leader = self.leader().await;
            match self.group(leader).catch_up().await {
                Ok(()) => return (leader, self.snapshot(leader).expect("a view")),
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "no settled leader: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// The view snapshot of a candidate.
    pub fn snapshot(&self, id: CandidateId) -> Option<ViewSnapshot> {
        self.group(id).view().map(|v| v.to_snapshot())
    }

    /// Waits until every running candidate's view equals `want`.
    pub async fn converge(&self, want: &ViewSnapshot) {
        wait_for("every candidate's view to converge", || {
            self.nodes
                .keys()
                .all(|id| self.snapshot(*id).as_ref() == Some(want))
                .then_some(())
        })
        .await
    }
}

/// Polls `check` every 20 ms until it yields a value; panics after [`PATIENCE`].
pub async fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn new_root(root: CandidateId) -> ViewChange {
    ViewChange::NewRoot {
        root,
        region: "local".into(),
        address: format!("root-{root}:7000"),
    }
}

/// Places router `node` under `parent`.
pub fn assign(node: u64, parent: u64) -> ViewChange {
    ViewChange::Assign {
        node,
        role: Role::Router,
        region: "local".into(),
        address: format!("10.0.0.{}:7000", node % 250),
        parent,
        assignment_id: node,
        salt: node.wrapping_mul(0x9e37_79b9),
    }
}

/// Places router `node` under `parent`, with a 200-character address (for large batches).
pub fn wide_assign(node: u64, parent: u64) -> ViewChange {
    match assign(node, parent) {
        ViewChange::Assign {
            node,
            role,
            region,
            parent,
            assignment_id,
            salt,
            ..
        } => ViewChange::Assign {
            node,
            role,
            region,
            address: format!("{node:0>194}:7000"),
            parent,
            assignment_id,
            salt,
        },
        other => other,
    }
}
