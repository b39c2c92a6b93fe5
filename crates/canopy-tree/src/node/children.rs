//! The parent side of tree links: adopting, attaching, culling and dropping children.

use canopy_proto::v1::{
    disconnect::Reason, AdoptChild, AssignParent, ChildRemoved, Cull, Disconnect, InterestDelta,
    InterestSnapshot, Reattach, ReleaseChild, SignedPlacement, SubtreeSize,
};
use canopy_proto::Body;
use rand::seq::SliceRandom;

use super::budget::{BudgetRate, TagBudget};
use super::placement::Claimed;
use super::{ChildInfo, Node};
use crate::interest::LinkInterest;
use crate::io::{DropReason, Output, RemovalReason, TreeEvent};
use crate::{KeyTag, NodeId, Role, Time};

#[derive(Debug, Clone)]
pub(super) struct ChildLink {
    pub(super) role: Role,
    pub(super) address: String,
    pub(super) assignment_id: u64,
    pub(super) attached: bool,
    pub(super) last_heard: Time,
    pub(super) subtree: SubtreeSize,
    pub(super) interest: LinkInterest,
    /// A snapshot arriving in chunks: what came so far. Each chunk is also added to the
    /// link's interest at once (nothing the child wants goes unforwarded meanwhile); the
    /// last one replaces the link's interest with the whole set.
    pub(super) pending_snapshot: Option<Vec<KeyTag>>,
    /// A router child has been sent a snapshot of which of its tags are local to it (upward
    /// filters); from then on it gets changes only.
    pub(super) outside_sent: bool,
}

impl ChildLink {
    pub(super) fn info(&self, id: NodeId) -> ChildInfo {
        ChildInfo {
            id,
            role: self.role,
            attached: self.attached,
            assignment_id: self.assignment_id,
            subtree_clients: self.subtree.clients,
            subtree_routers: self.subtree.routers,
        }
    }
}

impl Node {
    pub(super) fn on_adopt(
        &mut self,
        from: NodeId,
        adopt: AdoptChild,
        now: Time,
        out: &mut Vec<Output>,
    ) {
        if !self.is_root_candidate(from) || !self.role.is_router() {
            self.dropped(from, "adopt_child", DropReason::UnexpectedMessage, out);
            return;
        }
        let claimed = Claimed {
            child: adopt.child_id,
            parent: self.id,
            parent_address: None,
            assignment_id: adopt.assignment_id,
            adoption: true,
        };
        let grant = match self.check_grant(adopt.grant.as_ref(), &claimed, now) {
            // Only the root that decided may ask for the adoption.
            Some(placement) if placement.root_id == from => {
                // The candidate that adopts here serves: follow it (reports go to it).
                self.observe_root(from);
                adopt.grant.unwrap_or_default()
            }
            _ => {
                self.dropped(from, "adopt_child", DropReason::Unauthorized, out);
                return;
            }
        };
        let Some(role) = Role::from_proto(adopt.role).filter(|r| *r != Role::Root) else {
            self.dropped(from, "adopt_child", DropReason::Malformed, out);
            return;
        };
        if adopt.child_id == self.id || self.parent() == Some(adopt.child_id) {
            self.dropped(from, "adopt_child", DropReason::Malformed, out);
            return;
        }
        self.adopt(
            adopt.child_id,
            role,
            adopt.address,
            adopt.assignment_id,
            grant,
            now,
            out,
        );
    }

    /// Takes `child` on under `assignment_id` and tells it so, passing on the root's grant.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn adopt(
        &mut self,
        child: NodeId,
        role: Role,
        address: String,
        assignment_id: u64,
        grant: SignedPlacement,
        now: Time,
        out: &mut Vec<Output>,
    ) {
        match self.children.get_mut(&child) {
            Some(link) if link.assignment_id > assignment_id => {
                self.dropped(child, "adopt_child", DropReason::StaleAssignment, out);
                return;
            }
            Some(link) if link.assignment_id == assignment_id => {}
            Some(link) => {
                // The interest stays advertised upward until the child's Reattach snapshot
                // replaces it, so ancestors see no gap in the subtree's tags.
                link.assignment_id = assignment_id;
                link.attached = false;
                link.last_heard = now;
                link.role = role;
                link.address = address;
                link.subtree = SubtreeSize::default();
                link.pending_snapshot = None;
                link.outside_sent = false;
            }
            None => {
                self.children.insert(
                    child,
                    ChildLink {
                        role,
                        address,
                        assignment_id,
                        attached: false,
                        last_heard: now,
                        subtree: SubtreeSize::default(),
                        interest: LinkInterest::new(self.filter_key, child),
                        pending_snapshot: None,
                        outside_sent: false,
                    },
                );
                out.push(Output::Event(TreeEvent::ChildAdopted { child }));
            }
        }
        let assign = AssignParent {
            child_id: child,
            parent_id: self.id,
            parent_address: self.address.clone(),
            assignment_id,
            topology_epoch: self.epoch,
            grant: Some(grant),
        };
        self.send(child, Body::AssignParent(assign), out);
    }

    pub(super) fn on_reattach(
        &mut self,
        from: NodeId,
        reattach: Reattach,
        now: Time,
        out: &mut Vec<Output>,
    ) {
        let Some(link) = self.children.get_mut(&from) else {
            self.dropped(from, "reattach", DropReason::NotANeighbour, out);
            self.tell_not_a_neighbour(from, true, out);
            return;
        };
        if reattach.node_id != from {
            self.dropped(from, "reattach", DropReason::Malformed, out);
            return;
        }
        if reattach.assignment_id != link.assignment_id {
            // Older: superseded. Newer: never issued for this link (a child cannot raise it,
            // or its removal reports would no longer match the root's view).
            self.dropped(from, "reattach", DropReason::StaleAssignment, out);
            return;
        }
        let (tags, more) = reattach
            .interest
            .map(|s| (s.tags, s.more))
            .unwrap_or_default();
        let (role, attached) = (link.role, link.attached);
        let max_tags = self.max_tags_for(role);
        if tags.len() > max_tags {
            let reason = format!(
                "interest snapshot of {} tags, more than {max_tags}",
                tags.len()
            );
            self.evict_over_limit(from, reason, now, out);
            return;
        }
        // A first attach (or one after the root re-placed the child here) replaces what the
        // parent kept for it at no charge; a repeated one is the child's own churn.
        if !self.charge_interest(from, tags.len(), attached, now, out) {
            return;
        }
        let Some(link) = self.children.get_mut(&from) else {
            return;
        };
        link.assignment_id = reattach.assignment_id;
        link.attached = true;
        link.outside_sent = false;
        link.subtree = reattach.subtree.unwrap_or_default();
        if more {
            let chunk = InterestDelta {
                add: tags.clone(),
                remove: Vec::new(),
            };
            link.interest.apply_delta(&chunk, &mut self.interest);
            link.pending_snapshot = Some(tags);
        } else {
            link.pending_snapshot = None;
            link.interest.replace(&tags, &mut self.interest);
        }
        self.schedule_interest_flush(now);
        self.check_child_bounds(from, now, out);
    }

    /// Charges `child` for `tags` of interest work (and, when `replacing`, for the set its
    /// snapshot replaces); over its budget it is evicted and `false` returned. Budgets are
    /// kept per peer, across its links: leaving and coming back does not refill them.
    pub(super) fn charge_interest(
        &mut self,
        child: NodeId,
        tags: usize,
        replacing: bool,
        now: Time,
        out: &mut Vec<Output>,
    ) -> bool {
        let Some(link) = self.children.get(&child) else {
            return false;
        };
        let role = link.role;
        let rate = self.child_budget(role);
        let cost = tags + if replacing { link.interest.len() } else { 0 };
        if !self.interest_budgets.contains_key(&child) {
            self.forget_idle_budgets(now);
        }
        let budget = self
            .interest_budgets
            .entry(child)
            .or_insert_with(|| (role, TagBudget::full(rate, now)));
        budget.0 = role;
        if budget.1.try_charge(cost, rate, now) {
            return true;
        }
        let reason = format!(
            "interest changes over {} tags/s (burst {})",
            rate.per_sec, rate.burst
        );
        self.evict_over_limit(child, reason, now, out);
        false
    }

    /// Drops the budgets that have refilled (they remember no debt), so the map holds only
    /// peers that spent recently.
    fn forget_idle_budgets(&mut self, now: Time) {
        // Amortized: a pass runs only once the map has doubled since the last one.
        if self.interest_budgets.len() < self.budgets_prune_at {
            return;
        }
        let rates: Vec<(NodeId, BudgetRate)> = self
            .interest_budgets
            .iter()
            .map(|(&id, (role, _))| (id, self.child_budget(*role)))
            .collect();
        for (id, rate) in rates {
            let idle = self
                .interest_budgets
                .get_mut(&id)
                .is_some_and(|(_, b)| b.is_full(rate, now));
            if idle && !self.children.contains_key(&id) {
                self.interest_budgets.remove(&id);
            }
        }
        self.budgets_prune_at =
            (2 * self.interest_budgets.len()).max(4 * self.config.max_children());
    }

    /// Most tags a child link of `role` may advertise.
    fn max_tags_for(&self, role: Role) -> usize {
        if role == Role::Client {
            self.config.limits.max_tags_per_client_link
        } else {
            self.config.limits.max_tags_per_router_link
        }
    }

    /// Evicts `child` if what it advertised or reported is over a bound.
    pub(super) fn check_child_bounds(&mut self, child: NodeId, now: Time, out: &mut Vec<Output>) {
        let Some(link) = self.children.get(&child) else {
            return;
        };
        let max_tags = self.max_tags_for(link.role);
        let max_nodes = self.config.limits.max_subtree_nodes;
        let reported = link.subtree.clients.saturating_add(link.subtree.routers);
        let reason = if link.interest.len() > max_tags {
            format!(
                "advertised {} tags, more than {max_tags}",
                link.interest.len()
            )
        } else if reported > max_nodes {
            format!("reported a subtree of {reported} nodes, more than {max_nodes}")
        } else if link.role == Role::Client
            && (link.subtree.clients > 1 || link.subtree.routers > 0)
        {
            format!(
                "a client reported a subtree of {} clients and {} routers",
                link.subtree.clients, link.subtree.routers
            )
        } else {
            self.check_subtree_interest(now, out);
            return;
        };
        self.evict_over_limit(child, reason, now, out);
    }

    /// What this node advertises upward must fit what its parent accepts from it. Over that,
    /// the child contributing the most tags goes (not whichever child happened to add the
    /// last one: a child sitting just under the total must not get its siblings evicted).
    fn check_subtree_interest(&mut self, now: Time, out: &mut Vec<Output>) {
        let max = self.max_tags_for(self.role);
        while self.root.is_none() && self.interest.len() > max {
            let Some((&largest, _)) = self.children.iter().max_by_key(|(_, c)| c.interest.len())
            else {
                return;
            };
            let reason = format!(
                "the subtree would want {} tags, more than the {max} this node may advertise, \
                 and this child brings the most",
                self.interest.len()
            );
            self.evict_over_limit(largest, reason, now, out);
        }
    }

    /// Drops a child that went over a bound: it is told why, forgotten (its interest
    /// withdrawn, the root told), and the driver closes its link.
    pub(super) fn evict_over_limit(
        &mut self,
        child: NodeId,
        reason: String,
        now: Time,
        out: &mut Vec<Output>,
    ) {
        let disconnect = Disconnect {
            sender_id: self.id,
            reason: Reason::ProtocolError as i32,
            rejoin: false,
        };
        self.send(child, Body::Disconnect(disconnect), out);
        self.remove_child(child, RemovalReason::OverLimit, now, out);
        out.push(Output::CloseLink {
            peer: child,
            reason,
        });
    }

    pub(super) fn on_snapshot(
        &mut self,
        from: NodeId,
        snapshot: InterestSnapshot,
        now: Time,
        out: &mut Vec<Output>,
    ) {
        let (max_tags, so_far) = match self.children.get(&from) {
            Some(link) if link.attached => (
                self.max_tags_for(link.role),
                link.pending_snapshot.as_ref().map(Vec::len),
            ),
            _ => {
                self.dropped(from, "interest_snapshot", DropReason::NotANeighbour, out);
                return;
            }
        };
        let total = so_far.unwrap_or(0).saturating_add(snapshot.tags.len());
        if total > max_tags {
            let reason = format!("interest snapshot of {total} tags, more than {max_tags}");
            self.evict_over_limit(from, reason, now, out);
            return;
        }
        // A chunk continuing a snapshot is charged for itself; a new snapshot also for the
        // set it replaces.
        if !self.charge_interest(from, snapshot.tags.len(), so_far.is_none(), now, out) {
            return;
        }
        let Some(link) = self.children.get_mut(&from) else {
            return;
        };
        let mut whole = link.pending_snapshot.take().unwrap_or_default();
        whole.extend_from_slice(&snapshot.tags);
        if snapshot.more {
            let chunk = InterestDelta {
                add: snapshot.tags,
                remove: Vec::new(),
            };
            link.interest.apply_delta(&chunk, &mut self.interest);
            link.pending_snapshot = Some(whole);
        } else {
            link.interest.replace(&whole, &mut self.interest);
        }
        self.schedule_interest_flush(now);
        self.check_child_bounds(from, now, out);
    }

    /// Drops children not heard from within the child timeout.
    pub(super) fn evict_silent_children(&mut self, now: Time, out: &mut Vec<Output>) {
        let timeout = self.config.child_timeout;
        let silent: Vec<NodeId> = self
            .children
            .iter()
            .filter(|(_, c)| now.saturating_sub(c.last_heard) > timeout)
            .map(|(&id, _)| id)
            .collect();
        for child in silent {
            self.remove_child(child, RemovalReason::Timeout, now, out);
        }
    }

    /// Forgets a child, withdraws its interest and tells the root.
    pub(super) fn remove_child(
        &mut self,
        child: NodeId,
        reason: RemovalReason,
        now: Time,
        out: &mut Vec<Output>,
    ) {
        let Some(mut link) = self.children.remove(&child) else {
            return;
        };
        link.interest.clear(&mut self.interest);
        self.schedule_interest_flush(now);
        out.push(Output::Event(TreeEvent::ChildRemoved { child, reason }));
        if self.root.is_some() {
            self.root_forget(child, self.id, link.assignment_id, now, out);
        } else if let Some(leader) = self.leader() {
            let report = ChildRemoved {
                parent_id: self.id,
                child_id: child,
                assignment_id: link.assignment_id,
            };
            let to = leader.id;
            self.send(to, Body::ChildRemoved(report), out);
        }
    }

    pub(super) fn tell_not_a_neighbour(&self, to: NodeId, rejoin: bool, out: &mut Vec<Output>) {
        let disconnect = Disconnect {
            sender_id: self.id,
            reason: Reason::NotANeighbour as i32,
            rejoin,
        };
        self.send(to, Body::Disconnect(disconnect), out);
    }

    /// Disconnects `count` clients of this subtree: own clients first (chosen at random),
    /// the rest split over child routers, largest subtrees first.
    pub(super) fn cull(&mut self, count: u64, now: Time, out: &mut Vec<Output>) {
        let mut own: Vec<NodeId> = self
            .children
            .iter()
            .filter(|(_, c)| c.role == Role::Client)
            .map(|(&id, _)| id)
            .collect();
        own.shuffle(&mut self.rng);
        let take = own.len().min(usize::try_from(count).unwrap_or(usize::MAX));
        for &client in &own[..take] {
            let disconnect = Disconnect {
                sender_id: self.id,
                reason: Reason::Culled as i32,
                rejoin: true,
            };
            self.send(client, Body::Disconnect(disconnect), out);
            self.remove_child(client, RemovalReason::Culled, now, out);
        }
        let mut remaining = count - take as u64;
        if take > 0 {
            out.push(Output::Event(TreeEvent::Culled { count: take as u64 }));
        }
        let mut routers: Vec<(u64, NodeId)> = self
            .children
            .iter()
            .filter(|(_, c)| c.role == Role::Router && c.attached && c.subtree.clients > 0)
            .map(|(&id, c)| (c.subtree.clients, id))
            .collect();
        routers.sort_unstable_by(|a, b| b.cmp(a));
        for (clients, router) in routers {
            if remaining == 0 {
                break;
            }
            let share = remaining.min(clients);
            remaining -= share;
            self.send(router, Body::Cull(Cull { count: share }), out);
            out.push(Output::Event(TreeEvent::Culled { count: share }));
        }
    }

    pub(super) fn on_cull(&mut self, from: NodeId, count: u64, now: Time, out: &mut Vec<Output>) {
        // Only the parent or the serving root (as named from above) may cull: a root
        // candidate that does not serve has no say over this subtree.
        let serving_root = self.leader().map(|r| r.id);
        if self.parent() != Some(from) && serving_root != Some(from) {
            self.dropped(from, "cull", DropReason::NotANeighbour, out);
            return;
        }
        self.cull(count, now, out);
    }

    /// The root placed one of our children elsewhere: drop the link if it is older than that
    /// placement. Only the root this node follows may say so.
    pub(super) fn on_release(
        &mut self,
        from: NodeId,
        release: ReleaseChild,
        now: Time,
        out: &mut Vec<Output>,
    ) {
        if self.leader().map(|r| r.id) != Some(from) {
            self.dropped(from, "release_child", DropReason::Unauthorized, out);
            return;
        }
        self.release_child(release, now, out);
    }

    pub(super) fn release_child(
        &mut self,
        release: ReleaseChild,
        now: Time,
        out: &mut Vec<Output>,
    ) {
        let superseded = self
            .children
            .get(&release.child_id)
            .is_some_and(|link| link.assignment_id < release.assignment_id);
        if superseded {
            self.remove_child(release.child_id, RemovalReason::Reassigned, now, out);
        }
    }

    /// Ids of the children the node keeps, in id order.
    pub(super) fn child_ids(&self) -> Vec<NodeId> {
        self.children.keys().copied().collect()
    }
}
