//! Interest: which key tags a node and each of its child links want.
//!
//! Every router keeps, per child link, the exact tag set the child advertised (so it can
//! withdraw those tags when the child goes) and a quotient filter built from it (the
//! forwarding table consulted for every multicast). Across its own interests and all child
//! links it keeps a count per tag, so a tag is advertised upward when its count leaves 0 and
//! withdrawn only when no child and not the node itself want it any more.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;

use canopy_proto::v1::InterestDelta;

use crate::{KeyTag, BROADCAST_TAG};

/// Deterministic hashing, so runs with the same seed iterate maps in the same order. Only for
/// maps keyed by what peers do not choose (node ids from certificates).
pub(crate) type FixedState = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;
/// Tags are chosen by peers: their sets hash with per-process random keys (std's SipHash
/// `RandomState`), so nobody can pick tags that collide. Nothing observable depends on their
/// iteration order: every tag list that leaves a node is sorted first.
pub(crate) type TagSet = HashSet<KeyTag, RandomState>;
type TagCounts = HashMap<KeyTag, u32, RandomState>;

/// Largest filter a link may grow to before it saturates (and forwards everything).
const FILTER_MAX_CAPACITY: u64 = 1 << 24;
const FILTER_INITIAL_CAPACITY: u64 = 64;

/// The secret a node hashes tags with before they enter its filters. Tags come from peers:
/// used as fingerprints directly, tags chosen to share a quotient would pile into one run of
/// the quotient filter and make every insert and removal slow (measured: inserting and removing
/// 16,384 sequential tags took 2.9 s). Hashed with a key the peer does not know, they spread evenly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FilterKey(u64, u64);

impl FilterKey {
    /// A key derived from a node's seed (the daemon seeds from OS randomness; the
    /// simulator's seeds keep its runs reproducible).
    pub fn from_seed(seed: u64) -> FilterKey {
        FilterKey(
            crate::node_tag(seed ^ 0x6b65_795f_6f6e_6530),
            crate::node_tag(seed ^ 0x6b65_795f_7477_6f31),
        )
    }

    fn fingerprint(self, tag: KeyTag) -> u64 {
        use std::hash::Hasher;
        // SipHash-2-4 with a secret key: std's keyed SipHash is only reachable through the
        // deprecated type, and pulling in a crate for one keyed hash is not worth it.
        #[allow(deprecated)]
        let mut hasher = std::hash::SipHasher::new_with_keys(self.0, self.1);
        hasher.write_u64(tag);
        hasher.finish()
    }
}

/// A per-link quotient filter of wanted key tags. It may answer "yes" for a tag never
/// inserted (a false positive costs one needless send) but never "no" for one that was.
#[derive(Debug, Clone)]
pub struct InterestFilter {
    // None: the filter could not hold the set, so the link gets everything.
    filter: Option<qfilter::Filter>,
    key: FilterKey,
}

impl InterestFilter {
    /// An empty filter with the given false-positive rate at full size, hashing tags with
    /// `key`.
    pub fn new(fp_rate: f64, key: FilterKey) -> Self {
        let filter =
            qfilter::Filter::new_resizeable(FILTER_INITIAL_CAPACITY, FILTER_MAX_CAPACITY, fp_rate)
                .ok();
        InterestFilter { filter, key }
    }

    /// Adds one occurrence of `tag`. Callers insert each distinct tag once and remove only
    /// what they inserted, so colliding tags never cause a false negative.
    pub fn insert(&mut self, tag: KeyTag) {
        let fingerprint = self.key.fingerprint(tag);
        if let Some(filter) = &mut self.filter {
            if filter.insert_fingerprint(true, fingerprint).is_err() {
                self.filter = None;
            }
        }
    }

    /// Removes one occurrence of `tag`.
    pub fn remove(&mut self, tag: KeyTag) {
        let fingerprint = self.key.fingerprint(tag);
        if let Some(filter) = &mut self.filter {
            filter.remove_fingerprint(fingerprint);
        }
    }

    /// Bytes the filter holds (0 once it gave up and forwards everything).
    pub fn memory_bytes(&self) -> usize {
        self.filter
            .as_ref()
            .map_or(0, qfilter::Filter::memory_usage)
    }

    /// Whether the link may want `tag` (always true for the broadcast tag).
    pub fn may_contain(&self, tag: KeyTag) -> bool {
        if tag == BROADCAST_TAG {
            return true;
        }
        match &self.filter {
            Some(filter) => filter.contains_fingerprint(self.key.fingerprint(tag)),
            None => true,
        }
    }
}

/// A node's aggregate interest: its own subscriptions plus its children's, with counts and
/// the pending changes not yet advertised to the parent.
#[derive(Debug, Clone, Default)]
pub struct InterestTable {
    own: TagSet,
    counts: TagCounts,
    pending_add: TagSet,
    pending_remove: TagSet,
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
        self.increment(tag);
        true
    }

    /// The node itself stops wanting `tag`. Returns false if it did not.
    pub fn unsubscribe(&mut self, tag: KeyTag) -> bool {
        if !self.own.remove(&tag) {
            return false;
        }
        self.decrement(tag);
        true
    }

    /// One more child link wants `tag`.
    pub fn increment(&mut self, tag: KeyTag) {
        let count = self.counts.entry(tag).or_insert(0);
        *count += 1;
        if *count == 1 && !self.pending_remove.remove(&tag) {
            self.pending_add.insert(tag);
        }
    }

    /// One child link fewer wants `tag`.
    pub fn decrement(&mut self, tag: KeyTag) {
        let Some(count) = self.counts.get_mut(&tag) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
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

/// What a parent knows of one child link's interest: the exact set (to withdraw it when
/// the link ends) and the filter built from it (to route).
#[derive(Debug, Clone)]
pub(crate) struct LinkInterest {
    tags: TagSet,
    filter: InterestFilter,
    key: FilterKey,
}

impl LinkInterest {
    pub(crate) fn new(fp_rate: f64, key: FilterKey) -> Self {
        LinkInterest {
            tags: TagSet::default(),
            filter: InterestFilter::new(fp_rate, key),
            key,
        }
    }

    pub(crate) fn may_contain(&self, tag: KeyTag) -> bool {
        self.filter.may_contain(tag)
    }

    pub(crate) fn contains_exactly(&self, tag: KeyTag) -> bool {
        self.tags.contains(&tag)
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
                table.decrement(tag);
            }
        }
        for &tag in &delta.add {
            if self.tags.insert(tag) {
                self.filter.insert(tag);
                table.increment(tag);
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
                table.increment(tag);
            }
        }
    }

    /// Withdraws the whole set from the aggregate (the link ended).
    pub(crate) fn clear(&mut self, table: &mut InterestTable) {
        for tag in self.tags.drain() {
            table.decrement(tag);
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
    let mut link = LinkInterest::new(fp_rate, key);
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
        let mut a = LinkInterest::new(0.01, FilterKey::default());
        let mut b = LinkInterest::new(0.01, FilterKey::default());
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

    #[test]
    fn filter_has_no_false_negatives_after_removing_colliding_tags() {
        let mut filter = InterestFilter::new(0.5, FilterKey::from_seed(3));
        let tags: Vec<u64> = (1..2000u64).map(crate::node_tag).collect();
        for &t in &tags {
            filter.insert(t);
        }
        for &t in tags.iter().step_by(2) {
            filter.remove(t);
        }
        for &t in tags.iter().skip(1).step_by(2) {
            assert!(filter.may_contain(t));
        }
    }

    #[test]
    fn chosen_tags_do_not_cluster_in_the_filter() {
        // Tags a peer picked to share quotients (small consecutive values) spread out once
        // hashed: 16,384 inserts and removals stay fast.
        let mut filter = InterestFilter::new(0.001, FilterKey::from_seed(9));
        let tags: Vec<u64> = (0..16_384u64).map(|i| i * 2 + 1).collect();
        let started = std::time::Instant::now();
        for &t in &tags {
            filter.insert(t);
        }
        for &t in &tags {
            filter.remove(t);
        }
        // Unhashed, this took 2.9 s; hashed, a few milliseconds. The bound is loose for
        // slow machines and still fails the clustered case.
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
        assert!(!filter.may_contain(tags[0]) || !filter.may_contain(tags[1]));
    }

    #[test]
    fn snapshot_replaces_link_set_and_withdraws_the_old_one() {
        let mut table = InterestTable::default();
        let mut link = LinkInterest::new(0.01, FilterKey::default());
        link.replace(&[1, 2, 3], 0.01, &mut table);
        table.take_delta();
        link.replace(&[3, 4], 0.01, &mut table);
        let delta = table.take_delta();
        assert_eq!(delta.add, vec![4]);
        assert_eq!(delta.remove, vec![1, 2]);
        assert!(link.may_contain(4) && link.contains_exactly(3) && !link.contains_exactly(1));
    }
}
