//! Placement grants: the root's decision "child C goes under parent P with assignment A",
//! in a form the parent and the child can check themselves.
//!
//! The root encodes a [`Placement`] and puts it, unsigned, in the `AdoptChild` (or its own
//! `AssignParent`). The driver signs it with the root's certificate key on the way out and
//! verifies the signature (and that the signer is a root candidate) on the way in, before the
//! state machine sees the message. What the state machine checks here is that the grant says
//! what the message says, names this node, comes from a root candidate, and is fresh.

use canopy_proto::prost::Message;
use canopy_proto::v1::{Placement, SignedPlacement};

use super::Node;
use crate::{NodeId, Time};

/// The fields a message states and its grant must repeat.
pub(super) struct Claimed<'a> {
    pub(super) child: NodeId,
    pub(super) parent: NodeId,
    pub(super) parent_address: Option<&'a str>,
    pub(super) assignment_id: u64,
    /// An `AdoptChild` (to this node as parent) rather than an `AssignParent`.
    pub(super) adoption: bool,
}

/// An unsigned grant of `root`'s decision, made at `now`, to place `child` under `parent`
/// (reachable at `parent_address`) with `assignment_id`. The driver signs it.
pub fn placement_grant(
    root: NodeId,
    child: NodeId,
    parent: NodeId,
    parent_address: String,
    assignment_id: u64,
    now: Time,
) -> SignedPlacement {
    placement_grant_at_epoch(root, child, parent, parent_address, assignment_id, now, 0)
}

/// [`placement_grant`] made at topology epoch `epoch`.
pub fn placement_grant_at_epoch(
    root: NodeId,
    child: NodeId,
    parent: NodeId,
    parent_address: String,
    assignment_id: u64,
    now: Time,
    epoch: u64,
) -> SignedPlacement {
    let placement = Placement {
        child_id: child,
        parent_id: parent,
        parent_address,
        assignment_id,
        root_id: root,
        issued_at_ms: u64::try_from(now.as_millis()).unwrap_or(u64::MAX),
        topology_epoch: epoch,
    };
    SignedPlacement {
        placement: placement.encode_to_vec().into(),
        signature: Default::default(),
        signer_certificate: Default::default(),
    }
}

impl Node {
    /// An unsigned grant for a decision this root makes now.
    pub(super) fn placement_grant(
        &self,
        child: NodeId,
        parent: NodeId,
        parent_address: String,
        assignment_id: u64,
        now: Time,
    ) -> SignedPlacement {
        placement_grant_at_epoch(
            self.id,
            child,
            parent,
            parent_address,
            assignment_id,
            now,
            self.epoch,
        )
    }

    /// The placement in `grant` if it matches `claimed`, was made by a root this node follows
    /// (see below) and is neither older nor further in the future than the configured
    /// maximum age.
    pub(super) fn check_grant(
        &self,
        grant: Option<&SignedPlacement>,
        claimed: &Claimed<'_>,
        now: Time,
    ) -> Option<Placement> {
        let placement = Placement::decode(grant?.placement.as_ref()).ok()?;
        let matches = placement.child_id == claimed.child
            && placement.parent_id == claimed.parent
            && placement.assignment_id == claimed.assignment_id
            && claimed
                .parent_address
                .is_none_or(|a| a == placement.parent_address);
        // Only a root this node follows may place it: the one named from above, or one it
        // asked during its current join. Another candidate's grant, signed or not, is not
        // the serving root's decision. An adoption may come from any configured candidate
        // (a new root adopts under routers that have not heard of it yet).
        // A takeover is the exception: a candidate that placed this node under itself at a
        // later topology epoch than any this node has seen became the root after the one it
        // follows (every `NewRoot` raises the epoch).
        let root = placement.root_id;
        // Only a node without a parent, or a child of a root that has gone silent (a serving
        // root heartbeats its children every `root_heartbeat_interval`), can be taken over:
        // a candidate cannot pull a node away from a live root, and deeper nodes learn the
        // new root from their parents and never move.
        let silence = self.config.root_heartbeat_interval * 2;
        let under_root = self.parent.as_ref().is_none_or(|p| {
            self.is_root_candidate(p.id) && now.saturating_sub(p.last_heard) > silence
        });
        let takeover = placement.parent_id == root
            && self.is_root_candidate(root)
            && under_root
            && placement.topology_epoch > self.epoch;
        let follows = self.leader().is_some_and(|r| r.id == root)
            || self
                .joining
                .as_ref()
                .is_some_and(|j| j.asked.contains(&root))
            || (claimed.adoption && self.is_root_candidate(root))
            || (!claimed.adoption && takeover);
        if !matches || !follows {
            return None;
        }
        let max_age = self.config.limits.placement_max_age;
        let issued = Time::from_millis(placement.issued_at_ms);
        let fresh = now.saturating_sub(issued) <= max_age && issued <= now + max_age;
        fresh.then_some(placement)
    }
}
