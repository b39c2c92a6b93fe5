//! The root's view of the tree: every node's role, region, address and assigned parent,
//! plus the indexes that make placement O(log n). The root candidates replicate it through
//! Raft as a sequence of [`ViewChange`]s; it changes only through [`TreeView::apply`].

mod replication;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::interest::FixedState;
use crate::{NodeId, Role, Time};

pub use replication::{ViewChange, ViewRecord, ViewSnapshot};

/// What the root knows of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewEntry {
    pub role: Role,
    pub region: String,
    pub address: String,
    /// `None` for the root, and for a node whose parent left (detached, awaiting rejoin).
    pub parent: Option<NodeId>,
    /// The assignment that put the node under `parent`.
    pub assignment_id: u64,
    /// Distance from the root (kept while attached; a detached subtree's is set again when
    /// it is put back).
    pub depth: u32,
    /// Clients assigned directly under this node.
    pub direct_clients: u32,
    /// Routers assigned directly under this node.
    pub child_routers: u32,
    /// When the node lost its parent, if it is detached.
    pub detached_since: Option<Time>,
    children: BTreeSet<NodeId>,
    // While detached: the parent that was removed from under this node. A router that is
    // removed (timed out, or said it is not our child) usually lives on with its subtree and
    // rejoins; when it does, its former children are its children again.
    former_parent: Option<NodeId>,
    // Random tie-breaker among equally good placement candidates.
    salt: u64,
}

impl ViewEntry {
    /// A node with no parent and no children yet.
    fn unlinked(role: Role, region: &str, address: &str, assignment_id: u64, salt: u64) -> Self {
        ViewEntry {
            role,
            region: region.to_owned(),
            address: address.to_owned(),
            parent: None,
            assignment_id,
            depth: 0,
            direct_clients: 0,
            child_routers: 0,
            detached_since: None,
            children: BTreeSet::new(),
            former_parent: None,
            salt,
        }
    }

    /// Ids of the nodes assigned directly under this one.
    pub fn children(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.children.iter().copied()
    }
}

type LoadKey = (u32, u64, NodeId);
type DepthKey = (u32, u64, NodeId);

/// The root's tree view with placement indexes.
#[derive(Debug, Clone)]
pub struct TreeView {
    root: NodeId,
    nodes: HashMap<NodeId, ViewEntry, FixedState>,
    /// Attached routers (and the root) with room for another child router, by depth.
    router_slots: BTreeSet<DepthKey>,
    /// Attached routers by direct client load, per region and overall.
    client_load: BTreeSet<LoadKey>,
    client_load_by_region: BTreeMap<String, BTreeSet<LoadKey>>,
    detached: BTreeSet<(Time, NodeId)>,
    max_child_routers: u32,
    max_clients: u32,
    /// Bumped whenever the root changes; flows down in heartbeats.
    pub epoch: u64,
    /// Highest assignment id ever recorded: a new root numbers on from here, so nodes never
    /// see an assignment id go backwards across failovers.
    max_assignment: u64,
}

impl TreeView {
    /// A view holding only the root.
    pub fn new(root: NodeId, region: &str, address: &str, config: &crate::TreeConfig) -> Self {
        let mut view = TreeView {
            root,
            nodes: HashMap::default(),
            router_slots: BTreeSet::new(),
            client_load: BTreeSet::new(),
            client_load_by_region: BTreeMap::new(),
            detached: BTreeSet::new(),
            max_child_routers: u32::try_from(config.max_child_routers).unwrap_or(u32::MAX),
            max_clients: u32::try_from(config.max_clients).unwrap_or(u32::MAX),
            epoch: 1,
            max_assignment: 0,
        };
        view.nodes
            .insert(root, ViewEntry::unlinked(Role::Root, region, address, 0, 0));
        view.reindex(root);
        view
    }

    /// The root's id.
    pub fn root(&self) -> NodeId {
        self.root
    }

    /// The highest assignment id recorded so far.
    pub fn max_assignment(&self) -> u64 {
        self.max_assignment
    }

    /// One node's entry.
    pub fn get(&self, id: NodeId) -> Option<&ViewEntry> {
        self.nodes.get(&id)
    }

    /// Number of nodes in the view, the root included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the view is empty (never: the root is always there).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// All entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, &ViewEntry)> {
        self.nodes.iter().map(|(&id, e)| (id, e))
    }

    /// Number of attached routers (the root excluded).
    pub fn attached_routers(&self) -> usize {
        self.client_load.len()
    }

    /// Attached routers of each region, ordered by load, lightest first.
    pub fn regions(&self) -> impl Iterator<Item = (&str, Vec<(NodeId, u32)>)> + '_ {
        self.client_load_by_region.iter().map(|(region, set)| {
            let routers = set.iter().map(|&(load, _, id)| (id, load)).collect();
            (region.as_str(), routers)
        })
    }

    /// Whether `ancestor` is `node` or lies on the path from `node` to the root.
    pub fn is_ancestor_or_self(&self, ancestor: NodeId, node: NodeId) -> bool {
        let mut current = Some(node);
        let mut steps = 0usize;
        while let Some(id) = current {
            if id == ancestor {
                return true;
            }
            // A cycle in the view would be a bug; the bound keeps a bug from hanging us.
            steps += 1;
            if steps > self.nodes.len() {
                return false;
            }
            current = self.nodes.get(&id).and_then(|e| e.parent);
        }
        false
    }

    /// Where a joining router goes: the shallowest attached router of its own region with
    /// room for another child router, so that a region's routers form a subtree of their
    /// own; else the shallowest with room anywhere (ties broken by the random salt); never
    /// inside its own subtree. (The first pass stops at the first slot of the region; a
    /// region with no slot costs one pass over the slots.)
    pub fn place_router(&self, joiner: NodeId, region: &str, exclude: Option<NodeId>) -> NodeId {
        let slots = || {
            self.router_slots
                .iter()
                .map(|&(_, _, id)| id)
                .filter(move |&id| Some(id) != exclude && !self.is_ancestor_or_self(joiner, id))
        };
        slots()
            .find(|id| self.nodes.get(id).is_some_and(|e| e.region == region))
            .or_else(|| slots().next())
            .unwrap_or(self.root)
    }

    /// Where a joining client goes: the least-loaded attached router of its region with
    /// room, else the least-loaded router with room anywhere, else the least-loaded router;
    /// the root only while there are no routers. Like a router, a joiner already in the
    /// view is never placed inside its own subtree (a node whose role changed).
    pub fn place_client(&self, joiner: NodeId, region: &str, exclude: Option<NodeId>) -> NodeId {
        let max = self.max_clients;
        let pick = |set: &BTreeSet<LoadKey>, need_room: bool| {
            set.iter()
                .filter(|&&(_, _, id)| Some(id) != exclude && !self.is_ancestor_or_self(joiner, id))
                .find(|&&(load, _, _)| !need_room || load < max)
                .map(|&(_, _, id)| id)
        };
        self.client_load_by_region
            .get(region)
            .and_then(|set| pick(set, true))
            .or_else(|| pick(&self.client_load, true))
            .or_else(|| pick(&self.client_load, false))
            .unwrap_or(self.root)
    }

    /// Records that `node` was placed under `parent` by assignment `assignment_id`. A node
    /// already in the view moves with its subtree.
    #[allow(clippy::too_many_arguments)]
    fn assign(
        &mut self,
        node: NodeId,
        role: Role,
        region: &str,
        address: &str,
        parent: NodeId,
        assignment_id: u64,
        salt: u64,
    ) {
        // The parent must exist and lie outside the node's own subtree.
        if node == self.root
            || !self.nodes.contains_key(&parent)
            || self.is_ancestor_or_self(node, parent)
        {
            return;
        }
        self.max_assignment = self.max_assignment.max(assignment_id);
        let is_new = !self.nodes.contains_key(&node);
        if !is_new {
            self.unlink(node);
            // Index keys hold the salt, depth and region about to change.
            self.unindex(node);
        } else {
            self.nodes.insert(
                node,
                ViewEntry::unlinked(role, region, address, assignment_id, salt),
            );
        }
        let parent_depth = self.nodes.get(&parent).map_or(0, |p| p.depth);
        if let Some(entry) = self.nodes.get_mut(&node) {
            entry.role = role;
            entry.region = region.to_owned();
            entry.address = address.to_owned();
            entry.parent = Some(parent);
            entry.assignment_id = assignment_id;
            entry.salt = salt;
            entry.former_parent = None;
            if let Some(since) = entry.detached_since.take() {
                self.detached.remove(&(since, node));
            }
        }
        self.link(node, parent, role);
        if is_new && role.is_router() {
            self.reclaim_detached(node);
        }
        self.set_depths(node, parent_depth + 1);
    }

    /// Puts the detached nodes whose parent `node` was back under it: a router that was
    /// removed and rejoins brings its subtree along (it kept its children all along).
    fn reclaim_detached(&mut self, node: NodeId) {
        let former: Vec<(Time, NodeId)> = self
            .detached
            .iter()
            .copied()
            .filter(|&(_, id)| {
                self.nodes
                    .get(&id)
                    .is_some_and(|e| e.former_parent == Some(node))
            })
            .collect();
        for (since, child) in former {
            self.detached.remove(&(since, child));
            let Some(entry) = self.nodes.get_mut(&child) else {
                continue;
            };
            entry.parent = Some(node);
            entry.detached_since = None;
            entry.former_parent = None;
            let role = entry.role;
            self.link(child, node, role);
        }
    }

    /// Removes `node`; its children stay (with their subtrees) but are detached until they
    /// rejoin or their grace period runs out.
    fn remove(&mut self, node: NodeId, now: Time) {
        if node == self.root || !self.nodes.contains_key(&node) {
            return;
        }
        self.unlink(node);
        self.unindex(node);
        let Some(entry) = self.nodes.remove(&node) else {
            return;
        };
        if let Some(since) = entry.detached_since {
            self.detached.remove(&(since, node));
        }
        for child in entry.children {
            // Nothing below a detached node takes new children: it is cut off from the root
            // (and may belong to the subtree of the removed node when that node rejoins).
            self.unindex_subtree(child);
            if let Some(c) = self.nodes.get_mut(&child) {
                c.parent = None;
                c.detached_since = Some(now);
                c.former_parent = Some(node);
                self.detached.insert((now, child));
            }
        }
    }

    /// Takes `node` and every router below it out of the placement indexes.
    fn unindex_subtree(&mut self, node: NodeId) {
        let mut stack = vec![node];
        while let Some(id) = stack.pop() {
            self.unindex(id);
            if let Some(e) = self.nodes.get(&id) {
                stack.extend(e.children.iter().copied());
            }
        }
    }

    /// Detached nodes that did not rejoin within `grace` (the root removes them).
    pub fn expired_detached(&self, now: Time, grace: Time) -> Vec<NodeId> {
        self.detached
            .iter()
            .take_while(|(since, _)| now.saturating_sub(*since) > grace)
            .map(|&(_, id)| id)
            .collect()
    }

    /// Takes `node` off its parent's child list (the node keeps its own subtree).
    fn unlink(&mut self, node: NodeId) {
        let Some((parent, role)) = self.nodes.get(&node).map(|e| (e.parent, e.role)) else {
            return;
        };
        let Some(parent) = parent else {
            return;
        };
        self.unindex(parent);
        if let Some(p) = self.nodes.get_mut(&parent) {
            if p.children.remove(&node) {
                match role {
                    Role::Client => p.direct_clients = p.direct_clients.saturating_sub(1),
                    _ => p.child_routers = p.child_routers.saturating_sub(1),
                }
            }
        }
        self.reindex(parent);
        if let Some(entry) = self.nodes.get_mut(&node) {
            entry.parent = None;
        }
    }

    fn link(&mut self, node: NodeId, parent: NodeId, role: Role) {
        self.unindex(parent);
        if let Some(p) = self.nodes.get_mut(&parent) {
            if p.children.insert(node) {
                match role {
                    Role::Client => p.direct_clients += 1,
                    _ => p.child_routers += 1,
                }
            }
        }
        self.reindex(parent);
    }

    /// Sets the depth of `node` and of every node below it, re-indexing each.
    fn set_depths(&mut self, node: NodeId, depth: u32) {
        let mut stack = vec![(node, depth)];
        while let Some((id, depth)) = stack.pop() {
            self.unindex(id);
            let Some(entry) = self.nodes.get_mut(&id) else {
                continue;
            };
            entry.depth = depth;
            // Through clients too: a router that rejoined as a client keeps its children in
            // the view, and the routers below it stay placement candidates. (A snapshot
            // rebuilds depths from the structure; this keeps the leader's equal to it.)
            let children: Vec<NodeId> = entry.children.iter().copied().collect();
            self.reindex(id);
            stack.extend(children.into_iter().map(|child| (child, depth + 1)));
        }
    }

    /// Whether `id` hangs below the root (no detached node on its path).
    fn attached(&self, id: NodeId) -> bool {
        let mut current = id;
        // A cycle in the view would be a bug; the bound keeps a bug from hanging us.
        for _ in 0..=self.nodes.len() {
            if current == self.root {
                return true;
            }
            match self.nodes.get(&current).and_then(|e| e.parent) {
                Some(parent) => current = parent,
                None => return false,
            }
        }
        false
    }

    fn unindex(&mut self, id: NodeId) {
        let Some(e) = self.nodes.get(&id) else {
            return;
        };
        self.router_slots.remove(&(e.depth, e.salt, id));
        let load_key = (e.direct_clients, e.salt, id);
        self.client_load.remove(&load_key);
        if let Some(set) = self.client_load_by_region.get_mut(&e.region) {
            set.remove(&load_key);
            if set.is_empty() {
                self.client_load_by_region.remove(&e.region);
            }
        }
    }

    fn reindex(&mut self, id: NodeId) {
        if !self.attached(id) {
            return;
        }
        let Some(e) = self.nodes.get(&id) else {
            return;
        };
        if !e.role.is_router() {
            return;
        }
        if e.child_routers < self.max_child_routers {
            self.router_slots.insert((e.depth, e.salt, id));
        }
        if e.role == Role::Router {
            let load_key = (e.direct_clients, e.salt, id);
            self.client_load.insert(load_key);
            self.client_load_by_region
                .entry(e.region.clone())
                .or_default()
                .insert(load_key);
        }
    }
}
