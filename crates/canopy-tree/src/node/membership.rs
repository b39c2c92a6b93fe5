//! The child side of tree links (joining, obeying assignments, heartbeats, orphaning) and
//! the link-level messages both sides share.

use canopy_proto::v1::{
    disconnect::Reason, AssignParent, Disconnect, Heartbeat, InterestSnapshot, JoinRequest,
    Multicast, NotLeader, Reattach,
};
use canopy_proto::Body;
use rand::Rng;

use super::placement::Claimed;
use super::{Handoff, JoinState, Node, ParentLink};
use crate::io::{DropReason, Output, RemovalReason, TreeEvent};
use crate::{KeyTag, NodeId, Role, Time};

impl Node {
    /// Starts (or restarts) asking the root for a parent.
    pub(super) fn begin_join(&mut self, now: Time, out: &mut Vec<Output>) {
        // What the old parent said of the epoch is not evidence: the next placement's signed
        // grant sets it again (and raises EpochChanged, so a rejoined node catches up).
        // Assignment ids are kept: the root's rise strictly, so a replayed grant of an
        // earlier placement stays stale.
        self.epoch = 0;
        self.joining = Some(JoinState {
            attempt: 0,
            retry_at: now + self.join_backoff(0),
            redirected: false,
            asked: Vec::new(),
            busy: 0,
            retry_busy: false,
            reached: Vec::new(),
            stayed: false,
        });
        self.send_join(0, out);
    }

    pub(super) fn resend_join(&mut self, now: Time, out: &mut Vec<Output>) {
        let attempt = self.joining.as_ref().map_or(0, |j| j.attempt) + 1;
        let alive = self.leader().is_some_and(|r| self.join_link_is_fresh(r.id));
        let stayed = self.joining.as_ref().is_some_and(|j| j.stayed);
        // A silent candidate may be down: try the next one. One whose connection came up
        // meanwhile is not down but may be busy: ask it once more, then move on.
        let stay = alive && !stayed;
        if !self.roots.is_empty() && !stay {
            self.leader_index = (self.leader_index + 1) % self.roots.len();
        }
        let (asked, reached) = self
            .joining
            .take()
            .map(|j| (j.asked, j.reached))
            .unwrap_or_default();
        self.joining = Some(JoinState {
            attempt,
            retry_at: now + self.join_backoff(attempt),
            redirected: false,
            asked,
            busy: 0,
            retry_busy: false,
            reached,
            stayed: stay,
        });
        self.send_join(attempt, out);
    }

    /// The candidate asked refused the connection for being at capacity: ask it again after
    /// a pause that doubles with each refusal in a row (up to `join_backoff_max`), drawn at
    /// random between half and all of it, so a storm of joiners spreads out instead of
    /// coming back in lockstep. The refusal is no sign that the candidate is down.
    pub(super) fn on_busy(&mut self, peer: NodeId, now: Time) {
        if self.leader().map(|r| r.id) != Some(peer) {
            return;
        }
        let Some(busy) = self.joining.as_ref().map(|j| j.busy) else {
            return;
        };
        let pause = (self.config.join_timeout / 4)
            .saturating_mul(1u32 << busy.min(8))
            .min(self.config.join_backoff_max)
            .mul_f64(0.5 + 0.5 * self.rng.random::<f64>());
        if let Some(join) = self.joining.as_mut() {
            join.busy = busy.saturating_add(1);
            join.retry_busy = true;
            join.retry_at = now + pause;
        }
    }

    /// Sends the join again to the candidate that was busy, as the same attempt.
    pub(super) fn ask_again(&mut self, now: Time, out: &mut Vec<Output>) {
        let attempt = match self.joining.as_mut() {
            Some(join) => {
                join.retry_busy = false;
                join.retry_at = now + self.config.join_timeout;
                join.attempt
            }
            None => return,
        };
        self.send_join(attempt, out);
    }

    /// Exponential backoff with jitter, so orphans of one failure do not retry in lockstep.
    fn join_backoff(&mut self, attempt: u32) -> Time {
        let base = self
            .config
            .join_timeout
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.config.join_backoff_max);
        base.mul_f64(1.0 + 0.5 * self.rng.random::<f64>())
    }

    fn send_join(&mut self, attempt: u32, out: &mut Vec<Output>) {
        let Some(root) = self.leader().map(|r| r.id) else {
            return;
        };
        if let Some(join) = self.joining.as_mut().filter(|j| !j.asked.contains(&root)) {
            join.asked.push(root);
        }
        let request = JoinRequest {
            node_id: self.id,
            role: self.role.to_proto() as i32,
            region: self.region.clone(),
            address: self.address.clone(),
            attempt,
            subtree: Some(self.subtree()),
        };
        self.send(root, Body::JoinRequest(request), out);
        out.push(Output::Event(TreeEvent::JoinSent { root, attempt }));
    }

    pub(super) fn on_not_leader(
        &mut self,
        from: NodeId,
        redirect: NotLeader,
        now: Time,
        out: &mut Vec<Output>,
    ) {
        if self.joining.is_none() || self.leader().map(|r| r.id) != Some(from) {
            self.dropped(from, "not_leader", DropReason::UnexpectedMessage, out);
            return;
        }
        let Some(index) = self.roots.iter().position(|r| r.id == redirect.leader_hint) else {
            return;
        };
        let Some(join) = self.joining.as_mut().filter(|j| !j.redirected) else {
            return;
        };
        // The same attempt, not a fresh one: a retry stays a retry, so the leader still keeps
        // the joiner away from the parent that never answered.
        join.redirected = true;
        join.retry_at = now + self.config.join_timeout;
        let attempt = join.attempt;
        self.leader_index = index;
        self.send_join(attempt, out);
    }

    pub(super) fn on_assign(
        &mut self,
        from: NodeId,
        assign: AssignParent,
        now: Time,
        out: &mut Vec<Output>,
    ) {
        if assign.parent_id != from || assign.child_id != self.id || self.role.is_root() {
            self.dropped(from, "assign_parent", DropReason::Malformed, out);
            return;
        }
        if self.children.contains_key(&from) {
            // Obeying would close a cycle; the root will place us again.
            self.dropped(from, "assign_parent", DropReason::Malformed, out);
            self.tell_not_a_neighbour(from, false, out);
            return;
        }
        let claimed = Claimed {
            child: self.id,
            parent: from,
            parent_address: Some(&assign.parent_address),
            assignment_id: assign.assignment_id,
            adoption: false,
        };
        let Some(placement) = self.check_grant(assign.grant.as_ref(), &claimed, now) else {
            // Not the serving root's decision: no node can move another on its own say.
            self.dropped(from, "assign_parent", DropReason::Unauthorized, out);
            return;
        };
        if assign.assignment_id <= self.best_assignment {
            // A false parent: make it drop us rather than wait for its timeout.
            self.dropped(from, "assign_parent", DropReason::StaleAssignment, out);
            if self.parent() != Some(from) {
                self.tell_not_a_neighbour(from, false, out);
            }
            return;
        }
        self.best_assignment = assign.assignment_id;
        let previous = self.parent.take();
        if self
            .handoff
            .as_ref()
            .is_some_and(|h| h.old_parent == from && !h.said_goodbye)
        {
            // Placed back under the parent it was leaving: it stays.
            self.handoff = None;
        }
        if let Some(old) = previous.as_ref().filter(|p| p.id != from) {
            // Where the root moves clients, a client keeps the old parent a while (see
            // `Handoff`); otherwise a new assignment means the old link is lost anyway.
            if self.role == Role::Client && self.config.reallocate {
                self.begin_handoff(old.id, from, now, out);
            } else {
                self.say_goodbye(old.id, out);
            }
        }
        self.parent = Some(ParentLink {
            id: from,
            address: assign.parent_address,
            assignment_id: assign.assignment_id,
            last_heard: now,
        });
        self.joining = None;
        self.interest_flush_at = None;
        // What the old parent said of this subtree's tags waits for the new one's word.
        self.interest.above_reparented();
        // Epoch and root come from the root's signed grant, not from the parent.
        self.observe_epoch(placement.topology_epoch, out);
        self.observe_root(placement.root_id);
        let tags = self.interest.take_snapshot();
        // The new parent charges the snapshot against this link's budget: what follows waits.
        let rate = self.upward_budget();
        self.upward.charge(tags.len(), rate, now);
        // In chunks that each fit a frame: the first in the Reattach, the rest right after.
        let chunk = self.config.limits.max_tags_per_delta.max(1);
        let mut chunks: Vec<Vec<KeyTag>> = tags.chunks(chunk).map(<[KeyTag]>::to_vec).collect();
        let rest = if chunks.len() > 1 {
            chunks.split_off(1)
        } else {
            Vec::new()
        };
        let reattach = Reattach {
            node_id: self.id,
            role: self.role.to_proto() as i32,
            assignment_id: assign.assignment_id,
            subtree: Some(self.subtree()),
            interest: Some(InterestSnapshot {
                tags: chunks.pop().unwrap_or_default(),
                more: !rest.is_empty(),
            }),
        };
        self.send(from, Body::Reattach(reattach), out);
        let last = rest.len();
        for (i, tags) in rest.into_iter().enumerate() {
            let more = i + 1 < last;
            self.send(
                from,
                Body::InterestSnapshot(InterestSnapshot { tags, more }),
                out,
            );
        }
        out.push(Output::Event(TreeEvent::ParentChanged {
            parent: from,
            previous: previous.map(|p| p.id),
        }));
    }

    fn say_goodbye(&self, to: NodeId, out: &mut Vec<Output>) {
        let goodbye = Disconnect {
            sender_id: self.id,
            reason: Reason::Leaving as i32,
            rejoin: false,
        };
        self.send(to, Body::Disconnect(goodbye), out);
    }

    /// Keeps `old_parent` for the handoff grace (see `Handoff`).
    fn begin_handoff(
        &mut self,
        old_parent: NodeId,
        new_parent: NodeId,
        now: Time,
        out: &mut Vec<Output>,
    ) {
        // Copies still in flight towards the old parent may reach the new one too: what was
        // delivered just before counts as seen.
        let mut seen: std::collections::HashSet<(NodeId, u64, u64)> =
            self.recent_deliveries.iter().copied().collect();
        if let Some(earlier) = self.handoff.take() {
            let still_needed = earlier.old_parent == old_parent || earlier.old_parent == new_parent;
            if !earlier.said_goodbye && !still_needed {
                self.say_goodbye(earlier.old_parent, out);
            }
            seen.extend(earlier.seen);
        }
        let grace = self.handoff_grace();
        self.handoff = Some(Handoff {
            old_parent,
            leave_at: now + grace,
            said_goodbye: false,
            forget_at: now + grace * 2,
            seen,
        });
    }

    pub(super) fn handoff_on_tick(&mut self, now: Time, out: &mut Vec<Output>) {
        let Some(handoff) = self.handoff.as_mut() else {
            return;
        };
        if !handoff.said_goodbye && now >= handoff.leave_at {
            handoff.said_goodbye = true;
            let old = handoff.old_parent;
            self.say_goodbye(old, out);
        }
        if self.handoff.as_ref().is_some_and(|h| now >= h.forget_at) {
            self.handoff = None;
        }
    }

    /// Whether `from` is the parent this client is leaving, and still listens to.
    pub(super) fn is_leaving_parent(&self, from: NodeId) -> bool {
        self.handoff
            .as_ref()
            .is_some_and(|h| h.old_parent == from && !h.said_goodbye)
    }

    /// Whether this multicast was delivered already during a handoff; remembers it (a
    /// client that may be moved also keeps the last few it delivered, for the next handoff).
    /// A copy is the same only with the same payload: nobody can make a moved client drop a
    /// real multicast by sending a forged one under its origin and sequence first.
    pub(super) fn delivered_already(&mut self, multicast: &Multicast) -> bool {
        let tracking = self.config.reallocate && self.role == Role::Client;
        if self.handoff.is_none() && !tracking {
            return false;
        }
        let key = (
            multicast.origin,
            multicast.origin_seq,
            payload_digest(&multicast.payload),
        );
        if let Some(handoff) = self.handoff.as_mut() {
            if handoff.seen.contains(&key) {
                return true;
            }
            if handoff.seen.len() < super::HANDOFF_MAX_SEEN {
                handoff.seen.insert(key);
            }
        }
        if tracking {
            if self.recent_deliveries.len() >= super::RECENT_DELIVERIES {
                self.recent_deliveries.pop_front();
            }
            self.recent_deliveries.push_back(key);
        }
        false
    }
}

/// A digest of a payload for telling copies of one multicast from forgeries (keyed with a
/// fixed key: a forger who could match it would have sent the real payload anyway).
fn payload_digest(payload: &[u8]) -> u64 {
    use std::hash::Hasher;
    #[allow(deprecated)]
    let mut hasher =
        std::hash::SipHasher::new_with_keys(0x6861_6e64_6f66_6621, 0x7061_796c_6f61_6421);
    hasher.write(payload);
    hasher.finish()
}

impl Node {
    /// Follows the root named from above, so removal reports go to the current root.
    pub(super) fn observe_root(&mut self, root: NodeId) {
        if let Some(index) = self.roots.iter().position(|r| r.id == root) {
            self.leader_index = index;
        }
    }

    fn observe_epoch(&mut self, epoch: u64, out: &mut Vec<Output>) {
        if epoch > self.epoch {
            self.epoch = epoch;
            out.push(Output::Event(TreeEvent::EpochChanged { epoch }));
        }
    }

    /// Any message from a neighbour shows it is alive.
    pub(super) fn refresh_neighbour(&mut self, from: NodeId, now: Time) {
        if let Some(parent) = self.parent.as_mut().filter(|p| p.id == from) {
            parent.last_heard = now;
        } else if let Some(child) = self.children.get_mut(&from) {
            child.last_heard = now;
        }
    }

    pub(super) fn on_heartbeat(
        &mut self,
        from: NodeId,
        hb: Heartbeat,
        now: Time,
        out: &mut Vec<Output>,
    ) {
        if self.parent() == Some(from) {
            self.observe_epoch(hb.topology_epoch, out);
            self.observe_root(hb.root_id);
            return;
        }
        if self.is_leaving_parent(from) {
            return;
        }
        let Some(link) = self.children.get_mut(&from) else {
            self.dropped(from, "heartbeat", DropReason::NotANeighbour, out);
            // The sender thinks we are its parent (it reports a subtree) or its child.
            self.tell_not_a_neighbour(from, hb.subtree.is_some(), out);
            return;
        };
        if !link.attached {
            self.dropped(from, "heartbeat", DropReason::UnexpectedMessage, out);
            return;
        }
        if let Some(subtree) = hb.subtree {
            link.subtree = subtree;
        }
        if let Some(delta) = hb.interest {
            if delta.add.len() + delta.remove.len() > self.config.limits.max_tags_per_delta {
                let reason = format!(
                    "interest delta of {} tags, more than {}",
                    delta.add.len() + delta.remove.len(),
                    self.config.limits.max_tags_per_delta
                );
                self.evict_over_limit(from, reason, now, out);
                return;
            }
            let work = delta.add.len() + delta.remove.len();
            if !self.charge_interest(from, work, false, now, out) {
                return;
            }
            if let Some(link) = self.children.get_mut(&from) {
                link.interest.apply_delta(&delta, &mut self.interest);
            }
            self.schedule_interest_flush(now);
        }
        self.check_child_bounds(from, now, out);
    }

    /// Heartbeats to the parent (with subtree size and interest changes) and to each child
    /// (with the topology epoch).
    pub(super) fn send_heartbeats(&mut self, now: Time, out: &mut Vec<Output>) {
        self.send_parent_heartbeat(now, out);
        self.send_child_heartbeats(out);
        self.send_outside(out);
    }

    /// Heartbeats to each child: the topology epoch, the link's assignment, the root.
    pub(super) fn send_child_heartbeats(&self, out: &mut Vec<Output>) {
        let root_id = if self.root.is_some() {
            self.id
        } else {
            self.leader().map_or(0, |r| r.id)
        };
        for (&child, link) in &self.children {
            let hb = Heartbeat {
                sender_id: self.id,
                subtree: None,
                topology_epoch: self.epoch,
                interest: None,
                assignment_id: link.assignment_id,
                root_id,
            };
            out.push(Output::Send {
                to: child,
                msg: canopy_proto::ControlMessage::new(Body::Heartbeat(hb)),
            });
        }
    }

    pub(super) fn send_parent_heartbeat(&mut self, now: Time, out: &mut Vec<Output>) {
        let Some(parent) = &self.parent else {
            return;
        };
        let (to, assignment_id) = (parent.id, parent.assignment_id);
        let rate = self.upward_budget();
        let max_tags = self
            .config
            .limits
            .max_tags_per_delta
            .min(self.upward.available(rate, now));
        let interest = (self.interest.has_pending() && max_tags > 0)
            .then(|| self.interest.take_delta_limited(max_tags));
        if let Some(delta) = &interest {
            self.upward
                .charge(delta.add.len() + delta.remove.len(), rate, now);
        }
        let hb = Heartbeat {
            sender_id: self.id,
            subtree: Some(self.subtree()),
            topology_epoch: self.epoch,
            interest,
            assignment_id,
            root_id: 0,
        };
        self.send(to, Body::Heartbeat(hb), out);
        if self.interest.has_pending() {
            // What did not fit goes up in the next heartbeat, shortly.
            self.interest_flush_at = Some(now + self.config.interest_batch_delay);
        }
    }

    pub(super) fn check_parent_timeout(&mut self, now: Time, out: &mut Vec<Output>) {
        let timed_out = self
            .parent
            .as_ref()
            .is_some_and(|p| now.saturating_sub(p.last_heard) > self.config.parent_timeout);
        if timed_out {
            if let Some(previous) = self.parent() {
                out.push(Output::Event(TreeEvent::ParentTimedOut { previous }));
            }
            self.orphan(now, out);
        }
    }

    /// Loses the parent and rejoins through the root, keeping the subtree.
    pub(super) fn orphan(&mut self, now: Time, out: &mut Vec<Output>) {
        if let Some(previous) = self.parent.take() {
            // A root that went silent is likely dead: ask the next candidate first.
            if self.leader().is_some_and(|l| l.id == previous.id) && !self.roots.is_empty() {
                self.leader_index = (self.leader_index + 1) % self.roots.len();
            }
            out.push(Output::Event(TreeEvent::Orphaned {
                previous: previous.id,
            }));
        }
        if self.joining.is_none() {
            self.begin_join(now, out);
        }
    }

    pub(super) fn on_disconnect(
        &mut self,
        from: NodeId,
        disconnect: Disconnect,
        now: Time,
        out: &mut Vec<Output>,
    ) {
        if self.parent() == Some(from) {
            self.orphan(now, out);
        } else if self.is_leaving_parent(from) {
            if let Some(h) = self.handoff.as_mut() {
                h.said_goodbye = true;
            }
        } else if self.children.contains_key(&from) {
            let reason = if disconnect.reason == Reason::Culled as i32 {
                RemovalReason::Culled
            } else {
                RemovalReason::Left
            };
            self.remove_child(from, reason, now, out);
        } else {
            self.dropped(from, "disconnect", DropReason::NotANeighbour, out);
        }
    }

    /// A connection came up: if it is to the candidate this joiner asked, the candidate is
    /// alive and the wait for its answer starts now (its handshake may have waited in a
    /// queue for a good part of the join timeout).
    pub(super) fn on_link_up(&mut self, peer: NodeId, now: Time) {
        if !self.roots.iter().any(|r| r.id == peer) {
            return;
        }
        let asked = self.leader().map(|r| r.id);
        let timeout = self.config.join_timeout;
        let Some(join) = self.joining.as_mut() else {
            return;
        };
        if !join.reached.contains(&peer) {
            join.reached.push(peer);
        }
        if asked == Some(peer) && !join.retry_busy {
            join.retry_at = join.retry_at.max(now + timeout);
        }
    }

    pub(super) fn on_link_closed(&mut self, peer: NodeId, now: Time, out: &mut Vec<Output>) {
        if let Some(join) = self.joining.as_mut() {
            join.reached.retain(|&r| r != peer);
        }
        if self.parent() == Some(peer) {
            self.orphan(now, out);
        } else if self.children.contains_key(&peer) {
            self.remove_child(peer, RemovalReason::LinkClosed, now, out);
        }
    }

    /// Leaves for good: the parent forgets us, the children rejoin elsewhere.
    pub(super) fn leave(&mut self, out: &mut Vec<Output>) {
        let goodbye = |rejoin| Disconnect {
            sender_id: self.id,
            reason: Reason::Leaving as i32,
            rejoin,
        };
        if let Some(parent) = self.parent() {
            self.send(parent, Body::Disconnect(goodbye(false)), out);
        }
        for child in self.child_ids() {
            self.send(child, Body::Disconnect(goodbye(true)), out);
        }
        self.parent = None;
        self.joining = None;
        self.children.clear();
        self.left = true;
    }
}
