//! Interest: which key tags a node and each of its child links want.
//!
//! Across its own interests and all child links a node keeps one entry per tag its subtree
//! wants: a count of holders, so a tag is advertised upward when its count leaves 0 and
//! withdrawn only when no child and not the node itself want it any more, and a slot number.
//! Per child link it keeps the exact set of the slot numbers the child holds (see
//! `index_set`): the forwarding table consulted for every multicast, and what is withdrawn
//! when the child goes.
//!
//! With upward filters the table also holds which of the subtree's tags the parent says
//! nobody outside wants (see `outside`), and remembers who holds each tag, so that it can
//! tell every router child which of the child's tags are local to it.

use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::BuildHasherDefault;

mod index_set;
mod link;
#[cfg(test)]
mod model_tests;
mod outside;

use canopy_proto::v1::InterestDelta;

pub use index_set::FilterKey;
pub use link::link_set_bytes;
pub(crate) use link::LinkInterest;
pub(crate) use outside::{AboveChange, Holding};

use crate::{KeyTag, NodeId};

/// Deterministic hashing, so runs with the same seed iterate maps in the same order. Only for
/// maps keyed by what peers do not choose (node ids from certificates).
pub(crate) type FixedState = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;
/// Tags are chosen by peers: their sets hash with per-process random keys (std's SipHash
/// `RandomState`), so nobody can pick tags that collide. Nothing observable depends on their
/// iteration order: every tag list that leaves a node is sorted first.
pub(crate) type TagSet = HashSet<KeyTag, RandomState>;
type TagCounts = HashMap<KeyTag, TagCount, RandomState>;

/// Who wants a tag: how many holders (child links and the node itself), whether the node
/// itself is one, and the XOR of the child links' ids, which names the child whenever it is
/// the only holder (no id stands for the node itself: any id could be a child's); and the
/// tag's slot, the number child links hold it by.
#[derive(Debug, Clone, Copy, Default)]
struct TagCount {
    holders: u32,
    own: bool,
    child_ids: NodeId,
    slot: u32,
}

/// Free slots the table keeps beyond half of them before it renumbers (small tables never
/// bother).
const COMPACT_ABOVE_FREE: usize = 1024;

/// Who starts or stops wanting a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holder {
    Own,
    Child(NodeId),
}

/// A node's aggregate interest: its own subscriptions plus its children's, with counts and
/// the pending changes not yet advertised to the parent.
#[derive(Debug, Clone, Default)]
pub struct InterestTable {
    own: TagSet,
    counts: TagCounts,
    pending_add: TagSet,
    pending_remove: TagSet,
    /// Which of this subtree's tags the parent says nobody outside wants.
    above: outside::Above,
    /// Set on routers that tell their router children which of their tags are local.
    track_outside: bool,
    /// How each tag changed since the children were last told was held before the change.
    dirty: HashMap<KeyTag, Holding, RandomState>,
    /// The tag in each slot (a free slot keeps its last tag).
    slots: Vec<KeyTag>,
    /// Free slots, lowest first, so that slot numbers stay as small as the table.
    free_slots: BinaryHeap<Reverse<u32>>,
}

impl InterestTable {
    /// Whether the node itself (not a child) wants `tag`.
    pub fn wants_locally(&self, tag: KeyTag) -> bool {
        self.own.contains(&tag)
    }

    /// The node's own subscriptions.
    pub fn own(&self) -> impl Iterator<Item = KeyTag> + '_ {
        self.own.iter().copied()
    }

    /// The slot `tag` is held by, if anyone in the subtree wants it.
    pub(crate) fn slot_of(&self, tag: KeyTag) -> Option<u32> {
        self.counts.get(&tag).map(|count| count.slot)
    }

    /// The tag in `slot`; only asked of slots a link holds, which are in use.
    pub(crate) fn tag_in(&self, slot: u32) -> KeyTag {
        self.slots[slot as usize]
    }

    /// Whether anyone in the subtree (the node included) wants `tag`.
    pub fn subtree_wants(&self, tag: KeyTag) -> bool {
        self.counts.contains_key(&tag)
    }

    /// Number of distinct tags the subtree wants.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether the subtree wants nothing.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// The node itself starts wanting `tag`. Returns false if it already did.
    pub fn subscribe(&mut self, tag: KeyTag) -> bool {
        if !self.own.insert(tag) {
            return false;
        }
        self.increment(tag, Holder::Own);
        true
    }

    /// The node itself stops wanting `tag`. Returns false if it did not.
    pub fn unsubscribe(&mut self, tag: KeyTag) -> bool {
        if !self.own.remove(&tag) {
            return false;
        }
        self.decrement(tag, Holder::Own);
        true
    }

    /// One more holder wants `tag`; returns the tag's slot.
    pub(crate) fn increment(&mut self, tag: KeyTag, holder: Holder) -> u32 {
        self.capture(tag);
        if !self.counts.contains_key(&tag) {
            let slot = self.take_slot(tag);
            self.counts.insert(
                tag,
                TagCount {
                    slot,
                    ..TagCount::default()
                },
            );
        }
        let count = self.counts.entry(tag).or_default();
        count.holders += 1;
        match holder {
            Holder::Own => count.own = true,
            Holder::Child(id) => count.child_ids ^= id,
        }
        let slot = count.slot;
        if count.holders == 1 && !self.pending_remove.remove(&tag) {
            self.pending_add.insert(tag);
        }
        slot
    }

    /// Renumbers the slots densely once most of them are free (what a departed child held
    /// would otherwise keep every link's slot numbers, and so its set's fingerprints, wide).
    /// Returns, indexed by old slot, each slot's new number (`u32::MAX` for a free one); every
    /// link set must then be renumbered with it. The withdrawals that freed the slots pay for
    /// the work.
    pub(crate) fn compact_slots(&mut self) -> Option<Vec<u32>> {
        if self.slots.len() <= 2 * self.counts.len() + COMPACT_ABOVE_FREE {
            return None;
        }
        let mut held: Vec<(u32, KeyTag)> =
            self.counts.iter().map(|(&tag, c)| (c.slot, tag)).collect();
        held.sort_unstable();
        let mut renumbered = vec![u32::MAX; self.slots.len()];
        self.slots = Vec::with_capacity(held.len());
        for (old, tag) in held {
            let new = self.slots.len() as u32;
            renumbered[old as usize] = new;
            self.slots.push(tag);
            if let Some(count) = self.counts.get_mut(&tag) {
                count.slot = new;
            }
        }
        self.free_slots = BinaryHeap::new();
        Some(renumbered)
    }

    fn take_slot(&mut self, tag: KeyTag) -> u32 {
        if let Some(Reverse(slot)) = self.free_slots.pop() {
            self.slots[slot as usize] = tag;
            return slot;
        }
        // The node bounds its interest far below 2^32 tags.
        let slot = u32::try_from(self.slots.len()).unwrap_or_else(|_| panic!("2^32 slots"));
        self.slots.push(tag);
        slot
    }

    /// `holder` no longer wants `tag`.
    pub(crate) fn decrement(&mut self, tag: KeyTag, holder: Holder) {
        if !self.counts.contains_key(&tag) {
            return;
        }
        self.capture(tag);
        let Some(count) = self.counts.get_mut(&tag) else {
            return;
        };
        count.holders -= 1;
        match holder {
            Holder::Own => count.own = false,
            Holder::Child(id) => count.child_ids ^= id,
        }
        if count.holders == 0 {
            self.free_slots.push(Reverse(count.slot));
            self.counts.remove(&tag);
            if !self.pending_add.remove(&tag) {
                self.pending_remove.insert(tag);
            }
        }
    }

    /// Whether changes are waiting to be advertised.
    pub fn has_pending(&self) -> bool {
        !self.pending_add.is_empty() || !self.pending_remove.is_empty()
    }

    /// Takes the changes since the last delta or snapshot.
    pub fn take_delta(&mut self) -> InterestDelta {
        self.take_delta_limited(usize::MAX)
    }

    /// Takes at most `max_tags` of the pending changes (removals first, lowest tags first);
    /// the rest stay pending for the next delta, so a change too large for one frame goes up
    /// in pieces and nothing is lost.
    pub fn take_delta_limited(&mut self, max_tags: usize) -> InterestDelta {
        let remove = take_sorted(&mut self.pending_remove, max_tags);
        let add = take_sorted(&mut self.pending_add, max_tags - remove.len());
        InterestDelta { add, remove }
    }

    /// The whole wanted set, which also clears the pending changes (a snapshot supersedes
    /// them).
    pub fn take_snapshot(&mut self) -> Vec<KeyTag> {
        self.pending_add.clear();
        self.pending_remove.clear();
        let mut tags: Vec<KeyTag> = self.counts.keys().copied().collect();
        tags.sort_unstable();
        tags
    }
}

/// Removes and returns the `max` lowest tags of `set`.
fn take_sorted(set: &mut TagSet, max: usize) -> Vec<KeyTag> {
    let mut tags: Vec<KeyTag> = set.drain().collect();
    tags.sort_unstable();
    if tags.len() > max {
        set.extend(tags.drain(max..));
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limited_deltas_carry_every_change_in_pieces() {
        let mut table = InterestTable::default();
        for tag in 1..=10 {
            table.subscribe(tag);
        }
        table.take_delta();
        for tag in 1..=3 {
            table.unsubscribe(tag);
        }
        for tag in 11..=15 {
            table.subscribe(tag);
        }
        let first = table.take_delta_limited(4);
        assert_eq!((first.remove, first.add), (vec![1, 2, 3], vec![11]));
        let second = table.take_delta_limited(4);
        assert_eq!((second.remove, second.add), (vec![], vec![12, 13, 14, 15]));
        assert!(!table.has_pending());
    }

    #[test]
    fn add_then_remove_before_advertising_cancels_out() {
        let mut table = InterestTable::default();
        table.subscribe(5);
        table.unsubscribe(5);
        assert!(!table.has_pending());
    }
}
