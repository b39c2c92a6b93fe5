//! Structural checks of a simulated tree (the checks themselves live in canopy-tree, so the
//! daemon's local clusters are held to the same invariants).

use canopy_tree::{check_structure, KeyTag, NodeId, NodeSummary, Role, TreeShape, BROADCAST_TAG};

use crate::Sim;

/// Checks the structure of the live nodes (see [`canopy_tree::check_structure`]).
pub fn check_tree(sim: &Sim) -> Result<TreeShape, String> {
    let summaries: Vec<NodeSummary> = sim.live_nodes().map(|n| n.summary()).collect();
    check_structure(&summaries, 1)
}

/// Live clients that want `tag` (subscribed to it, or every client for the broadcast tag).
pub fn interested_clients(sim: &Sim, tag: KeyTag) -> Vec<NodeId> {
    sim.live_nodes()
        .filter(|n| n.role() == Role::Client)
        .filter(|n| tag == BROADCAST_TAG || n.interest().wants_locally(tag))
        .map(|n| n.id())
        .collect()
}
