//! The set of interest-table slots one child link holds, exact and compact.
//!
//! Every tag a node's subtree wants has a slot number in the node's interest table, small
//! and dense. A link's set is a set of those numbers, stored
//! in a quotient filter whose fingerprints are the numbers themselves, scrambled by a keyed
//! permutation: with fingerprints exactly as wide as the numbers, the filter has no false
//! positives, removes exactly, and lists what it holds, in about log2(N/n) + 3 bits per entry
//! for a link holding n of the node's N tags (a `HashSet<u64>` beside a filter took 121 to
//! 201). The permutation spreads consecutive slot numbers over the filter's buckets, and a
//! peer, who does not know the key, cannot pick numbers that pile into one run.

/// The narrowest fingerprint `qfilter` accepts.
const MIN_WIDTH: u8 = 7;
/// Slot numbers stay below 2^(width - HEADROOM), so that the filter, which can grow until its
/// remainders are 1 bit wide (2^(width - 1) slots, 95 % full), holds every number below that.
const HEADROOM: u8 = 2;

/// The secret a node scrambles slot numbers with before they enter a link's set. Numbers
/// chosen to share a quotient would pile into one run of the quotient filter and make every
/// insert and removal slow (measured with raw tags as fingerprints: inserting and removing
/// 16,384 sequential tags took 2.9 s); a peer does not know the key, so it cannot choose them.
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

    /// Two odd secrets for the permutation.
    fn odd_multipliers(self) -> [u64; 2] {
        [
            crate::node_tag(self.0 ^ 0x6d75_6c5f_6f6e_6530) | 1,
            crate::node_tag(self.1 ^ 0x6d75_6c5f_7477_6f31) | 1,
        ]
    }
}

/// An exact set of slot numbers.
#[derive(Debug, Clone)]
pub(crate) struct IndexSet {
    filter: qfilter::Filter,
    permutation: Permutation,
}

impl IndexSet {
    pub(crate) fn new(key: FilterKey) -> Self {
        Self::with_width(key, MIN_WIDTH, 1)
    }

    fn with_width(key: FilterKey, width: u8, capacity: u64) -> Self {
        let filter = match qfilter::Filter::with_fingerprint_size(capacity, width) {
            Ok(filter) => filter,
            // `width` always leaves HEADROOM bits above what `capacity` entries need.
            Err(e) => panic!("a {width}-bit index filter for {capacity} entries: {e:?}"),
        };
        IndexSet {
            filter,
            permutation: Permutation::new(key, width),
        }
    }

    /// Adds `index`; false if it was there already.
    pub(crate) fn insert(&mut self, index: u32) -> bool {
        let needed = width_for(index);
        if needed > self.permutation.width {
            self.rebuild(needed);
        }
        match self
            .filter
            .insert_fingerprint(false, self.permutation.forward(index.into()))
        {
            Ok(inserted) => inserted,
            // The width leaves room for every number below 2^(width - HEADROOM), and a set
            // holds each at most once.
            Err(e) => panic!(
                "index filter of width {} full: {e:?}",
                self.permutation.width
            ),
        }
    }

    /// Removes `index`; false if it was not there.
    pub(crate) fn remove(&mut self, index: u32) -> bool {
        if width_for(index) > self.permutation.width {
            return false;
        }
        let removed = self
            .filter
            .remove_fingerprint(self.permutation.forward(index.into()));
        // Give memory back as the set empties: one halving per call, below a quarter full.
        if removed && self.filter.len() <= self.filter.capacity() / 4 {
            self.filter.shrink_to_fit();
        }
        removed
    }

    pub(crate) fn contains(&self, index: u32) -> bool {
        width_for(index) <= self.permutation.width
            && self
                .filter
                .contains_fingerprint(self.permutation.forward(index.into()))
    }

    /// Every index in the set.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.filter.fingerprints().map(|fingerprint| {
            let index = self.permutation.backward(fingerprint);
            // Inserted as a u32, so it comes back as one.
            u32::try_from(index).unwrap_or_else(|_| panic!("index {index} out of range"))
        })
    }

    pub(crate) fn len(&self) -> usize {
        usize::try_from(self.filter.len()).unwrap_or(usize::MAX)
    }

    /// Bytes the filter holds.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.filter.memory_usage()
    }

    /// Bits per fingerprint (and so the permutation's width).
    #[cfg(test)]
    fn width(&self) -> u8 {
        self.permutation.width
    }

    /// Moves the set to a filter of fingerprints `width` bits wide.
    fn rebuild(&mut self, width: u8) {
        let key = self.permutation.key;
        let mut wider = Self::with_width(key, width, self.filter.len() + 1);
        for index in self.iter() {
            wider.insert(index);
        }
        *self = wider;
    }
}

/// The fingerprint width that holds `index` with its headroom.
fn width_for(index: u32) -> u8 {
    let bits = (u32::BITS - index.leading_zeros()) as u8;
    (bits + HEADROOM).max(MIN_WIDTH)
}

/// A keyed bijection on `width`-bit numbers: two rounds of multiplying by an odd secret and
/// folding the high half into the low half.
#[derive(Debug, Clone, Copy)]
struct Permutation {
    key: FilterKey,
    width: u8,
    multipliers: [u64; 2],
    inverses: [u64; 2],
}

impl Permutation {
    fn new(key: FilterKey, width: u8) -> Self {
        let multipliers = key.odd_multipliers();
        Permutation {
            key,
            width,
            multipliers,
            inverses: multipliers.map(inverse_mod_2_64),
        }
    }

    fn mask(&self) -> u64 {
        u64::MAX >> (64 - u32::from(self.width))
    }

    fn shift(&self) -> u32 {
        u32::from(self.width).div_ceil(2)
    }

    fn forward(&self, mut x: u64) -> u64 {
        let mask = self.mask();
        for m in self.multipliers {
            x = x.wrapping_mul(m) & mask;
            x ^= x >> self.shift();
        }
        x
    }

    fn backward(&self, mut y: u64) -> u64 {
        let mask = self.mask();
        for inverse in self.inverses.into_iter().rev() {
            y = unfold(y, self.shift(), self.width);
            y = y.wrapping_mul(inverse) & mask;
        }
        y
    }
}

/// Inverts `x ^= x >> shift` on `width`-bit numbers.
fn unfold(y: u64, shift: u32, width: u8) -> u64 {
    let mut x = y;
    for _ in 0..u32::from(width).div_ceil(shift) {
        x = y ^ (x >> shift);
    }
    x
}

/// The inverse of an odd `m` modulo 2^64 (Newton's iteration doubles the correct bits).
fn inverse_mod_2_64(m: u64) -> u64 {
    let mut inverse = m;
    for _ in 0..6 {
        inverse = inverse.wrapping_mul(2u64.wrapping_sub(m.wrapping_mul(inverse)));
    }
    inverse
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_permutation_is_a_bijection_at_every_width() {
        for width in [MIN_WIDTH, 9, 12] {
            let p = Permutation::new(FilterKey::from_seed(u64::from(width)), width);
            let images: BTreeSet<u64> = (0..1u64 << width).map(|x| p.forward(x)).collect();
            assert_eq!(images.len(), 1 << width);
            assert!(images.iter().all(|&y| y < 1 << width));
            assert!((0..1u64 << width).all(|x| p.backward(p.forward(x)) == x));
        }
        let wide = Permutation::new(FilterKey::from_seed(1), 40);
        for x in [0, 1, 12_345, (1 << 38) - 1] {
            assert_eq!(wide.backward(wide.forward(x)), x);
        }
    }

    #[test]
    fn the_set_is_exact_through_growth_and_removals() {
        let mut set = IndexSet::new(FilterKey::from_seed(5));
        let mut model = BTreeSet::new();
        // Dense numbers, as the table hands them out, well past the first width.
        for i in 0..20_000u32 {
            if i % 3 != 1 {
                assert!(set.insert(i));
                model.insert(i);
            }
        }
        assert!(!set.insert(0), "a second insert of the same number");
        for i in (0..20_000u32).step_by(5) {
            assert_eq!(set.remove(i), model.remove(&i));
        }
        assert!(!set.remove(1_000_000), "a number wider than the set");
        assert!((0..25_000u32).all(|i| set.contains(i) == model.contains(&i)));
        let listed: BTreeSet<u32> = set.iter().collect();
        assert_eq!(listed, model);
        assert_eq!(set.len(), model.len());
        assert_eq!(set.width(), width_for(19_999));
    }

    #[test]
    fn an_emptied_set_gives_its_memory_back() {
        let mut set = IndexSet::new(FilterKey::from_seed(6));
        for i in 0..50_000u32 {
            set.insert(i);
        }
        let full = set.memory_bytes();
        for i in 0..49_990u32 {
            set.remove(i);
        }
        assert!(
            set.memory_bytes() * 8 < full,
            "{} of {full}",
            set.memory_bytes()
        );
        assert_eq!(set.iter().count(), 10);
    }

    #[test]
    fn a_full_table_costs_a_few_bits_per_entry() {
        // n of N = n: the number width is log2(n) + 2, the filter's quotient takes all but
        // one or two of those bits.
        for n in [1_000u32, 10_000, 100_000] {
            let mut set = IndexSet::new(FilterKey::from_seed(7));
            for i in 0..n {
                set.insert(i);
            }
            let bits = set.memory_bytes() as f64 * 8.0 / f64::from(n);
            assert!(bits < 8.0, "{n} entries: {bits:.1} bits each");
        }
    }
}
