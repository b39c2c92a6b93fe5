//! A replicated root candidate taking up and giving up the root's duties as Raft
//! leadership comes and goes.

use canopy_proto::v1::{disconnect::Reason, Disconnect};
use canopy_proto::Body;

use super::root::RootState;
use super::Node;
use crate::io::{DropReason, Output, TreeEvent};
use crate::{NodeId, Time, TreeView};

impl Node {
    /// Serves as root with the committed `view`. The old root's children are expected back
    /// (with their subtrees) within the orphan grace; the others keep their places.
    pub(super) fn become_root(&mut self, view: TreeView, now: Time, out: &mut Vec<Output>) {
        if !self.replicated || !self.role.is_root() || view.root() != self.id {
            self.dropped(self.id, "become_root", DropReason::UnexpectedMessage, out);
            return;
        }
        self.release_children(out);
        self.known_leader = Some(self.id);
        if let Some(index) = self.roots.iter().position(|r| r.id == self.id) {
            self.leader_index = index;
        }
        self.epoch = self.epoch.max(view.epoch);
        let deadline = now + self.config.orphan_grace;
        let returning: Vec<NodeId> = view
            .get(self.id)
            .map(|e| e.children().collect())
            .unwrap_or_default();
        let mut state = RootState::new(view, now, &self.config, true);
        state.expect_rejoin(returning, deadline);
        self.root = Some(Box::new(state));
        out.push(Output::Event(TreeEvent::BecameRoot { epoch: self.epoch }));
    }

    /// Stops serving as root: held actions are dropped (their changes may never commit) and
    /// the children are told to rejoin through the leader.
    pub(super) fn step_down(&mut self, leader: Option<NodeId>, out: &mut Vec<Output>) {
        self.known_leader = leader;
        if let Some(index) = leader.and_then(|l| self.roots.iter().position(|r| r.id == l)) {
            self.leader_index = index;
        }
        if self.root.take().is_none() {
            return;
        }
        self.release_children(out);
        out.push(Output::Event(TreeEvent::SteppedDown { leader }));
    }

    fn release_children(&mut self, out: &mut Vec<Output>) {
        for child in self.child_ids() {
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
