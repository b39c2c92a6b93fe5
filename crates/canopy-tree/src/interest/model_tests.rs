//! Slot sets and link sets against plain-set models under random operations (from an
//! adversarial review): exact answers through growth, shrinking, width jumps, snapshots,
//! clears and the table's renumbering.

use std::collections::{BTreeMap, BTreeSet};

use canopy_proto::v1::InterestDelta;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::index_set::{FilterKey, IndexSet};
use super::{InterestTable, LinkInterest};
use crate::KeyTag;

#[test]
fn a_slot_set_answers_like_a_plain_set() {
    for seed in 0..12u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut set = IndexSet::new(FilterKey::from_seed(seed));
        let mut model = BTreeSet::new();
        let mut range: u32 = [64, 1_000, 1 << 14][seed as usize % 3];
        for step in 0..4_000 {
            if rng.random_ratio(1, 500) {
                range = range.saturating_mul(rng.random_range(2..64)).min(1 << 30);
            }
            // Fill, drain, mix: the set grows, shrinks and jumps to wider numbers.
            let p_insert = [0.9, 0.1, 0.5][(step / 400) % 3];
            let x = match model.iter().nth(step % 64) {
                Some(&held) if rng.random_bool(0.5) => held,
                _ => rng.random_range(0..range),
            };
            if rng.random_bool(p_insert) {
                assert_eq!(
                    set.insert(x),
                    model.insert(x),
                    "seed {seed} step {step} +{x}"
                );
            } else {
                assert_eq!(
                    set.remove(x),
                    model.remove(&x),
                    "seed {seed} step {step} -{x}"
                );
            }
            assert_eq!(set.len(), model.len());
        }
        assert_eq!(set.iter().collect::<BTreeSet<u32>>(), model, "seed {seed}");
        assert!(model.iter().all(|&x| set.contains(x)));
    }
}

#[test]
fn links_sharing_a_table_answer_like_plain_sets() {
    let ids = [11u64, 22, 33, 44];
    for seed in 0..8u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let key = FilterKey::from_seed(seed);
        let mut table = InterestTable::default();
        let mut links: Vec<LinkInterest> =
            ids.iter().map(|&id| LinkInterest::new(key, id)).collect();
        let mut model: Vec<BTreeSet<KeyTag>> = vec![BTreeSet::new(); ids.len()];
        let universe: KeyTag = [20, 400, 3_000][seed as usize % 3];
        for step in 0..1_500 {
            let l = rng.random_range(0..ids.len());
            let mut pick = |n: usize| -> Vec<KeyTag> {
                (0..n).map(|_| rng.random_range(1..universe)).collect()
            };
            match step % 10 {
                0..=6 => {
                    let (add, remove) = (pick(60), pick(60));
                    let delta = InterestDelta {
                        add: add.clone(),
                        remove: remove.clone(),
                    };
                    links[l].apply_delta(&delta, &mut table);
                    for t in &remove {
                        model[l].remove(t);
                    }
                    model[l].extend(add);
                }
                7 | 8 => {
                    let tags = pick(200);
                    links[l].replace(&tags, &mut table);
                    model[l] = tags.into_iter().collect();
                }
                _ => {
                    links[l].clear(&mut table);
                    model[l].clear();
                }
            }
            if let Some(renumbered) = table.compact_slots() {
                for link in &mut links {
                    link.renumber(&renumbered);
                }
            }
            let mut holders: BTreeMap<KeyTag, usize> = BTreeMap::new();
            for tag in model.iter().flatten() {
                *holders.entry(*tag).or_default() += 1;
            }
            for t in 1..universe {
                assert_eq!(table.subtree_wants(t), holders.contains_key(&t), "tag {t}");
                for (link, wanted) in links.iter().zip(&model) {
                    assert_eq!(link.wants(t, table.slot_of(t)), wanted.contains(&t));
                }
            }
            for (link, wanted) in links.iter().zip(&model) {
                assert_eq!(&link.tags(&table).collect::<BTreeSet<KeyTag>>(), wanted);
            }
        }
    }
}
