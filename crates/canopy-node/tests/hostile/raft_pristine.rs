//! A candidate that knows no membership yet (about to be added to a running group) hears
//! Raft only from the configured candidates: a root-candidate certificate that is no member
//! cannot capture it with a high term.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use canopy_net::{CertRole, NetEndpoint};
use canopy_node::local::fast_tree_config;
use canopy_node::{limits::PeerLimits, spawn_candidate};
use canopy_proto::v1::{raft_request, RaftRequest};
use canopy_proto::{Body, ControlMessage};
use canopy_raft::{GroupConfig, RootGroup};

use crate::support::{Rogue, Tree};

const NEW_CANDIDATE: u64 = 60;
const STRANGER: u64 = 990;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_cannot_capture_a_pristine_candidate() {
    let _serial = crate::support::serial().await;
    let tree = Tree::start(1, 0, 0).await;

    // A new candidate, about to be added to the running group: opened, not bootstrapped.
    let creds = tree
        .cluster
        .credentials(NEW_CANDIDATE, CertRole::RootCandidate)
        .unwrap();
    let (endpoint, events) = NetEndpoint::bind(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        creds,
        Default::default(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let group = RootGroup::open(
        GroupConfig::new(NEW_CANDIDATE, dir.path()),
        endpoint.clone(),
    )
    .await
    .unwrap();
    let addr = endpoint.local_addr();
    let (handle, _deliveries) = spawn_candidate(
        endpoint,
        events,
        fast_tree_config(),
        tree.cluster.candidates().to_vec(),
        7,
        group.clone(),
        PeerLimits::default(),
    )
    .unwrap();

    // A root-candidate certificate that is no member of anything sends an AppendEntries in
    // its own name (so the impostor check passes) at term 5000.
    let stranger = Rogue::new(&tree, STRANGER, CertRole::RootCandidate);
    let body = format!(
        r#"{{"vote":{{"leader_id":{{"term":5000,"node_id":{STRANGER}}},"committed":true}},"prev_log_id":null,"entries":[],"leader_commit":null}}"#
    );
    stranger.send(
        NEW_CANDIDATE,
        addr,
        ControlMessage::new(Body::RaftRequest(RaftRequest {
            request_id: 1,
            kind: raft_request::Kind::AppendEntries as i32,
            body: crate::support::raft_body(&body),
            data: Bytes::new(),
        })),
    );
    let mut stranger = stranger;
    let reason = stranger
        .closed_by(NEW_CANDIDATE, Duration::from_secs(10))
        .await;
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("not a member")),
        "{reason:?}"
    );
    let status = group.status().await;
    assert_eq!(group.refused_requests(), 1);
    assert!(status.term < 5000, "the stranger's term was not taken");
    assert_ne!(status.leader, Some(STRANGER));
    stranger.shutdown().await;
    handle.shutdown().await;
    tree.shutdown().await;
}
