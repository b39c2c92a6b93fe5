//! Upward filters: which of a subtree's tags nobody outside it wants.
//!
//! A parent tells each router child which of the tags the child advertised are held by
//! nobody but that child: not by the parent itself, not by its other children, not by
//! anyone the parent's own parent says is outside ("local" tags). The child sends a multicast
//! up unless its tag is local, so traffic that stays inside a subtree never climbs to the
//! root, and what a child keeps is bounded by its own interest (a set of what *is* wanted
//! outside would hold nearly every tag of the tree at every router). A tag is local to child
//! C exactly when C is its only holder, so the parent needs no set per child: per tag, the
//! number of holders and the XOR of the child holders' ids (which names the child when it
//! is the only one), and a change is reported to the children whose answer it flips.

use canopy_proto::v1::{InterestDelta, OutsideInterest};

#[cfg(test)]
use super::Holder;
use super::{InterestTable, TagSet};
use crate::{KeyTag, NodeId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum AboveState {
    /// No snapshot from the parent yet: everything goes up.
    #[default]
    Unknown,
    /// `local` is what the parent said.
    Known,
    /// The parent cannot tell, or said more than this node keeps: everything goes up.
    Everything,
    /// The root: nothing is above.
    Nothing,
}

/// What the parent says of this subtree's tags.
#[derive(Debug, Clone, Default)]
pub(crate) struct Above {
    state: AboveState,
    /// The node moved to a new parent whose snapshot has not arrived: it sends everything
    /// up, and keeps the old set for its children (the rest of the tree is the same tree;
    /// the new snapshot corrects them by difference).
    stale: bool,
    /// Tags of this subtree that nobody outside it wants.
    local: TagSet,
    /// A snapshot arriving in chunks.
    pending: Option<TagSet>,
}

/// How a tag was held: by nobody, by one child link alone (named), or otherwise (by the
/// node itself, by someone outside the node's subtree, or by two or more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holding {
    Nobody,
    OnlyChild(NodeId),
    Others,
}

impl Holding {
    /// Whether only `child`'s subtree wants the tag.
    fn local_to(self, child: NodeId) -> bool {
        self == Holding::OnlyChild(child)
    }
}

/// What a message from the parent did to this node's view of its tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AboveChange {
    /// Changes went into the table tag by tag (children learn them by difference).
    Tags,
    /// The set became known or was replaced wholesale: children need full snapshots.
    Replaced,
    /// Everything goes up from here on: children must be told so.
    Everything,
}

impl InterestTable {
    /// Starts remembering changes for the router children's local sets.
    pub(crate) fn track_outside(&mut self) {
        self.track_outside = true;
    }

    /// A node with no parent (the root): nothing is wanted above it.
    pub(crate) fn above_is_nothing(&mut self) {
        self.above = Above {
            state: AboveState::Nothing,
            ..Above::default()
        };
    }

    /// The node has a new parent: until its snapshot arrives, everything goes up.
    pub(crate) fn above_reparented(&mut self) {
        self.above.stale = true;
        self.above.pending = None;
    }

    /// Whether a multicast for `tag` from inside this subtree should go up.
    pub fn outside_wants(&self, tag: KeyTag) -> bool {
        match self.above.state {
            AboveState::Known if !self.above.stale => !self.above.local.contains(&tag),
            AboveState::Nothing => false,
            _ => true,
        }
    }

    /// Whether this node can tell its children which of their tags are local: `Some(true)`
    /// with a set, `Some(false)` when it must tell them to send everything up, `None` before
    /// its parent said.
    pub(crate) fn above_known(&self) -> Option<bool> {
        match self.above.state {
            AboveState::Known | AboveState::Nothing => Some(true),
            AboveState::Everything => Some(false),
            AboveState::Unknown => None,
        }
    }

    /// Tags of this subtree the parent says nobody outside wants (for inspection).
    pub fn local_len(&self) -> usize {
        self.above.local.len()
    }

    fn holding(&self, tag: KeyTag) -> Holding {
        let Some(c) = self.counts.get(&tag).filter(|c| c.holders > 0) else {
            return Holding::Nobody;
        };
        let wanted_above = match self.above.state {
            AboveState::Nothing => false,
            AboveState::Known => !self.above.local.contains(&tag),
            AboveState::Unknown | AboveState::Everything => true,
        };
        if !wanted_above && !c.own && c.holders == 1 {
            Holding::OnlyChild(c.child_ids)
        } else {
            Holding::Others
        }
    }

    /// Records how `tag` was held, before its first change since the children were told.
    pub(super) fn capture(&mut self, tag: KeyTag) {
        if self.track_outside && !self.dirty.contains_key(&tag) {
            let before = self.holding(tag);
            self.dirty.insert(tag, before);
        }
    }

    /// Whether changes wait to be told to router children.
    pub(crate) fn has_outside_changes(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Forgets the changes (no child can be told: they will get snapshots).
    pub(crate) fn clear_outside_changes(&mut self) {
        self.dirty.clear();
    }

    /// For each child, which tags became local to it (`add`) or stopped being (`remove`)
    /// since the last call (tags sorted).
    pub(crate) fn take_outside_changes(
        &mut self,
        children: &[NodeId],
    ) -> Vec<(NodeId, InterestDelta)> {
        let mut deltas: Vec<(NodeId, InterestDelta)> = children
            .iter()
            .map(|&c| (c, InterestDelta::default()))
            .collect();
        let dirty = std::mem::take(&mut self.dirty);
        for (tag, before) in dirty {
            let after = self.holding(tag);
            if before == after {
                continue;
            }
            for (child, delta) in &mut deltas {
                match (before.local_to(*child), after.local_to(*child)) {
                    (false, true) => delta.add.push(tag),
                    (true, false) => delta.remove.push(tag),
                    _ => {}
                }
            }
        }
        deltas.retain(|(_, d)| !d.add.is_empty() || !d.remove.is_empty());
        for (_, delta) in &mut deltas {
            delta.add.sort_unstable();
            delta.remove.sort_unstable();
        }
        deltas
    }

    /// Which of `child_tags` (what the child advertised) are local to `child`, sorted.
    pub(crate) fn local_of(
        &self,
        child: NodeId,
        child_tags: impl Iterator<Item = KeyTag>,
    ) -> Vec<KeyTag> {
        let mut tags: Vec<KeyTag> = child_tags
            .filter(|&t| self.holding(t).local_to(child))
            .collect();
        tags.sort_unstable();
        tags
    }

    /// Applies what the parent said. `max_tags` bounds the set this node keeps (a snapshot
    /// under way included): past it, the node sends everything up rather than keep more.
    pub(crate) fn on_outside(&mut self, msg: OutsideInterest, max_tags: usize) -> AboveChange {
        if msg.everything {
            return self.above_everything();
        }
        let mut change = AboveChange::Tags;
        let chunk = msg.first
            || msg.more
            || !msg.snapshot.is_empty()
            || (self.above.pending.is_some() && msg.delta.is_none());
        if chunk {
            let pending = if msg.first {
                self.above.pending.insert(TagSet::default())
            } else {
                match self.above.pending.as_mut() {
                    Some(pending) => pending,
                    // A chunk without a start: the parent lost track; so do we.
                    None => return self.above_everything(),
                }
            };
            pending.extend(msg.snapshot);
            if pending.len() > max_tags {
                return self.above_everything();
            }
            if !msg.more {
                change = self.finish_snapshot();
            }
        }
        if let Some(delta) = msg.delta {
            if let Some(pending) = self.above.pending.as_mut() {
                for tag in &delta.remove {
                    pending.remove(tag);
                }
                pending.extend(delta.add);
                if pending.len() > max_tags {
                    return self.above_everything();
                }
            } else if self.above.state == AboveState::Known {
                for tag in delta.remove {
                    if self.above.local.contains(&tag) {
                        self.capture(tag);
                        self.above.local.remove(&tag);
                    }
                }
                for tag in delta.add {
                    if !self.above.local.contains(&tag) {
                        self.capture(tag);
                        self.above.local.insert(tag);
                    }
                }
            }
            if self.above.local.len() > max_tags {
                return self.above_everything();
            }
        }
        change
    }

    fn finish_snapshot(&mut self) -> AboveChange {
        let new = self.above.pending.take().unwrap_or_default();
        self.above.stale = false;
        if self.above.state != AboveState::Known {
            self.above.state = AboveState::Known;
            self.above.local = new;
            self.dirty.clear();
            return AboveChange::Replaced;
        }
        let gone: Vec<KeyTag> = self.above.local.difference(&new).copied().collect();
        let came: Vec<KeyTag> = new.difference(&self.above.local).copied().collect();
        for tag in gone.iter().chain(&came) {
            self.capture(*tag);
        }
        self.above.local = new;
        AboveChange::Tags
    }

    fn above_everything(&mut self) -> AboveChange {
        self.above = Above {
            state: AboveState::Everything,
            ..Above::default()
        };
        self.dirty.clear();
        AboveChange::Everything
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(add: &[KeyTag], remove: &[KeyTag]) -> InterestDelta {
        InterestDelta {
            add: add.to_vec(),
            remove: remove.to_vec(),
        }
    }

    fn snapshot(tags: Vec<KeyTag>) -> OutsideInterest {
        OutsideInterest {
            snapshot: tags,
            first: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_tag_held_by_one_child_alone_is_local_to_it() {
        let mut table = InterestTable::default();
        table.track_outside();
        table.above_is_nothing();
        table.increment(7, Holder::Child(10));
        assert_eq!(table.local_of(10, [7].into_iter()), vec![7]);
        assert_eq!(
            table.take_outside_changes(&[10, 11]),
            vec![(10, delta(&[7], &[]))]
        );
        // A second holder: 7 is local to nobody.
        table.increment(7, Holder::Child(11));
        assert_eq!(
            table.take_outside_changes(&[10, 11]),
            vec![(10, delta(&[], &[7]))]
        );
        // The first holder leaves: 7 is local to 11.
        table.decrement(7, Holder::Child(10));
        assert_eq!(
            table.take_outside_changes(&[10, 11]),
            vec![(11, delta(&[7], &[]))]
        );
    }

    #[test]
    fn the_nodes_own_tags_are_local_to_no_child() {
        let mut table = InterestTable::default();
        table.track_outside();
        table.above_is_nothing();
        table.subscribe(5);
        table.increment(5, Holder::Child(10));
        assert!(table.local_of(10, [5].into_iter()).is_empty());
    }

    #[test]
    fn a_change_undone_before_the_flush_tells_nobody() {
        let mut table = InterestTable::default();
        table.track_outside();
        table.above_is_nothing();
        table.increment(5, Holder::Child(10));
        table.decrement(5, Holder::Child(10));
        assert!(table.take_outside_changes(&[10, 11]).is_empty());
    }

    #[test]
    fn what_the_parent_says_reaches_the_children() {
        let mut table = InterestTable::default();
        table.track_outside();
        table.increment(1, Holder::Child(10));
        table.increment(2, Holder::Child(10));
        // Before the parent says, everything goes up and nothing is local below.
        assert!(table.outside_wants(1));
        assert!(table.local_of(10, [1, 2].into_iter()).is_empty());
        table.clear_outside_changes();
        // The parent: 1 is local to this subtree (2 is wanted outside).
        assert_eq!(
            table.on_outside(snapshot(vec![1]), 100),
            AboveChange::Replaced
        );
        assert!(!table.outside_wants(1) && table.outside_wants(2) && table.outside_wants(3));
        assert_eq!(table.local_of(10, [1, 2].into_iter()), vec![1]);
        // Now nobody outside wants 2 either.
        let update = OutsideInterest {
            delta: Some(delta(&[2], &[])),
            ..Default::default()
        };
        assert_eq!(table.on_outside(update, 100), AboveChange::Tags);
        assert_eq!(
            table.take_outside_changes(&[10]),
            vec![(10, delta(&[2], &[]))]
        );
        assert!(!table.has_pending() || table.take_delta().add == vec![1, 2]);
    }

    #[test]
    fn a_new_parents_snapshot_corrects_by_difference() {
        let mut table = InterestTable::default();
        table.track_outside();
        for t in [1, 2, 3] {
            table.increment(t, Holder::Child(10));
        }
        table.on_outside(snapshot(vec![1, 2]), 100);
        table.clear_outside_changes();
        table.above_reparented();
        assert!(table.outside_wants(1), "stale: everything goes up");
        assert_eq!(
            table.on_outside(snapshot(vec![2, 3]), 100),
            AboveChange::Tags
        );
        assert!(table.outside_wants(1) && !table.outside_wants(3));
        let changes = table.take_outside_changes(&[10]);
        assert_eq!(changes, vec![(10, delta(&[3], &[1]))]);
    }

    #[test]
    fn more_than_the_bound_sends_everything_up() {
        let mut table = InterestTable::default();
        table.track_outside();
        assert_eq!(
            table.on_outside(snapshot((1..=11).collect()), 10),
            AboveChange::Everything
        );
        assert!(table.outside_wants(12345));
        assert_eq!(table.above_known(), Some(false));
    }
}
