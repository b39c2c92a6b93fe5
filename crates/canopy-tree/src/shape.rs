//! Structural invariants of a whole tree, checked over summaries of the live nodes' own
//! state. The simulator and the daemon's local cluster both check their trees with this.

use std::collections::HashMap;

use crate::{ChildInfo, Node, NodeId, Role};

/// What one node says about its place in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSummary {
    pub id: NodeId,
    pub role: Role,
    pub parent: Option<NodeId>,
    pub children: Vec<ChildInfo>,
}

impl Node {
    /// This node's place in the tree, for [`check_structure`].
    pub fn summary(&self) -> NodeSummary {
        NodeSummary {
            id: self.id(),
            role: self.role(),
            parent: self.parent(),
            children: self.children().collect(),
        }
    }
}

/// The shape of a sound tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeShape {
    pub live_nodes: usize,
    pub routers: usize,
    pub clients: usize,
    /// Depth of the deepest node (root = 0).
    pub depth: usize,
    /// Largest minus smallest number of direct clients among routers.
    pub client_imbalance: u32,
    /// Direct clients of the root.
    pub root_clients: usize,
    /// Largest number of children of any node.
    pub max_children: usize,
}

/// Checks, over the live nodes, that every node but `root` has exactly one parent, that the
/// parent keeps it as an attached child, that no other node claims it, and that every node
/// reaches the root without a cycle. Returns the tree's shape or the first violation.
pub fn check_structure(nodes: &[NodeSummary], root: NodeId) -> Result<TreeShape, String> {
    let by_id: HashMap<NodeId, &NodeSummary> = nodes.iter().map(|n| (n.id, n)).collect();
    if !by_id.contains_key(&root) {
        return Err(format!("the root {root} is not alive"));
    }
    let mut claimed_by: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    let mut shape = TreeShape {
        live_nodes: nodes.len(),
        ..TreeShape::default()
    };
    for node in nodes {
        match node.role {
            Role::Router => shape.routers += 1,
            Role::Client => shape.clients += 1,
            Role::Root => {}
        }
        shape.max_children = shape.max_children.max(node.children.len());
        for child in node.children.iter().filter(|c| c.attached) {
            claimed_by.entry(child.id).or_default().push(node.id);
        }
    }
    for node in nodes {
        let id = node.id;
        let claims = claimed_by.get(&id).map_or(&[][..], Vec::as_slice);
        if id == root {
            if node.parent.is_some() || !claims.is_empty() {
                return Err(format!("the root has a parent or is claimed by {claims:?}"));
            }
            continue;
        }
        let Some(parent) = node.parent else {
            return Err(format!("node {id} has no parent"));
        };
        if !by_id.contains_key(&parent) {
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
            if depth > nodes.len() {
                return Err(format!("node {id} is on a cycle"));
            }
            current = match by_id.get(&current).and_then(|n| n.parent) {
                Some(p) => p,
                None => return Err(format!("node {id} does not reach the root")),
            };
        }
        shape.depth = shape.depth.max(depth);
    }
    let client_count =
        |n: &NodeSummary| n.children.iter().filter(|c| c.role == Role::Client).count();
    let loads: Vec<u32> = nodes
        .iter()
        .filter(|n| n.role == Role::Router)
        .map(|n| client_count(n) as u32)
        .collect();
    if let (Some(min), Some(max)) = (loads.iter().min(), loads.iter().max()) {
        shape.client_imbalance = max - min;
    }
    shape.root_clients = by_id.get(&root).map_or(0, |n| client_count(n));
    Ok(shape)
}
