//! Replicas wired by the in-test tree: delivery, tampering, loss, reordering, catch-up,
//! merge and persistence.

mod common;

use bytes::Bytes;
use canopy_kv::record::{seal_and_sign, RecordDraft};
use canopy_kv::{cert_digest, tag_of, Credentials, GroupKeys, KvError, Replica, ReplicaConfig};
use canopy_proto::v1::{kv_envelope, CatchupRequest, KvEnvelope, RecordBody};
use common::*;
use prost::Message;

const A: u64 = 1;
const B: u64 = 2;
const C: u64 = 3;

/// Runs the queue, keeping (and not delivering) the records published by `from`.
fn capture_records(net: &mut Net, from: u64) -> Vec<Msg> {
    let mut kept = Vec::new();
    net.run_with(|m, _| {
        if m.from == from && m.is_record() {
            if !kept.iter().any(|k: &Msg| k.payload == m.payload) {
                kept.push(m.clone());
            }
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    kept
}

fn forged(net: &Net, signer: u64, draft: RecordDraft<'_>) -> Msg {
    let creds = net
        .nodes
        .iter()
        .find(|n| n.id == signer)
        .expect("signer")
        .creds
        .clone();
    let (rec, _) = seal_and_sign(
        &draft,
        &keys(),
        creds.as_ref(),
        &canopy_kv::SystemEntropy::new(),
    )
    .expect("seal");
    let payload = KvEnvelope {
        body: Some(kv_envelope::Body::Record(rec)),
    }
    .encode_to_vec();
    Msg {
        from: draft.origin,
        origin: draft.origin,
        key_tag: draft.key_tag,
        payload: payload.into(),
    }
}

fn draft(
    net: &Net,
    signer: u64,
    origin: u64,
    tag_seq: u64,
    prev: &[u8],
    key: &str,
    value: &str,
) -> Msg {
    let creds = net
        .nodes
        .iter()
        .find(|n| n.id == signer)
        .expect("signer")
        .creds
        .clone();
    let d = RecordDraft {
        origin,
        key_tag: tag_of(&keys(), key),
        origin_seq: tag_seq,
        tag_seq,
        prev_hash: prev,
        body: RecordBody {
            key: key.into(),
            value: Bytes::copy_from_slice(value.as_bytes()),
            deleted: false,
            hlc: T0 << 16,
        },
        signer_digest: cert_digest(creds.certificate()),
        attach_certificate: true,
    };
    forged(net, signer, d)
}

#[test]
fn a_put_reaches_a_subscriber_once() {
    let mut net = Net::new(&[A, B]);
    net.subscribe(B, "chat/");
    net.run();
    net.put(A, "chat/hello", "world");
    net.run();
    let ch = net.changes(B);
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].key, "chat/hello");
    assert_eq!(ch[0].value.as_deref(), Some(&b"world"[..]));
    assert_eq!((ch[0].origin, ch[0].origin_seq), (A, 1));
    assert!(!ch[0].superseded);
    assert_eq!(net.value(B, "chat/hello").as_deref(), Some("world"));
    let c = net.node(B).counters();
    assert_eq!(c.applied, 1);
    assert_eq!(c.rejected(), 0, "{c:?}");
    // The writer replicates its channel: it subscribes the tree to it.
    let tag = tag_of(&keys(), "chat/hello");
    assert!(net.node(A).subscribed_tags().contains(&tag));
    assert_eq!(net.node(B).subscribed_tags(), vec![tag]);
}

#[test]
fn a_flipped_bit_anywhere_is_rejected_and_nothing_applies() {
    let mut net = Net::new(&[A, B]);
    net.subscribe(B, "chat/");
    net.run();
    net.put(A, "chat/k", "secret value");
    let rec = capture_records(&mut net, A).remove(0);
    for i in 0..rec.payload.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = rec.payload.to_vec();
            bad[i] ^= bit;
            let before = net.node(B).counters();
            let seen = before.rejected() + before.unknown_signer + before.parked;
            let now = net.now;
            let _ = net.node(B).on_multicast(A, rec.key_tag, &bad, now);
            let after = net.node(B).counters();
            assert_eq!(after.applied, 0, "byte {i} bit {bit:#x} applied");
            assert_eq!(
                after.rejected() + after.unknown_signer + after.parked,
                seen + 1,
                "byte {i} bit {bit:#x} not counted: {after:?}"
            );
            assert!(net.node(B).drain_changes().is_empty());
        }
    }
    // Catch-up requests the tampered copies provoked are not answered here.
    net.queue.clear();
    let c = net.node(B).counters();
    assert!(
        c.bad_signature > 0 && c.malformed > 0 && c.bad_certificate > 0,
        "{c:?}"
    );
    // The genuine record still applies, once.
    net.deliver_to(B, &rec);
    net.queue.clear();
    let ch = net.changes(B);
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].value.as_deref(), Some(&b"secret value"[..]));
    assert_eq!(net.node(B).counters().applied, 1);
}

#[test]
fn replays_are_ignored() {
    let mut net = Net::new(&[A, B]);
    net.subscribe(B, "chat/");
    net.run();
    net.put(A, "chat/k", "v");
    let rec = capture_records(&mut net, A).remove(0);
    net.deliver_to(B, &rec);
    net.deliver_to(B, &rec);
    net.deliver_to(B, &rec);
    assert_eq!(net.changes(B).len(), 1);
    let c = net.node(B).counters();
    assert_eq!((c.applied, c.replay), (1, 2), "{c:?}");
}

#[test]
fn a_rewritten_origin_or_tag_is_rejected() {
    let mut net = Net::new(&[A, B, C]);
    net.subscribe(B, "chat/");
    net.run();
    net.put(A, "chat/k", "v");
    let rec = capture_records(&mut net, A).remove(0);
    let mut moved = rec.clone();
    moved.origin = C;
    net.deliver_to(B, &moved);
    let mut retagged = rec.clone();
    retagged.key_tag ^= 1;
    let now = net.now;
    let _ = net
        .node(B)
        .on_multicast(A, retagged.key_tag, &retagged.payload, now);
    let c = net.node(B).counters();
    assert_eq!(
        (c.forged_origin, c.wrong_tag, c.applied),
        (1, 1, 0),
        "{c:?}"
    );
    net.deliver_to(B, &rec);
    assert_eq!(net.changes(B).len(), 1);
}

#[test]
fn a_record_signed_by_one_client_claiming_another_origin_is_rejected() {
    let mut net = Net::new(&[A, B, C]);
    net.subscribe(B, "chat/");
    net.run();
    // A signs a record that claims to come from C (and the multicast says C too).
    let msg = draft(&net, A, C, 1, &[], "chat/k", "from C, honest");
    net.deliver_to(B, &msg);
    let c = net.node(B).counters();
    assert_eq!((c.forged_origin, c.applied), (1, 0), "{c:?}");
    assert_eq!(net.value(B, "chat/k"), None);
}

#[test]
fn equivocation_and_broken_links_are_chain_breaks() {
    let mut net = Net::new(&[A, B]);
    net.subscribe(B, "chat/");
    net.run();
    net.put(A, "chat/a", "1");
    net.run();
    // A second, different record at A's position 1 (signed by A itself).
    let twin = draft(&net, A, A, 1, &[], "chat/a", "evil");
    net.deliver_to(B, &twin);
    // A record at position 2 that does not link to position 1.
    let unlinked = draft(&net, A, A, 2, &[9; 32], "chat/a", "evil");
    net.deliver_to(B, &unlinked);
    let c = net.node(B).counters();
    assert_eq!((c.chain_break, c.applied), (2, 1), "{c:?}");
    assert_eq!(net.value(B, "chat/a").as_deref(), Some("1"));
    // A's genuine record 2 still applies.
    net.queue.clear();
    net.put(A, "chat/a", "2");
    net.run();
    assert_eq!(net.value(B, "chat/a").as_deref(), Some("2"));
    assert_eq!(net.changes(B).len(), 2);
}

#[test]
fn reordered_records_apply_in_order_without_loss() {
    let mut net = Net::new(&[A, B]);
    net.subscribe(B, "chat/");
    net.run();
    net.put(A, "chat/first", "0");
    net.run();
    net.changes(B);
    for i in 1..=10 {
        net.put(A, "chat/k", &i.to_string());
    }
    let mut recs = capture_records(&mut net, A);
    recs.reverse();
    for r in &recs {
        net.deliver_to(B, r);
    }
    let ch = net.changes(B);
    let seqs: Vec<u64> = ch.iter().map(|c| c.origin_seq).collect();
    assert_eq!(seqs, (2..=11).collect::<Vec<_>>());
    assert_eq!(net.value(B, "chat/k").as_deref(), Some("10"));
    let c = net.node(B).counters();
    assert_eq!(
        (c.parked, c.unknown_signer, c.rejected()),
        (9, 0, 0),
        "{c:?}"
    );
    // Nothing left to ask for.
    net.tick(1_000);
    assert!(net.changes(B).is_empty());
}

#[test]
fn dropping_every_third_record_is_recovered_by_catch_up_exactly_once() {
    let mut net = Net::with(&[A, B], |_| {
        (
            ReplicaConfig {
                answer_max_records: 4,
                ..config()
            },
            keys(),
        )
    });
    net.subscribe(B, "chat/");
    net.run();
    for i in 0..30 {
        net.put(A, &format!("chat/{i:02}"), &format!("v{i}"));
    }
    let mut n = 0;
    net.run_with(|m, _| {
        if m.from == A && m.is_record() {
            n += 1;
            if n % 3 == 0 {
                return Fate::Drop;
            }
        }
        Fate::Deliver
    });
    assert_eq!(n, 30);
    let c = net.node(B).counters();
    assert_eq!(c.applied, 2, "gap after record 2: {c:?}");
    assert!(c.parked > 0);
    // After the reorder grace the gaps are asked for (answers of 4, follow-ups for `more`),
    // up to the answer rate limit per requester; the gap retry asks for the rest.
    net.tick(250);
    let c = net.node(B).counters();
    assert!(c.applied > 2 && c.applied < 29, "{c:?}");
    assert!(net.node(A).counters().rate_limited > 0);
    net.tick(2_000);
    let c = net.node(B).counters();
    assert_eq!(c.applied, 30, "{c:?}");
    assert_eq!(c.records_recovered, 10);
    assert_eq!(c.rejected() - c.duplicate, 0, "{c:?}");
    let mut keys_seen: Vec<String> = net.changes(B).into_iter().map(|c| c.key).collect();
    assert_eq!(keys_seen.len(), 30);
    keys_seen.sort();
    keys_seen.dedup();
    assert_eq!(keys_seen.len(), 30, "a change was reported twice");
    for i in 0..30 {
        assert_eq!(net.value(B, &format!("chat/{i:02}")), Some(format!("v{i}")));
    }
    let a = net.node(A).counters();
    assert!(
        a.catchup_requests_answered >= 3 && a.catchup_records_sent >= 10,
        "{a:?}"
    );
    // A lost last record has no successor to show the gap: the periodic safety net finds it.
    net.put(A, "chat/tail", "t");
    assert_eq!(capture_records(&mut net, A).len(), 1);
    net.tick(10_000);
    assert_eq!(net.value(B, "chat/tail"), None);
    net.tick(30_000);
    assert_eq!(net.value(B, "chat/tail").as_deref(), Some("t"));
    assert_eq!(net.changes(B).len(), 1);
}

#[test]
fn an_epoch_change_recovers_what_was_lost_during_a_failover() {
    let mut net = Net::new(&[A, B]);
    net.subscribe(B, "chat/");
    net.run();
    for i in 0..5 {
        net.put(A, "chat/k", &i.to_string());
    }
    let lost = capture_records(&mut net, A);
    assert_eq!(lost.len(), 5);
    let now = net.now;
    let out = net.node(B).on_epoch_change(now);
    assert_eq!(out.len(), 1);
    net.enqueue(B, out);
    net.run();
    let c = net.node(B).counters();
    assert_eq!((c.applied, c.records_recovered), (5, 5), "{c:?}");
    assert_eq!(net.changes(B).len(), 5);
    assert_eq!(net.value(B, "chat/k").as_deref(), Some("4"));
}

#[test]
fn an_unknown_signer_is_fetched_with_its_certificate() {
    let mut net = Net::new(&[A, B]);
    net.subscribe(B, "chat/");
    net.run();
    net.put(A, "chat/k", "1"); // carries A's certificate
    net.put(A, "chat/k", "2"); // does not
                               // B sees nothing of A (neither record 1 nor A's catch-up request with its certificate)
                               // but record 2.
    let mut recs = Vec::new();
    net.run_with(|m, _| {
        if m.from == A {
            recs.push(m.clone());
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    let recs: Vec<Msg> = recs.into_iter().filter(|m| m.is_record()).collect();
    net.deliver_to(B, &recs[1]);
    assert_eq!(net.node(B).counters().unknown_signer, 1);
    // The parked record triggered a catch-up request; its answer carries certificates.
    net.run();
    let c = net.node(B).counters();
    assert_eq!(c.applied, 2, "{c:?}");
    assert_eq!(net.changes(B).len(), 2);
    assert_eq!(net.value(B, "chat/k").as_deref(), Some("2"));
}

#[test]
fn another_nodes_unicast_cannot_be_opened() {
    let mut net = Net::new(&[A, B, C]);
    // C listens on B's unicast tag, and has a request of its own outstanding.
    net.eavesdrop.push((C, unicast_tag(B)));
    net.subscribe(C, "other/");
    let c_request = net
        .queue
        .iter()
        .find_map(|m| match m.envelope() {
            kv_envelope::Body::CatchupRequest(r) if m.from == C => Some(
                CatchupRequest::decode(r.request.as_ref())
                    .expect("request")
                    .request_id,
            ),
            _ => None,
        })
        .expect("C asked");
    net.run();
    for i in 0..3 {
        net.put(A, "chat/k", &i.to_string());
    }
    net.run();
    // B subscribes late: A answers with a unicast to B, which C also receives.
    net.subscribe(B, "chat/");
    let mut unicasts = Vec::new();
    net.run_with(|m, to| {
        if matches!(m.envelope(), kv_envelope::Body::Unicast(_)) && to == C {
            unicasts.push(m.clone());
        }
        Fate::Deliver
    });
    assert_eq!(net.changes(B).len(), 3);
    assert_eq!(unicasts.len(), 1);
    let c = net.node(C).counters();
    assert_eq!((c.bad_seal, c.applied), (1, 0), "{c:?}");
    // Readdressed to C under C's own outstanding request id: still cannot be opened.
    let kv_envelope::Body::Unicast(mut u) = unicasts[0].envelope() else {
        unreachable!()
    };
    u.to = C;
    u.request_id = c_request;
    let payload = KvEnvelope {
        body: Some(kv_envelope::Body::Unicast(u)),
    }
    .encode_to_vec();
    let now = net.now;
    let _ = net.node(C).on_multicast(A, unicast_tag(C), &payload, now);
    let c = net.node(C).counters();
    assert_eq!((c.bad_seal, c.applied), (2, 0), "{c:?}");
}

#[test]
fn an_unknown_data_key_is_counted_not_stored_and_recovered_after_the_key_update() {
    let both = || GroupKeys::from_parts([0x42; 32], [(1, [0x17; 32]), (2, [0x18; 32])]);
    let mut net = Net::with(&[A, B], move |id| {
        (config(), if id == A { both() } else { keys() })
    });
    net.subscribe(B, "chat/");
    net.run();
    net.put(A, "chat/k", "sealed with key 2");
    net.run();
    let c = net.node(B).counters();
    assert_eq!((c.unknown_key, c.applied), (1, 0), "{c:?}");
    assert_eq!(net.value(B, "chat/k"), None);
    // Catch-up before the update brings it again, refused again (it was not remembered).
    let now = net.now;
    let out = net.node(B).on_epoch_change(now);
    net.enqueue(B, out);
    net.run();
    assert_eq!(net.node(B).counters().unknown_key, 2);
    net.node(B).set_keys(both());
    // (Catch-up rounds are paced.)
    net.now += canopy_kv::ROUND_PACE_MS;
    let now = net.now;
    let out = net.node(B).on_epoch_change(now);
    net.enqueue(B, out);
    net.run();
    let c = net.node(B).counters();
    assert_eq!((c.applied, c.records_recovered), (1, 1), "{c:?}");
    assert_eq!(net.value(B, "chat/k").as_deref(), Some("sealed with key 2"));
    assert_eq!(net.changes(B).len(), 1);
}

#[test]
fn concurrent_writes_converge_by_clock_then_origin_in_either_order() {
    for a_first in [true, false] {
        let mut net = Net::new(&[A, B]);
        net.subscribe(A, "k/");
        net.subscribe(B, "k/");
        net.run();
        // Same millisecond, fresh clocks: equal hlc, the higher origin (B) wins.
        if a_first {
            net.put(A, "k/x", "a");
            net.put(B, "k/x", "b");
        } else {
            net.put(B, "k/x", "b");
            net.put(A, "k/x", "a");
        }
        net.run();
        assert_eq!(net.value(A, "k/x").as_deref(), Some("b"));
        assert_eq!(net.value(B, "k/x").as_deref(), Some("b"));
        let on_b: Vec<_> = net
            .changes(B)
            .into_iter()
            .filter(|c| c.origin == A)
            .collect();
        assert_eq!(on_b.len(), 1);
        assert!(on_b[0].superseded, "A's write lost on B");
        let on_a: Vec<_> = net
            .changes(A)
            .into_iter()
            .filter(|c| c.origin == B)
            .collect();
        assert!(!on_a[0].superseded);
        // A later clock wins over the higher origin.
        net.now += 5;
        net.put(A, "k/x", "a2");
        net.run();
        assert_eq!(net.value(A, "k/x").as_deref(), Some("a2"));
        assert_eq!(net.value(B, "k/x").as_deref(), Some("a2"));
    }
}

#[test]
fn deletes_are_tombstones_that_older_writes_do_not_resurrect() {
    let mut net = Net::new(&[A, B, C]);
    for n in [A, B, C] {
        net.subscribe(n, "k/");
    }
    net.run();
    net.put(A, "k/x", "1");
    net.put(A, "k/y", "keep");
    // C does not get A's writes yet.
    let mut held = Vec::new();
    net.run_with(|m, to| {
        if to == C && m.from == A && m.is_record() {
            held.push(m.clone());
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    assert_eq!(net.value(B, "k/x").as_deref(), Some("1"));
    net.now += 10;
    net.delete(B, "k/x");
    net.run();
    assert_eq!(net.value(A, "k/x"), None);
    assert_eq!(net.value(C, "k/x"), None);
    for m in &held {
        net.deliver_to(C, m);
    }
    net.queue.clear();
    assert_eq!(
        net.value(C, "k/x"),
        None,
        "an older put resurrected a deleted key"
    );
    let late: Vec<_> = net
        .changes(C)
        .into_iter()
        .filter(|c| c.key == "k/x" && c.origin == A)
        .collect();
    assert!(late[0].superseded);
    for n in [A, B, C] {
        let keys: Vec<String> = net
            .node(n)
            .scan("k/", 10)
            .expect("scan")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec!["k/y".to_string()]);
    }
    let deleted: Vec<_> = net
        .changes(B)
        .into_iter()
        .filter(|c| c.value.is_none())
        .collect();
    assert_eq!(deleted.len(), 1);
}

#[test]
fn a_reopened_replica_keeps_its_values_and_continues_its_chain() {
    let mut net = Net::new(&[A, B]);
    net.subscribe(B, "chat/");
    net.subscribe(A, "chat/");
    net.run();
    let mut last_hlc = 0;
    for i in 0..3 {
        last_hlc = net.put(A, "chat/k", &i.to_string());
    }
    net.put(B, "chat/b", "from b");
    net.run();
    let node = net.nodes.remove(0);
    let common::Node {
        id,
        replica,
        creds,
        dir,
    } = node;
    drop(replica);
    let replica = Replica::open(dir.path(), config(), creds.clone(), keys()).expect("reopen");
    assert_eq!(replica.subscribed_tags(), vec![tag_of(&keys(), "chat/")]);
    net.nodes.insert(
        0,
        common::Node {
            id,
            replica,
            creds,
            dir,
        },
    );
    assert_eq!(net.value(A, "chat/k").as_deref(), Some("2"));
    assert_eq!(net.value(A, "chat/b").as_deref(), Some("from b"));
    // The wall clock stepped back across the restart: the clock still moves forward.
    net.now -= 1_000;
    let now = net.now;
    let out = net
        .node(A)
        .put("chat/k", Bytes::from_static(b"3"), now)
        .expect("put");
    assert_eq!(out.origin_seq, 4);
    assert!(out.hlc > last_hlc);
    net.enqueue(A, out.publishes);
    net.run();
    let c = net.node(B).counters();
    assert_eq!((c.applied, c.chain_break, c.parked), (5, 0, 0), "{c:?}");
    assert_eq!(net.value(B, "chat/k").as_deref(), Some("3"));
}

#[test]
fn oversized_and_empty_keys_and_values_are_refused() {
    let mut net = Net::new(&[A]);
    let now = net.now;
    let r = net.node(A);
    assert!(matches!(
        r.put("", Bytes::new(), now),
        Err(KvError::EmptyKey)
    ));
    let long = "k".repeat(1025);
    assert!(matches!(
        r.put(&long, Bytes::new(), now),
        Err(KvError::KeyTooLarge {
            len: 1025,
            max: 1024
        })
    ));
    assert!(matches!(
        r.put("k", Bytes::from(vec![0; 64 * 1024 + 1]), now),
        Err(KvError::ValueTooLarge { .. })
    ));
    assert!(r.put("k", Bytes::from(vec![0; 64 * 1024]), now).is_ok());
    assert_eq!(r.counters().applied, 1);
}

#[test]
fn the_driver_is_told_when_to_tick() {
    let mut net = Net::new(&[A, B]);
    net.subscribe(B, "chat/");
    let wake = net.node(B).next_wake_ms().expect("wake");
    assert!(wake > net.now && wake <= net.now + 30_000, "{wake}");
    net.run();
    net.put(A, "chat/k", "1");
    net.put(A, "chat/k", "2");
    let recs = capture_records(&mut net, A);
    net.deliver_to(B, &recs[0]);
    net.queue.clear();
    let now = net.now;
    // Record 3 arrives without 2: a gap, asked for after the reorder grace.
    net.put(A, "chat/k", "3");
    let r3 = capture_records(&mut net, A).remove(0);
    net.deliver_to(B, &r3);
    assert_eq!(net.node(B).next_wake_ms(), Some(now + 200));
    net.tick(200);
    assert_eq!(net.value(B, "chat/k").as_deref(), Some("3"));
}
