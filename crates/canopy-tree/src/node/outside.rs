//! Upward filters on tree links: a parent tells each router child which of its tags nobody
//! outside its subtree wants (see `interest::outside`), and a router obeys its parent's
//! word when deciding whether a multicast from below goes up.

use canopy_proto::v1::{InterestDelta, OutsideInterest};
use canopy_proto::Body;

use super::Node;
use crate::interest::AboveChange;
use crate::io::{DropReason, Output};
use crate::{KeyTag, NodeId, Role, Time, BROADCAST_TAG};

impl Node {
    /// Whether this node takes part in upward filtering (routers and the root, when on).
    pub(super) fn upward_filters(&self) -> bool {
        self.config.upward_filters && self.role.is_router()
    }

    /// Whether a multicast for `tag` that came from below should go to the parent.
    pub(super) fn sends_up(&self, tag: KeyTag) -> bool {
        !self.upward_filters() || tag == BROADCAST_TAG || self.interest.outside_wants(tag)
    }

    /// Whether a router child still needs a snapshot, or changes wait to be told.
    pub(super) fn outside_work_pending(&self) -> bool {
        self.upward_filters()
            && (self.interest.has_outside_changes()
                || self
                    .children
                    .values()
                    .any(|c| c.attached && c.role == Role::Router && !c.outside_sent))
    }

    /// Tells router children which of their tags became local or stopped being, and sends a
    /// whole snapshot to each that has none yet. Nothing is said before this node itself
    /// knows what is wanted above it.
    pub(super) fn send_outside(&mut self, out: &mut Vec<Output>) {
        if !self.upward_filters() {
            return;
        }
        let routers: Vec<(NodeId, bool)> = self
            .children
            .iter()
            .filter(|(_, c)| c.attached && c.role == Role::Router)
            .map(|(&id, c)| (id, c.outside_sent))
            .collect();
        let chunk = self.config.limits.max_tags_per_delta.max(1);
        match self.interest.above_known() {
            None => self.interest.clear_outside_changes(),
            Some(false) => {
                self.interest.clear_outside_changes();
                for &(child, _) in routers.iter().filter(|(_, sent)| !sent) {
                    let everything = OutsideInterest {
                        everything: true,
                        ..Default::default()
                    };
                    self.send(child, Body::OutsideInterest(everything), out);
                    self.mark_outside_sent(child);
                }
            }
            Some(true) => {
                let told: Vec<NodeId> = routers
                    .iter()
                    .filter(|(_, sent)| *sent)
                    .map(|&(id, _)| id)
                    .collect();
                for (child, delta) in self.interest.take_outside_changes(&told) {
                    for piece in split_delta(delta, chunk) {
                        let msg = OutsideInterest {
                            delta: Some(piece),
                            ..Default::default()
                        };
                        self.send(child, Body::OutsideInterest(msg), out);
                    }
                }
                for &(child, _) in routers.iter().filter(|(_, sent)| !sent) {
                    let Some(link) = self.children.get(&child) else {
                        continue;
                    };
                    let tags = self
                        .interest
                        .local_of(child, link.interest.tags(&self.interest));
                    let pieces: Vec<&[KeyTag]> = if tags.is_empty() {
                        vec![&[]]
                    } else {
                        tags.chunks(chunk).collect()
                    };
                    let last = pieces.len() - 1;
                    for (i, piece) in pieces.into_iter().enumerate() {
                        let msg = OutsideInterest {
                            snapshot: piece.to_vec(),
                            first: i == 0,
                            more: i < last,
                            ..Default::default()
                        };
                        self.send(child, Body::OutsideInterest(msg), out);
                    }
                    self.mark_outside_sent(child);
                }
            }
        }
    }

    fn mark_outside_sent(&mut self, child: NodeId) {
        if let Some(link) = self.children.get_mut(&child) {
            link.outside_sent = true;
        }
    }

    /// The parent says which of this subtree's tags nobody outside wants.
    pub(super) fn on_outside_interest(
        &mut self,
        from: NodeId,
        msg: OutsideInterest,
        now: Time,
        out: &mut Vec<Output>,
    ) {
        if self.parent() != Some(from) {
            self.dropped(from, "outside_interest", DropReason::NotANeighbour, out);
            return;
        }
        if !self.upward_filters() {
            self.dropped(from, "outside_interest", DropReason::UnexpectedMessage, out);
            return;
        }
        let size = msg.snapshot.len()
            + msg
                .delta
                .as_ref()
                .map_or(0, |d| d.add.len() + d.remove.len());
        let msg = if size > self.config.limits.max_tags_per_delta {
            // Nothing is lost by sending everything up; a parent saying too much at once
            // gets exactly that.
            self.dropped(from, "outside_interest", DropReason::Malformed, out);
            OutsideInterest {
                everything: true,
                ..Default::default()
            }
        } else {
            msg
        };
        let bound = self.config.limits.max_tags_per_router_link;
        match self.interest.on_outside(msg, bound) {
            AboveChange::Tags => {}
            AboveChange::Replaced | AboveChange::Everything => {
                for link in self.children.values_mut() {
                    link.outside_sent = false;
                }
            }
        }
        self.schedule_interest_flush(now);
    }
}

/// Splits a delta into pieces of at most `max` tags, removals first.
fn split_delta(delta: InterestDelta, max: usize) -> Vec<InterestDelta> {
    if delta.add.len() + delta.remove.len() <= max {
        return vec![delta];
    }
    let mut pieces = Vec::new();
    for remove in delta.remove.chunks(max) {
        pieces.push(InterestDelta {
            add: Vec::new(),
            remove: remove.to_vec(),
        });
    }
    for add in delta.add.chunks(max) {
        pieces.push(InterestDelta {
            add: add.to_vec(),
            remove: Vec::new(),
        });
    }
    pieces
}
