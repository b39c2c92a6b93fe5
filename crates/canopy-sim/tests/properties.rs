//! Property tests: random joins, graceful leaves and crashes of up to 1,000 nodes; once the
//! tree settles, its structure and multicast delivery must satisfy the protocol's
//! invariants.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use canopy_sim::check::{check_tree, interested_clients};
use canopy_sim::{LatencyModel, Sim};
use canopy_tree::{Input, KeyTag, NodeId, Role, BROADCAST_TAG};
use proptest::prelude::*;

mod common;
use common::{fast_config, ms};

const TAGS: [KeyTag; 4] = [0xA1, 0xB2, 0xC3, 0xD4];

#[derive(Debug, Clone)]
enum Churn {
    JoinRouter,
    JoinClient,
    Leave(usize),
    Crash(usize),
}

fn churn() -> impl Strategy<Value = (Churn, u64)> {
    let op = prop_oneof![
        1 => Just(Churn::JoinRouter),
        3 => Just(Churn::JoinClient),
        2 => any::<usize>().prop_map(Churn::Leave),
        2 => any::<usize>().prop_map(Churn::Crash),
    ];
    (op, 0u64..8_000)
}

#[derive(Debug, Clone)]
struct Scenario {
    routers: usize,
    clients: usize,
    max_child_routers: usize,
    max_clients: usize,
    churn: Vec<(Churn, u64)>,
    seed: u64,
}

fn scenario(max_nodes: usize) -> impl Strategy<Value = Scenario> {
    (
        1usize..40,
        1usize..max_nodes - 40,
        2usize..5,
        8usize..40,
        prop::collection::vec(churn(), 0..60),
        any::<u64>(),
    )
        .prop_map(
            |(routers, clients, max_child_routers, max_clients, churn, seed)| Scenario {
                routers,
                clients,
                max_child_routers,
                max_clients,
                churn,
                seed,
            },
        )
}

/// Adds a node with a random subset of the test tags.
fn add(sim: &mut Sim, role: Role, at: Duration, pick: u64) -> NodeId {
    let id = sim.add_node(role, "", at);
    if role == Role::Client {
        for (i, &tag) in TAGS.iter().enumerate() {
            if pick >> i & 1 == 1 {
                sim.input_at(id, Input::Subscribe(tag), Duration::ZERO);
            }
        }
    }
    id
}

fn build(s: &Scenario) -> Sim {
    let config = fast_config(s.max_child_routers, s.max_clients, false);
    let mut sim = Sim::new(config, LatencyModel::default(), s.seed);
    sim.add_node(Role::Root, "", Duration::ZERO);
    let mut rng = s.seed;
    let mut next = move || {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        rng >> 11
    };
    for _ in 0..s.routers {
        add(&mut sim, Role::Router, ms(next() % 1000), 0);
    }
    for _ in 0..s.clients {
        add(&mut sim, Role::Client, ms(1000 + next() % 2000), next());
    }
    sim.run_until(ms(3000));
    let mut churn = s.churn.clone();
    churn.sort_by_key(|(_, at)| *at);
    for (op, at) in churn {
        sim.run_until(ms(3000 + at));
        let now = sim.now();
        let live: Vec<NodeId> = sim
            .live_nodes()
            .map(|n| n.id())
            .filter(|&id| id != 1)
            .collect();
        match op {
            Churn::JoinRouter => {
                add(&mut sim, Role::Router, now, 0);
            }
            Churn::JoinClient => {
                let pick = next();
                add(&mut sim, Role::Client, now, pick);
            }
            Churn::Leave(i) if !live.is_empty() => {
                sim.input_at(live[i % live.len()], Input::Leave, now);
            }
            Churn::Crash(i) if !live.is_empty() => sim.crash(live[i % live.len()]),
            _ => {}
        }
    }
    // Long enough for orphans to time out, rejoin with backoff, and the root to rebalance.
    sim.run_for(ms(20_000));
    sim
}

/// Publishes every test tag and the broadcast tag from a few clients and checks delivery,
/// filtering and fan-out.
fn check_multicasts(sim: &mut Sim, enforce_fanout: bool) -> Result<(), TestCaseError> {
    sim.record_multicast_hops();
    sim.reset_counters();
    sim.take_deliveries();
    let clients: Vec<NodeId> = sim
        .live_nodes()
        .filter(|n| n.role() == Role::Client)
        .map(|n| n.id())
        .collect();
    let publishers: Vec<NodeId> = clients
        .iter()
        .step_by(clients.len() / 3 + 1)
        .copied()
        .collect();
    let mut owed: HashMap<(NodeId, u64), (KeyTag, HashSet<NodeId>)> = HashMap::new();
    let mut seqs: HashMap<NodeId, u64> = HashMap::new();
    for &publisher in &publishers {
        for tag in TAGS.iter().copied().chain([BROADCAST_TAG]) {
            let seq = seqs.entry(publisher).or_insert(0);
            *seq += 1;
            let mut wanted: HashSet<NodeId> = interested_clients(sim, tag).into_iter().collect();
            wanted.remove(&publisher);
            owed.insert((publisher, *seq), (tag, wanted));
            let payload = Bytes::from_static(b"sealed");
            sim.input_at(
                publisher,
                Input::Publish {
                    key_tag: tag,
                    payload,
                },
                sim.now(),
            );
        }
    }
    sim.run_for(ms(1000));
    let mut got: HashMap<(NodeId, u64), Vec<NodeId>> = HashMap::new();
    for d in sim.take_deliveries() {
        got.entry((d.origin, d.origin_seq))
            .or_default()
            .push(d.receiver);
    }
    for (key, (tag, wanted)) in &owed {
        let receivers = got.remove(key).unwrap_or_default();
        let unique: HashSet<NodeId> = receivers.iter().copied().collect();
        prop_assert_eq!(
            unique.len(),
            receivers.len(),
            "duplicate delivery of {:?}",
            key
        );
        prop_assert_eq!(&unique, wanted, "multicast {:?} tag {:#x}", key, tag);
    }
    let hops = sim.multicast_hops().unwrap_or_default().to_vec();
    let max_copies = sim.config().max_children() + 1;
    let mut copies: HashMap<(NodeId, NodeId, u64), usize> = HashMap::new();
    for hop in &hops {
        *copies
            .entry((hop.from, hop.origin, hop.origin_seq))
            .or_default() += 1;
        let Some(receiver) = sim.node(hop.to) else {
            continue;
        };
        let wants = hop.key_tag == BROADCAST_TAG || receiver.interest().subtree_wants(hop.key_tag);
        if receiver.role() == Role::Client && !wants {
            // Only a filter false positive may send a copy where nobody wants it.
            let parent = sim.node(hop.from);
            let advertised = parent.and_then(|p| p.child_advertised(hop.to, hop.key_tag));
            let may_want = parent.and_then(|p| p.child_may_want(hop.to, hop.key_tag));
            prop_assert_eq!(
                advertised,
                Some(false),
                "copy to uninterested client {}",
                hop.to
            );
            prop_assert_eq!(
                may_want,
                Some(true),
                "copy not explained by a false positive"
            );
        }
    }
    if enforce_fanout {
        for ((node, origin, seq), count) in copies {
            prop_assert!(
                count <= max_copies,
                "node {} sent {} copies of ({}, {}), more than K+1 = {}",
                node,
                count,
                origin,
                seq,
                max_copies
            );
        }
    }
    Ok(())
}

fn check_settled(s: &Scenario) -> Result<(), TestCaseError> {
    let mut sim = build(s);
    let shape = check_tree(&sim).map_err(TestCaseError::fail)?;
    // With enough router capacity the tree must be balanced and keep clients off the root.
    let capacity = shape.routers * s.max_clients;
    let enough_capacity = shape.routers > 0 && capacity >= shape.clients;
    if enough_capacity {
        prop_assert!(
            shape.client_imbalance <= sim.config().imbalance_bound,
            "client imbalance {} over bound: {:?}",
            shape.client_imbalance,
            shape
        );
        prop_assert_eq!(
            shape.root_clients,
            0,
            "clients left on the root: {:?}",
            shape
        );
    }
    check_multicasts(&mut sim, enough_capacity)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, max_shrink_iters: 64, ..ProptestConfig::default() })]

    #[test]
    fn settled_tree_keeps_its_invariants(s in scenario(1000)) {
        check_settled(&s)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, max_shrink_iters: 256, ..ProptestConfig::default() })]

    #[test]
    fn small_trees_keep_their_invariants(s in scenario(120)) {
        check_settled(&s)?;
    }
}

#[test]
fn same_seed_same_run() {
    let s = Scenario {
        routers: 10,
        clients: 200,
        max_child_routers: 3,
        max_clients: 30,
        churn: vec![
            (Churn::Crash(3), 500),
            (Churn::Leave(7), 900),
            (Churn::JoinClient, 1200),
        ],
        seed: 42,
    };
    let shape = |sim: &Sim| {
        let parents: Vec<Option<NodeId>> = sim
            .node_ids()
            .map(|id| sim.node(id).and_then(|n| n.parent()))
            .collect();
        let counters: Vec<_> = sim.node_ids().map(|id| sim.counters(id)).collect();
        (parents, counters, sim.events_processed())
    };
    let (a, b) = (build(&s), build(&s));
    assert_eq!(shape(&a), shape(&b));
    let other = build(&Scenario { seed: 43, ..s });
    assert_ne!(
        shape(&a).0,
        shape(&other).0,
        "a different seed should build a different tree"
    );
}
