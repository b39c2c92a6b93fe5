//! Where tracked writers should be. Keys linked by a common writer form a group (in the
//! seed's W(S×K), one group per working set). Groups are laid into the tree top down: at each
//! router, each group goes whole into one child's subtree if one has room (preferring the
//! subtree that already holds most of it, so that little moves), and is split over several
//! only when none has; clients not tracked stay where they are and keep their slots.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::{KeyTag, NodeId, Role, TreeView};

/// A plan is carried out only if it costs less than this fraction of the tree as it is:
/// moving clients has a price of its own.
const WORTH_MOVING: f64 = 0.9;

type Writes = HashMap<NodeId, HashMap<KeyTag, f64>>;

/// Moves (client, new parent), at most `max_moves`, or none if the plan is not worth it.
pub(super) fn plan(
    writes: &Writes,
    view: &TreeView,
    max_clients: u32,
    max_moves: usize,
) -> Vec<(NodeId, NodeId)> {
    let here: BTreeMap<NodeId, NodeId> = writes
        .keys()
        .filter_map(|&w| {
            let e = view.get(w)?;
            let attached = e.role == Role::Client && e.detached_since.is_none();
            attached.then_some(()).and(e.parent).map(|p| (w, p))
        })
        .collect();
    if here.is_empty() {
        return Vec::new();
    }
    let groups = groups(writes, &here);
    // Slots each router has for tracked writers: its capacity less the clients that stay.
    let mut tracked_at: HashMap<NodeId, u32> = HashMap::new();
    for &router in here.values() {
        *tracked_at.entry(router).or_insert(0) += 1;
    }
    let mut free: HashMap<NodeId, u32> = HashMap::new();
    for (id, entry) in view.iter() {
        if entry.role.is_router() && entry.detached_since.is_none() {
            let tracked_here = tracked_at.get(&id).copied().unwrap_or(0);
            let fixed = entry.direct_clients.saturating_sub(tracked_here);
            free.insert(id, max_clients.saturating_sub(fixed));
        }
    }
    if view.attached_routers() > 0 {
        free.insert(view.root(), 0);
    }
    let mut target: BTreeMap<NodeId, NodeId> = BTreeMap::new();
    let mut layout = Layout {
        view,
        here: &here,
        free: &free,
        capacity: HashMap::new(),
    };
    let groups = groups.into_iter().map(|g| (g, false)).collect();
    layout.place(view.root(), groups, &mut target);
    if target.len() != here.len() {
        // Not every writer fitted (the tree is fuller than the view's counts say): stay put.
        return Vec::new();
    }
    let now = cost(writes, view, &here);
    let planned = cost(writes, view, &target);
    if planned >= now * WORTH_MOVING {
        return Vec::new();
    }
    target
        .into_iter()
        .filter(|(w, to)| here.get(w) != Some(to))
        .take(max_moves)
        .collect()
}

/// Writers grouped by shared keys (union-find over keys), largest group first.
fn groups(writes: &Writes, here: &BTreeMap<NodeId, NodeId>) -> Vec<Vec<NodeId>> {
    let mut parent: HashMap<KeyTag, KeyTag> = HashMap::new();
    fn find(parent: &mut HashMap<KeyTag, KeyTag>, t: KeyTag) -> KeyTag {
        let mut root = t;
        while let Some(&p) = parent.get(&root).filter(|&&p| p != root) {
            root = p;
        }
        let mut at = t;
        while at != root {
            let next = parent.get(&at).copied().unwrap_or(root);
            parent.insert(at, root);
            at = next;
        }
        root
    }
    for w in here.keys() {
        let mut keys = writes[w].keys().copied();
        let Some(first) = keys.next() else { continue };
        parent.entry(first).or_insert(first);
        let a = find(&mut parent, first);
        for t in keys {
            parent.entry(t).or_insert(t);
            let b = find(&mut parent, t);
            if a != b {
                parent.insert(b, a);
            }
        }
    }
    let mut by_root: BTreeMap<KeyTag, Vec<NodeId>> = BTreeMap::new();
    for w in here.keys() {
        if let Some(&first) = writes[w].keys().min() {
            let root = find(&mut parent, first);
            by_root.entry(root).or_default().push(*w);
        }
    }
    let mut groups: Vec<Vec<NodeId>> = by_root.into_values().collect();
    groups.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    groups
}

struct Layout<'a> {
    view: &'a TreeView,
    here: &'a BTreeMap<NodeId, NodeId>,
    free: &'a HashMap<NodeId, u32>,
    capacity: HashMap<NodeId, u32>,
}

/// Where a group's writers may go below a router: one child router's subtree, or the
/// router's own client slots.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bin {
    Subtree(NodeId),
    Own(NodeId),
}

impl Layout<'_> {
    /// Slots for tracked writers in `router`'s whole subtree.
    fn capacity(&mut self, router: NodeId) -> u32 {
        if let Some(&c) = self.capacity.get(&router) {
            return c;
        }
        let own = self.free.get(&router).copied().unwrap_or(0);
        let below: u32 = self
            .child_routers(router)
            .into_iter()
            .map(|c| self.capacity(c))
            .sum();
        let total = own.saturating_add(below);
        self.capacity.insert(router, total);
        total
    }

    fn child_routers(&self, router: NodeId) -> Vec<NodeId> {
        self.view.get(router).map_or(Vec::new(), |e| {
            e.children()
                .filter(|c| {
                    self.view
                        .get(*c)
                        .is_some_and(|e| e.role.is_router() && e.detached_since.is_none())
                })
                .collect()
        })
    }

    fn holds(&self, bin: Bin, writer: NodeId) -> bool {
        let Some(&at) = self.here.get(&writer) else {
            return false;
        };
        match bin {
            Bin::Own(r) => at == r,
            Bin::Subtree(r) => self.view.is_ancestor_or_self(r, at),
        }
    }

    /// Lays `groups` into `router`'s subtree, recording each writer's router in `target`.
    /// A group marked as a fragment has writers elsewhere too: its span reaches this router
    /// anyway, so the router's own slots cost it nothing more and are preferred.
    fn place(
        &mut self,
        router: NodeId,
        groups: Vec<(Vec<NodeId>, bool)>,
        target: &mut BTreeMap<NodeId, NodeId>,
    ) {
        let mut bins: Vec<(Bin, u32)> = self
            .child_routers(router)
            .into_iter()
            .map(|c| (Bin::Subtree(c), self.capacity(c)))
            .collect();
        let own = self.free.get(&router).copied().unwrap_or(0);
        if own > 0 || bins.is_empty() {
            bins.push((Bin::Own(router), own));
        }
        let mut assigned: Vec<Vec<(Vec<NodeId>, bool)>> = vec![Vec::new(); bins.len()];
        for (group, fragment) in groups {
            let mut rest = group;
            let mut split = false;
            while !rest.is_empty() {
                let holding = |b: Bin| rest.iter().filter(|&&w| self.holds(b, w)).count();
                // Whole, into the bin that holds most of it. Else split: first into the
                // router's own slots (they lie on the path between its subtrees, so they add
                // nothing to the group's span), then into the bin that holds most of it.
                let own_first = |b: Bin| fragment && matches!(b, Bin::Own(_));
                let whole = bins
                    .iter()
                    .enumerate()
                    .filter(|(_, &(_, room))| room as usize >= rest.len())
                    .max_by_key(|(i, &(b, room))| (own_first(b), holding(b), room, usize::MAX - i))
                    .map(|(i, _)| i);
                let pick = whole.or_else(|| {
                    bins.iter()
                        .enumerate()
                        .filter(|(_, &(_, room))| room > 0)
                        .max_by_key(|(i, &(b, room))| {
                            (matches!(b, Bin::Own(_)), holding(b), room, usize::MAX - i)
                        })
                        .map(|(i, _)| i)
                });
                let Some(i) = pick else {
                    return;
                };
                let (bin, room) = bins[i];
                let take = rest.len().min(room as usize);
                // Those already there stay there.
                rest.sort_by_key(|&w| (!self.holds(bin, w), w));
                let taken: Vec<NodeId> = rest.drain(..take).collect();
                bins[i].1 -= take as u32;
                split |= !rest.is_empty();
                assigned[i].push((taken, fragment || split));
            }
        }
        for ((bin, _), groups) in bins.into_iter().zip(assigned) {
            match bin {
                Bin::Own(r) => {
                    for w in groups.into_iter().flat_map(|(g, _)| g) {
                        target.insert(w, r);
                    }
                }
                Bin::Subtree(c) => self.place(c, groups, target),
            }
        }
    }
}

/// The tree's cost of the tracked keys with writers at `at`: per key, its write rate times
/// the size of the smallest subtree spanning its writers' routers.
fn cost(writes: &Writes, view: &TreeView, at: &BTreeMap<NodeId, NodeId>) -> f64 {
    let mut holders: HashMap<KeyTag, (f64, BTreeSet<NodeId>)> = HashMap::new();
    for (w, keys) in writes {
        let Some(&router) = at.get(w) else { continue };
        for (&t, &rate) in keys {
            let entry = holders.entry(t).or_default();
            entry.0 += rate;
            entry.1.insert(router);
        }
    }
    holders
        .values()
        .map(|(rate, routers)| rate * spanning_size(view, routers) as f64)
        .sum()
}

/// Size of the smallest subtree holding every router in `routers`.
pub(super) fn spanning_size(view: &TreeView, routers: &BTreeSet<NodeId>) -> usize {
    let count = routers.len();
    if count <= 1 {
        return count;
    }
    let mut visits: HashMap<NodeId, usize> = HashMap::new();
    for &router in routers {
        let mut current = Some(router);
        let mut steps = 0;
        while let Some(id) = current {
            *visits.entry(id).or_insert(0) += 1;
            steps += 1;
            if steps > view.len() {
                break;
            }
            current = view.get(id).and_then(|e| e.parent);
        }
    }
    // The lowest common ancestor is the deepest node every path went through.
    let depth = |id: &NodeId| view.get(*id).map_or(0, |e| e.depth);
    let lca_depth = visits
        .iter()
        .filter(|(_, &n)| n == count)
        .map(|(id, _)| depth(id))
        .max()
        .unwrap_or(0);
    visits.keys().filter(|id| depth(id) >= lca_depth).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TreeConfig, ViewChange};

    /// root 1 → routers 2, 3; 2 → 4, 5; 3 → 6, 7 (the seed's binary tree).
    fn binary_view() -> TreeView {
        let mut view = TreeView::new(1, "", "", &TreeConfig::default());
        for (node, parent) in [(2, 1), (3, 1), (4, 2), (5, 2), (6, 3), (7, 3)] {
            assign(&mut view, node, Role::Router, parent);
        }
        view
    }

    fn assign(view: &mut TreeView, node: NodeId, role: Role, parent: NodeId) {
        view.apply(&ViewChange::Assign {
            node,
            role,
            region: String::new(),
            address: String::new(),
            parent,
            assignment_id: node,
            salt: node,
        });
    }

    fn writes(pairs: &[(NodeId, KeyTag)]) -> Writes {
        let mut writes = Writes::new();
        for &(writer, tag) in pairs {
            writes.entry(writer).or_default().insert(tag, 10.0);
        }
        writes
    }

    #[test]
    fn spanning_size_counts_the_subtree_between_holders() {
        let view = binary_view();
        let size = |r: &[NodeId]| spanning_size(&view, &r.iter().copied().collect());
        assert_eq!(size(&[4]), 1);
        assert_eq!(size(&[4, 5]), 3);
        assert_eq!(size(&[4, 6]), 5);
        assert_eq!(size(&[4, 5, 6, 7]), 7);
    }

    #[test]
    fn writers_of_one_key_gather_where_most_of_them_are() {
        let mut view = binary_view();
        for (client, parent) in [(10, 4), (11, 4), (12, 6), (13, 5), (14, 7), (15, 7)] {
            assign(&mut view, client, Role::Client, parent);
        }
        let w = writes(&[(10, 9), (11, 9), (12, 9), (13, 8), (14, 8), (15, 8)]);
        let moves = plan(&w, &view, 8, 64);
        assert_eq!(moves, vec![(12, 4), (13, 7)]);
    }

    #[test]
    fn a_group_already_together_stays() {
        let mut view = binary_view();
        for client in 10..14 {
            assign(&mut view, client, Role::Client, 5);
        }
        let w = writes(&[(10, 1), (11, 1), (12, 1), (13, 1)]);
        assert!(plan(&w, &view, 8, 64).is_empty());
    }

    #[test]
    fn a_full_tree_moves_nobody() {
        let mut view = binary_view();
        assign(&mut view, 10, Role::Client, 4);
        assign(&mut view, 11, Role::Client, 6);
        // Untracked clients fill every other router's only slot.
        for (client, parent) in [(20, 2), (21, 3), (22, 5), (23, 7)] {
            assign(&mut view, client, Role::Client, parent);
        }
        let w = writes(&[(10, 1), (11, 1)]);
        assert!(plan(&w, &view, 1, 64).is_empty());
    }

    #[test]
    fn moves_are_bounded_per_round() {
        let mut view = binary_view();
        for i in 0..8 {
            let parent = if i % 2 == 0 { 4 } else { 7 };
            assign(&mut view, 10 + i, Role::Client, parent);
        }
        let pairs: Vec<(NodeId, KeyTag)> = (0..8).map(|i| (10 + i, 1)).collect();
        let w = writes(&pairs);
        assert_eq!(plan(&w, &view, 8, 64).len(), 4);
        assert_eq!(plan(&w, &view, 8, 3).len(), 3);
    }
}
