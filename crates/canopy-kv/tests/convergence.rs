//! Property: any delivery order, with duplicates, of a set of records from several origins
//! converges to the same values and reports every record exactly once.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;

const ORIGINS: [u64; 3] = [1, 2, 3];
const RECEIVER: u64 = 9;

fn build() -> (Vec<Msg>, BTreeMap<String, Option<String>>, Net) {
    let mut ids = ORIGINS.to_vec();
    ids.push(RECEIVER);
    let mut net = Net::new(&ids);
    net.subscribe(RECEIVER, "p/");
    for o in ORIGINS {
        net.subscribe(o, "p/");
    }
    net.run();
    for step in 0..12u64 {
        let o = ORIGINS[(step % 3) as usize];
        net.now += step % 2; // some writes in the same millisecond
        let key = format!("p/{}", step % 4);
        if step % 5 == 4 {
            net.delete(o, &key);
        } else {
            net.put(o, &key, &format!("{o}-{step}"));
        }
    }
    let records: Vec<Msg> = net
        .queue
        .iter()
        .filter(|m| m.is_record())
        .cloned()
        .collect();
    // Writers exchange everything; the receiver gets nothing yet.
    net.run_with(|_, to| {
        if to == RECEIVER {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    let mut expected = BTreeMap::new();
    for k in 0..4 {
        let key = format!("p/{k}");
        let v = net.value(1, &key);
        for o in ORIGINS {
            assert_eq!(net.value(o, &key), v, "writers disagree on {key}");
        }
        expected.insert(key, v);
    }
    (records, expected, net)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_order_with_duplicates_converges_and_reports_each_record_once(
        order in Just((0..12usize).collect::<Vec<_>>()).prop_shuffle(),
        dups in proptest::collection::vec(0..12usize, 0..8),
    ) {
        let (records, expected, mut net) = build();
        prop_assert_eq!(records.len(), 12);
        let mut sequence: Vec<usize> = order;
        for (i, d) in dups.iter().enumerate() {
            sequence.insert((i * 5) % (sequence.len() + 1), *d);
        }
        for i in sequence {
            net.deliver_to(RECEIVER, &records[i]);
        }
        // Catch-up requests provoked along the way (unknown signers) are answered too.
        net.run();
        net.tick(1_000);
        for (key, v) in &expected {
            prop_assert_eq!(&net.value(RECEIVER, key), v);
        }
        let changes = net.changes(RECEIVER);
        let mut ids: Vec<(u64, u64)> = changes.iter().map(|c| (c.origin, c.origin_seq)).collect();
        prop_assert_eq!(ids.len(), 12);
        ids.sort_unstable();
        ids.dedup();
        prop_assert_eq!(ids.len(), 12, "a record was reported twice");
        let c = net.node(RECEIVER).counters();
        prop_assert_eq!(c.applied, 12);
        prop_assert_eq!(c.bad_signature + c.bad_seal + c.chain_break + c.malformed, 0);
    }
}
