//! Test support: a real cluster PKI (canopy-net's CA, Ed25519 leaf certificates), Credentials
//! over `canopy_net::Authority`, and a tiny in-memory "tree" that passes Publishes between
//! replicas by tag (the layer below the replica, mocked).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use canopy_kv::{
    Change, Credentials, GroupKeys, Publish, Replica, ReplicaConfig, SignatureAlgorithm, Signer,
};
use canopy_net::{
    default_validity, Authority, CertRole, CertificateAuthority, Identity, KeyAlgorithm,
};
use canopy_proto::v1::{kv_envelope, KvEnvelope};
use prost::Message;
use tempfile::TempDir;

/// The node's credentials as canopy-node implements them over `canopy_net::Authority`.
pub struct NodeCredentials {
    pub id: u64,
    pub authority: Authority,
}

impl Credentials for NodeCredentials {
    fn node_id(&self) -> u64 {
        self.id
    }
    fn certificate(&self) -> &[u8] {
        self.authority.certificate()
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        self.authority.sign(message).map_err(|e| e.to_string())
    }
    fn check_certificate(&self, der: &[u8]) -> Result<Signer, String> {
        let c = self
            .authority
            .check_certificate(der)
            .map_err(|e| e.to_string())?;
        Ok(Signer {
            node_id: c.identity.node_id,
            is_client: c.identity.role == CertRole::Client,
            algorithm: match c.algorithm {
                KeyAlgorithm::Ed25519 => SignatureAlgorithm::Ed25519,
                KeyAlgorithm::EcdsaP256 => SignatureAlgorithm::EcdsaP256Sha256,
            },
            public_key: c.public_key,
        })
    }
}

pub struct Pki {
    pub ca: CertificateAuthority,
}

impl Pki {
    pub fn new() -> Pki {
        Pki {
            ca: CertificateAuthority::generate("test").expect("CA"),
        }
    }

    pub fn creds(&self, id: u64, role: CertRole) -> Arc<NodeCredentials> {
        let identity = Identity {
            cluster: "test".into(),
            node_id: id,
            role,
            region: "local".into(),
        };
        let (from, until) = default_validity();
        let issued = self.ca.issue(&identity, from, until).expect("issue");
        let creds =
            canopy_net::Credentials::from_pem(&self.ca.cert_pem, &issued.cert_pem, &issued.key_pem)
                .expect("credentials");
        Arc::new(NodeCredentials {
            id,
            authority: Authority::new(&creds).expect("authority"),
        })
    }
}

pub fn unicast_tag(id: u64) -> u64 {
    id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
}

pub fn keys() -> GroupKeys {
    GroupKeys::from_parts([0x42; 32], [(1, [0x17; 32])])
}

pub fn config() -> ReplicaConfig {
    ReplicaConfig::new(unicast_tag)
}

pub struct Node {
    pub id: u64,
    pub replica: Replica,
    pub creds: Arc<NodeCredentials>,
    pub dir: TempDir,
}

/// A message in flight: who published it, the tree-level origin and tag, and the payload.
#[derive(Debug, Clone)]
pub struct Msg {
    pub from: u64,
    pub origin: u64,
    pub key_tag: u64,
    pub payload: Bytes,
}

impl Msg {
    pub fn envelope(&self) -> kv_envelope::Body {
        KvEnvelope::decode(self.payload.as_ref())
            .expect("envelope")
            .body
            .expect("body")
    }
    pub fn is_record(&self) -> bool {
        matches!(self.envelope(), kv_envelope::Body::Record(_))
    }
}

pub enum Fate {
    Deliver,
    Drop,
}

/// Delivers every publish to each other node subscribed to its tag (or owning it as unicast
/// tag), through a filter that may drop messages.
pub struct Net {
    pub pki: Pki,
    pub nodes: Vec<Node>,
    pub queue: VecDeque<Msg>,
    pub now: u64,
    /// Extra listeners on a tag: (node id, tag) — e.g. a client subscribed to another's unicast
    /// tag.
    pub eavesdrop: Vec<(u64, u64)>,
}

pub const T0: u64 = 1_700_000_000_000;

impl Net {
    pub fn new(ids: &[u64]) -> Net {
        Net::with(ids, |_| (config(), keys()))
    }

    pub fn with(ids: &[u64], setup: impl Fn(u64) -> (ReplicaConfig, GroupKeys)) -> Net {
        let pki = Pki::new();
        let nodes = ids
            .iter()
            .map(|&id| {
                let creds = pki.creds(id, CertRole::Client);
                let dir = tempfile::tempdir().expect("tempdir");
                let (config, keys) = setup(id);
                let replica = Replica::open(dir.path(), config, creds.clone(), keys).expect("open");
                Node {
                    id,
                    replica,
                    creds,
                    dir,
                }
            })
            .collect();
        Net {
            pki,
            nodes,
            queue: VecDeque::new(),
            now: T0,
            eavesdrop: Vec::new(),
        }
    }

    pub fn node(&mut self, id: u64) -> &mut Replica {
        &mut self
            .nodes
            .iter_mut()
            .find(|n| n.id == id)
            .expect("node")
            .replica
    }

    pub fn enqueue(&mut self, from: u64, publishes: Vec<Publish>) {
        for p in publishes {
            self.queue.push_back(Msg {
                from,
                origin: from,
                key_tag: p.key_tag,
                payload: p.payload,
            });
        }
    }

    pub fn put(&mut self, id: u64, key: &str, value: &str) -> u64 {
        let now = self.now;
        let out = self
            .node(id)
            .put(key, Bytes::copy_from_slice(value.as_bytes()), now)
            .expect("put");
        self.enqueue(id, out.publishes);
        out.hlc
    }

    pub fn delete(&mut self, id: u64, key: &str) {
        let now = self.now;
        let out = self.node(id).delete(key, now).expect("delete");
        self.enqueue(id, out.publishes);
    }

    pub fn subscribe(&mut self, id: u64, pattern: &str) {
        let now = self.now;
        let s = self.node(id).subscribe(pattern, now).expect("subscribe");
        self.enqueue(id, s.publishes);
    }

    /// Who receives `msg`: every node but the sender subscribed to its tag or owning it as
    /// unicast tag, plus eavesdroppers.
    pub fn receivers(&self, msg: &Msg) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.id != msg.from)
            .filter(|n| {
                n.replica.subscribed_tags().contains(&msg.key_tag)
                    || unicast_tag(n.id) == msg.key_tag
                    || self.eavesdrop.contains(&(n.id, msg.key_tag))
            })
            .map(|n| n.id)
            .collect()
    }

    pub fn deliver_to(&mut self, to: u64, msg: &Msg) {
        let now = self.now;
        let out = self
            .node(to)
            .on_multicast(msg.origin, msg.key_tag, &msg.payload, now);
        self.enqueue(to, out);
    }

    /// Delivers until the queue is empty; `filter(msg, receiver)` decides each delivery.
    pub fn run_with(&mut self, mut filter: impl FnMut(&Msg, u64) -> Fate) {
        let mut steps = 0;
        while let Some(msg) = self.queue.pop_front() {
            steps += 1;
            assert!(steps < 100_000, "message storm");
            for to in self.receivers(&msg) {
                if let Fate::Deliver = filter(&msg, to) {
                    self.deliver_to(to, &msg);
                }
            }
        }
    }

    pub fn run(&mut self) {
        self.run_with(|_, _| Fate::Deliver);
    }

    /// Advances the clock and ticks every node; delivers what the ticks publish.
    pub fn tick(&mut self, ms: u64) {
        self.now += ms;
        let now = self.now;
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        for id in ids {
            let out = self.node(id).on_tick(now);
            self.enqueue(id, out);
        }
        self.run();
    }

    pub fn changes(&mut self, id: u64) -> Vec<Change> {
        self.node(id).drain_changes()
    }

    pub fn value(&mut self, id: u64, key: &str) -> Option<String> {
        self.node(id)
            .get(key)
            .expect("get")
            .map(|e| String::from_utf8(e.value.to_vec()).expect("utf8"))
    }
}
