//! What a parent keeps of one child link's interest.

use canopy_proto::v1::InterestDelta;

use super::{FilterKey, Holder, InterestFilter, InterestTable, TagSet};
use crate::{KeyTag, NodeId};

/// What a parent knows of one child link's interest: the exact set (to withdraw it when
/// the link ends) and the filter built from it (to route).
#[derive(Debug, Clone)]
pub(crate) struct LinkInterest {
    tags: TagSet,
    filter: InterestFilter,
    key: FilterKey,
    /// The child at the other end, as the holder of every tag it advertised.
    child: NodeId,
}

impl LinkInterest {
    pub(crate) fn new(fp_rate: f64, key: FilterKey, child: NodeId) -> Self {
        LinkInterest {
            tags: TagSet::default(),
            filter: InterestFilter::new(fp_rate, key),
            key,
            child,
        }
    }

    pub(crate) fn may_contain(&self, tag: KeyTag) -> bool {
        self.filter.may_contain(tag)
    }

    pub(crate) fn contains_exactly(&self, tag: KeyTag) -> bool {
        self.tags.contains(&tag)
    }

    /// The tags the link advertised.
    pub(crate) fn tags(&self) -> impl Iterator<Item = KeyTag> + '_ {
        self.tags.iter().copied()
    }

    /// Number of distinct tags the link advertised.
    pub(crate) fn len(&self) -> usize {
        self.tags.len()
    }

    /// Applies a delta from the child, updating the node's aggregate counts.
    pub(crate) fn apply_delta(&mut self, delta: &InterestDelta, table: &mut InterestTable) {
        for &tag in &delta.remove {
            if self.tags.remove(&tag) {
                self.filter.remove(tag);
                table.decrement(tag, Holder::Child(self.child));
            }
        }
        for &tag in &delta.add {
            if self.tags.insert(tag) {
                self.filter.insert(tag);
                table.increment(tag, Holder::Child(self.child));
            }
        }
    }

    /// Replaces the link's set with a snapshot.
    pub(crate) fn replace(&mut self, tags: &[KeyTag], fp_rate: f64, table: &mut InterestTable) {
        self.clear(table);
        self.filter = InterestFilter::new(fp_rate, self.key);
        for &tag in tags {
            if self.tags.insert(tag) {
                self.filter.insert(tag);
                table.increment(tag, Holder::Child(self.child));
            }
        }
    }

    /// Withdraws the whole set from the aggregate (the link ended).
    pub(crate) fn clear(&mut self, table: &mut InterestTable) {
        for tag in self.tags.drain() {
            table.decrement(tag, Holder::Child(self.child));
        }
    }
}

/// What one child link's interest costs its parent, by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkMemory {
    /// The exact tag set kept to withdraw the link's tags when it ends.
    pub exact_set_bytes: usize,
    /// The quotient filter consulted for every multicast.
    pub filter_bytes: usize,
}

/// The memory a parent holds for a child link that advertised `tags`, built as a link's
/// interest is built (one insert per tag into a resizeable filter).
pub fn link_memory(tags: &[KeyTag], fp_rate: f64, key: FilterKey) -> LinkMemory {
    let mut table = InterestTable::default();
    let mut link = LinkInterest::new(fp_rate, key, 1);
    let delta = InterestDelta {
        add: tags.to_vec(),
        remove: Vec::new(),
    };
    link.apply_delta(&delta, &mut table);
    LinkMemory {
        exact_set_bytes: hash_set_bytes(link.tags.capacity()),
        filter_bytes: link.filter.memory_bytes(),
    }
}

/// Heap bytes of a `HashSet<u64>` of this capacity (std's swiss table: a power-of-two
/// number of buckets at most 7/8 full, 8 bytes and one control byte each, plus one group of
/// control bytes).
fn hash_set_bytes(capacity: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = if capacity < 8 {
        if capacity < 4 {
            4
        } else {
            8
        }
    } else {
        (capacity * 8 / 7).next_power_of_two()
    };
    buckets * (std::mem::size_of::<KeyTag>() + 1) + 16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_leaves_advertisement_only_when_no_child_wants_it() {
        let mut table = InterestTable::default();
        let mut a = LinkInterest::new(0.01, FilterKey::default(), 1);
        let mut b = LinkInterest::new(0.01, FilterKey::default(), 2);
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
        let mut link = LinkInterest::new(0.01, FilterKey::default(), 1);
        link.replace(&[1, 2, 3], 0.01, &mut table);
        table.take_delta();
        link.replace(&[3, 4], 0.01, &mut table);
        let delta = table.take_delta();
        assert_eq!(delta.add, vec![4]);
        assert_eq!(delta.remove, vec![1, 2]);
        assert!(link.may_contain(4) && link.contains_exactly(3) && !link.contains_exactly(1));
    }
}
