//! Memory a hostile router (no certificate, no group key) makes a replica hold.
//! A record whose signer digest is unknown (and carries no certificate) is queued in full for
//! later, before any signature check: 1024 of them, each as large as a frame allows (1 MiB).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use bytes::Bytes;
use canopy_kv::tag_of;
use canopy_proto::v1::{kv_envelope, KvEnvelope, RecordHeader, SignedRecord};
use common::*;
use prost::Message;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const B: u64 = 2;
const FAKE_ORIGIN: u64 = 77;

fn junk(tag: u64, i: u64, body_len: usize) -> Vec<u8> {
    let mut digest = [0u8; 32];
    digest[..8].copy_from_slice(&i.to_be_bytes());
    let header = RecordHeader {
        origin: FAKE_ORIGIN,
        key_tag: tag,
        origin_seq: i + 1,
        tag_seq: 1,
        prev_hash: Bytes::new(),
        key_id: 1,
        nonce: Bytes::from_static(&[0; 12]),
        sealed_body: vec![0xAB; body_len].into(),
        signer_digest: Bytes::copy_from_slice(&digest),
    }
    .encode_to_vec();
    KvEnvelope {
        body: Some(kv_envelope::Body::Record(SignedRecord {
            header: header.into(),
            signature: vec![0; 64].into(),
            signer_certificate: Bytes::new(),
        })),
    }
    .encode_to_vec()
}

#[test]
fn router_junk_is_not_retained_unverified() {
    let mut net = Net::new(&[B]);
    net.subscribe(B, "chat/");
    net.run();
    let tag = tag_of(&keys(), "chat/x"); // routers see this tag on every record of the channel
    const BODY: usize = 64 * 1024; // 1 MiB frames allowed: 16x this in production
    let before = LIVE.load(Ordering::Relaxed);
    for i in 0..1024u64 {
        let payload = junk(tag, i, BODY);
        let now = net.now;
        let _ = net.node(B).on_multicast(FAKE_ORIGIN, tag, &payload, now);
    }
    net.queue.clear();
    let held = LIVE.load(Ordering::Relaxed) - before;
    let c = net.node(B).counters();
    assert!(
        held < 8 << 20,
        "a keyless router made the replica retain {} MiB of unverified junk ({} records queued \
         for an unknown signer; with 1 MiB frames this is ~1 GiB): {c:?}",
        held >> 20,
        c.unknown_signer
    );
}
