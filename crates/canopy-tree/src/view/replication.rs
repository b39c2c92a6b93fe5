//! The view as replicated state: the changes the root commits through Raft, and the
//! snapshot form a lagging candidate catches up from.

use super::{TreeView, ViewEntry};
use crate::{NodeId, Role, Time, TreeConfig};

/// One structural decision of the root. The leader commits each one before acting on it;
/// every candidate applies the committed sequence to its own copy of the view.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ViewChange {
    /// A candidate became the root: it takes the old root's place and its children (who
    /// reattach with their subtrees intact), and the topology epoch is bumped.
    NewRoot {
        root: NodeId,
        region: String,
        address: String,
    },
    /// `node` was placed under `parent` (a node already in the view moves with its subtree).
    Assign {
        node: NodeId,
        role: Role,
        region: String,
        address: String,
        parent: NodeId,
        assignment_id: u64,
        salt: u64,
    },
    /// `node` left the tree; its children stay, detached, until they rejoin or expire.
    Remove { node: NodeId, at: Time },
    /// The cluster's certificate revocation lists (DER), replacing the previous set. Opaque
    /// to the tree: the node layer checks their CA signatures, enforces them and passes them
    /// down the tree.
    Revocations { lists: Vec<Vec<u8>> },
    /// The root decided to cull: `(router, count)` pairs. The view does not change (the
    /// culled nodes' moves are placements of their own); committing the decision first means
    /// only a root the group still follows can send a `Cull`.
    Rebalance { culls: Vec<(NodeId, u64)> },
}

/// One node's replicated facts; the view's indexes and counts are derived from these.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ViewRecord {
    pub id: NodeId,
    pub role: Role,
    pub region: String,
    pub address: String,
    pub parent: Option<NodeId>,
    pub assignment_id: u64,
    pub detached_since: Option<Time>,
    pub former_parent: Option<NodeId>,
    pub salt: u64,
}

/// The whole view in replicable form, records in id order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ViewSnapshot {
    pub root: NodeId,
    pub epoch: u64,
    pub max_assignment: u64,
    pub records: Vec<ViewRecord>,
}

impl ViewChange {
    /// Applies a committed change to a replica that may not hold a view yet (before the first
    /// root, a replica is empty).
    pub fn apply_to(&self, state: &mut Option<TreeView>, config: &TreeConfig) {
        match (state.as_mut(), self) {
            (Some(view), change) => view.apply(change),
            (
                None,
                ViewChange::NewRoot {
                    root,
                    region,
                    address,
                },
            ) => *state = Some(TreeView::new(*root, region, address, config)),
            // Nothing can be placed before there is a root; a leader never proposes it.
            (None, _) => {}
        }
    }
}

impl TreeView {
    /// Applies one committed change.
    pub fn apply(&mut self, change: &ViewChange) {
        match change {
            ViewChange::NewRoot {
                root,
                region,
                address,
            } => self.replace_root(*root, region, address),
            ViewChange::Assign {
                node,
                role,
                region,
                address,
                parent,
                assignment_id,
                salt,
            } => self.assign(
                *node,
                *role,
                region,
                address,
                *parent,
                *assignment_id,
                *salt,
            ),
            ViewChange::Remove { node, at } => self.remove(*node, *at),
            // Kept beside the view by the root group's state machine.
            ViewChange::Revocations { .. } | ViewChange::Rebalance { .. } => {}
        }
    }

    /// `root` takes over the old root's children; the epoch moves on.
    fn replace_root(&mut self, root: NodeId, region: &str, address: &str) {
        self.epoch += 1;
        let old = self.root;
        if root != old {
            // A candidate is never a tree node, but if it was, its own place goes first.
            if self.nodes.contains_key(&root) {
                self.remove(root, Time::ZERO);
            }
            self.unindex(old);
            let Some(mut entry) = self.nodes.remove(&old) else {
                return;
            };
            for child in &entry.children {
                if let Some(c) = self.nodes.get_mut(child) {
                    c.parent = Some(root);
                }
            }
            for (_, id) in &self.detached {
                if let Some(e) = self.nodes.get_mut(id) {
                    if e.former_parent == Some(old) {
                        e.former_parent = Some(root);
                    }
                }
            }
            entry.role = Role::Root;
            self.nodes.insert(root, entry);
            self.root = root;
        }
        if let Some(entry) = self.nodes.get_mut(&root) {
            entry.region = region.to_owned();
            entry.address = address.to_owned();
        }
        self.reindex(root);
    }

    /// The view in replicable form.
    pub fn to_snapshot(&self) -> ViewSnapshot {
        let mut records: Vec<ViewRecord> = self
            .nodes
            .iter()
            .map(|(&id, e)| ViewRecord {
                id,
                role: e.role,
                region: e.region.clone(),
                address: e.address.clone(),
                parent: e.parent,
                assignment_id: e.assignment_id,
                detached_since: e.detached_since,
                former_parent: e.former_parent,
                salt: e.salt,
            })
            .collect();
        records.sort_unstable_by_key(|r| r.id);
        ViewSnapshot {
            root: self.root,
            epoch: self.epoch,
            max_assignment: self.max_assignment,
            records,
        }
    }

    /// Rebuilds a view (indexes included) from its snapshot; `None` if the snapshot lacks
    /// its root or names a parent it does not hold.
    pub fn from_snapshot(snapshot: &ViewSnapshot, config: &TreeConfig) -> Option<TreeView> {
        let root = snapshot.records.iter().find(|r| r.id == snapshot.root)?;
        let mut view = TreeView::new(root.id, &root.region, &root.address, config);
        view.unindex(root.id);
        view.epoch = snapshot.epoch;
        view.max_assignment = snapshot.max_assignment;
        for r in &snapshot.records {
            let mut entry =
                ViewEntry::unlinked(r.role, &r.region, &r.address, r.assignment_id, r.salt);
            entry.parent = r.parent;
            entry.detached_since = r.detached_since;
            entry.former_parent = r.former_parent;
            view.nodes.insert(r.id, entry);
            if let Some(since) = r.detached_since {
                view.detached.insert((since, r.id));
            }
        }
        for r in &snapshot.records {
            let Some(parent) = r.parent else {
                continue;
            };
            let entry = view.nodes.get_mut(&parent)?;
            entry.children.insert(r.id);
            match r.role {
                Role::Client => entry.direct_clients += 1,
                _ => entry.child_routers += 1,
            }
        }
        // Depths top-down from the root and from every detached subtree's top.
        let tops: Vec<NodeId> = snapshot
            .records
            .iter()
            .filter(|r| r.parent.is_none())
            .map(|r| r.id)
            .collect();
        for top in tops {
            let mut stack = vec![(top, 0u32)];
            while let Some((id, depth)) = stack.pop() {
                let Some(entry) = view.nodes.get_mut(&id) else {
                    continue;
                };
                entry.depth = depth;
                stack.extend(entry.children.iter().map(|&c| (c, depth + 1)));
            }
        }
        let ids: Vec<NodeId> = view.nodes.keys().copied().collect();
        for id in ids {
            view.reindex(id);
        }
        Some(view)
    }
}
