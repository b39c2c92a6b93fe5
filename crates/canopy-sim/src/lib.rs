//! A deterministic discrete-event simulator that drives many `canopy-tree` nodes over a
//! simulated network: per-link latency, crashes, graceful leaves and per-node message
//! counters. The same seed always gives the same run.
//!
//! The simulator owns no protocol logic: every decision is made by `canopy_tree::Node`,
//! exactly the code the daemon runs. This crate must not depend on tokio, sockets or the
//! wall clock for anything but progress reporting.

pub mod check;
pub mod congestion;
pub mod engine;
pub mod figure;

pub use engine::{LatencyModel, MulticastHop, NodeCounters, Sim, SimDelivery};
