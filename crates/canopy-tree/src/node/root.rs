//! The root's duties: placing joiners, keeping the tree view, rebalancing with culls.
//!
//! Every structural decision is a [`ViewChange`]: the root applies it to its [`TreeView`]
//! and, when the root is replicated, proposes it for commit through Raft. Whatever the
//! decision leads to (an `AdoptChild`, an `AssignParent`, a culling `Disconnect`) is held
//! until everything proposed so far is committed: commit, then act.

use std::collections::{HashSet, VecDeque};

use canopy_proto::v1::{
    disconnect::Reason, AdoptChild, ChildRemoved, Cull, Disconnect, JoinRequest, NotLeader,
    ReleaseChild, SignedPlacement,
};
use canopy_proto::Body;
use rand::Rng;

use super::Node;
use crate::io::{DropReason, Output, RemovalReason, TreeEvent};
use crate::{NodeId, Role, Time, TreeConfig, TreeView, ViewChange};

/// Where the root puts a node.
pub(super) struct Placement {
    pub(super) node: NodeId,
    pub(super) role: Role,
    pub(super) region: String,
    pub(super) address: String,
    pub(super) parent: NodeId,
    pub(super) salt: u64,
}

/// What a root does once the decisions before it are committed.
#[derive(Debug, Clone)]
pub(super) enum HeldAction {
    Send {
        to: NodeId,
        body: Body,
    },
    Adopt {
        child: NodeId,
        role: Role,
        address: String,
        assignment_id: u64,
        grant: SignedPlacement,
    },
    /// The root itself lets go of a child placed elsewhere.
    Release(ReleaseChild),
}

impl HeldAction {
    /// The joiner this action places, if it places one.
    fn placed_child(&self) -> Option<NodeId> {
        match self {
            HeldAction::Adopt { child, .. } => Some(*child),
            HeldAction::Send {
                body: Body::AdoptChild(adopt),
                ..
            } => Some(adopt.child_id),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct RootState {
    pub(super) view: TreeView,
    next_assignment: u64,
    pub(super) next_rebalance: Time,
    /// When the root next heartbeats its own children (more often than other nodes: a child
    /// of the root accepts a takeover only after hearing nothing for two of these).
    pub(super) next_child_heartbeat: Time,
    /// The reign of a replicated root: decisions go through Raft (`Output::Propose`) and
    /// actions wait for the commit. `None` for a root that commits as it decides.
    reign: Option<u64>,
    /// Sequence number of the last proposal, and the highest one known committed.
    proposed: u64,
    committed: u64,
    /// Since when the oldest proposal not known committed has waited.
    uncommitted_since: Option<Time>,
    /// Actions waiting for the proposal with this sequence number to commit.
    held: VecDeque<(u64, Vec<HeldAction>)>,
    /// Joiners whose placement is among `held`. A joiner that asks again before the commit
    /// is only impatient (in a join storm the commit can take longer than its timeout):
    /// placing it anew would cost another entry and another dial, and feed the storm.
    placing: HashSet<NodeId>,
    /// Releases of moved clients' former parents, each due at its time.
    deferred_releases: VecDeque<(Time, HeldAction)>,
    /// Who writes what across the root, for cache-aware reallocation.
    pub(super) affinity: super::reallocate::Affinity,
}

/// The lowest assignment id a reign at topology `epoch` hands out: `epoch << 32`. Every
/// takeover commits a `NewRoot`, which raises the epoch, so a reign's ids are above all
/// those of earlier reigns, including ids a deposed reign handed out but never committed
/// (far fewer than 2^32 of them): a node it placed still obeys the next reign. Room for
/// 2^32 reigns of 2^32 assignments each.
pub(super) fn reign_assignment_base(epoch: u64) -> u64 {
    epoch.saturating_mul(1 << 32)
}

impl RootState {
    pub(super) fn new(view: TreeView, now: Time, config: &TreeConfig, reign: Option<u64>) -> Self {
        RootState {
            // A reign's ids start above any a deposed reign may have handed out without its
            // commit: see `reign_assignment_base`.
            next_assignment: view
                .max_assignment()
                .saturating_add(1)
                .max(if reign.is_some() {
                    reign_assignment_base(view.epoch)
                } else {
                    0
                }),
            view,
            next_rebalance: now + config.rebalance_interval,
            next_child_heartbeat: now + config.root_heartbeat_interval,
            reign,
            proposed: 0,
            committed: 0,
            uncommitted_since: None,
            held: VecDeque::new(),
            placing: HashSet::new(),
            deferred_releases: VecDeque::new(),
            affinity: super::reallocate::Affinity::default(),
        }
    }

    /// The next assignment id (they rise strictly, across reigns too).
    pub(super) fn take_assignment_id(&mut self) -> u64 {
        let id = self.next_assignment;
        self.next_assignment = self.next_assignment.saturating_add(1);
        id
    }

    /// Since when a proposal has waited for its commit, if one is waiting.
    pub(super) fn oldest_uncommitted(&self) -> Option<Time> {
        self.uncommitted_since
    }

    /// When the next deferred release is due.
    pub(super) fn next_deferred_release(&self) -> Option<Time> {
        self.deferred_releases.front().map(|&(at, _)| at)
    }

    /// How many actions wait for a commit.
    pub(super) fn held_actions(&self) -> usize {
        self.held.iter().map(|(_, actions)| actions.len()).sum()
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
            if self.role.is_root() {
                self.redirect_to_leader(from, out);
            } else {
                self.dropped(from, "join_request", DropReason::UnexpectedMessage, out);
            }
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
        if root.placing.contains(&from) {
            out.push(Output::Event(TreeEvent::JoinAlreadyPlacing { node: from }));
            return;
        }
        let previous_parent = root.view.get(from).and_then(|e| e.parent);
        // A retry means the last assignment did not reach the joiner: its parent may be dead.
        let exclude = (request.attempt > 0)
            .then(|| root.view.get(from).and_then(|e| e.parent))
            .flatten();
        // A router the view already keeps under this root (its link broke, or a failover
        // made this the root) goes back where it was, so the tree below it stays as it is.
        let in_place = role.is_router()
            && root
                .view
                .get(from)
                .is_some_and(|e| e.role == role && e.parent == Some(self.id));
        let parent = match role {
            _ if in_place => self.id,
            Role::Client => root.view.place_client(from, &request.region, exclude),
            _ => root.view.place_router(from, &request.region, exclude),
        };
        let placement = Placement {
            node: from,
            role,
            region: request.region,
            address: request.address,
            parent,
            salt,
        };
        self.root_place(placement, previous_parent, None, now, out);
    }

    /// Decides that `placement.node` goes under `placement.parent` and, once committed,
    /// has the parent adopt it. A former parent elsewhere lets go: once the decision is
    /// committed, or not before `release_at` if given.
    pub(super) fn root_place(
        &mut self,
        placement: Placement,
        previous_parent: Option<NodeId>,
        release_at: Option<Time>,
        now: Time,
        out: &mut Vec<Output>,
    ) {
        let Placement {
            node: from,
            role,
            region,
            address,
            parent,
            salt,
        } = placement;
        let Some(root) = self.root.as_mut() else {
            return;
        };
        let assignment_id = root.take_assignment_id();
        let parent_address = if parent == self.id {
            self.address.clone()
        } else {
            root.view
                .get(parent)
                .map(|e| e.address.clone())
                .unwrap_or_default()
        };
        let change = ViewChange::Assign {
            node: from,
            role,
            region: region.clone(),
            address: address.clone(),
            parent,
            assignment_id,
            salt,
        };
        self.root_decide(change, now, out);
        out.push(Output::Event(TreeEvent::Placed {
            node: from,
            parent,
            assignment_id,
        }));
        let grant = self.placement_grant(from, parent, parent_address, assignment_id, now);
        let action = if parent == self.id {
            HeldAction::Adopt {
                child: from,
                role,
                address,
                assignment_id,
                grant,
            }
        } else {
            let adopt = AdoptChild {
                child_id: from,
                role: role.to_proto() as i32,
                region,
                address,
                assignment_id,
                grant: Some(grant),
            };
            HeldAction::Send {
                to: parent,
                body: Body::AdoptChild(adopt),
            }
        };
        self.root_after_commit(action, now, out);
        // The node may still be attached where it was (it asked again while attached): its
        // old parent lets go, so no node sits under two parents.
        if let Some(old) = previous_parent.filter(|&p| p != parent) {
            let release = ReleaseChild {
                child_id: from,
                assignment_id,
            };
            let action = if old == self.id {
                HeldAction::Release(release)
            } else {
                HeldAction::Send {
                    to: old,
                    body: Body::ReleaseChild(release),
                }
            };
            match release_at {
                // A moved client keeps its old parent a while (see `Handoff`): the release
                // waits until it has let go itself.
                Some(at) => {
                    if let Some(root) = self.root.as_mut() {
                        root.deferred_releases.push_back((at, action));
                    }
                }
                None => self.root_after_commit(action, now, out),
            }
        }
    }

    /// A candidate that does not lead answers a joiner with the leader it knows of.
    fn redirect_to_leader(&self, joiner: NodeId, out: &mut Vec<Output>) {
        let leader = self
            .known_leader
            .filter(|&l| l != self.id)
            .and_then(|l| self.roots.iter().find(|r| r.id == l));
        let redirect = NotLeader {
            leader_hint: leader.map_or(0, |r| r.id),
            leader_address: leader.map(|r| r.address.clone()).unwrap_or_default(),
        };
        self.send(joiner, Body::NotLeader(redirect), out);
    }

    /// Records a structural decision in the view and, on a replicated root, proposes it.
    pub(super) fn root_decide(&mut self, change: ViewChange, now: Time, out: &mut Vec<Output>) {
        let Some(root) = self.root.as_mut() else {
            return;
        };
        root.view.apply(&change);
        if let Some(reign) = root.reign {
            root.proposed += 1;
            root.uncommitted_since.get_or_insert(now);
            out.push(Output::Propose {
                reign,
                seq: root.proposed,
                change,
            });
        }
    }

    /// Carries out `action` once every decision made so far is committed.
    pub(super) fn root_after_commit(
        &mut self,
        action: HeldAction,
        now: Time,
        out: &mut Vec<Output>,
    ) {
        let Some(root) = self.root.as_mut() else {
            return;
        };
        if root.proposed > root.committed {
            if let Some(child) = action.placed_child() {
                root.placing.insert(child);
            }
            let seq = root.proposed;
            match root.held.back_mut() {
                Some((last, actions)) if *last == seq => actions.push(action),
                _ => root.held.push_back((seq, vec![action])),
            }
            return;
        }
        self.run_held(action, now, out);
    }

    /// Proposals up to `up_to` are committed: release what waited for them, in order.
    pub(super) fn on_committed(&mut self, up_to: u64, now: Time, out: &mut Vec<Output>) {
        let Some(root) = self.root.as_mut() else {
            return;
        };
        root.committed = root.committed.max(up_to.min(root.proposed));
        // What is still waiting gets a full timeout from now.
        root.uncommitted_since = (root.committed < root.proposed).then_some(now);
        let mut ready = Vec::new();
        while root.held.front().is_some_and(|(seq, _)| *seq <= up_to) {
            if let Some((_, actions)) = root.held.pop_front() {
                ready.extend(actions);
            }
        }
        if !ready.is_empty() {
            out.push(Output::Event(TreeEvent::ActionsReleased {
                count: ready.len(),
            }));
        }
        for action in ready {
            self.run_held(action, now, out);
        }
    }

    fn run_held(&mut self, action: HeldAction, now: Time, out: &mut Vec<Output>) {
        if let (Some(child), Some(root)) = (action.placed_child(), self.root.as_mut()) {
            root.placing.remove(&child);
        }
        match action {
            HeldAction::Send { to, body } => self.send(to, body, out),
            HeldAction::Adopt {
                child,
                role,
                address,
                assignment_id,
                grant,
            } => self.adopt(child, role, address, assignment_id, grant, now, out),
            HeldAction::Release(release) => self.release_child(release, now, out),
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
        self.root_forget(removed.child_id, from, removed.assignment_id, now, out);
    }

    /// Removes `child` from the view if the report is about its current placement (a report
    /// from a false parent, or about an older assignment, changes nothing).
    pub(super) fn root_forget(
        &mut self,
        child: NodeId,
        parent: NodeId,
        assignment_id: u64,
        now: Time,
        out: &mut Vec<Output>,
    ) {
        let Some(root) = self.root.as_mut() else {
            return;
        };
        let current = root
            .view
            .get(child)
            .is_some_and(|e| e.parent == Some(parent) && e.assignment_id == assignment_id);
        if current {
            self.root_decide(
                ViewChange::Remove {
                    node: child,
                    at: now,
                },
                now,
                out,
            );
        }
    }

    pub(super) fn root_on_tick(&mut self, now: Time, out: &mut Vec<Output>) {
        let Some(root) = self.root.as_mut() else {
            return;
        };
        if now >= root.next_child_heartbeat {
            root.next_child_heartbeat = now + self.config.root_heartbeat_interval;
            self.send_child_heartbeats(out);
        }
        while let Some(root) = self.root.as_mut() {
            match root.deferred_releases.front() {
                Some(&(at, _)) if at <= now => {
                    if let Some((_, action)) = root.deferred_releases.pop_front() {
                        self.root_after_commit(action, now, out);
                    }
                }
                _ => break,
            }
        }
        let Some(root) = self.root.as_mut() else {
            return;
        };
        if now < root.next_rebalance {
            return;
        }
        root.next_rebalance = now + self.config.rebalance_interval;
        let gone = root.view.expired_detached(now, self.config.orphan_grace);
        for node in gone {
            self.root_decide(ViewChange::Remove { node, at: now }, now, out);
        }
        if !self.config.reallocate {
            self.rebalance(now, out);
        }
        self.reallocate(now, out);
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
            self.remove_child(client, RemovalReason::Culled, now, out);
            let disconnect = Disconnect {
                sender_id: self.id,
                reason: Reason::Culled as i32,
                rejoin: true,
            };
            let to = client;
            let body = Body::Disconnect(disconnect);
            self.root_after_commit(HeldAction::Send { to, body }, now, out);
        }
        if !culls.is_empty() {
            self.root_decide(
                ViewChange::Rebalance {
                    culls: culls.clone(),
                },
                now,
                out,
            );
        }
        for (router, count) in culls {
            // Like every structural action, a cull waits for what was decided before it:
            // a root that lost its quorum never gets to send it.
            let body = Body::Cull(Cull { count });
            self.root_after_commit(HeldAction::Send { to: router, body }, now, out);
            out.push(Output::Event(TreeEvent::Culled { count }));
        }
    }
}
