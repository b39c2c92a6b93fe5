//! The Canopy daemon runtime: a tokio task that drives one `canopy-tree` state machine over
//! `canopy-net` links, plus the TOML configuration and the per-node counters.
//!
//! Protocol decisions stay in `canopy-tree`; this crate only moves inputs in (messages,
//! timers, application commands) and carries outputs out (sends, wake-ups, deliveries). It
//! checks that every message is one the sender's certificate allows, and closes the link of
//! a peer that oversteps its role. A root candidate also runs its `canopy-raft` group here:
//! it serves as root while it leads, and commits the tree's structural decisions through
//! Raft before acting on them. A client with group keys runs a replica task (`kv`) that
//! drives the sans-IO `canopy-kv` replica from the node's deliveries and topology changes and
//! answers the application API (`canopy-api`). `metrics` serves Prometheus metrics over HTTP.
//! It must not depend on the simulator.

pub mod admin;
mod authorize;
mod candidate;
mod config;
mod grants;
pub mod kv;
pub mod limits;
pub mod local;
pub mod metrics;
pub mod reload;
mod revocations;
mod runtime;
mod tags;

pub use authorize::{authorize, Refusal};
pub use config::{
    default_api_socket, ApiConfig, ConfigError, DialVia, KvConfig, MetricsConfig, NodeConfig,
    RaftConfig, RaftProfile, RootCandidateConfig, TimerConfig, TlsConfig, TreeShapeConfig,
};
pub use runtime::{
    spawn_candidate, spawn_node, Delivery, MulticastTamper, NodeCounters, NodeHandle, NodeStatus,
    SpawnError, Topology,
};
pub use tags::key_tag;

/// The tree role a certificate role runs as.
pub fn tree_role(role: canopy_net::CertRole) -> Option<canopy_tree::Role> {
    match role {
        canopy_net::CertRole::RootCandidate => Some(canopy_tree::Role::Root),
        canopy_net::CertRole::Router => Some(canopy_tree::Role::Router),
        canopy_net::CertRole::Client => Some(canopy_tree::Role::Client),
        canopy_net::CertRole::Admin => None,
    }
}
