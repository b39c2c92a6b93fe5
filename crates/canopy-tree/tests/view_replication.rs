//! The tree view as replicated state: a replica that applies the leader's committed
//! `ViewChange`s ends up with the leader's view, a snapshot rebuilds a view that places
//! joiners exactly as the original, and `NewRoot` hands the tree to another candidate.
//!
//! The change sequences come from a simulated root (placement by the view itself, as
//! `Node` does it) and from real nodes driven through the `Net` harness.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use canopy_tree::{
    Input, NodeId, Role, Time, TreeConfig, TreeView, ViewChange, ViewEntry, ViewSnapshot,
};
use common::*;
use proptest::prelude::*;

const REGIONS: [&str; 3] = ["eu", "us", "ap"];
const CANDIDATES: [NodeId; 3] = [1, 2, 3];
/// Tree node ids are 10..10 + POOL.
const POOL: u64 = 24;
/// An id no view ever holds.
const FRESH: NodeId = 9_000;

fn cfg() -> TreeConfig {
    config()
}

fn new_root(root: NodeId) -> ViewChange {
    ViewChange::NewRoot {
        root,
        region: REGIONS[0].to_owned(),
        address: candidate_address(root),
    }
}

// ---------------------------------------------------------------------------------------
// Comparing views.

/// Whether `id` hangs below the root (no detached node on its path).
fn attached(view: &TreeView, id: NodeId) -> bool {
    let mut at = id;
    for _ in 0..=view.len() {
        if at == view.root() {
            return true;
        }
        match view.get(at).and_then(|e| e.parent) {
            Some(parent) => at = parent,
            None => return false,
        }
    }
    panic!("a cycle in the view through {id}");
}

/// An entry as far as placement is concerned. Depth orders attached routers as parents;
/// a client's depth only records where it was placed, and a detached subtree's depths are
/// recomputed when it is put back, so those are not compared.
fn comparable(view: &TreeView, id: NodeId, entry: &ViewEntry) -> ViewEntry {
    let mut e = entry.clone();
    if !e.role.is_router() || !attached(view, id) {
        e.depth = 0;
    }
    e
}

fn entries(view: &TreeView) -> BTreeMap<NodeId, ViewEntry> {
    view.iter()
        .map(|(id, e)| (id, comparable(view, id, e)))
        .collect()
}

/// Every placement decision the root can take with this view, for a fresh joiner and for
/// each node already in the view (whose own subtree and current parent are excluded).
fn placements(view: &TreeView) -> Vec<(NodeId, &'static str, NodeId)> {
    let mut out = Vec::new();
    for region in REGIONS.iter().chain(&["nowhere"]) {
        out.push((FRESH, "router", view.place_router(FRESH, region, None)));
        out.push((FRESH, region, view.place_client(FRESH, region, None)));
    }
    let mut ids: Vec<NodeId> = view.iter().map(|(id, _)| id).collect();
    ids.sort_unstable();
    for id in ids {
        let entry = view.get(id).expect("listed");
        let region = REGIONS
            .iter()
            .find(|r| **r == entry.region)
            .copied()
            .unwrap_or("nowhere");
        out.push((id, "router", view.place_router(id, &entry.region, None)));
        out.push((
            id,
            "router-retry",
            view.place_router(id, &entry.region, entry.parent),
        ));
        out.push((id, region, view.place_client(id, &entry.region, None)));
        out.push((
            id,
            "client-retry",
            view.place_client(id, REGIONS[1], entry.parent),
        ));
    }
    out
}

type Regions = Vec<(String, Vec<(NodeId, u32)>)>;

fn regions(view: &TreeView) -> Regions {
    view.regions()
        .map(|(r, routers)| (r.to_owned(), routers))
        .collect()
}

/// `copy` behaves as `original` in everything the root reads.
fn assert_same_view(original: &TreeView, copy: &TreeView, now: Time, what: &str) {
    assert_eq!(
        original.to_snapshot(),
        copy.to_snapshot(),
        "{what}: snapshot"
    );
    assert_eq!(entries(original), entries(copy), "{what}: entries");
    assert_eq!(
        original.attached_routers(),
        copy.attached_routers(),
        "{what}: attached routers"
    );
    assert_eq!(regions(original), regions(copy), "{what}: region loads");
    assert_eq!(placements(original), placements(copy), "{what}: placement");
    let grace = cfg().orphan_grace;
    for at in [now, now + grace + ms(1), now + grace * 10] {
        assert_eq!(
            original.expired_detached(at, grace),
            copy.expired_detached(at, grace),
            "{what}: expiry at {at:?}"
        );
    }
}

/// The snapshot round trip and a replica fed `log` from nothing both reproduce `leader`.
fn check_replication(leader: &TreeView, log: &[ViewChange], now: Time) {
    let config = cfg();
    let snapshot = leader.to_snapshot();
    let rebuilt = TreeView::from_snapshot(&snapshot, &config).expect("a leader's snapshot");
    assert_same_view(leader, &rebuilt, now, "from_snapshot");
    assert_eq!(rebuilt.to_snapshot(), snapshot);

    let mut replica = None;
    for change in log {
        change.apply_to(&mut replica, &config);
    }
    let replica = replica.expect("the log starts with a NewRoot");
    assert_same_view(leader, &replica, now, "replayed log");

    // A replica that caught up from the snapshot and then applies what follows stays equal:
    // tried with the next decisions a root would take.
    let mut leader = leader.clone();
    let mut caught_up = rebuilt;
    let parent = leader.place_router(FRESH, REGIONS[2], None);
    let next = ViewChange::Assign {
        node: FRESH,
        role: Role::Router,
        region: REGIONS[2].to_owned(),
        address: String::new(),
        parent,
        assignment_id: leader.max_assignment() + 1,
        salt: 77,
    };
    leader.apply(&next);
    caught_up.apply(&next);
    let remove = ViewChange::Remove {
        node: parent,
        at: now,
    };
    leader.apply(&remove);
    caught_up.apply(&remove);
    assert_same_view(&leader, &caught_up, now, "snapshot + later changes");
}

// ---------------------------------------------------------------------------------------
// A simulated root: the decisions `Node` takes, as view changes.

#[derive(Debug, Clone)]
enum Op {
    /// A router asks to join (a new one, a known one coming back, or a client that is now
    /// a router).
    Router { id: u64, retry: bool, salt: u64 },
    /// A client asks to join.
    Client {
        id: u64,
        region: usize,
        retry: bool,
        salt: u64,
    },
    /// A node's parent reports it gone (leave, crash, timeout).
    Remove { id: u64 },
    /// Time passes and the root drops detached nodes past their grace.
    Wait { ms: u64 },
    /// Another (or the same) candidate wins an election.
    Failover { candidate: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // Few salts, so that ties between equally good parents are common.
        4 => (0..POOL, any::<bool>(), 0u64..4)
            .prop_map(|(id, retry, salt)| Op::Router { id, retry, salt }),
        6 => (0..POOL, 0..REGIONS.len(), any::<bool>(), 0u64..4).prop_map(
            |(id, region, retry, salt)| Op::Client { id, region, retry, salt }
        ),
        3 => (0..POOL).prop_map(|id| Op::Remove { id }),
        1 => (1u64..3000).prop_map(|ms| Op::Wait { ms }),
        1 => (0..CANDIDATES.len()).prop_map(|candidate| Op::Failover { candidate }),
    ]
}

struct Leader {
    view: TreeView,
    log: Vec<ViewChange>,
    now: Time,
    next_assignment: u64,
}

impl Leader {
    fn new(root: NodeId) -> Leader {
        let change = new_root(root);
        let mut view = None;
        change.apply_to(&mut view, &cfg());
        Leader {
            view: view.expect("NewRoot on an empty replica"),
            log: vec![change],
            now: Time::ZERO,
            next_assignment: 1,
        }
    }

    fn decide(&mut self, change: ViewChange) {
        self.view.apply(&change);
        self.log.push(change);
    }

    /// As `Node::root_on_join`.
    fn join(&mut self, node: NodeId, role: Role, region: &str, retry: bool, salt: u64) {
        let known = self.view.get(node);
        let exclude = known.and_then(|e| e.parent).filter(|_| retry);
        let in_place = role.is_router()
            && known.is_some_and(|e| e.role == role && e.parent == Some(self.view.root()));
        let parent = if in_place {
            self.view.root()
        } else if role.is_router() {
            self.view.place_router(node, region, exclude)
        } else {
            self.view.place_client(node, region, exclude)
        };
        let assignment_id = self.next_assignment;
        self.next_assignment += 1;
        self.decide(ViewChange::Assign {
            node,
            role,
            region: region.to_owned(),
            address: format!("addr-{node}"),
            parent,
            assignment_id,
            salt,
        });
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Router { id, retry, salt } => {
                let region = REGIONS[(id % 3) as usize];
                self.join(10 + id, Role::Router, region, retry, salt);
            }
            Op::Client {
                id,
                region,
                retry,
                salt,
            } => {
                self.join(10 + id, Role::Client, REGIONS[region], retry, salt);
            }
            Op::Remove { id } => {
                if self.view.get(10 + id).is_some() {
                    self.decide(ViewChange::Remove {
                        node: 10 + id,
                        at: self.now,
                    });
                }
            }
            Op::Wait { ms: wait } => {
                self.now += ms(wait);
                for node in self.view.expired_detached(self.now, cfg().orphan_grace) {
                    self.decide(ViewChange::Remove { node, at: self.now });
                }
            }
            Op::Failover { candidate } => {
                self.decide(new_root(CANDIDATES[candidate]));
                self.next_assignment = self.view.max_assignment() + 1;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    /// After every decision of a simulated root: the snapshot round trip, a replica fed the
    /// log from nothing, and a replica caught up from the snapshot all agree with the
    /// leader's view, placement included.
    #[test]
    fn replicas_and_snapshots_agree_with_the_leader(
        first in 0..CANDIDATES.len(),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let mut leader = Leader::new(CANDIDATES[first]);
        for op in &ops {
            leader.step(op);
            check_replication(&leader.view, &leader.log, leader.now);
        }
    }

    /// A snapshot holds every fact of the view: serialising the rebuilt view gives the
    /// snapshot back, and a rebuilt view rebuilt again is the same.
    #[test]
    fn snapshot_round_trip_is_a_fixed_point(ops in prop::collection::vec(op(), 1..60)) {
        let mut leader = Leader::new(1);
        for op in &ops {
            leader.step(op);
        }
        let config = cfg();
        let snapshot = leader.view.to_snapshot();
        let once = TreeView::from_snapshot(&snapshot, &config).expect("valid");
        let twice = TreeView::from_snapshot(&once.to_snapshot(), &config).expect("valid");
        prop_assert_eq!(&once.to_snapshot(), &snapshot);
        prop_assert_eq!(twice.to_snapshot(), snapshot);
        prop_assert_eq!(entries(&once), entries(&twice));
        prop_assert_eq!(placements(&once), placements(&twice));
    }
}

// ---------------------------------------------------------------------------------------
// The same through real nodes: a replicated candidate leads the `Net` harness, its
// proposals are the log.

#[derive(Debug, Clone)]
enum NetOp {
    Join {
        id: u64,
        router: bool,
    },
    Leave {
        id: u64,
    },
    Crash {
        id: u64,
    },
    Wait {
        ms: u64,
    },
    /// Leadership moves to another live candidate (a graceful handover).
    Handover {
        candidate: usize,
    },
}

fn net_op() -> impl Strategy<Value = NetOp> {
    prop_oneof![
        5 => (0..12u64, any::<bool>()).prop_map(|(id, router)| NetOp::Join { id, router }),
        1 => (0..12u64).prop_map(|id| NetOp::Leave { id }),
        1 => (0..12u64).prop_map(|id| NetOp::Crash { id }),
        2 => (1u64..1500).prop_map(|ms| NetOp::Wait { ms }),
        1 => (0..CANDIDATES.len()).prop_map(|candidate| NetOp::Handover { candidate }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Joins, leaves and crashes driven through a replicated, auto-committing leader: the
    /// committed log replayed from nothing is the leader's view, and its snapshot places
    /// joiners as the leader does.
    #[test]
    fn the_committed_log_rebuilds_the_leaders_view(ops in prop::collection::vec(net_op(), 1..14)) {
        let mut net = Net::replicated(cfg(), &CANDIDATES, true);
        net.elect(1);
        let mut leader = 1;
        for op in &ops {
            match *op {
                NetOp::Join { id, router } => {
                    let id = 10 + id;
                    if !net.nodes.contains_key(&id) {
                        let role = if router { Role::Router } else { Role::Client };
                        net.start(id, role);
                        net.run();
                    }
                }
                NetOp::Leave { id } => {
                    if net.nodes.contains_key(&(10 + id)) && !net.down.contains(&(10 + id)) {
                        net.input(10 + id, Input::Leave);
                        net.run();
                    }
                }
                NetOp::Crash { id } => {
                    net.crash(10 + id);
                }
                NetOp::Wait { ms: wait } => net.advance(ms(wait)),
                NetOp::Handover { candidate } => {
                    leader = CANDIDATES[candidate];
                    net.elect(leader);
                    net.run();
                }
            }
            let view = net.node(leader).view().expect("the leader serves").clone();
            let replayed = net.replayed_view().expect("a NewRoot was committed");
            assert_same_view(&view, &replayed, net.now, "log replay");
            check_replication(&view, &net.raft_log, net.now);
            prop_assert_eq!(net.node(leader).held_actions(), 0);
        }
    }
}

// ---------------------------------------------------------------------------------------
// NewRoot.

/// A view under root 1: routers 10 and 11 under the root, 12 and 13 under 10, clients in
/// three regions; then 10 is removed, so 12 and 13 (with their clients) are detached.
fn populated() -> (TreeView, Vec<ViewChange>) {
    let mut leader = Leader::new(1);
    let router = |id, salt| Op::Router {
        id,
        retry: false,
        salt,
    };
    let client = |id, region, salt| Op::Client {
        id,
        region,
        retry: false,
        salt,
    };
    // 10 and 11 fill the root; 10 has the lower salt, so 12 and 13 go under it.
    for op in [
        router(0, 0),
        router(1, 1),
        router(2, 2),
        router(3, 3),
        client(10, 0, 0),
        client(11, 1, 1),
        client(12, 1, 2),
        client(13, 2, 3),
    ] {
        leader.step(&op);
    }
    // Remove a level-1 router with a router below it: that one is detached.
    let below: Vec<NodeId> = leader.view.get(10).expect("router 10").children().collect();
    assert!(
        below.contains(&12) && below.contains(&13),
        "router 10 has children: {below:?}"
    );
    leader.step(&Op::Remove { id: 0 });
    (leader.view, leader.log)
}

#[test]
fn new_root_takes_over_the_old_roots_children_and_bumps_the_epoch() {
    let (mut view, _) = populated();
    let before = view.clone();
    let old_children: Vec<NodeId> = before.get(1).expect("root").children().collect();
    assert_eq!(
        old_children,
        vec![11],
        "router 10 was removed: {old_children:?}"
    );
    let detached: Vec<NodeId> = before
        .iter()
        .filter(|(id, e)| e.parent.is_none() && *id != 1)
        .map(|(id, _)| id)
        .collect();
    assert!(
        !detached.is_empty(),
        "the populated view has detached nodes"
    );
    let root_entry = before.get(1).expect("root").clone();
    let new_address = candidate_address(2);

    // A candidate of the old root's region: routers prefer slots of their own region, so a
    // root of another region would change where they go.
    view.apply(&ViewChange::NewRoot {
        root: 2,
        region: root_entry.region.clone(),
        address: new_address.clone(),
    });

    assert_eq!(view.root(), 2);
    assert_eq!(view.epoch, before.epoch + 1);
    assert_eq!(view.max_assignment(), before.max_assignment());
    assert_eq!(view.len(), before.len(), "one root for another");
    assert!(view.get(1).is_none(), "the old root is gone");
    let root = view.get(2).expect("the new root");
    assert_eq!(root.role, Role::Root);
    assert_eq!(root.parent, None);
    assert_eq!(root.depth, 0);
    assert_eq!(
        (root.region.as_str(), root.address.as_str()),
        (root_entry.region.as_str(), new_address.as_str())
    );
    assert_eq!(root.children().collect::<Vec<_>>(), old_children);
    assert_eq!(root.child_routers, root_entry.child_routers);
    assert_eq!(root.direct_clients, root_entry.direct_clients);
    for (id, entry) in before.iter().filter(|(id, _)| *id != 1) {
        let now = view.get(id).expect("every other node stays");
        let expected_parent = entry.parent.map(|p| if p == 1 { 2 } else { p });
        assert_eq!(now.parent, expected_parent, "node {id}");
        assert_eq!(now.assignment_id, entry.assignment_id, "node {id}");
        assert_eq!(now.depth, entry.depth, "node {id}");
        assert_eq!(now.detached_since, entry.detached_since, "node {id}");
    }
    // Placement goes on as before, with the new root where the old one was.
    let swap = |id: NodeId| if id == 1 { 2 } else { id };
    let old_placements: Vec<_> = placements(&before)
        .into_iter()
        .filter(|(id, _, _)| *id != 1)
        .map(|(id, kind, parent)| (id, kind, swap(parent)))
        .collect();
    let new_placements: Vec<_> = placements(&view)
        .into_iter()
        .filter(|(id, _, _)| *id != 2)
        .collect();
    assert_eq!(old_placements, new_placements);
    assert_eq!(regions(&before), regions(&view));
    // And the rebuilt view agrees.
    let rebuilt = TreeView::from_snapshot(&view.to_snapshot(), &cfg()).expect("valid");
    assert_same_view(&view, &rebuilt, ms(0), "after NewRoot");
}

#[test]
fn new_root_by_the_same_candidate_only_bumps_the_epoch() {
    let (mut view, _) = populated();
    let before = view.to_snapshot();
    view.apply(&new_root(1));
    let after = view.to_snapshot();
    assert_eq!(after.epoch, before.epoch + 1);
    assert_eq!(
        ViewSnapshot {
            epoch: before.epoch,
            ..after
        },
        before
    );
}

#[test]
fn new_root_on_an_empty_replica_starts_a_view_and_nothing_else_does() {
    let config = cfg();
    let mut replica = None;
    ViewChange::Assign {
        node: 10,
        role: Role::Router,
        region: "eu".to_owned(),
        address: String::new(),
        parent: 1,
        assignment_id: 1,
        salt: 0,
    }
    .apply_to(&mut replica, &config);
    ViewChange::Remove {
        node: 10,
        at: ms(1),
    }
    .apply_to(&mut replica, &config);
    assert!(replica.is_none(), "nothing can be placed before a root");

    new_root(3).apply_to(&mut replica, &config);
    let view = replica.as_ref().expect("a view");
    assert_eq!(view.root(), 3);
    assert_eq!(view.len(), 1);
    assert_eq!(view.epoch, 1);
    assert_eq!(view.max_assignment(), 0);
    // A second NewRoot is a failover on the existing view.
    new_root(2).apply_to(&mut replica, &config);
    let view = replica.expect("a view");
    assert_eq!((view.root(), view.epoch, view.len()), (2, 2, 1));
}

#[test]
fn a_failover_chain_replays_to_the_same_view() {
    let (view, mut log) = populated();
    let mut leader = view;
    for candidate in [2, 3, 1, 1, 2] {
        let change = new_root(candidate);
        leader.apply(&change);
        log.push(change);
    }
    assert_eq!(leader.epoch, 1 + 5);
    check_replication(&leader, &log, ms(0));
}

#[test]
fn from_snapshot_refuses_a_snapshot_without_its_root_or_with_an_unknown_parent() {
    let (view, _) = populated();
    let config = cfg();
    let mut no_root = view.to_snapshot();
    no_root.records.retain(|r| r.id != no_root.root);
    assert!(TreeView::from_snapshot(&no_root, &config).is_none());

    let mut dangling = view.to_snapshot();
    let record = dangling
        .records
        .iter_mut()
        .find(|r| r.parent.is_some())
        .expect("a placed node");
    record.parent = Some(FRESH);
    assert!(TreeView::from_snapshot(&dangling, &config).is_none());
}

#[test]
fn leader_and_replica_views_move_in_lockstep_through_a_node() {
    // One candidate, driven directly: what it proposes, applied elsewhere, is its view.
    let config = Arc::new(cfg());
    let mut net = Net::replicated((*config).clone(), &[1], true);
    net.elect(1);
    for id in 10..14 {
        net.join(id, Role::Router);
    }
    for id in 100..106 {
        net.join(id, Role::Client);
    }
    net.input(12, Input::Leave);
    net.run();
    let view = net.node(1).view().expect("serving").clone();
    assert!(view.get(12).is_none(), "the leaver is gone from the view");
    let replayed = net.replayed_view().expect("replayed");
    assert_same_view(&view, &replayed, net.now, "node log");
    assert_eq!(
        net.raft_log.len(),
        1 + net.proposals.len(),
        "NewRoot plus every proposal"
    );
}
