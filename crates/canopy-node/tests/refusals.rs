//! Peers that overstep their certificate are refused at the message layer: the link is
//! closed with a reason and the node keeps serving everyone else.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use canopy_net::{CertRole, NetConfig, NetEndpoint, NetEvent};
use canopy_node::key_tag;
use canopy_node::local::{LocalCluster, LocalClusterSpec, ROOT_ID};
use canopy_proto::v1::{
    admin_request, raft_request, AdminRequest, ClusterStatusRequest, JoinRequest, RaftRequest,
    Role as WireRole,
};
use canopy_proto::{Body, ControlMessage};

fn join_request(node_id: u64, role: WireRole) -> ControlMessage {
    ControlMessage::new(Body::JoinRequest(JoinRequest {
        node_id,
        role: role as i32,
        region: "local".into(),
        address: String::new(),
        attempt: 0,
        subtree: None,
    }))
}

/// Sends `msg` to the root from a raw endpoint holding a `role` certificate for `id`, and
/// returns the reason the root gave for closing the link.
async fn refused_reason(
    cluster: &LocalCluster,
    id: u64,
    role: CertRole,
    msg: ControlMessage,
) -> String {
    let creds = cluster.credentials(id, role).unwrap();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let (endpoint, mut events) = NetEndpoint::bind(addr, creds, NetConfig::default()).unwrap();
    endpoint
        .send(ROOT_ID, Some(cluster.root_address()), msg)
        .unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Some(NetEvent::LinkClosed { peer, reason }) if peer == ROOT_ID => return reason,
                Some(_) => continue,
                None => return String::from("endpoint closed"),
            }
        }
    })
    .await
    .expect("the root should close the link");
    endpoint.shutdown().await;
    reason
}

/// The root still accepts a legitimate client and delivers to it.
async fn still_serves(cluster: &mut LocalCluster) {
    let tag = key_tag(cluster.name(), "k");
    let a = cluster.add_client(vec![tag]).await.unwrap();
    let b = cluster.add_client(vec![tag]).await.unwrap();
    let expected = cluster.statuses().await.len();
    cluster
        .wait_for_tree(expected, Duration::from_secs(30), |_, _| {})
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(a.handle.publish(tag, Bytes::from_static(b"x")).await);
    let d = cluster
        .next_delivery(Duration::from_secs(5))
        .await
        .expect("delivery");
    assert_eq!(
        (d.receiver, d.origin),
        (b.identity.node_id, a.identity.node_id)
    );
}

async fn root_refusals(cluster: &LocalCluster) -> u64 {
    let statuses = cluster.statuses().await;
    statuses
        .iter()
        .find(|s| s.id == ROOT_ID)
        .unwrap()
        .counters
        .refused
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_joining_as_a_router_is_refused() {
    let mut cluster = LocalCluster::start(LocalClusterSpec::default())
        .await
        .unwrap();
    let reason = refused_reason(
        &cluster,
        900,
        CertRole::Client,
        join_request(900, WireRole::Router),
    )
    .await;
    assert!(reason.contains("role"), "{reason}");
    assert_eq!(root_refusals(&cluster).await, 1);
    assert_eq!(
        cluster.check().await.unwrap().live_nodes,
        1,
        "nothing was placed"
    );
    still_serves(&mut cluster).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_under_another_nodes_id_is_refused() {
    let mut cluster = LocalCluster::start(LocalClusterSpec::default())
        .await
        .unwrap();
    let reason = refused_reason(
        &cluster,
        901,
        CertRole::Client,
        join_request(902, WireRole::Client),
    )
    .await;
    assert!(reason.contains("902") && reason.contains("901"), "{reason}");
    assert_eq!(root_refusals(&cluster).await, 1);
    still_serves(&mut cluster).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_certificate_sending_tree_traffic_is_refused() {
    let mut cluster = LocalCluster::start(LocalClusterSpec::default())
        .await
        .unwrap();
    let reason = refused_reason(
        &cluster,
        903,
        CertRole::Admin,
        join_request(903, WireRole::Client),
    )
    .await;
    assert!(reason.contains("admin"), "{reason}");
    still_serves(&mut cluster).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_root_candidates_take_part_in_raft_and_only_admins_ask_for_status() {
    let mut cluster = LocalCluster::start(LocalClusterSpec::default())
        .await
        .unwrap();
    let root = cluster
        .wait_for_root(Duration::from_secs(20))
        .await
        .unwrap();
    let term_before = cluster
        .node(root)
        .unwrap()
        .handle
        .group()
        .unwrap()
        .status()
        .await
        .term;
    // A router certificate asking for a vote (a term far ahead, to unseat the leader).
    let vote = ControlMessage::new(Body::RaftRequest(RaftRequest {
        request_id: 1,
        kind: raft_request::Kind::Vote as i32,
        body: Bytes::from_static(br#"{"vote":{"leader_id":{"term":99,"node_id":904},"committed":false},"last_log_id":null}"#),
        data: Bytes::new(),
    }));
    let reason = refused_reason(&cluster, 904, CertRole::Router, vote).await;
    assert!(reason.contains("raft_request"), "{reason}");
    let status = ControlMessage::new(Body::AdminRequest(AdminRequest {
        request_id: 1,
        command: Some(admin_request::Command::Status(ClusterStatusRequest {})),
    }));
    let reason = refused_reason(&cluster, 905, CertRole::Client, status).await;
    assert!(reason.contains("admin_request"), "{reason}");
    assert_eq!(root_refusals(&cluster).await, 2);
    let group = cluster.node(root).unwrap().handle.group().unwrap().clone();
    let after = group.status().await;
    assert_eq!(after.term, term_before, "the refused vote changed nothing");
    assert_eq!(after.leader, Some(root));
    still_serves(&mut cluster).await;
    cluster.shutdown().await;
}
