//! A replicated root for the simulator: root candidates whose "Raft" is a model with the
//! properties the tree core relies on, and nothing of the tree's logic.
//!
//! - A leader heartbeats every `heartbeat`; while it and a majority of candidates are up
//!   (alive and not paused), the leader's quorum contact and each follower's contact are
//!   renewed, and the news goes to every up candidate.
//! - A follower grants a vote only once it has heard nothing from a leader for the vote
//!   lease (openraft's leader lease); an election asked for by a candidate is decided a
//!   vote round trip later and wins with a majority of grants.
//! - A change proposed by the leader commits `commit_delay` later if that candidate still
//!   leads in the same term with a majority up, and fails otherwise; commits apply to the
//!   group's committed view in proposal order, which is what a new leader takes over with.

use std::time::Duration;

use canopy_tree::{Input, NodeId, ReignConfig, Time, TreeConfig, TreeView, ViewChange};

/// How the simulated root group behaves.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    /// Root candidates (node ids 1..=candidates).
    pub candidates: usize,
    /// The leader's heartbeat interval.
    pub heartbeat: Duration,
    /// A follower refuses other candidates' votes until it has heard nothing from the
    /// leader for this long.
    pub vote_lease: Duration,
    /// From a proposal to its commit.
    pub commit_delay: Duration,
    /// From asking for an election to its outcome.
    pub vote_delay: Duration,
}

impl GroupSpec {
    /// openraft's LAN timers (heartbeat 50 ms, vote lease 300 ms), commits after 2 ms.
    pub fn lan(candidates: usize) -> GroupSpec {
        GroupSpec {
            candidates,
            heartbeat: Duration::from_millis(50),
            vote_lease: Duration::from_millis(300),
            commit_delay: Duration::from_millis(2),
            vote_delay: Duration::from_millis(2),
        }
    }

    /// The reign timers candidates run with.
    pub fn reign(&self) -> ReignConfig {
        ReignConfig::for_raft(self.heartbeat, self.vote_lease)
    }
}

/// What the group model does at a scheduled time.
#[derive(Debug, Clone)]
pub(crate) enum GroupEvent {
    Heartbeat,
    Vote {
        candidate: NodeId,
        term: u64,
    },
    Commit {
        node: NodeId,
        term: u64,
        reign: u64,
        what: Commit,
    },
}

#[derive(Debug, Clone)]
pub(crate) enum Commit {
    TakeOver(ViewChange),
    Change { seq: u64, change: ViewChange },
}

pub(crate) struct GroupModel {
    pub(crate) spec: GroupSpec,
    pub(crate) term: u64,
    pub(crate) leader: Option<NodeId>,
    committed: Option<TreeView>,
    /// Per candidate (index id - 1): its last contact (quorum contact for the leader).
    contact: Vec<Option<Time>>,
    /// Elections won, by term.
    pub(crate) elections: u64,
}

/// Inputs the model hands to nodes, and events it schedules, for the engine to carry out.
#[derive(Default)]
pub(crate) struct GroupActions {
    pub(crate) inputs: Vec<(NodeId, Input)>,
    pub(crate) later: Vec<(Duration, GroupEvent)>,
}

impl GroupModel {
    /// A group in its first term, led by candidate 1.
    pub(crate) fn new(spec: GroupSpec) -> GroupModel {
        let contact = vec![Some(Time::ZERO); spec.candidates];
        GroupModel {
            spec,
            term: 1,
            leader: Some(1),
            committed: None,
            contact,
            elections: 0,
        }
    }

    pub(crate) fn is_candidate(&self, id: NodeId) -> bool {
        (1..=self.spec.candidates as NodeId).contains(&id)
    }

    fn candidates(&self) -> impl Iterator<Item = NodeId> {
        1..=self.spec.candidates as NodeId
    }

    fn majority(&self) -> usize {
        self.spec.candidates / 2 + 1
    }

    fn contact_mut(&mut self, id: NodeId) -> Option<&mut Option<Time>> {
        self.contact
            .get_mut(usize::try_from(id.checked_sub(1)?).ok()?)
    }

    fn contact_of(&self, id: NodeId) -> Option<Time> {
        self.contact
            .get(usize::try_from(id.checked_sub(1)?).ok()?)
            .copied()
            .flatten()
    }

    fn news(&self, id: NodeId) -> Input {
        Input::Leadership {
            term: self.term,
            leader: self.leader,
            contact: self.contact_of(id),
        }
    }

    /// A heartbeat round: contacts renewed where the leader reaches a quorum, news to every
    /// up candidate.
    pub(crate) fn heartbeat(&mut self, now: Time, up: &dyn Fn(NodeId) -> bool) -> GroupActions {
        let mut actions = GroupActions::default();
        let ups: Vec<NodeId> = self.candidates().filter(|&c| up(c)).collect();
        if let Some(leader) = self.leader.filter(|&l| up(l)) {
            for &c in &ups {
                if c != leader {
                    if let Some(slot) = self.contact_mut(c) {
                        *slot = Some(now);
                    }
                }
            }
            if ups.len() >= self.majority() {
                if let Some(slot) = self.contact_mut(leader) {
                    *slot = Some(now);
                }
            }
        }
        for c in ups {
            actions.inputs.push((c, self.news(c)));
        }
        actions
            .later
            .push((self.spec.heartbeat, GroupEvent::Heartbeat));
        actions
    }

    pub(crate) fn on_elect(&self, candidate: NodeId) -> GroupActions {
        GroupActions {
            inputs: Vec::new(),
            later: vec![(
                self.spec.vote_delay,
                GroupEvent::Vote {
                    candidate,
                    term: self.term,
                },
            )],
        }
    }

    /// Decides an election: won with a majority of grants from up candidates whose vote
    /// lease has run out (a candidate grants itself).
    pub(crate) fn vote(
        &mut self,
        candidate: NodeId,
        term: u64,
        now: Time,
        up: &dyn Fn(NodeId) -> bool,
    ) -> GroupActions {
        let mut actions = GroupActions::default();
        if term != self.term || !up(candidate) || self.leader == Some(candidate) {
            return actions;
        }
        let lease = self.spec.vote_lease;
        let grants: Vec<NodeId> = self
            .candidates()
            .filter(|&v| up(v))
            .filter(|&v| {
                v == candidate
                    || (self.leader != Some(v)
                        && self.contact_of(v).is_none_or(|c| now > c + lease))
            })
            .collect();
        if grants.len() < self.majority() {
            return actions;
        }
        self.term += 1;
        self.leader = Some(candidate);
        self.elections += 1;
        for v in grants {
            if let Some(slot) = self.contact_mut(v) {
                *slot = Some(now);
            }
        }
        for c in self.candidates().filter(|&c| up(c)) {
            actions.inputs.push((c, self.news(c)));
        }
        actions
    }

    /// A proposal (or a takeover) from `node`, decided `commit_delay` later.
    pub(crate) fn propose(&self, node: NodeId, reign: u64, what: Commit) -> GroupActions {
        GroupActions {
            inputs: Vec::new(),
            later: vec![(
                self.spec.commit_delay,
                GroupEvent::Commit {
                    node,
                    term: self.term,
                    reign,
                    what,
                },
            )],
        }
    }

    pub(crate) fn commit(
        &mut self,
        node: NodeId,
        term: u64,
        reign: u64,
        what: Commit,
        config: &TreeConfig,
        up: &dyn Fn(NodeId) -> bool,
    ) -> GroupActions {
        let mut actions = GroupActions::default();
        let ups = self.candidates().filter(|&c| up(c)).count();
        let commits =
            self.leader == Some(node) && self.term == term && up(node) && ups >= self.majority();
        if !commits {
            actions.inputs.push((node, Input::CommitFailed { reign }));
            return actions;
        }
        let input = match what {
            Commit::TakeOver(change) => {
                change.apply_to(&mut self.committed, config);
                match self.committed.clone() {
                    Some(view) => Input::BecomeRoot {
                        reign,
                        view: Box::new(view),
                    },
                    None => Input::CommitFailed { reign },
                }
            }
            Commit::Change { seq, change } => {
                change.apply_to(&mut self.committed, config);
                Input::Committed { reign, up_to: seq }
            }
        };
        actions.inputs.push((node, input));
        actions
    }
}
