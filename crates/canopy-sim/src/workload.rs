//! The seed's workload model (§8.3.1): W(S×K) is S mutually exclusive working sets of K
//! keys each. Every client runs one worker (a lambda) whose cache holds one working set: it
//! subscribes to every key of that set and writes to them. Writes arrive as a Poisson
//! process of a fixed total rate, each from a worker drawn uniformly (so every worker writes
//! at the same rate λ) to a key drawn uniformly from its set. Workloads of one run share the
//! total rate and the number of writes, so they differ only in how keys are shared — the
//! paper's "equal average intensity".

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use canopy_tree::{KeyTag, Time};
use rand::Rng;
use serde::Serialize;

/// W(S×K): `sets` mutually exclusive working sets of `keys_per_set` keys each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub sets: u32,
    pub keys_per_set: u32,
}

/// The four workloads of the seed's Figs. 8 and 9.
pub const SEED_WORKLOADS: [Workload; 4] = [
    Workload::new(4, 2),
    Workload::new(2, 2),
    Workload::new(1, 2),
    Workload::new(1, 1),
];

impl Workload {
    pub const fn new(sets: u32, keys_per_set: u32) -> Workload {
        Workload { sets, keys_per_set }
    }

    /// The key tag of key `key` of working set `set`. Tags are spread over the tag space
    /// (as the keyed hash of a real key is), never 0 (the broadcast tag) and never a node's
    /// own tag: [`canopy_tree::node_tag`] is one-to-one, and these inputs have their top bits
    /// set where node ids never reach.
    pub fn tag(&self, set: u32, key: u32) -> KeyTag {
        let index = (u64::from(set) << 30) | u64::from(key & ((1 << 30) - 1));
        canopy_tree::node_tag(0xF000_0000_0000_0000 | index)
    }

    /// Every key tag of working set `set`.
    pub fn set_tags(&self, set: u32) -> impl Iterator<Item = KeyTag> + '_ {
        (0..self.keys_per_set).map(move |key| self.tag(set, key))
    }

    /// The working set of the `index`-th worker: round robin, so sets have equal numbers of
    /// workers (within one).
    pub fn set_of_worker(&self, index: usize) -> u32 {
        (index % self.sets as usize) as u32
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "W({}×{})", self.sets, self.keys_per_set)
    }
}

impl FromStr for Workload {
    type Err = String;

    /// Accepts `4x2`, `4×2` and `W(4x2)`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("workload {s:?}: expected SxK such as 4x2 (S sets of K keys)");
        let inner = s.trim();
        let inner = inner
            .strip_prefix("W(")
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or(inner);
        let (sets, keys) = inner.split_once(['x', '×', 'X']).ok_or_else(bad)?;
        let sets: u32 = sets.trim().parse().map_err(|_| bad())?;
        let keys: u32 = keys.trim().parse().map_err(|_| bad())?;
        if sets == 0 || keys == 0 {
            return Err(format!("workload {s:?}: S and K must be at least 1"));
        }
        if sets >= 1 << 30 || keys >= 1 << 30 {
            return Err(format!("workload {s:?}: S and K must each be below 2^30"));
        }
        Ok(Workload::new(sets, keys))
    }
}

/// One write of the workload: worker `worker` (an index into the run's workers) writes key
/// `tag` of its working set at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Write {
    pub at: Time,
    pub worker: usize,
    pub set: u32,
    pub tag: KeyTag,
}

/// `count` writes at `rate` writes per second in all, starting after `start`, from workers
/// whose working sets `sets` gives (one entry per worker).
pub fn schedule_writes(
    workload: &Workload,
    sets: &[u32],
    count: usize,
    rate: f64,
    start: Time,
    rng: &mut impl Rng,
) -> Vec<Write> {
    assert!(
        !sets.is_empty() && rate > 0.0,
        "a workload needs workers and a rate"
    );
    let mut at = start;
    (0..count)
        .map(|_| {
            let gap = -(1.0 - rng.random::<f64>()).ln() / rate;
            at += Duration::from_secs_f64(gap);
            let worker = rng.random_range(0..sets.len());
            let set = sets[worker];
            let key = rng.random_range(0..workload.keys_per_set);
            Write {
                at,
                worker,
                set,
                tag: workload.tag(set, key),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn parses_the_papers_notation() {
        assert_eq!("4x2".parse(), Ok(Workload::new(4, 2)));
        assert_eq!("W(1×1)".parse(), Ok(Workload::new(1, 1)));
        assert!("0x2".parse::<Workload>().is_err());
        assert!("4".parse::<Workload>().is_err());
        assert_eq!(Workload::new(2, 2).to_string(), "W(2×2)");
    }

    #[test]
    fn sets_are_disjoint_and_never_the_broadcast_tag() {
        let w = Workload::new(4, 8);
        let mut all: Vec<KeyTag> = (0..4).flat_map(|s| w.set_tags(s)).collect();
        assert!(all.iter().all(|&t| t != canopy_tree::BROADCAST_TAG));
        let node_tags: std::collections::HashSet<KeyTag> =
            (1..100_000).map(canopy_tree::node_tag).collect();
        assert!(all.iter().all(|t| !node_tags.contains(t)));
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 32);
    }

    #[test]
    fn writes_stay_in_the_writers_set_at_the_asked_rate() {
        let w = Workload::new(4, 2);
        let mut rng = SmallRng::seed_from_u64(7);
        let sets: Vec<u32> = (0..32).map(|i| w.set_of_worker(i)).collect();
        let writes = schedule_writes(&w, &sets, 10_000, 1000.0, Time::ZERO, &mut rng);
        for write in &writes {
            assert_eq!(write.set, w.set_of_worker(write.worker));
            assert!(w.set_tags(write.set).any(|t| t == write.tag));
        }
        let span = writes.last().map_or(0.0, |w| w.at.as_secs_f64());
        assert!(
            (9.0..11.0).contains(&span),
            "10,000 writes at 1,000/s took {span} s"
        );
    }
}
