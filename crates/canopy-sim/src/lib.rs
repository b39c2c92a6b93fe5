//! A deterministic discrete-event simulator that drives many `canopy-tree` nodes over a
//! simulated network: per-link latency, crashes, graceful leaves and per-node message
//! counters, and a replicated root (candidates over a model of their Raft group, with leader
//! kills and pauses). The same seed always gives the same run.
//!
//! The simulator owns no protocol logic: every decision is made by `canopy_tree::Node`,
//! exactly the code the daemon runs. This crate must not depend on tokio, sockets or the
//! wall clock for anything but progress reporting.

pub mod check;
pub mod congestion;
pub mod engine;
pub mod failover;
pub mod figures;
pub mod group;
pub mod network;
pub mod tally;
pub mod working_sets;
pub mod workload;

pub use engine::{LatencyModel, MulticastHop, NodeCounters, Sim, SimDelivery};
pub use group::GroupSpec;
