//! Second adversarial review: catch-up under many tags, answer amplification, epoch storms
//! and the HLC drift edge. Each test asserts what a sound replica must do.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use canopy_kv::record::{seal_and_sign, RecordDraft};
use canopy_kv::{cert_digest, tag_of, Credentials, SystemEntropy};
use canopy_proto::v1::{kv_envelope, KvEnvelope, RecordBody};
use common::*;
use prost::Message;

const A: u64 = 1;
const B: u64 = 2;

fn creds_of(net: &Net, id: u64) -> Arc<NodeCredentials> {
    net.nodes
        .iter()
        .find(|n| n.id == id)
        .expect("node")
        .creds
        .clone()
}

/// Two replicas share 100 channels; B misses A's only record on each. The periodic safety net
/// (and an epoch change) must bring them all, eventually. With more tags than
/// `MAX_OUTSTANDING` (64) the replica evicts its own requests within one round, and the
/// responder answers at most 4 requests a second per requester, the lowest tags first (the
/// ones evicted).
#[test]
fn more_than_64_tags_all_recover_through_periodic_catchup() {
    many_tags_recover(100);
}

/// Control: the same under `MAX_OUTSTANDING`.
#[test]
fn sixty_tags_all_recover_through_periodic_catchup() {
    many_tags_recover(60);
}

#[allow(non_snake_case)]
fn many_tags_recover(channels: usize) {
    let mut net = Net::new(&[A, B]);
    let CHANNELS: usize = channels;
    for i in 0..CHANNELS {
        let p = format!("c{i}/");
        net.subscribe(A, &p);
        net.subscribe(B, &p);
    }
    net.run();
    for i in 0..CHANNELS {
        net.put(A, &format!("c{i}/k"), "v");
    }
    // B loses every live record.
    net.run_with(|m, to| {
        if to == B && m.is_record() {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    let missing = |net: &mut Net| {
        (0..CHANNELS)
            .filter(|i| net.value(B, &format!("c{i}/k")).is_none())
            .count()
    };
    assert_eq!(missing(&mut net), CHANNELS);
    // A reattach of B...
    let now = net.now;
    let out = net.node(B).on_epoch_change(now);
    net.enqueue(B, out);
    net.run();
    let after_epoch = missing(&mut net);
    // ... then ten minutes of periodic catch-up (20 rounds of the 30 s safety net).
    for _ in 0..600 {
        net.tick(1_000);
    }
    let after_ten_minutes = missing(&mut net);
    let c = net.node(B).counters();
    eprintln!(
        "missing after epoch change: {after_epoch}, after 10 min: {after_ten_minutes}; \
         B bad_seal {}, requests sent {}, recovered {}; A rate_limited {}",
        c.bad_seal,
        c.catchup_requests_sent,
        c.records_recovered,
        net.node(A).counters().rate_limited
    );
    assert_eq!(
        after_ten_minutes, 0,
        "records still missing on B after 10 minutes of periodic catch-up"
    );
}

/// A channel with one writer and many readers (a config channel): one catch-up request of a
/// newcomer draws an answer from every replica holding the history (the "fewer than 4
/// origins" rule), each up to 256 records / 512 KiB: an amplification by the replica count,
/// which a hostile client (or a restart storm) can repeat 4 times a second per replica.
#[test]
fn one_request_on_a_read_heavy_channel_draws_answers_from_every_replica() {
    const READERS: u64 = 16;
    let mut ids: Vec<u64> = (1..=READERS + 1).collect();
    let newcomer = 100;
    ids.push(newcomer);
    let mut net = Net::new(&ids);
    for id in 1..=READERS + 1 {
        net.subscribe(id, "cfg/");
    }
    net.run();
    for i in 0..300 {
        net.put(1, &format!("cfg/k{i}"), &"x".repeat(200));
    }
    net.run();
    assert!(net.value(READERS + 1, "cfg/k299").is_some());
    // The newcomer subscribes: one request.
    let now = net.now;
    let s = net
        .node(newcomer)
        .subscribe("cfg/", now)
        .expect("subscribe");
    assert_eq!(s.publishes.len(), 1);
    let request = s.publishes[0].clone();
    // Deliver only that request and count the answers it draws.
    let mut answers = 0usize;
    let mut answer_bytes = 0usize;
    for id in 1..=READERS + 1 {
        let out = net
            .node(id)
            .on_multicast(newcomer, request.key_tag, &request.payload, now);
        for p in out {
            if let Some(kv_envelope::Body::Unicast(_)) = KvEnvelope::decode(p.payload.as_ref())
                .ok()
                .and_then(|e| e.body)
            {
                answers += 1;
                answer_bytes += p.payload.len();
            }
        }
    }
    eprintln!("one request drew {answers} answers, {answer_bytes} bytes");
    assert!(
        answers <= 4,
        "one catch-up request drew {answers} answers ({answer_bytes} bytes) from {} replicas",
        READERS + 1
    );
}

/// Topology changes come from the parent (a hostile router may raise the epoch on every
/// heartbeat). Each one makes the replica publish a signed request on every tag and take a
/// fresh outstanding slot, evicting the oldest — e.g. a follow-up of a long catch-up in
/// progress. Bursts of epoch changes must be coalesced.
#[test]
fn epoch_change_storm_is_throttled() {
    let mut net = Net::new(&[A, B]);
    for i in 0..8 {
        net.subscribe(B, &format!("c{i}/"));
    }
    net.run();
    let now = net.now;
    let before = net.node(B).counters().catchup_requests_sent;
    let mut published = 0;
    for i in 0..100 {
        published += net.node(B).on_epoch_change(now + i * 10).len();
    }
    let sent = net.node(B).counters().catchup_requests_sent - before;
    eprintln!("100 epoch changes in one second: {published} requests published ({sent} sent)");
    assert!(
        published <= 8 * 4,
        "100 epoch changes within a second published {published} catch-up requests on 8 tags"
    );
}

/// A record stamped just under the 60 s drift limit, with the logical counter at its top,
/// drags the honest writer's clock onto the limit: the honest writer's next records carry a
/// physical time 60 s ahead, and a replica whose clock is only slightly behind refuses them
/// (`future_clock`) — a hostile client degrades everyone else's writes.
#[test]
fn hlc_at_the_drift_edge_makes_honest_records_refused() {
    const M: u64 = 9;
    const C: u64 = 3;
    let mut net = Net::new(&[A, C, M]);
    net.subscribe(A, "k/");
    net.subscribe(C, "k/");
    net.subscribe(M, "k/");
    net.run();
    let now = net.now;
    let m = creds_of(&net, M);
    let edge = ((now + 59_999) << 16) | 0xFFFF;
    let d = RecordDraft {
        origin: M,
        key_tag: tag_of(&keys(), "k/x"),
        origin_seq: 1,
        tag_seq: 1,
        prev_hash: &[],
        body: RecordBody {
            key: "k/x".into(),
            value: Bytes::from_static(b"m"),
            deleted: false,
            hlc: edge,
        },
        signer_digest: cert_digest(m.certificate()),
        attach_certificate: true,
    };
    let (rec, _) = seal_and_sign(&d, &keys(), m.as_ref(), &SystemEntropy::new()).expect("seal");
    let payload: Bytes = KvEnvelope {
        body: Some(kv_envelope::Body::Record(rec)),
    }
    .encode_to_vec()
    .into();
    // A takes it (it is within the limit).
    net.node(A)
        .on_multicast(M, tag_of(&keys(), "k/x"), &payload, now);
    assert_eq!(net.node(A).counters().applied, 1);
    // A writes honestly; C's clock is 50 ms behind A's.
    let out = net
        .node(A)
        .put("k/y", Bytes::from_static(b"honest"), now)
        .expect("put");
    let hlc = out.hlc;
    eprintln!("honest write stamped {} ms ahead", (hlc >> 16) - now);
    for p in out.publishes {
        net.node(C).on_multicast(A, p.key_tag, &p.payload, now - 50);
    }
    let c = net.node(C).counters();
    assert_eq!(
        c.future_clock,
        0,
        "an honest write was refused as future_clock by a replica 50 ms behind (hlc {} ms ahead)",
        (hlc >> 16) - now
    );
}

/// An insider client sends one record at a position it never fills (here `u64::MAX`, also
/// tried at 5). Every replica on the tag keeps the gap open and asks for it every
/// `GAP_RETRY_MS` (2 s) forever, each request multicast to every replica of the tag: one
/// record buys N requests every 2 s, N² signature checks, for as long as the replicas run.
#[test]
fn a_gap_that_is_never_filled_is_not_asked_for_forever() {
    const M: u64 = 9;
    for seq in [u64::MAX, 5u64] {
        let mut net = Net::new(&[A, B, M]);
        net.subscribe(A, "g/");
        net.subscribe(B, "g/");
        net.run();
        let now = net.now;
        let m = creds_of(&net, M);
        let d = RecordDraft {
            origin: M,
            key_tag: tag_of(&keys(), "g/x"),
            origin_seq: seq,
            tag_seq: seq,
            prev_hash: &[1u8; 32],
            body: RecordBody {
                key: "g/x".into(),
                value: Bytes::from_static(b"m"),
                deleted: false,
                hlc: now << 16,
            },
            signer_digest: cert_digest(m.certificate()),
            attach_certificate: true,
        };
        let (rec, _) = seal_and_sign(&d, &keys(), m.as_ref(), &SystemEntropy::new()).expect("seal");
        let payload: Bytes = KvEnvelope {
            body: Some(kv_envelope::Body::Record(rec)),
        }
        .encode_to_vec()
        .into();
        for id in [A, B] {
            let out = net
                .node(id)
                .on_multicast(M, tag_of(&keys(), "g/x"), &payload, now);
            net.enqueue(id, out);
        }
        net.run();
        let before = net.node(A).counters().catchup_requests_sent;
        // Ten minutes.
        for _ in 0..600 {
            net.tick(1_000);
        }
        let sent = net.node(A).counters().catchup_requests_sent - before;
        eprintln!("tag_seq {seq}: A sent {sent} catch-up requests in 10 minutes");
        // The periodic safety net alone is about 20 in ten minutes.
        assert!(
            sent <= 40,
            "one never-filled gap (tag_seq {seq}) made A send {sent} requests in 10 minutes"
        );
    }
}
