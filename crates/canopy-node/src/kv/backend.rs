//! The application API of a node (`canopy-api`'s [`KvBackend`]): a client answers from its
//! replica; a router or root candidate answers only `status`, and says why for the rest.

use bytes::Bytes;
use canopy_api::{v1, ApiError, KvBackend};
use canopy_kv::{Change, Entry, KvError};
use serde_json::json;
use tokio::sync::mpsc;

use super::task::{KvCallError, KvNode, WatchSink, Written, WATCH_QUEUE};
use crate::NodeHandle;

/// Entries a scan returns when the caller names no limit, and the most it ever returns.
pub const DEFAULT_SCAN_LIMIT: usize = 1000;
pub const MAX_SCAN_LIMIT: usize = 10_000;

/// What a node serves on its API socket.
pub struct NodeApi {
    node: NodeHandle,
    role: &'static str,
    kv: Option<KvNode>,
}

impl NodeApi {
    /// The API of a client (with its replica) or of a node that holds none.
    pub fn new(node: NodeHandle, role: &'static str, kv: Option<KvNode>) -> NodeApi {
        NodeApi { node, role, kv }
    }

    fn replica(&self) -> Result<&KvNode, ApiError> {
        match (&self.kv, self.role) {
            (Some(kv), _) => Ok(kv),
            (None, role) if role == canopy_net::CertRole::Client.as_str() => Err(ApiError::Unavailable(
                "this client runs without a replica: its configuration names no group key file \
                 ([kv] group_keys)"
                    .into(),
            )),
            (None, role) => Err(ApiError::NotAClient {
                role: role.to_owned(),
            }),
        }
    }
}

fn api_error(error: KvCallError) -> ApiError {
    match error {
        KvCallError::Stopped => ApiError::Unavailable(error.to_string()),
        KvCallError::TooManyWatches { .. } => ApiError::Unavailable(error.to_string()),
        KvCallError::Kv(
            KvError::EmptyKey | KvError::KeyTooLarge { .. } | KvError::ValueTooLarge { .. },
        ) => ApiError::InvalidArgument(error.to_string()),
        KvCallError::Kv(_) => ApiError::Internal(error.to_string()),
    }
}

fn put_reply(written: Written) -> v1::PutReply {
    v1::PutReply {
        origin: written.origin,
        origin_seq: written.origin_seq,
        hlc: written.hlc,
    }
}

fn api_entry(key: String, entry: Entry) -> v1::Entry {
    v1::Entry {
        key,
        value: entry.value.to_vec(),
        hlc: entry.hlc,
        origin: entry.origin,
        origin_seq: entry.origin_seq,
    }
}

/// A replica change as the API streams it.
pub(crate) fn api_change(change: &Change) -> v1::Change {
    v1::Change {
        key: change.key.clone(),
        value: change.value.as_ref().map_or_else(Vec::new, |v| v.to_vec()),
        deleted: change.value.is_none(),
        hlc: change.hlc,
        origin: change.origin,
        origin_seq: change.origin_seq,
        current: !change.superseded,
    }
}

#[canopy_api::async_trait]
impl KvBackend for NodeApi {
    async fn put(&self, key: String, value: Vec<u8>) -> Result<v1::PutReply, ApiError> {
        let written = self
            .replica()?
            .put(&key, Bytes::from(value))
            .await
            .map_err(api_error)?;
        Ok(put_reply(written))
    }

    async fn delete(&self, key: String) -> Result<v1::PutReply, ApiError> {
        let written = self.replica()?.delete(&key).await.map_err(api_error)?;
        Ok(put_reply(written))
    }

    async fn get(&self, key: String) -> Result<Option<v1::Entry>, ApiError> {
        let entry = self.replica()?.get(&key).await.map_err(api_error)?;
        Ok(entry.map(|e| api_entry(key, e)))
    }

    async fn scan(&self, prefix: String, limit: u32) -> Result<Vec<v1::Entry>, ApiError> {
        let limit = match limit as usize {
            0 => DEFAULT_SCAN_LIMIT,
            n => n.min(MAX_SCAN_LIMIT),
        };
        let entries = self
            .replica()?
            .scan(&prefix, limit)
            .await
            .map_err(api_error)?;
        Ok(entries
            .into_iter()
            .map(|(key, entry)| api_entry(key, entry))
            .collect())
    }

    async fn watch(&self, pattern: String) -> Result<mpsc::Receiver<v1::Change>, ApiError> {
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        self.replica()?
            .watch(&pattern, WatchSink::Api(tx))
            .await
            .map_err(api_error)?;
        Ok(rx)
    }

    async fn status(&self) -> Result<v1::StatusReply, ApiError> {
        let status = self
            .node
            .status()
            .await
            .ok_or_else(|| ApiError::Unavailable("the node has stopped".into()))?;
        // A client whose replica task ended says so (its API refuses reads and writes);
        // `null` means the node holds no replica at all.
        let replica = match &self.kv {
            Some(kv) => Some(
                kv.counters()
                    .await
                    .map_or_else(|| json!("stopped"), |c| json!(c)),
            ),
            None => None,
        };
        let links: Vec<serde_json::Value> = self
            .node
            .link_certificates()
            .into_iter()
            .map(|l| {
                json!({
                    "peer": l.peer,
                    "inbound": l.inbound,
                    "peer_serial": canopy_net::hex(&l.peer_serial),
                    "presented_current": l.presented_current,
                })
            })
            .collect();
        let own_serial = self
            .node
            .credentials()
            .chain()
            .first()
            .and_then(|leaf| canopy_net::CertificateInfo::from_der(leaf).ok())
            .map(|info| info.serial_hex());
        let document = json!({
            "region": status.region,
            "tls": {
                "generation": self.node.tls_generation(),
                "serial": own_serial,
                "links": links,
            },
            "address": status.address.to_string(),
            "parent": status.parent,
            "epoch": status.epoch,
            "children": status.children.len(),
            "counters": status.counters,
            "replica": replica,
        });
        Ok(v1::StatusReply {
            node_id: status.id,
            role: self.role.to_owned(),
            status_json: document.to_string(),
        })
    }
}
