//! Interest snapshots too large for one message go up in chunks.

mod common;

use canopy_tree::proto::Body;
use canopy_tree::{Input, NodeId, Role};
use common::*;

const CHUNK: usize = 64;
const TAGS: u64 = 300;

fn chunked_config() -> canopy_tree::TreeConfig {
    let mut config = config();
    config.limits.max_tags_per_delta = CHUNK;
    config
}

/// Root 1, routers 10 and 11, client 100 under one of them with `TAGS` subscriptions.
fn tree() -> (Net, NodeId) {
    let mut net = Net::new(chunked_config(), 1);
    net.join(10, Role::Router);
    net.join(11, Role::Router);
    net.join(100, Role::Client);
    net.join(101, Role::Client);
    for tag in 1..=TAGS {
        net.input(100, Input::Subscribe(1000 + tag));
    }
    net.advance(ms(500));
    let parent = net.parent(100).expect("attached");
    for tag in 1..=TAGS {
        assert_eq!(
            net.node(parent).child_advertised(100, 1000 + tag),
            Some(true)
        );
    }
    (net, parent)
}

#[test]
fn a_snapshot_larger_than_a_chunk_reattaches_whole_in_chunks() {
    let (mut net, old_parent) = tree();
    let mark = net.log.len();
    // The parent dies: the client rejoins and is placed under the other router.
    net.crash(old_parent);
    net.advance(net.config.parent_timeout + ms(1000));
    let parent = net.parent(100).expect("reattached");
    assert_ne!(parent, old_parent);
    let sizes: Vec<(usize, bool)> = net.log[mark..]
        .iter()
        .filter(|s| s.from == 100 && s.to == parent)
        .filter_map(|s| match s.body() {
            Body::Reattach(r) => r.interest.as_ref().map(|i| (i.tags.len(), i.more)),
            Body::InterestSnapshot(i) => Some((i.tags.len(), i.more)),
            _ => None,
        })
        .collect();
    // 300 subscriptions and the node's own tag, 64 at a time: 5 messages, the last final.
    assert_eq!(sizes.len(), 5, "{sizes:?}");
    assert!(sizes.iter().all(|&(n, _)| n <= CHUNK), "{sizes:?}");
    assert_eq!(
        sizes.iter().map(|&(n, _)| n).sum::<usize>(),
        TAGS as usize + 1
    );
    assert_eq!(
        sizes.iter().map(|&(_, more)| more).collect::<Vec<_>>(),
        vec![true, true, true, true, false]
    );
    for tag in 1..=TAGS {
        assert_eq!(
            net.node(parent).child_advertised(100, 1000 + tag),
            Some(true),
            "tag {tag}"
        );
    }
    // A multicast to the last tag reaches the client through its new parent.
    net.delivered.clear();
    net.input(
        101,
        Input::Publish {
            key_tag: 1000 + TAGS,
            payload: bytes::Bytes::from_static(b"x"),
        },
    );
    net.run();
    assert!(net.delivered.iter().any(|(to, _)| *to == 100));
}

#[test]
fn the_last_chunk_replaces_what_the_link_had() {
    let (mut net, parent) = tree();
    // The child unsubscribes from most tags and its parent gets a chunked snapshot of the
    // rest (as after a re-placement): tags it no longer wants are gone at the end.
    let keep: Vec<u64> = (1..=100).map(|t| 1000 + t).collect();
    let chunks: Vec<&[u64]> = keep.chunks(CHUNK).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let more = i + 1 < chunks.len();
        let body = Body::InterestSnapshot(canopy_tree::proto::v1::InterestSnapshot {
            tags: chunk.to_vec(),
            more,
        });
        net.inject(100, parent, body);
        if more {
            // Until the last chunk, nothing the link had is dropped.
            assert_eq!(
                net.node(parent).child_advertised(100, 1000 + TAGS),
                Some(true)
            );
        }
    }
    assert_eq!(
        net.node(parent).child_advertised(100, 1000 + TAGS),
        Some(false)
    );
    assert_eq!(net.node(parent).child_advertised(100, 1001), Some(true));
}

#[test]
fn chunks_adding_up_to_more_than_the_link_bound_evict_the_child() {
    let (mut net, parent) = tree();
    let bound = net.config.limits.max_tags_per_client_link as u64;
    let mut next = 50_000u64;
    let mut evicted = false;
    for _ in 0..(bound as usize / CHUNK + 2) {
        let tags: Vec<u64> = (next..next + CHUNK as u64).collect();
        next += CHUNK as u64;
        let body =
            Body::InterestSnapshot(canopy_tree::proto::v1::InterestSnapshot { tags, more: true });
        let out = net.inject(100, parent, body);
        if out
            .iter()
            .any(|o| matches!(o, canopy_tree::Output::CloseLink { peer: 100, .. }))
        {
            evicted = true;
            break;
        }
    }
    assert!(evicted, "a never-ending snapshot was accepted");
    assert_eq!(net.node(parent).child_advertised(100, 1001), None);
}
