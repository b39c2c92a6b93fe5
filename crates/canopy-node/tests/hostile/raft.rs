//! Only the group's members speak Raft, and only in their own name.

use std::time::Duration;

use bytes::Bytes;
use canopy_net::CertRole;
use canopy_proto::v1::{raft_request, RaftRequest};
use canopy_proto::{Body, ControlMessage};
use canopy_tree::NodeId;

use crate::support::{Rogue, Tree};

/// An AppendEntries from `leader` at `term` with nothing in it: enough to make a follower
/// (or a leader of a lower term) accept `leader` as the leader.
fn append_entries(term: u64, leader: NodeId) -> ControlMessage {
    let body = format!(
        r#"{{"vote":{{"leader_id":{{"term":{term},"node_id":{leader}}},"committed":true}},"prev_log_id":null,"entries":[],"leader_commit":null}}"#
    );
    ControlMessage::new(Body::RaftRequest(RaftRequest {
        request_id: 1,
        kind: raft_request::Kind::AppendEntries as i32,
        body: crate::support::raft_body(&body),
        data: Bytes::new(),
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_from_non_members_and_impostors_is_refused() {
    let _serial = crate::support::serial().await;
    let mut tree = Tree::start(3, 1, 2).await;
    let leader = tree.root().await;
    let group = tree
        .cluster
        .node(leader)
        .unwrap()
        .handle
        .group()
        .unwrap()
        .clone();
    let term = group.status().await.term;
    let leader_addr = tree.address(leader);

    // A root-candidate certificate that is not a member: a higher term would end the
    // leader's reign.
    let mut outsider = Rogue::new(&tree, 960, CertRole::RootCandidate);
    for _ in 0..3 {
        outsider.send(leader, leader_addr, append_entries(term + 50, 960));
    }
    let reason = outsider.closed_by(leader, Duration::from_secs(10)).await;
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("not a member")),
        "{reason:?}"
    );

    // A member's certificate (a copy of a follower's) claiming to be the other follower.
    let followers: Vec<NodeId> = tree
        .cluster
        .candidates()
        .iter()
        .map(|c| c.id)
        .filter(|&id| id != leader)
        .collect();
    let mut impostor = Rogue::new(&tree, followers[0], CertRole::RootCandidate);
    impostor.send(leader, leader_addr, append_entries(term + 50, followers[1]));
    let reason = impostor.closed_by(leader, Duration::from_secs(10)).await;
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("claims to come from")),
        "{reason:?}"
    );
    impostor.shutdown().await;
    outsider.shutdown().await;

    assert!(
        group.refused_requests() >= 2,
        "{}",
        group.refused_requests()
    );
    let status = group.status().await;
    assert_eq!(status.term, term, "no forged term reached the leader");
    assert_eq!(tree.root().await, leader, "the leader still serves");
    tree.assert_whole_and_delivering().await;
    tree.shutdown().await;
}
