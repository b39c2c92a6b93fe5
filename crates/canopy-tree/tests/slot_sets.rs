//! Per-link slot sets under an insider: what one child does to the table's slot numbers
//! must not cost its siblings' links once it is gone.

mod common;

use canopy_tree::proto::v1::{Heartbeat, InterestDelta};
use canopy_tree::proto::Body;
use canopy_tree::{Input, KeyTag, NodeId, Role};
use common::*;

const HONEST_TAGS: u64 = 512;
const FLOOD: u64 = 16_000;

fn delta_from(net: &mut Net, child: NodeId, parent: NodeId, add: Vec<KeyTag>, remove: Vec<KeyTag>) {
    net.inject(
        child,
        parent,
        Body::Heartbeat(Heartbeat {
            sender_id: child,
            subtree: None,
            topology_epoch: net.node(parent).epoch(),
            interest: Some(InterestDelta { add, remove }),
            assignment_id: 0,
            root_id: 0,
        }),
    );
}

/// Bytes the parent keeps for honest client 101's link, after insider 100 (when `attack`)
/// took 16,000 slots while 101 subscribed, withdrew them all and left.
fn honest_link_bytes(attack: bool) -> (usize, usize) {
    let mut net = Net::new(config(), 3);
    net.join(100, Role::Client);
    net.join(101, Role::Client);
    net.advance(ms(200));
    let parent = net.parent(101).expect("attached");
    assert_eq!(net.parent(100), Some(parent));
    let flood: Vec<KeyTag> = (0..FLOOD).map(|i| 7_000_000 + i).collect();
    if attack {
        delta_from(&mut net, 100, parent, flood.clone(), vec![]);
        assert_eq!(
            net.node(parent).child_advertised(100, 7_000_000),
            Some(true)
        );
    }
    for t in 0..HONEST_TAGS {
        net.input(101, Input::Subscribe(9_000_000 + t));
    }
    net.advance(ms(200));
    if attack {
        delta_from(&mut net, 100, parent, vec![], flood);
        assert_eq!(
            net.node(parent).child_advertised(100, 7_000_000),
            Some(false)
        );
    }
    net.crash(100);
    net.advance(ms(500));
    assert!(!net.child_ids(parent).contains(&100));
    assert!((0..HONEST_TAGS)
        .all(|t| net.node(parent).child_advertised(101, 9_000_000 + t) == Some(true)));
    net.node(parent).child_interest_memory()
}

/// FINDING (adversarial review; fixed: the table renumbers its slots densely once most are
/// free, and every link's set follows): slots were never compacted, so an honest link kept
/// the wide numbers it got while an insider held the low ones, long after the insider left.
#[test]
fn an_insider_that_left_keeps_its_siblings_slot_sets_wide() {
    let (entries, control) = honest_link_bytes(false);
    let (entries_after, attacked) = honest_link_bytes(true);
    assert_eq!(entries, entries_after);
    let bits = |b: usize| b as f64 * 8.0 / entries as f64;
    eprintln!(
        "honest link, {entries} tags: {control} bytes ({:.1} bits/tag) without the insider, \
         {attacked} ({:.1} bits/tag) after it left",
        bits(control),
        bits(attacked)
    );
    assert!(
        attacked * 4 <= control * 5,
        "after the insider left, the honest link's set takes {attacked} bytes ({:.1} bits/tag), \
         not {control} ({:.1})",
        bits(attacked),
        bits(control)
    );
}
