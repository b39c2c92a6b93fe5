//! Upward filters: what the tree outside a subtree wants.
//!
//! A parent tells each router child the tags wanted outside that child's subtree: its own,
//! its other children's, and what its own parent says is wanted outside it ("above"). The
//! child sends a multicast up only for those tags, so traffic that stays inside a subtree
//! never climbs to the root. A tag is wanted outside child C unless nobody holds it or C is
//! its only holder, so the parent needs no set per child: per tag, the number of holders and
//! the XOR of their ids (which is the holder's id when there is one) are enough, and a
//! change is reported to the children whose answer it flips.

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
    /// `tags` is what the parent said.
    Known,
    /// The parent cannot tell, or said more than this node keeps: everything goes up.
    Everything,
}

/// What the parent says the rest of the tree wants.
#[derive(Debug, Clone, Default)]
pub(crate) struct Above {
    state: AboveState,
    /// The node moved to a new parent whose snapshot has not arrived: it sends everything
    /// up, and keeps the old set for its children (the rest of the tree is mostly the same;
    /// the new snapshot then corrects them by difference).
    stale: bool,
    tags: TagSet,
    /// A snapshot arriving in chunks.
    pending: Option<TagSet>,
}

/// How a tag was held: by nobody, by one child link alone (named), or otherwise (by the
/// node itself, by the rest of the tree above, or by two or more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holding {
    Nobody,
    OnlyChild(NodeId),
    Others,
}

impl Holding {
    /// Whether someone outside `child`'s subtree wants the tag.
    fn wanted_outside(self, child: NodeId) -> bool {
        match self {
            Holding::Nobody => false,
            Holding::OnlyChild(only) => only != child,
            Holding::Others => true,
        }
    }
}

/// What a message from the parent did to this node's view of the rest of the tree.
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
    /// Starts remembering changes for the router children's outside sets.
    pub(crate) fn track_outside(&mut self) {
        self.track_outside = true;
    }

    /// A node with no parent (the root): nothing is wanted above it.
    pub(crate) fn above_is_nothing(&mut self) {
        self.above = Above {
            state: AboveState::Known,
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
            AboveState::Known if !self.above.stale => self.above.tags.contains(&tag),
            _ => true,
        }
    }

    /// Whether this node can tell its children what is wanted outside them: `Some(true)`
    /// with a set, `Some(false)` when everything is, `None` before its parent said.
    pub(crate) fn above_known(&self) -> Option<bool> {
        match self.above.state {
            AboveState::Known => Some(true),
            AboveState::Everything => Some(false),
            AboveState::Unknown => None,
        }
    }

    /// Tags the parent says are wanted above (for inspection and bounds).
    pub fn above_len(&self) -> usize {
        self.above.tags.len()
    }

    fn holding(&self, tag: KeyTag) -> Holding {
        let above = self.above.tags.contains(&tag);
        match self.counts.get(&tag) {
            None if !above => Holding::Nobody,
            Some(c) if !above && !c.own && c.holders == 1 => Holding::OnlyChild(c.child_ids),
            Some(c) if !above && c.holders == 0 => Holding::Nobody,
            _ => Holding::Others,
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

    /// For each child, what changed outside it since the last call (tags sorted).
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
            for (child, delta) in &mut deltas {
                match (before.wanted_outside(*child), after.wanted_outside(*child)) {
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

    /// Every tag wanted outside `child`'s subtree, sorted.
    pub(crate) fn outside_of(&self, child: NodeId) -> Vec<KeyTag> {
        let mut tags: Vec<KeyTag> = self
            .counts
            .keys()
            .chain(self.above.tags.iter())
            .copied()
            .filter(|&t| self.holding(t).wanted_outside(child))
            .collect();
        tags.sort_unstable();
        tags.dedup();
        tags
    }

    /// Applies what the parent said. `max_tags` bounds the set this node keeps: past it,
    /// the node sends everything up rather than keep more.
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
                    if self.above.tags.contains(&tag) {
                        self.capture(tag);
                        self.above.tags.remove(&tag);
                    }
                }
                for tag in delta.add {
                    if !self.above.tags.contains(&tag) {
                        self.capture(tag);
                        self.above.tags.insert(tag);
                    }
                }
            }
            if self.above.tags.len() > max_tags {
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
            self.above.tags = new;
            self.dirty.clear();
            return AboveChange::Replaced;
        }
        let gone: Vec<KeyTag> = self.above.tags.difference(&new).copied().collect();
        let came: Vec<KeyTag> = new.difference(&self.above.tags).copied().collect();
        for tag in gone.iter().chain(&came) {
            self.capture(*tag);
        }
        self.above.tags = new;
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

    #[test]
    fn a_tag_held_by_one_child_is_outside_only_for_the_others() {
        let mut table = InterestTable::default();
        table.track_outside();
        table.above_is_nothing();
        table.increment(7, Holder::Child(10));
        assert_eq!(table.outside_of(10), Vec::<KeyTag>::new());
        assert_eq!(table.outside_of(11), vec![7]);
        table.take_outside_changes(&[10, 11]);
        // A second holder: now child 10 must send 7 up too.
        table.increment(7, Holder::Child(11));
        let changes = table.take_outside_changes(&[10, 11]);
        assert_eq!(changes, vec![(10, delta(&[7], &[]))]);
        // The first holder leaves: 11 is alone with it, and stops sending it up.
        table.decrement(7, Holder::Child(10));
        let changes = table.take_outside_changes(&[10, 11]);
        assert_eq!(changes, vec![(11, delta(&[], &[7]))]);
    }

    #[test]
    fn a_change_undone_before_the_flush_tells_nobody() {
        let mut table = InterestTable::default();
        table.track_outside();
        table.above_is_nothing();
        table.subscribe(5);
        table.unsubscribe(5);
        assert!(table.take_outside_changes(&[10, 11]).is_empty());
    }

    #[test]
    fn what_the_parent_says_reaches_the_children_but_is_never_advertised_up() {
        let mut table = InterestTable::default();
        table.track_outside();
        let snapshot = OutsideInterest {
            snapshot: vec![1, 2],
            first: true,
            ..Default::default()
        };
        assert_eq!(table.on_outside(snapshot, 100), AboveChange::Replaced);
        assert!(table.outside_wants(1) && !table.outside_wants(3));
        assert_eq!(table.outside_of(10), vec![1, 2]);
        let update = OutsideInterest {
            delta: Some(delta(&[3], &[1])),
            ..Default::default()
        };
        assert_eq!(table.on_outside(update, 100), AboveChange::Tags);
        let changes = table.take_outside_changes(&[10]);
        assert_eq!(changes, vec![(10, delta(&[3], &[1]))]);
        assert!(!table.has_pending(), "above is not this subtree's interest");
    }

    #[test]
    fn a_new_parents_snapshot_corrects_by_difference() {
        let mut table = InterestTable::default();
        table.track_outside();
        let first = |tags: Vec<KeyTag>| OutsideInterest {
            snapshot: tags,
            first: true,
            ..Default::default()
        };
        table.on_outside(first(vec![1, 2]), 100);
        table.above_reparented();
        assert!(table.outside_wants(99), "stale: everything goes up");
        assert_eq!(table.on_outside(first(vec![2, 3]), 100), AboveChange::Tags);
        assert!(!table.outside_wants(99));
        let changes = table.take_outside_changes(&[10]);
        assert_eq!(changes, vec![(10, delta(&[3], &[1]))]);
    }

    #[test]
    fn more_than_the_bound_sends_everything_up() {
        let mut table = InterestTable::default();
        table.track_outside();
        let big = OutsideInterest {
            snapshot: (1..=11).collect(),
            first: true,
            ..Default::default()
        };
        assert_eq!(table.on_outside(big, 10), AboveChange::Everything);
        assert!(table.outside_wants(12345));
        assert_eq!(table.above_known(), Some(false));
    }
}
