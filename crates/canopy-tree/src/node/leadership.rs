//! A replicated root candidate's reigns: when it takes up the root's duties, when it gives
//! them up, and when it asks the root group for an election.
//!
//! Raft decides who leads; this module decides what a candidate does about it, from the
//! news its driver relays ([`Input::Leadership`](crate::Input::Leadership)) and the time:
//!
//! - A leader whose quorum contact is within the lease begins a *reign*: it asks for its
//!   `NewRoot` to be committed ([`Output::TakeOver`]) and serves only once that commit comes
//!   back with the view. Everything a reign proposes carries the reign's number; answers for
//!   another reign are ignored, so a deposed leader never acts on a commit it did not see.
//! - A serving root stops the moment its lease has run out, whatever else it is handed (a
//!   paused leader waking up steps down before it reads anything), when the group names
//!   another leader, and when a proposal does not commit within the commit timeout.
//! - A follower that has not heard from a leader for the followers' vote lease asks for an
//!   election itself, staggered by rank so that two survivors do not split the vote.
//! - A new root places the old root's children under itself at once from the view, so they
//!   need not wait out their parent timeout, and nothing below them moves.

use canopy_proto::v1::{disconnect::Reason, Disconnect};
use canopy_proto::Body;
use rand::Rng;

use super::root::RootState;
use super::Node;
use crate::io::{DropReason, Output, StepDownReason, TreeEvent};
use crate::{NodeId, ReignConfig, Role, Time, TreeView, ViewChange};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    /// Waiting since `since` for the takeover's `NewRoot` to commit.
    Becoming {
        since: Time,
    },
    Serving,
}

/// What a replicated candidate knows of the root group, and where it is in its reign.
#[derive(Debug, Clone)]
pub(super) struct ReignState {
    config: ReignConfig,
    /// Number of the current (or last) reign; rises with every takeover.
    reign: u64,
    phase: Phase,
    term: u64,
    leader: Option<NodeId>,
    contact: Option<Time>,
    /// When the node started: a follower that never heard a leader counts from here.
    started: Time,
    next_election: Option<Time>,
    /// When this node last asked for an election.
    last_elect: Option<Time>,
    /// The term the current reign began in: a new term ends it, even one this node leads.
    reign_term: u64,
}

impl ReignState {
    pub(super) fn new(config: ReignConfig) -> Self {
        ReignState {
            config,
            reign: 0,
            phase: Phase::Idle,
            term: 0,
            leader: None,
            contact: None,
            started: Time::ZERO,
            next_election: None,
            last_elect: None,
            reign_term: 0,
        }
    }

    pub(super) fn reign(&self) -> u64 {
        self.reign
    }

    pub(super) fn commit_timeout(&self) -> Time {
        self.config.commit_timeout
    }

    fn lease_until(&self) -> Option<Time> {
        self.contact.map(|c| c + self.config.lease)
    }

    fn lease_holds(&self, now: Time) -> bool {
        self.lease_until().is_some_and(|until| now <= until)
    }

    /// The earliest time this node must look at its reign again.
    pub(super) fn next_deadline(&self) -> Option<Time> {
        let phase = match self.phase {
            Phase::Idle => None,
            Phase::Becoming { since } => Some(since + self.config.commit_timeout),
            Phase::Serving => self.lease_until().map(|t| t + Time::from_nanos(1)),
        };
        match (phase, self.next_election) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Node {
    pub(super) fn start_reigns(&mut self, now: Time) {
        if let Some(reign) = self.reign.as_mut() {
            reign.started = now;
        }
        self.schedule_election();
    }

    /// A serving root whose lease has run out stops before it does anything else.
    pub(super) fn check_lease(&mut self, now: Time, out: &mut Vec<Output>) {
        let expired = self
            .reign
            .as_ref()
            .is_some_and(|r| r.phase == Phase::Serving && !r.lease_holds(now));
        if expired {
            let leader = self.reign.as_ref().and_then(|r| r.leader);
            let leader = leader.filter(|&l| l != self.id);
            self.end_reign(leader, StepDownReason::LeaseExpired, true, out);
        }
    }

    pub(super) fn on_leadership(
        &mut self,
        term: u64,
        leader: Option<NodeId>,
        contact: Option<Time>,
        now: Time,
        out: &mut Vec<Output>,
    ) {
        let id = self.id;
        let Some(reign) = self.reign.as_mut() else {
            self.dropped(id, "leadership", DropReason::UnexpectedMessage, out);
            return;
        };
        if term < reign.term {
            return;
        }
        let same_leadership = term == reign.term && leader == reign.leader;
        reign.contact = match (same_leadership, reign.contact, contact) {
            (true, Some(old), Some(new)) => Some(old.max(new)),
            (true, old, None) => old,
            (_, _, new) => new,
        };
        reign.term = term;
        reign.leader = leader;
        if leader == Some(id) {
            reign.next_election = None;
            let lease_holds = reign.lease_holds(now);
            if reign.phase != Phase::Idle && reign.reign_term != term {
                // Elected again: what the last reign proposed may not survive the new term,
                // so a new reign begins. The children stay: the new reign places them under
                // this node again with new assignments, without a disconnect.
                self.end_reign(None, StepDownReason::NotLeader, false, out);
            }
            let Some(reign) = self.reign.as_mut() else {
                return;
            };
            match reign.phase {
                Phase::Idle if lease_holds => self.begin_reign(now, out),
                Phase::Becoming { .. } | Phase::Serving if !lease_holds => {
                    self.end_reign(None, StepDownReason::LeaseExpired, true, out);
                }
                _ => {}
            }
        } else {
            if reign.phase != Phase::Idle || !self.children.is_empty() {
                self.end_reign(leader, StepDownReason::NotLeader, true, out);
            }
            self.follow(leader);
            self.schedule_election();
        }
    }

    /// Remembers whom to send joiners to.
    fn follow(&mut self, leader: Option<NodeId>) {
        self.known_leader = leader;
        if let Some(index) = leader.and_then(|l| self.roots.iter().position(|r| r.id == l)) {
            self.leader_index = index;
        }
    }

    /// When a follower asks for an election if it hears nothing more: once the followers'
    /// vote lease has run out since the last contact, then every round of all candidates'
    /// staggered turns. The rank puts the candidates that are not the silent leader in id
    /// order, so one asks first and the others only if it did not win.
    fn schedule_election(&mut self) {
        let id = self.id;
        let candidates: Vec<NodeId> = self.roots.iter().map(|r| r.id).collect();
        let Some(reign) = self.reign.as_mut() else {
            return;
        };
        let silent = reign.leader;
        let others: Vec<NodeId> = candidates
            .iter()
            .copied()
            .filter(|&c| Some(c) != silent)
            .collect();
        let rank = others.iter().position(|&c| c == id).unwrap_or(0) as u32;
        let rounds = others.len().max(1) as u32;
        let since = reign.contact.unwrap_or(reign.started).max(reign.started);
        let first = since + reign.config.election_after + reign.config.election_stagger * rank;
        let period = reign.config.election_stagger * rounds;
        let at = match reign.last_elect {
            // Asked already in this silence: the next turn is a whole round later.
            Some(last) if last >= first => {
                let behind = (last - first).as_nanos() / period.as_nanos().max(1) + 1;
                first + period * u32::try_from(behind).unwrap_or(u32::MAX)
            }
            _ => first,
        };
        reign.next_election = Some(at);
    }

    /// Timers of the reign: the lease, a takeover or proposal that never commits, an election
    /// that is due.
    pub(super) fn reign_on_tick(&mut self, now: Time, out: &mut Vec<Output>) {
        let Some(reign) = self.reign.as_mut() else {
            return;
        };
        if let Phase::Becoming { since } = reign.phase {
            if now >= since + reign.config.commit_timeout {
                self.end_reign(None, StepDownReason::CommitFailed, true, out);
                return;
            }
        }
        let overdue = self
            .root
            .as_ref()
            .and_then(|r| r.oldest_uncommitted())
            .is_some_and(|since| now >= since + self.reign_commit_timeout());
        if overdue {
            self.end_reign(None, StepDownReason::CommitFailed, true, out);
            return;
        }
        let Some(reign) = self.reign.as_mut() else {
            return;
        };
        if reign.next_election.is_some_and(|at| now >= at) && reign.leader != Some(self.id) {
            reign.last_elect = Some(now);
            out.push(Output::Elect { term: reign.term });
            self.schedule_election();
        }
    }

    fn reign_commit_timeout(&self) -> Time {
        self.reign
            .as_ref()
            .map_or(Time::MAX, |r| r.commit_timeout())
    }

    fn begin_reign(&mut self, now: Time, out: &mut Vec<Output>) {
        let Some(reign) = self.reign.as_mut() else {
            return;
        };
        reign.reign += 1;
        reign.reign_term = reign.term;
        reign.phase = Phase::Becoming { since: now };
        let number = reign.reign;
        // Until it serves it names no one, so joiners are not sent back to the old leader
        // (which may already name this node): they retry shortly.
        self.follow(Some(self.id));
        let change = ViewChange::NewRoot {
            root: self.id,
            region: self.region.clone(),
            address: self.address.clone(),
        };
        out.push(Output::TakeOver {
            reign: number,
            change,
        });
    }

    /// The takeover committed: serve with `view`, and place the old root's children under
    /// this node at once (each with a new assignment, committed before it is sent), so they
    /// move with their subtrees as they are.
    pub(super) fn become_root(
        &mut self,
        number: u64,
        view: TreeView,
        now: Time,
        out: &mut Vec<Output>,
    ) {
        let id = self.id;
        let becoming = self
            .reign
            .as_ref()
            .is_some_and(|r| r.reign == number && matches!(r.phase, Phase::Becoming { .. }));
        let lease_holds = self.reign.as_ref().is_some_and(|r| r.lease_holds(now));
        if !becoming || !lease_holds || !self.role.is_root() || view.root() != id {
            self.dropped(id, "become_root", DropReason::UnexpectedMessage, out);
            if becoming {
                // This reign cannot serve: the next news begins another.
                self.end_reign(None, StepDownReason::LeaseExpired, true, out);
            }
            return;
        }
        if let Some(reign) = self.reign.as_mut() {
            reign.phase = Phase::Serving;
        }
        self.epoch = self.epoch.max(view.epoch);
        let returning: Vec<(NodeId, Role, String, String)> = view
            .get(id)
            .map(|e| e.children().collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| {
                view.get(c)
                    .map(|e| (c, e.role, e.region.clone(), e.address.clone()))
            })
            .collect();
        // Children kept from this node's previous reign stay if the view still has them
        // here (they are placed again below); any others go.
        let stray: Vec<NodeId> = self
            .child_ids()
            .into_iter()
            .filter(|c| !returning.iter().any(|r| r.0 == *c))
            .collect();
        self.release(&stray, out);
        // A child that never answers its new assignment is removed after the child timeout,
        // like any silent child.
        self.root = Some(Box::new(RootState::new(
            view,
            now,
            &self.config,
            Some(number),
        )));
        let reassigned = returning.len();
        for (child, role, region, address) in returning {
            self.reassign_to_self(child, role, region, address, now, out);
        }
        out.push(Output::Event(TreeEvent::BecameRoot {
            epoch: self.epoch,
            reassigned,
        }));
    }

    fn reassign_to_self(
        &mut self,
        child: NodeId,
        role: Role,
        region: String,
        address: String,
        now: Time,
        out: &mut Vec<Output>,
    ) {
        let salt = self.rng.random::<u64>();
        let Some(root) = self.root.as_mut() else {
            return;
        };
        let assignment_id = root.take_assignment_id();
        let change = ViewChange::Assign {
            node: child,
            role,
            region,
            address: address.clone(),
            parent: self.id,
            assignment_id,
            salt,
        };
        self.root_decide(change, now, out);
        let grant = self.placement_grant(child, self.id, self.address.clone(), assignment_id, now);
        // Not held for the commit: the move changes no structure (the committed NewRoot
        // already put the child under this root), the lease shows this root still leads,
        // and its id is above anything a later reign's view can hold (see
        // `reign_assignment_base`), so if this reign ends before the commit, the next
        // reign's placement still wins. Waiting would add a commit round to every failover.
        self.adopt(child, role, address, assignment_id, grant, now, out);
    }

    /// Answers for another reign than the current one are stale.
    pub(super) fn is_current_reign(&self, number: u64) -> bool {
        self.reign.as_ref().is_some_and(|r| r.reign == number)
    }

    pub(super) fn on_commit_failed(&mut self, number: u64, out: &mut Vec<Output>) {
        let active = self
            .reign
            .as_ref()
            .is_some_and(|r| r.reign == number && r.phase != Phase::Idle);
        if active {
            self.end_reign(None, StepDownReason::CommitFailed, true, out);
        }
    }

    /// Stops serving (or trying to): held actions are dropped (their changes may never
    /// commit) and, with `release`, the children are told to rejoin through the leader.
    fn end_reign(
        &mut self,
        leader: Option<NodeId>,
        reason: StepDownReason,
        release: bool,
        out: &mut Vec<Output>,
    ) {
        if let Some(reign) = self.reign.as_mut() {
            reign.phase = Phase::Idle;
        }
        self.follow(leader);
        let was_serving = self.root.take().is_some();
        if release {
            self.release_children(out);
        }
        if was_serving {
            out.push(Output::Event(TreeEvent::SteppedDown { leader, reason }));
        }
    }

    fn release_children(&mut self, out: &mut Vec<Output>) {
        let children = self.child_ids();
        self.release(&children, out);
    }

    /// Tells these children to rejoin through the leader and forgets them.
    fn release(&mut self, children: &[NodeId], out: &mut Vec<Output>) {
        for &child in children {
            let goodbye = Disconnect {
                sender_id: self.id,
                reason: Reason::Leaving as i32,
                rejoin: true,
            };
            self.send(child, Body::Disconnect(goodbye), out);
            if let Some(mut link) = self.children.remove(&child) {
                link.interest.clear(&mut self.interest);
            }
        }
    }
}
