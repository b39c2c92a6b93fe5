//! Accounting of what an experiment owed and what arrived: every multicast belongs to one
//! interest group (a working set, or the one experiment key), every client to at most one,
//! and a delivery counts once per (multicast, client), with one bit per pair so that a
//! million-client run stays small.

use std::collections::HashMap;

use canopy_tree::NodeId;
use serde::Serialize;

use crate::SimDelivery;

/// A node in no interest group.
const NO_GROUP: u32 = u32::MAX;

/// What arrived, against what was owed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryCounts {
    /// First copies at clients of the multicast's group.
    pub delivered: u64,
    /// Owed: the group's clients other than the publisher, summed over multicasts.
    pub expected: u64,
    /// Further copies of a multicast at one client.
    pub duplicates: u64,
    /// Copies at clients outside the multicast's group (must be 0).
    pub unwanted: u64,
}

impl DeliveryCounts {
    /// Every owed copy arrived exactly once and nothing else did.
    pub fn exact(&self) -> bool {
        self.delivered == self.expected && self.duplicates == 0 && self.unwanted == 0
    }
}

pub struct Tally {
    group_of: Vec<u32>,
    group_sizes: HashMap<u32, u64>,
    multicasts: HashMap<(NodeId, u64), (usize, u32)>,
    seen: Vec<Vec<u64>>,
    counts: DeliveryCounts,
}

impl Tally {
    /// A tally for node ids `1..=max_node`.
    pub fn new(max_node: NodeId) -> Tally {
        Tally {
            group_of: vec![NO_GROUP; max_node as usize + 1],
            group_sizes: HashMap::new(),
            multicasts: HashMap::new(),
            seen: Vec::new(),
            counts: DeliveryCounts::default(),
        }
    }

    /// Puts client `node` in interest group `group` (a node is in at most one).
    pub fn join_group(&mut self, node: NodeId, group: u32) {
        let slot = &mut self.group_of[node as usize];
        if *slot != NO_GROUP {
            if let Some(size) = self.group_sizes.get_mut(slot) {
                *size -= 1;
            }
        }
        *slot = group;
        *self.group_sizes.entry(group).or_insert(0) += 1;
    }

    /// Registers the `origin_seq`-th multicast of `origin`, owed to `group`.
    pub fn owe(&mut self, origin: NodeId, origin_seq: u64, group: u32) {
        let index = self.seen.len();
        self.seen.push(vec![0u64; self.group_of.len().div_ceil(64)]);
        self.multicasts.insert((origin, origin_seq), (index, group));
        let members = self.group_sizes.get(&group).copied().unwrap_or(0);
        let publisher_member = self.group_of.get(origin as usize) == Some(&group);
        self.counts.expected += members - u64::from(publisher_member);
    }

    /// Counts deliveries; those of multicasts never registered are ignored.
    pub fn absorb(&mut self, deliveries: Vec<SimDelivery>) {
        for d in deliveries {
            let Some(&(index, group)) = self.multicasts.get(&(d.origin, d.origin_seq)) else {
                continue;
            };
            let receiver = d.receiver as usize;
            if self.group_of.get(receiver) != Some(&group) {
                self.counts.unwanted += 1;
                continue;
            }
            let (word, bit) = (receiver / 64, 1u64 << (receiver % 64));
            let seen = &mut self.seen[index][word];
            if *seen & bit == 0 {
                *seen |= bit;
                self.counts.delivered += 1;
            } else {
                self.counts.duplicates += 1;
            }
        }
    }

    pub fn counts(&self) -> DeliveryCounts {
        self.counts
    }
}
