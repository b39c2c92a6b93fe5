//! Clients of a local cluster that hold a replica of the key-value store.

use std::sync::Arc;

use canopy_net::CertRole;

use super::{LocalCluster, LocalNode};
use crate::kv::{replica_config, spawn_kv, KvNode, NodeCredentials};

/// A client node with its replica.
#[derive(Clone)]
pub struct LocalKvClient {
    pub node: LocalNode,
    pub kv: KvNode,
}

impl LocalKvClient {
    /// The node (and origin) id.
    pub fn id(&self) -> u64 {
        self.node.identity.node_id
    }
}

impl LocalCluster {
    /// The group key material the cluster's replicas share.
    pub fn group_keys(&self) -> &canopy_kv::GroupKeys {
        &self.group_keys
    }

    /// The tag routers see for `key`.
    pub fn tag_of(&self, key: &str) -> u64 {
        canopy_kv::tag_of(&self.group_keys, key)
    }

    /// Starts a client with a replica (kept under the cluster's data directory) that
    /// subscribes to `patterns` (keys, or prefixes ending in `/`).
    pub async fn add_kv_client(&mut self, patterns: &[&str]) -> anyhow::Result<LocalKvClient> {
        let id = self.next_client;
        self.next_client += 1;
        let (endpoint, events) = self.bind(id, CertRole::Client)?;
        let credentials = NodeCredentials::new(endpoint.authority().clone(), id);
        let replica = canopy_kv::Replica::open(
            &self.data_dir.join(format!("replica-{id}")),
            replica_config(),
            Arc::new(credentials),
            self.group_keys.clone(),
        )?;
        let (node, deliveries) =
            self.spawn_bare(endpoint, events, Vec::new(), self.roots.clone())?;
        let kv = spawn_kv(node.handle.clone(), deliveries, replica);
        for pattern in patterns {
            kv.subscribe(pattern).await?;
        }
        let client = LocalKvClient { node, kv };
        self.kv_clients.push(client.clone());
        Ok(client)
    }

    /// Every client started with a replica.
    pub fn kv_clients(&self) -> &[LocalKvClient] {
        &self.kv_clients
    }
}
