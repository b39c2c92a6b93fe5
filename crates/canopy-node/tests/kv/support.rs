//! A small real tree of replicas on loopback: one root, routers, and clients that each hold
//! a replica, follow one channel and record every change their application sees.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use canopy_kv::{Change, ReplicaCounters};
use canopy_node::local::{LocalCluster, LocalClusterSpec, LocalKvClient, LocalNode};
use canopy_proto::prost::Message;
use canopy_proto::v1::{kv_envelope, KvEnvelope, Multicast, RecordHeader};

/// Generous: these machines are shared and slow.
pub const SETTLE: Duration = Duration::from_secs(60);

/// Every replica follows this channel.
pub const CHANNEL: &str = "t/";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One cluster at a time: two on two cores starve each other's heartbeats.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// What one client's application saw, in order.
pub type Seen = Arc<Mutex<Vec<Change>>>;

pub struct KvTree {
    pub cluster: LocalCluster,
    pub routers: Vec<LocalNode>,
    pub clients: Vec<LocalKvClient>,
    pub seen: HashMap<u64, Seen>,
    pub killed: std::collections::HashSet<u64>,
}

impl KvTree {
    /// `candidates` root candidates, `routers` routers, then `clients` replicas following
    /// [`CHANNEL`]; returns once the tree is whole.
    pub async fn start(candidates: usize, routers: usize, clients: usize) -> KvTree {
        let spec = LocalClusterSpec {
            candidates,
            ..LocalClusterSpec::default()
        };
        let mut cluster = LocalCluster::start(spec).await.expect("cluster starts");
        let mut tree_routers = Vec::new();
        for _ in 0..routers {
            tree_routers.push(cluster.add_router().await.expect("router"));
        }
        cluster
            .wait_for_tree(1 + routers, SETTLE, |_, _| {})
            .await
            .expect("routers attach");
        let mut tree = KvTree {
            cluster,
            routers: tree_routers,
            clients: Vec::new(),
            seen: HashMap::new(),
            killed: Default::default(),
        };
        for _ in 0..clients {
            tree.add_client(&[CHANNEL]).await;
        }
        tree.settle().await;
        tree
    }

    /// Starts a replica following `patterns` whose changes are recorded in `seen`.
    pub async fn add_client(&mut self, patterns: &[&str]) -> LocalKvClient {
        let client = self.cluster.add_kv_client(&[]).await.expect("client");
        let seen = Seen::default();
        for pattern in patterns {
            let mut changes = client.kv.changes(pattern).await.expect("watch");
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Some(change) = changes.recv().await {
                    if let Ok(mut seen) = seen.lock() {
                        seen.push(change);
                    }
                }
            });
        }
        self.seen.insert(client.id(), seen);
        self.clients.push(client.clone());
        client
    }

    /// Waits until the serving root, every live router and every live client form one
    /// sound tree, and interests have spread.
    pub async fn settle(&self) {
        let live = |id: u64| !self.killed.contains(&id);
        let routers = self
            .routers
            .iter()
            .filter(|r| live(r.identity.node_id))
            .count();
        let clients = self.clients.iter().filter(|c| live(c.id())).count();
        self.cluster
            .wait_for_tree(1 + routers + clients, SETTLE, |_, _| {})
            .await
            .expect("the tree forms");
        tokio::time::sleep(Duration::from_millis(600)).await;
    }

    /// Kills a node abruptly (a crash); a client's replica task stops with it.
    pub async fn kill(&mut self, id: u64) {
        if let Some(client) = self.clients.iter().find(|c| c.id() == id) {
            client.kv.stop().await;
        }
        self.cluster
            .node(id)
            .expect("known node")
            .handle
            .kill()
            .await;
        self.killed.insert(id);
    }

    pub fn client(&self, i: usize) -> &LocalKvClient {
        &self.clients[i]
    }

    pub async fn counters(&self, i: usize) -> ReplicaCounters {
        self.clients[i].kv.counters().await.expect("replica runs")
    }

    /// The changes client `i`'s application saw.
    pub fn seen(&self, i: usize) -> Vec<Change> {
        self.seen[&self.clients[i].id()]
            .lock()
            .expect("seen")
            .clone()
    }

    /// Writes `n` values `t/<name>-<k>` from client `i`, a little apart; returns the keys.
    pub async fn write(&self, i: usize, name: &str, n: usize) -> Vec<String> {
        let mut keys = Vec::new();
        for k in 0..n {
            let key = format!("{CHANNEL}{name}-{k}");
            let value = Bytes::from(format!("{name} value {k}"));
            self.clients[i].kv.put(&key, value).await.expect("put");
            keys.push(key);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        keys
    }

    /// The replica's value of `key` at client `i`.
    pub async fn value(&self, i: usize, key: &str) -> Option<Bytes> {
        self.clients[i]
            .kv
            .get(key)
            .await
            .expect("get")
            .map(|e| e.value)
    }

    /// Waits until client `i` holds every key in `keys` with the writer's value, asking
    /// for a catch-up now and then (as the periodic safety net would).
    pub async fn converge(&self, i: usize, expected: &BTreeMap<String, Bytes>) {
        let deadline = tokio::time::Instant::now() + SETTLE;
        let mut rounds = 0u32;
        loop {
            let mut missing = Vec::new();
            for (key, value) in expected {
                if self.value(i, key).await.as_ref() != Some(value) {
                    missing.push(key.clone());
                }
            }
            if missing.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "client {} never converged; missing or wrong: {missing:?}; counters {:?}",
                self.clients[i].id(),
                self.counters(i).await
            );
            rounds += 1;
            if rounds.is_multiple_of(20) {
                self.clients[i].kv.catch_up().await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every change `i`'s application saw came once per (origin, origin_seq).
    pub fn assert_no_duplicates(&self, i: usize) {
        let mut once = std::collections::HashSet::new();
        for change in self.seen(i) {
            assert!(
                once.insert((change.origin, change.origin_seq)),
                "client {} saw record {}:{} twice",
                self.clients[i].id(),
                change.origin,
                change.origin_seq
            );
        }
    }

    pub async fn shutdown(self) {
        self.cluster.shutdown().await;
    }
}

/// The clear header of a multicast carrying a record, as any router can decode it.
pub fn record_header(multicast: &Multicast) -> Option<RecordHeader> {
    let envelope = KvEnvelope::decode(multicast.payload.as_ref()).ok()?;
    let Some(kv_envelope::Body::Record(record)) = envelope.body else {
        return None;
    };
    RecordHeader::decode(record.header.as_ref()).ok()
}

/// `multicast` with one byte of its record's sealed body flipped, re-encoded so that it
/// still decodes (what a router that wants its change to go unnoticed would do).
pub fn flip_sealed_byte(mut multicast: Multicast) -> Multicast {
    let Ok(mut envelope) = KvEnvelope::decode(multicast.payload.as_ref()) else {
        return multicast;
    };
    if let Some(kv_envelope::Body::Record(record)) = &mut envelope.body {
        if let Ok(mut header) = RecordHeader::decode(record.header.as_ref()) {
            let mut body = header.sealed_body.to_vec();
            if let Some(byte) = body.get_mut(0) {
                *byte ^= 0x40;
            }
            header.sealed_body = body.into();
            record.header = header.encode_to_vec().into();
        }
    }
    multicast.payload = envelope.encode_to_vec().into();
    multicast
}
