//! Fuzzing the state machine: random frames (valid and garbage) and random message
//! sequences from random peers never panic a node, and its invariants hold after every
//! input.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use canopy_proto::v1;
use canopy_proto::{Body, ControlMessage, FrameCodec};
use canopy_tree::{node_tag, Input, Node, NodeId, Output, Role, RootCandidate, TreeConfig};
use proptest::prelude::*;

const ME: NodeId = 7;
const ROOT: NodeId = 1;
const PEERS: [NodeId; 6] = [ROOT, 2, 3, 7, 8, 9];

/// The root's grant for a placement, issued at time zero (fresh for the whole run).
fn grant(child: NodeId, parent: NodeId, assignment_id: u64) -> v1::SignedPlacement {
    canopy_tree::placement_grant(
        ROOT,
        child,
        parent,
        String::new(),
        assignment_id,
        Duration::ZERO,
    )
}

fn peer() -> impl Strategy<Value = NodeId> {
    prop::sample::select(&PEERS[..])
}

fn role() -> impl Strategy<Value = i32> {
    0i32..5
}

fn tags() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(
        prop::sample::select(&[0u64, 1, 0xAB, 0xCD, u64::MAX][..]),
        0..4,
    )
}

fn subtree() -> impl Strategy<Value = Option<v1::SubtreeSize>> {
    prop::option::of(
        (0u64..1000, 0u64..100).prop_map(|(clients, routers)| v1::SubtreeSize { clients, routers }),
    )
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (peer(), role(), 0u32..3, subtree()).prop_map(|(node_id, role, attempt, subtree)| {
            Body::JoinRequest(v1::JoinRequest {
                node_id,
                role,
                region: String::new(),
                address: String::new(),
                attempt,
                subtree,
            })
        }),
        peer().prop_map(|leader_hint| Body::NotLeader(v1::NotLeader {
            leader_hint,
            leader_address: String::new(),
        })),
        (peer(), peer(), 0u64..6, 0u64..4).prop_map(
            |(child_id, parent_id, assignment_id, epoch)| {
                Body::AssignParent(v1::AssignParent {
                    child_id,
                    parent_id,
                    parent_address: String::new(),
                    assignment_id,
                    topology_epoch: epoch,
                    grant: Some(grant(child_id, parent_id, assignment_id)),
                })
            }
        ),
        (peer(), role(), 0u64..6).prop_map(|(child_id, role, assignment_id)| {
            Body::AdoptChild(v1::AdoptChild {
                child_id,
                role,
                region: String::new(),
                address: String::new(),
                assignment_id,
                grant: Some(grant(child_id, ME, assignment_id)),
            })
        }),
        (peer(), role(), 0u64..6, subtree(), tags(), any::<bool>()).prop_map(
            |(node_id, role, assignment_id, subtree, tags, more)| {
                Body::Reattach(v1::Reattach {
                    node_id,
                    role,
                    assignment_id,
                    subtree,
                    interest: Some(v1::InterestSnapshot { tags, more }),
                })
            }
        ),
        (peer(), subtree(), 0u64..4, tags(), tags(), 0u64..6).prop_map(
            |(sender_id, subtree, topology_epoch, add, remove, assignment_id)| {
                Body::Heartbeat(v1::Heartbeat {
                    sender_id,
                    subtree,
                    topology_epoch,
                    interest: Some(v1::InterestDelta { add, remove }),
                    assignment_id,
                    root_id: 0,
                })
            }
        ),
        (tags(), any::<bool>())
            .prop_map(|(tags, more)| Body::InterestSnapshot(v1::InterestSnapshot { tags, more })),
        (0u64..20).prop_map(|count| Body::Cull(v1::Cull { count })),
        (peer(), 0i32..6, any::<bool>()).prop_map(|(sender_id, reason, rejoin)| {
            Body::Disconnect(v1::Disconnect {
                sender_id,
                reason,
                rejoin,
            })
        }),
        (peer(), peer(), 0u64..6).prop_map(|(parent_id, child_id, assignment_id)| {
            Body::ChildRemoved(v1::ChildRemoved {
                parent_id,
                child_id,
                assignment_id,
            })
        }),
        (peer(), prop::sample::select(vec![0u64, 0xAB, node_tag(ME)]),).prop_map(
            |(origin, key_tag)| {
                Body::Multicast(v1::Multicast {
                    origin,
                    key_tag,
                    origin_seq: 1,
                    key_seq: 1,
                    payload: Bytes::from_static(b"x"),
                })
            }
        ),
    ]
}

#[derive(Debug, Clone)]
enum Step {
    Message(NodeId, Body),
    Garbage(NodeId, Vec<u8>),
    Tick(u64),
    Subscribe(u64),
    Unsubscribe(u64),
    Publish(u64),
    LinkClosed(NodeId),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (peer(), body()).prop_map(|(from, body)| Step::Message(from, body)),
        1 => (peer(), prop::collection::vec(any::<u8>(), 0..64)).prop_map(|(f, b)| Step::Garbage(f, b)),
        3 => (0u64..3000).prop_map(Step::Tick),
        1 => prop::sample::select(vec![0xABu64, 0xCD, node_tag(ME)]).prop_map(Step::Subscribe),
        1 => prop::sample::select(vec![0xABu64, 0xCD, node_tag(ME)]).prop_map(Step::Unsubscribe),
        1 => prop::sample::select(&[0u64, 0xAB][..]).prop_map(Step::Publish),
        1 => peer().prop_map(Step::LinkClosed),
    ]
}

fn check_invariants(node: &Node, outputs: &[Output]) -> Result<(), TestCaseError> {
    let id = node.id();
    prop_assert_ne!(node.parent(), Some(id), "a node is its own parent");
    prop_assert!(
        node.children().all(|c| c.id != id),
        "a node is its own child"
    );
    if let Some(parent) = node.parent() {
        prop_assert!(
            node.children().all(|c| c.id != parent),
            "parent is also a child"
        );
    }
    if node.role() == Role::Root {
        prop_assert_eq!(node.parent(), None);
    }
    if node.role() == Role::Client {
        prop_assert_eq!(node.child_count(), 0, "a client adopted a child");
    }
    prop_assert!(node.interest().subtree_wants(node_tag(id)), "own tag lost");
    for output in outputs {
        match output {
            Output::Send { to, .. } => prop_assert_ne!(*to, id, "sent to itself"),
            Output::Deliver(m) => prop_assert_ne!(m.origin, id, "delivered own publish"),
            _ => {}
        }
    }
    if let Some(view) = node.view() {
        prop_assert!(view.get(view.root()).is_some());
        for (entry_id, entry) in view.iter() {
            if let Some(parent) = entry.parent {
                let p = view.get(parent);
                prop_assert!(
                    p.is_some(),
                    "view parent {} of {} missing",
                    parent,
                    entry_id
                );
                prop_assert!(p.is_some_and(|p| p.children().any(|c| c == entry_id)));
                prop_assert!(!view.is_ancestor_or_self(entry_id, parent), "cycle in view");
            }
            for child in entry.children() {
                prop_assert_eq!(view.get(child).and_then(|c| c.parent), Some(entry_id));
            }
        }
    }
    Ok(())
}

fn run(role: Role, attach: bool, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let config = Arc::new(TreeConfig {
        heartbeat_interval: Duration::from_millis(100),
        child_timeout: Duration::from_millis(350),
        parent_timeout: Duration::from_millis(350),
        join_timeout: Duration::from_millis(200),
        rebalance_interval: Duration::from_millis(500),
        orphan_grace: Duration::from_millis(800),
        ..TreeConfig::default()
    });
    let id = if role == Role::Root { ROOT } else { ME };
    let roots: Arc<[RootCandidate]> = Arc::from(vec![RootCandidate {
        id: ROOT,
        address: String::new(),
    }]);
    let mut node = Node::new(id, role, "", "", config, roots, 99);
    let mut now = Duration::ZERO;
    let out = node.handle(Input::Start, now);
    check_invariants(&node, &out)?;
    if attach && role != Role::Root {
        let assign = Body::AssignParent(v1::AssignParent {
            child_id: ME,
            parent_id: 2,
            parent_address: String::new(),
            assignment_id: 1,
            topology_epoch: 1,
            grant: Some(grant(ME, 2, 1)),
        });
        let msg = ControlMessage::new(assign);
        let out = node.handle(Input::Message { from: 2, msg }, now);
        check_invariants(&node, &out)?;
        prop_assert_eq!(node.parent(), Some(2));
    }
    let codec = FrameCodec::new(256);
    for step in steps {
        let input = match step {
            Step::Message(from, body) => Input::Message {
                from,
                msg: ControlMessage::new(body),
            },
            Step::Garbage(from, bytes) => {
                let mut buf = BytesMut::from(&bytes[..]);
                match codec.decode_from(&mut buf) {
                    Ok(Some(msg)) => Input::Message { from, msg },
                    _ => continue,
                }
            }
            Step::Tick(advance) => {
                now += Duration::from_millis(advance);
                Input::Tick
            }
            Step::Subscribe(tag) => Input::Subscribe(tag),
            Step::Unsubscribe(tag) => Input::Unsubscribe(tag),
            Step::Publish(tag) => Input::Publish {
                key_tag: tag,
                payload: Bytes::from_static(b"p"),
            },
            Step::LinkClosed(peer) => Input::LinkClosed { peer },
        };
        let out = node.handle(input, now);
        check_invariants(&node, &out)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_inputs_never_break_a_root(steps in prop::collection::vec(step(), 0..80)) {
        run(Role::Root, false, steps)?;
    }

    #[test]
    fn random_inputs_never_break_a_router(attach: bool, steps in prop::collection::vec(step(), 0..80)) {
        run(Role::Router, attach, steps)?;
    }

    #[test]
    fn random_inputs_never_break_a_client(attach: bool, steps in prop::collection::vec(step(), 0..80)) {
        run(Role::Client, attach, steps)?;
    }
}
