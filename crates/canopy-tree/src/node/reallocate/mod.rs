//! Cache-aware reallocation (the seed's §8.3.2, driven by live traffic): the root watches
//! the multicasts that reach it, learns which clients write which keys, and moves a client
//! to a router where writing its keys costs the tree less.
//!
//! The cost of a key is its write rate times the number of tree nodes its multicasts cross:
//! with upward filters, a write travels the smallest subtree spanning every holder of the
//! key. The root does not know every reader, so a key's writers stand for its holders (true
//! of the seed's workloads, where a worker caches what it writes). Each round plans where
//! every tracked writer should be (keys linked by common writers kept together, in the
//! smallest subtree that holds them) and moves clients only if the plan costs clearly less
//! than the tree as it is; a key wanted everywhere (W(1×1)) costs the same wherever its
//! writers are, and nobody moves for it.
//!
//! Only traffic that reaches the root is seen: once a key's holders share a subtree (and
//! upward filters keep its writes there), the root stops hearing about it and leaves it be.

mod plan;

use std::collections::HashMap;

use super::root::Placement;
use super::Node;
use crate::io::{Output, TreeEvent};
use crate::{KeyTag, NodeId, Role, Time, TreeView, BROADCAST_TAG};

/// (writer, key) pairs the root remembers at most: a client cannot grow the table without
/// bound by writing ever new keys.
const MAX_TRACKED: usize = 1 << 16;
/// Keys one writer is remembered for at most, so that one client writing many keys cannot
/// fill the table and hide everyone else's writes.
const MAX_KEYS_PER_WRITER: usize = 64;
/// A client moved is not moved again for this many rounds.
const MOVE_COOLDOWN_ROUNDS: u32 = 4;
/// Moves one round may decide.
const MAX_MOVES_PER_ROUND: usize = 64;
/// Weights below this after decay are forgotten.
const FORGET_BELOW: f64 = 0.5;

/// Decayed write counts per writer and key, from multicasts that reached the root.
#[derive(Debug, Clone, Default)]
pub(crate) struct Affinity {
    writes: HashMap<NodeId, HashMap<KeyTag, f64>>,
    tracked: usize,
    /// Clients moved lately, with the rounds they still sit out.
    cooling: HashMap<NodeId, u32>,
}

impl Affinity {
    pub(super) fn record(&mut self, writer: NodeId, tag: KeyTag) {
        let full = self.tracked >= MAX_TRACKED;
        if full && !self.writes.contains_key(&writer) {
            return;
        }
        let keys = self.writes.entry(writer).or_default();
        let room = !full && keys.len() < MAX_KEYS_PER_WRITER;
        match keys.get_mut(&tag) {
            Some(weight) => *weight += 1.0,
            None if room => {
                keys.insert(tag, 1.0);
                self.tracked += 1;
            }
            None => {}
        }
    }

    /// Halves every weight (so the plan follows what clients write now) and forgets the
    /// faint ones.
    fn decay(&mut self) {
        for keys in self.writes.values_mut() {
            keys.retain(|_, w| {
                *w /= 2.0;
                *w >= FORGET_BELOW
            });
        }
        self.writes.retain(|_, keys| !keys.is_empty());
        self.tracked = self.writes.values().map(HashMap::len).sum();
    }

    /// Moves (client, new parent) that lower the tree's cost (see `plan`), leaving out
    /// clients moved in the last few rounds; those planned start their cool-down.
    fn plan(&mut self, view: &TreeView, max_clients: u32) -> Vec<(NodeId, NodeId)> {
        self.cooling.retain(|_, rounds| {
            *rounds -= 1;
            *rounds > 0
        });
        let moves: Vec<(NodeId, NodeId)> =
            plan::plan(&self.writes, view, max_clients, MAX_MOVES_PER_ROUND)
                .into_iter()
                .filter(|(client, _)| !self.cooling.contains_key(client))
                .collect();
        for &(client, _) in &moves {
            self.cooling.insert(client, MOVE_COOLDOWN_ROUNDS);
        }
        moves
    }
}

impl Node {
    /// Notes a multicast that reached the root over the link to `from` (for reallocation).
    /// Only an origin the view places below that link counts: a router cannot make the root
    /// move clients of other subtrees by naming them. The broadcast tag is everybody's.
    pub(super) fn root_observe(&mut self, from: NodeId, origin: NodeId, tag: KeyTag) {
        if !self.config.reallocate || tag == BROADCAST_TAG {
            return;
        }
        if let Some(root) = self.root.as_mut() {
            if root.view.is_ancestor_or_self(from, origin) {
                root.affinity.record(origin, tag);
            }
        }
    }

    /// One round of reallocation: plans moves from what was seen, starts them, decays.
    pub(super) fn reallocate(&mut self, now: Time, out: &mut Vec<Output>) {
        if !self.config.reallocate {
            return;
        }
        let max_clients = u32::try_from(self.config.max_clients).unwrap_or(u32::MAX);
        let Some(root) = self.root.as_mut() else {
            return;
        };
        let moves = root.affinity.plan(&root.view, max_clients);
        root.affinity.decay();
        // The client keeps its old parent for a while (see `Handoff`); its old parent is told
        // to let go after that, in case the client does not say so itself.
        let release_at = now + self.handoff_grace() * 2;
        for (client, to) in moves {
            let Some(entry) = self.view().and_then(|v| v.get(client)) else {
                continue;
            };
            let (region, address, from) =
                (entry.region.clone(), entry.address.clone(), entry.parent);
            let salt = self.rng_salt();
            let placement = Placement {
                node: client,
                role: Role::Client,
                region,
                address,
                parent: to,
                salt,
            };
            self.root_place(placement, from, Some(release_at), now, out);
            out.push(Output::Event(TreeEvent::Reallocated {
                client,
                from: from.unwrap_or(0),
                to,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_bounded() {
        let mut affinity = Affinity::default();
        let writers = (MAX_TRACKED / MAX_KEYS_PER_WRITER) as u64 + 10;
        for writer in 0..writers {
            for tag in 0..MAX_KEYS_PER_WRITER as u64 {
                affinity.record(writer, tag);
            }
        }
        assert_eq!(affinity.tracked, MAX_TRACKED);
    }

    #[test]
    fn one_writer_cannot_fill_the_table() {
        let mut affinity = Affinity::default();
        for tag in 0..10_000 {
            affinity.record(1, tag);
        }
        affinity.record(2, 5);
        assert_eq!(affinity.tracked, MAX_KEYS_PER_WRITER + 1);
    }

    #[test]
    fn faint_entries_are_forgotten() {
        let mut affinity = Affinity::default();
        affinity.record(1, 7);
        for _ in 0..4 {
            affinity.record(2, 8);
        }
        affinity.decay();
        assert_eq!(affinity.tracked, 2);
        affinity.decay();
        assert_eq!(affinity.tracked, 1);
        assert!(affinity.writes.contains_key(&2));
    }
}
