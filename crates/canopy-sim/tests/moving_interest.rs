//! Property tests of upward filters and cache-aware reallocation: while clients subscribe
//! and unsubscribe mid-stream and the root moves writers between routers, every write
//! reaches every client that wanted its key from well before to well after it, exactly once.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use canopy_sim::workload::Workload;
use canopy_sim::{LatencyModel, Sim};
use canopy_tree::{Input, KeyTag, NodeId, Role, Time};
use proptest::prelude::*;

mod common;
use common::{fast_config, ms};

/// How long before and after a write a subscription must hold for the write to be owed:
/// interest travels up and (as local-tag changes) down in batches of 10 ms per hop.
const SETTLE: Duration = Duration::from_millis(1000);

#[derive(Debug, Clone)]
struct Scenario {
    routers: usize,
    clients: usize,
    max_child_routers: usize,
    max_clients: usize,
    workload: (u32, u32),
    reallocate: bool,
    /// (ms after writes start, client index, set, key, subscribe?)
    changes: Vec<(u64, usize, u32, u32, bool)>,
    seed: u64,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        2usize..10,
        8usize..60,
        2usize..4,
        6usize..16,
        (1u32..5, 1u32..3),
        any::<bool>(),
        prop::collection::vec(
            (0u64..8_000, any::<usize>(), 0u32..5, 0u32..3, any::<bool>()),
            0..40,
        ),
        any::<u64>(),
    )
        .prop_map(
            |(
                routers,
                clients,
                max_child_routers,
                max_clients,
                workload,
                reallocate,
                changes,
                seed,
            )| {
                Scenario {
                    routers,
                    clients,
                    max_child_routers,
                    max_clients,
                    workload,
                    reallocate,
                    changes,
                    seed,
                }
            },
        )
}

/// Subscription intervals of one (client, tag): (from, until), `until` open while held.
type Held = HashMap<(NodeId, KeyTag), Vec<(Time, Option<Time>)>>;

fn holds_through(held: &Held, client: NodeId, tag: KeyTag, at: Time) -> bool {
    held.get(&(client, tag)).is_some_and(|spans| {
        spans
            .iter()
            .any(|&(from, until)| from + SETTLE <= at && until.is_none_or(|u| at + SETTLE <= u))
    })
}

/// Runs the scenario and checks it; returns how many clients the root moved.
fn run(s: &Scenario) -> Result<u64, TestCaseError> {
    let config = fast_config(s.max_child_routers, s.max_clients, s.reallocate);
    let mut sim = Sim::new(config, LatencyModel::default(), s.seed);
    sim.add_node(Role::Root, "", Time::ZERO);
    for i in 0..s.routers {
        sim.add_node(Role::Router, "", ms(10 + 50 * i as u64));
    }
    let clients: Vec<NodeId> = (0..s.clients)
        .map(|i| sim.add_node(Role::Client, "", ms(800 + 20 * i as u64)))
        .collect();
    let workload = Workload::new(s.workload.0, s.workload.1);
    let mut rng_state = s.seed | 1;
    let mut next = move || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    // Working sets over workers in a seeded order, so a set's workers are spread.
    let mut order: Vec<usize> = (0..clients.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    let set_of = |worker: usize| workload.set_of_worker(order[worker]);
    let mut held: Held = HashMap::new();
    let subscribed_at = ms(2500);
    for (i, &c) in clients.iter().enumerate() {
        for tag in workload.set_tags(set_of(i)) {
            sim.input_at(c, Input::Subscribe(tag), subscribed_at);
            held.insert((c, tag), vec![(subscribed_at, None)]);
        }
    }
    let start = ms(5000);
    // Interest moving mid-stream.
    let mut changes = s.changes.clone();
    changes.sort_by_key(|c| c.0);
    for &(at, who, set, key, subscribe) in &changes {
        let client = clients[who % clients.len()];
        let tag = workload.tag(set % workload.sets, key % workload.keys_per_set);
        let at = start + ms(at);
        let spans = held.entry((client, tag)).or_default();
        let open = spans.last().is_some_and(|s| s.1.is_none());
        if subscribe && !open {
            spans.push((at, None));
            sim.input_at(client, Input::Subscribe(tag), at);
        } else if !subscribe && open {
            if let Some(last) = spans.last_mut() {
                last.1 = Some(at);
            }
            sim.input_at(client, Input::Unsubscribe(tag), at);
        }
    }
    // Writes: 200/s for 10 s, each from a worker to a key of its set.
    let mut writes: HashMap<(NodeId, u64), (KeyTag, Time)> = HashMap::new();
    let mut seqs: HashMap<NodeId, u64> = HashMap::new();
    for n in 0..2000u64 {
        let at = start + ms(5 * n);
        let worker = (next() % clients.len() as u64) as usize;
        let key = (next() % u64::from(workload.keys_per_set)) as u32;
        let tag = workload.tag(set_of(worker), key);
        let origin = clients[worker];
        let seq = seqs.entry(origin).or_insert(0);
        *seq += 1;
        writes.insert((origin, *seq), (tag, at));
        let payload = Bytes::from_static(b"w");
        sim.input_at(
            origin,
            Input::Publish {
                key_tag: tag,
                payload,
            },
            at,
        );
    }
    sim.run_until(start + ms(12_000));
    let mut got: HashMap<(NodeId, NodeId, u64), u32> = HashMap::new();
    for d in sim.take_deliveries() {
        if writes.contains_key(&(d.origin, d.origin_seq)) {
            *got.entry((d.receiver, d.origin, d.origin_seq)).or_insert(0) += 1;
        }
    }
    for (&(receiver, origin, seq), &copies) in &got {
        prop_assert_eq!(
            copies,
            1,
            "client {} got ({}, {}) {} times",
            receiver,
            origin,
            seq,
            copies
        );
    }
    let mut owed = 0;
    for (&(origin, seq), &(tag, at)) in &writes {
        for &c in clients.iter().filter(|&&c| c != origin) {
            if holds_through(&held, c, tag, at) {
                owed += 1;
                prop_assert!(
                    got.contains_key(&(c, origin, seq)),
                    "client {} wanted tag {:#x} around {:?} but missed ({}, {}); {} moves",
                    c,
                    tag,
                    at,
                    origin,
                    seq,
                    sim.reallocations()
                );
            }
        }
    }
    prop_assert!(owed > 0);
    Ok(sim.reallocations())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn nothing_owed_is_lost_while_interest_and_writers_move(s in scenario()) {
        run(&s)?;
    }
}

/// A run in which the root surely moves writers mid-stream.
#[test]
fn writers_moved_mid_stream_lose_nothing() {
    let s = Scenario {
        routers: 6,
        clients: 32,
        max_child_routers: 2,
        max_clients: 8,
        workload: (4, 2),
        reallocate: true,
        changes: Vec::new(),
        seed: 7,
    };
    let moves = run(&s).unwrap();
    assert!(moves > 0, "the root moved nobody: the property saw no move");
}
