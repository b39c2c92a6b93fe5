//! Regression tests for the hardening rules (sizes, clocks, parking, catch-up answers).

mod common;

use bytes::Bytes;
use canopy_kv::ReplicaConfig;
use common::*;

const A: u64 = 1;
const B: u64 = 2;

#[test]
fn a_far_future_record_is_refused_not_stored_and_fetched_again_once_plausible() {
    let mut net = Net::new(&[A, B]);
    net.subscribe(B, "chat/");
    net.run();
    // A's clock runs two minutes ahead (beyond the 60 s drift allowed).
    let ahead = net.now + 120_000;
    let out = net
        .node(A)
        .put("chat/k", Bytes::from_static(b"early"), ahead)
        .expect("put");
    net.enqueue(A, out.publishes);
    net.run();
    let c = net.node(B).counters();
    assert_eq!((c.future_clock, c.applied), (1, 0), "{c:?}");
    assert_eq!(net.value(B, "chat/k"), None);
    // Once B's clock is within the drift, catch-up (the periodic safety net) brings it.
    for _ in 0..4 {
        net.tick(30_000);
    }
    assert_eq!(net.value(B, "chat/k").as_deref(), Some("early"));
    // (Refused again by any catch-up while still more than 60 s ahead.)
    let c = net.node(B).counters();
    assert_eq!((c.applied, c.records_recovered), (1, 1), "{c:?}");
}

#[test]
fn a_record_dropped_from_full_parking_keeps_its_gap_open() {
    let mut net = Net::with(&[A, B], |_| {
        (
            ReplicaConfig {
                max_parked: 0,
                ..config()
            },
            keys(),
        )
    });
    net.subscribe(B, "chat/");
    net.run();
    net.put(A, "chat/1", "1");
    net.put(A, "chat/2", "2");
    net.put(A, "chat/3", "3");
    let mut n = 0;
    net.run_with(|m, _| {
        if m.from == A && m.is_record() {
            n += 1;
            if n == 2 {
                return Fate::Drop;
            }
        }
        Fate::Deliver
    });
    let c = net.node(B).counters();
    assert_eq!((c.applied, c.parked, c.parked_dropped), (1, 0, 1), "{c:?}");
    // Nothing is parked, yet the gap is asked for after the reorder grace.
    net.tick(250);
    assert_eq!(net.value(B, "chat/3").as_deref(), Some("3"));
}

#[test]
fn an_answer_that_applies_nothing_new_draws_no_follow_up() {
    let mut net = Net::with(&[A, B, 3], |_| {
        (
            ReplicaConfig {
                answer_max_records: 2,
                ..config()
            },
            keys(),
        )
    });
    net.subscribe(3, "chat/");
    net.run();
    for i in 0..6 {
        net.put(A, &format!("chat/{i}"), "v");
    }
    net.run();
    // B subscribes late: A and 3 both hold everything; both may answer each request with
    // `more`, but only answers that bring something new draw a follow-up.
    net.subscribe(B, "chat/");
    net.run();
    for _ in 0..3 {
        net.tick(1_000);
    }
    let b = net.node(B).counters();
    assert_eq!(b.applied, 6, "{b:?}");
    // Both answer every request (fewer than 4 origins on the tag); of each pair only the first
    // applies records, so one request on subscribing and one follow-up per pair with `more`.
    assert_eq!(
        (b.catchup_answers_opened, b.catchup_requests_sent),
        (6, 3),
        "{b:?}"
    );
}
