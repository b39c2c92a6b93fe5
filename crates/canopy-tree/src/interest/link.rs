//! What a parent keeps of one child link's interest.

use canopy_proto::v1::InterestDelta;

use super::index_set::IndexSet;
use super::{FilterKey, Holder, InterestTable, TagSet};
use crate::{KeyTag, NodeId, BROADCAST_TAG};

/// What a parent knows of one child link's interest: the exact set of the table slots of the
/// tags the child advertised (consulted to route, withdrawn when the link ends).
#[derive(Debug, Clone)]
pub(crate) struct LinkInterest {
    slots: IndexSet,
    key: FilterKey,
    /// The child at the other end, as the holder of every tag it advertised.
    child: NodeId,
}

impl LinkInterest {
    pub(crate) fn new(key: FilterKey, child: NodeId) -> Self {
        LinkInterest {
            slots: IndexSet::new(key),
            key,
            child,
        }
    }

    /// Whether the link wants `tag`, whose slot in the node's table is `slot` (`None` when
    /// nobody in the subtree wants it). Every link wants the broadcast tag.
    pub(crate) fn wants(&self, tag: KeyTag, slot: Option<u32>) -> bool {
        tag == BROADCAST_TAG || slot.is_some_and(|slot| self.slots.contains(slot))
    }

    /// The tags the link advertised.
    pub(crate) fn tags<'a>(
        &'a self,
        table: &'a InterestTable,
    ) -> impl Iterator<Item = KeyTag> + 'a {
        self.slots.iter().map(|slot| table.tag_in(slot))
    }

    /// Number of distinct tags the link advertised.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Bytes the link's set holds.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.slots.memory_bytes()
    }

    /// Applies a delta from the child, updating the node's aggregate counts. A removal of a
    /// tag the child does not hold changes nothing.
    pub(crate) fn apply_delta(&mut self, delta: &InterestDelta, table: &mut InterestTable) {
        for &tag in &delta.remove {
            if table
                .slot_of(tag)
                .is_some_and(|slot| self.slots.remove(slot))
            {
                table.decrement(tag, Holder::Child(self.child));
            }
        }
        for &tag in &delta.add {
            self.add(tag, table);
        }
    }

    fn add(&mut self, tag: KeyTag, table: &mut InterestTable) {
        if table
            .slot_of(tag)
            .is_some_and(|slot| self.slots.contains(slot))
        {
            return;
        }
        let slot = table.increment(tag, Holder::Child(self.child));
        self.slots.insert(slot);
    }

    /// Replaces the link's set with a snapshot: withdraws what it no longer names and adds
    /// what is new (a snapshot repeating the set costs no table change).
    pub(crate) fn replace(&mut self, tags: &[KeyTag], table: &mut InterestTable) {
        let named: TagSet = tags.iter().copied().collect();
        let gone: Vec<KeyTag> = self.tags(table).filter(|t| !named.contains(t)).collect();
        for tag in gone {
            if table
                .slot_of(tag)
                .is_some_and(|slot| self.slots.remove(slot))
            {
                table.decrement(tag, Holder::Child(self.child));
            }
        }
        for &tag in tags {
            self.add(tag, table);
        }
    }

    /// Follows the table's renumbering (`renumbered[old]` is each held slot's new number).
    pub(crate) fn renumber(&mut self, renumbered: &[u32]) {
        let mut slots = IndexSet::new(self.key);
        for old in self.slots.iter() {
            slots.insert(renumbered[old as usize]);
        }
        self.slots = slots;
    }

    /// Withdraws the whole set from the aggregate (the link ended).
    pub(crate) fn clear(&mut self, table: &mut InterestTable) {
        let slots: Vec<u32> = self.slots.iter().collect();
        for slot in slots {
            table.decrement(table.tag_in(slot), Holder::Child(self.child));
        }
        self.slots = IndexSet::new(self.key);
    }
}

/// The bytes a parent holds for a child link that advertised `held` tags of the `union` its
/// subtree wants (spread evenly over the table's slots), and how many of the other slots the
/// set wrongly claims: the link's set as built, for the filter-size figure.
pub fn link_set_bytes(held: u32, union: u32, key: FilterKey) -> (usize, u64) {
    let step = (union / held.max(1)).max(1);
    let mut set = IndexSet::new(key);
    for i in 0..held {
        set.insert(i * step);
    }
    let wrong = (0..union)
        .filter(|slot| slot % step != 0 || slot / step >= held)
        .filter(|&slot| set.contains(slot))
        .count();
    (set.memory_bytes(), wrong as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_leaves_advertisement_only_when_no_child_wants_it() {
        let mut table = InterestTable::default();
        let mut a = LinkInterest::new(FilterKey::default(), 1);
        let mut b = LinkInterest::new(FilterKey::default(), 2);
        a.apply_delta(
            &InterestDelta {
                add: vec![7],
                remove: vec![],
            },
            &mut table,
        );
        b.apply_delta(
            &InterestDelta {
                add: vec![7],
                remove: vec![],
            },
            &mut table,
        );
        assert_eq!(table.take_delta().add, vec![7]);
        a.clear(&mut table);
        let delta = table.take_delta();
        assert!(delta.add.is_empty() && delta.remove.is_empty());
        assert!(table.subtree_wants(7));
        b.apply_delta(
            &InterestDelta {
                add: vec![],
                remove: vec![7],
            },
            &mut table,
        );
        assert_eq!(table.take_delta().remove, vec![7]);
        assert!(!table.subtree_wants(7));
    }

    #[test]
    fn snapshot_replaces_link_set_and_withdraws_the_old_one() {
        let mut table = InterestTable::default();
        let mut link = LinkInterest::new(FilterKey::default(), 1);
        link.replace(&[1, 2, 3], &mut table);
        table.take_delta();
        link.replace(&[3, 4], &mut table);
        let delta = table.take_delta();
        assert_eq!(delta.add, vec![4]);
        assert_eq!(delta.remove, vec![1, 2]);
        let wants = |tag| link.wants(tag, table.slot_of(tag));
        assert!(wants(4) && wants(3) && !wants(1));
    }

    fn delta(add: &[KeyTag], remove: &[KeyTag]) -> InterestDelta {
        InterestDelta {
            add: add.to_vec(),
            remove: remove.to_vec(),
        }
    }

    #[test]
    fn a_child_cannot_withdraw_what_only_a_sibling_holds() {
        let mut table = InterestTable::default();
        let mut honest = LinkInterest::new(FilterKey::from_seed(1), 1);
        let mut insider = LinkInterest::new(FilterKey::from_seed(1), 2);
        let tags: Vec<KeyTag> = (1..=5_000).collect();
        honest.apply_delta(&delta(&tags, &[]), &mut table);
        insider.apply_delta(&delta(&[1, 2], &[]), &mut table);
        table.take_delta();
        // Withdrawing every tag, twice, and a few it never named: only its own two go.
        insider.apply_delta(&delta(&[], &tags), &mut table);
        insider.apply_delta(&delta(&[], &tags), &mut table);
        insider.apply_delta(&delta(&[], &[u64::MAX, 0, 9_999]), &mut table);
        assert!(!table.has_pending(), "{:?}", table.take_delta());
        assert_eq!(insider.len(), 0);
        assert!(tags
            .iter()
            .all(|&t| table.subtree_wants(t) && honest.wants(t, table.slot_of(t))));
        let mut listed: Vec<KeyTag> = honest.tags(&table).collect();
        listed.sort_unstable();
        assert_eq!(listed, tags);
    }

    #[test]
    fn a_reused_slot_is_not_claimed_by_the_link_that_left_it() {
        let mut table = InterestTable::default();
        let mut a = LinkInterest::new(FilterKey::from_seed(2), 1);
        let mut b = LinkInterest::new(FilterKey::from_seed(2), 2);
        a.apply_delta(&delta(&[10, 11], &[]), &mut table);
        let slot = table.slot_of(10);
        a.apply_delta(&delta(&[], &[10]), &mut table);
        assert_eq!(table.slot_of(10), None);
        // The freed slot goes to the next new tag.
        b.apply_delta(&delta(&[20], &[]), &mut table);
        assert_eq!(table.slot_of(20), slot);
        assert!(b.wants(20, table.slot_of(20)) && !a.wants(20, table.slot_of(20)));
        a.clear(&mut table);
        assert!(table.subtree_wants(20) && !table.subtree_wants(11));
        assert_eq!(b.tags(&table).collect::<Vec<_>>(), vec![20]);
    }

    #[test]
    fn renumbering_keeps_every_link_exact_and_narrows_its_set() {
        let mut table = InterestTable::default();
        let mut gone = LinkInterest::new(FilterKey::from_seed(3), 1);
        let mut kept = LinkInterest::new(FilterKey::from_seed(3), 2);
        let many: Vec<KeyTag> = (1..=5_000).collect();
        gone.apply_delta(&delta(&many, &[]), &mut table);
        kept.apply_delta(&delta(&[7, 10_001, 10_002], &[]), &mut table);
        let wide = kept.memory_bytes();
        gone.clear(&mut table);
        let renumbered = table.compact_slots().expect("most slots are free");
        kept.renumber(&renumbered);
        assert!(table.compact_slots().is_none());
        let mut tags: Vec<KeyTag> = kept.tags(&table).collect();
        tags.sort_unstable();
        assert_eq!(tags, vec![7, 10_001, 10_002]);
        assert!([7, 10_001, 10_002]
            .iter()
            .all(|&t| kept.wants(t, table.slot_of(t))));
        assert!(!kept.wants(8, table.slot_of(8)));
        assert!(table.slot_of(7).is_some_and(|slot| slot < 3));
        assert!(kept.memory_bytes() <= wide);
        // New tags take the slots after the renumbered ones.
        kept.apply_delta(&delta(&[11], &[]), &mut table);
        assert_eq!(table.slot_of(11), Some(3));
    }
}
