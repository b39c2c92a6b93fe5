//! Structural invariants of a settled tree, checked against the live nodes' own state.

use std::collections::HashMap;

use canopy_tree::{NodeId, Role};

use crate::Sim;

/// What a structural check found, when the tree is sound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeShape {
    pub live_nodes: usize,
    pub routers: usize,
    pub clients: usize,
    /// Depth of the deepest live node (root = 0).
    pub depth: usize,
    /// Largest minus smallest number of direct clients among live routers.
    pub client_imbalance: u32,
    /// Direct clients of the root.
    pub root_clients: usize,
    /// Largest number of children of any node.
    pub max_children: usize,
}

/// Checks that every live node but the root has exactly one parent, that the parent keeps
/// it as an attached child, that nothing else claims it, and that every node reaches the
/// root without a cycle. Returns the tree's shape, or the first violation found.
pub fn check_structure(sim: &Sim) -> Result<TreeShape, String> {
    let root = 1;
    if !sim.is_alive(root) {
        return Err("the root is not alive".into());
    }
    let mut claimed_by: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    let mut shape = TreeShape::default();
    for node in sim.live_nodes() {
        shape.live_nodes += 1;
        match node.role() {
            Role::Router => shape.routers += 1,
            Role::Client => shape.clients += 1,
            Role::Root => {}
        }
        shape.max_children = shape.max_children.max(node.child_count());
        for child in node.children().filter(|c| c.attached) {
            claimed_by.entry(child.id).or_default().push(node.id());
        }
    }
    for node in sim.live_nodes() {
        let id = node.id();
        let claims = claimed_by.get(&id).map_or(&[][..], Vec::as_slice);
        if id == root {
            if node.parent().is_some() || !claims.is_empty() {
                return Err(format!("the root has a parent or is claimed by {claims:?}"));
            }
            continue;
        }
        let Some(parent) = node.parent() else {
            return Err(format!("node {id} has no parent"));
        };
        if !sim.is_alive(parent) {
            return Err(format!("node {id} obeys dead parent {parent}"));
        }
        if claims != [parent] {
            return Err(format!(
                "node {id} obeys {parent} but is claimed as an attached child by {claims:?}"
            ));
        }
        let mut depth = 0;
        let mut current = id;
        while current != root {
            depth += 1;
            if depth > shape.live_nodes {
                return Err(format!("node {id} is on a cycle"));
            }
            current = match sim.node(current).and_then(|n| n.parent()) {
                Some(p) => p,
                None => return Err(format!("node {id} does not reach the root")),
            };
        }
        shape.depth = shape.depth.max(depth);
    }
    let router_loads: Vec<u32> = sim
        .live_nodes()
        .filter(|n| n.role() == Role::Router)
        .map(|n| n.children().filter(|c| c.role == Role::Client).count() as u32)
        .collect();
    if let (Some(min), Some(max)) = (router_loads.iter().min(), router_loads.iter().max()) {
        shape.client_imbalance = max - min;
    }
    shape.root_clients = sim.node(root).map_or(0, |n| {
        n.children().filter(|c| c.role == Role::Client).count()
    });
    Ok(shape)
}

/// Live clients that want `tag` (subscribed to it, or every client for the broadcast tag).
pub fn interested_clients(sim: &Sim, tag: canopy_tree::KeyTag) -> Vec<NodeId> {
    sim.live_nodes()
        .filter(|n| n.role() == Role::Client)
        .filter(|n| tag == canopy_tree::BROADCAST_TAG || n.interest().wants_locally(tag))
        .map(|n| n.id())
        .collect()
}
