//! A client's replica of the key-value store, driven over the tree: the task that owns the
//! sans-IO `canopy-kv` replica, the node's credentials as the replica sees them, and the
//! application API (`canopy-api`) served from it.

mod backend;
mod credentials;
mod task;

pub use backend::{NodeApi, DEFAULT_SCAN_LIMIT, MAX_SCAN_LIMIT};
pub use credentials::NodeCredentials;
pub use task::{
    replica_config, spawn_kv, KvCallError, KvNode, WatchSink, Written, MAX_WATCHES,
    MAX_WRITE_GROUP, WATCH_QUEUE, WATCH_QUEUE_BYTES,
};
