//! The root's duties: placing joiners, keeping the tree view, rebalancing with culls.
//!
//! Every structural decision is first recorded in the [`TreeView`] and only then acted on,
//! which is the order the Raft-replicated root will keep (commit, then act).

use canopy_proto::v1::{
    disconnect::Reason, AdoptChild, ChildRemoved, Cull, Disconnect, JoinRequest,
};
use canopy_proto::Body;
use rand::Rng;

use super::Node;
use crate::io::{DropReason, Output, RemovalReason, TreeEvent};
use crate::{NodeId, Role, Time, TreeView};

#[derive(Debug, Clone)]
pub(super) struct RootState {
    pub(super) view: TreeView,
    next_assignment: u64,
    pub(super) next_rebalance: Time,
}

impl RootState {
    pub(super) fn new(node: &Node, now: Time) -> Self {
        RootState {
            view: TreeView::new(node.id, &node.region, &node.address, &node.config),
            next_assignment: 1,
            next_rebalance: now + node.config.rebalance_interval,
        }
    }
}

impl Node {
    pub(super) fn root_on_join(
        &mut self,
        from: NodeId,
        request: JoinRequest,
        now: Time,
        out: &mut Vec<Output>,
    ) {
        if self.root.is_none() {
            self.dropped(from, "join_request", DropReason::UnexpectedMessage, out);
            return;
        }
        let role = Role::from_proto(request.role).filter(|r| !r.is_root());
        let (Some(role), true) = (role, request.node_id == from && from != self.id) else {
            self.dropped(from, "join_request", DropReason::Malformed, out);
            return;
        };
        let salt = self.rng.random::<u64>();
        let Some(root) = self.root.as_mut() else {
            return;
        };
        // A retry means the last assignment did not reach the joiner: its parent may be dead.
        let exclude = (request.attempt > 0)
            .then(|| root.view.get(from).and_then(|e| e.parent))
            .flatten();
        let parent = match role {
            Role::Client => root.view.place_client(from, &request.region, exclude),
            _ => root.view.place_router(from, exclude),
        };
        let assignment_id = root.next_assignment;
        root.next_assignment += 1;
        root.view.assign(
            from,
            role,
            &request.region,
            &request.address,
            parent,
            assignment_id,
            salt,
        );
        out.push(Output::Event(TreeEvent::Placed {
            node: from,
            parent,
            assignment_id,
        }));
        if parent == self.id {
            self.adopt(from, role, request.address, assignment_id, now, out);
        } else {
            let adopt = AdoptChild {
                child_id: from,
                role: role.to_proto() as i32,
                region: request.region,
                address: request.address,
                assignment_id,
            };
            self.send(parent, Body::AdoptChild(adopt), out);
        }
    }

    pub(super) fn root_on_child_removed(
        &mut self,
        from: NodeId,
        removed: ChildRemoved,
        now: Time,
        out: &mut Vec<Output>,
    ) {
        if self.root.is_none() || removed.parent_id != from {
            self.dropped(from, "child_removed", DropReason::UnexpectedMessage, out);
            return;
        }
        self.root_forget(removed.child_id, from, removed.assignment_id, now);
    }

    /// Removes `child` from the view if the report is about its current placement (a report
    /// from a false parent, or about an older assignment, changes nothing).
    pub(super) fn root_forget(
        &mut self,
        child: NodeId,
        parent: NodeId,
        assignment_id: u64,
        now: Time,
    ) {
        let Some(root) = self.root.as_mut() else {
            return;
        };
        let current = root
            .view
            .get(child)
            .is_some_and(|e| e.parent == Some(parent) && e.assignment_id == assignment_id);
        if current {
            root.view.remove(child, now);
        }
    }

    pub(super) fn root_on_tick(&mut self, now: Time, out: &mut Vec<Output>) {
        let Some(root) = self.root.as_mut() else {
            return;
        };
        if now < root.next_rebalance {
            return;
        }
        root.next_rebalance = now + self.config.rebalance_interval;
        root.view.expire_detached(now, self.config.orphan_grace);
        self.rebalance(now, out);
    }

    /// Moves clients off the root once routers exist, and culls routers whose direct client
    /// count exceeds their region's mean, whenever a region's spread exceeds the imbalance bound.
    fn rebalance(&mut self, now: Time, out: &mut Vec<Output>) {
        let Some(view) = self.view() else {
            return;
        };
        if view.attached_routers() == 0 {
            return;
        }
        let bound = self.config.imbalance_bound;
        let mut culls: Vec<(NodeId, u64)> = Vec::new();
        for (_, routers) in view.regions() {
            let (Some(&(_, min)), Some(&(_, max))) = (routers.first(), routers.last()) else {
                continue;
            };
            if max - min <= bound {
                continue;
            }
            let total: u64 = routers.iter().map(|&(_, load)| u64::from(load)).sum();
            // The floor of the mean: with the ceiling, one light router among routers all at
            // the ceiling would never be topped up.
            let target = total / routers.len() as u64;
            culls.extend(
                routers
                    .iter()
                    .rev()
                    .map(|&(id, load)| (id, u64::from(load)))
                    .take_while(|&(_, load)| load > target)
                    .map(|(id, load)| (id, load - target)),
            );
        }
        let own_clients: Vec<NodeId> = self
            .children
            .iter()
            .filter(|(_, c)| c.role == Role::Client)
            .map(|(&id, _)| id)
            .collect();
        for client in own_clients {
            let disconnect = Disconnect {
                sender_id: self.id,
                reason: Reason::Culled as i32,
                rejoin: true,
            };
            self.send(client, Body::Disconnect(disconnect), out);
            self.remove_child(client, RemovalReason::Culled, now, out);
        }
        for (router, count) in culls {
            self.send(router, Body::Cull(Cull { count }), out);
            out.push(Output::Event(TreeEvent::Culled { count }));
        }
    }
}
