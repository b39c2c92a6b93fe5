//! Root groups of three candidates on real QUIC endpoints: replication, leader failure,
//! restart from sled, and catch-up by snapshot.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use canopy_net::{NetConfig, NetEndpoint, NetEvent};
use canopy_proto::v1::raft_request::Kind;
use canopy_proto::v1::{RaftRequest, RaftResponse};
use canopy_proto::{Body, ControlMessage};
use canopy_raft::{ProposeError, MAX_BATCH_BYTES};
use canopy_tree::ViewChange;
use common::*;

#[test]
fn three_candidates_converge_on_one_view() {
    run(async {
        let mut cluster = Cluster::start(3, 1000).await;
        let leader = cluster.leader().await;
        let status = cluster.group(leader).status().await;
        assert_eq!(status.voters, vec![1, 2, 3]);
        assert_eq!(status.state, "Leader");
        assert_eq!(status.members.len(), 3);
        assert!(cluster.group(leader).leadership().borrow().is_leader);

        // Followers refuse and name the leader.
        let follower = cluster
            .ids
            .iter()
            .copied()
            .find(|id| *id != leader)
            .expect("follower");
        match cluster
            .group(follower)
            .propose(vec![new_root(follower)])
            .await
        {
            Err(ProposeError::NotLeader {
                leader: hint,
                address,
            }) => {
                assert_eq!(hint, Some(leader));
                assert_eq!(address, Some(cluster.addrs[&leader].to_string()));
            }
            other => panic!("a follower accepted a proposal: {other:?}"),
        }
        assert_eq!(
            cluster.group(follower).member_address(leader),
            Some(cluster.addrs[&leader].to_string())
        );

        cluster.propose(vec![new_root(leader)]).await;
        for node in 100..105 {
            cluster.propose(vec![assign(node, leader)]).await;
        }
        // One entry, many changes.
        let index = cluster
            .propose((105..110).map(|node| assign(node, 100)).collect())
            .await;
        let (_, want) = cluster.settled().await;
        assert_eq!(want.records.len(), 11);
        cluster.converge(&want).await;

        for id in cluster.ids.clone() {
            let status = cluster.group(id).status().await;
            assert!(status.applied_index >= Some(index), "{status:?}");
            assert_eq!(status.view_nodes, 11);
            assert_eq!(status.epoch, Some(want.epoch));
        }
        cluster.stop_all().await;
    });
}

#[test]
fn a_new_leader_takes_over_with_the_view() {
    run(async {
        let mut cluster = Cluster::start(3, 1000).await;
        let old = cluster.leader().await;
        cluster.propose(vec![new_root(old)]).await;
        for node in 100..106 {
            cluster.propose(vec![assign(node, old)]).await;
        }
        let (old, before) = cluster.settled().await;
        cluster.converge(&before).await;

        cluster.kill(old).await;
        let new = cluster.leader().await;
        assert_ne!(new, old);
        let group = cluster.group(new).clone();
        group.catch_up().await.expect("catch up");
        assert_eq!(group.view().map(|v| v.to_snapshot()), Some(before.clone()));

        // The new leader takes the root's place and goes on placing nodes.
        group.propose(vec![new_root(new)]).await.expect("new root");
        group.propose(vec![assign(200, new)]).await.expect("assign");
        let after = group.view().expect("view").to_snapshot();
        assert_eq!(after.root, new);
        assert_eq!(after.epoch, before.epoch + 1);
        assert_eq!(after.records.len(), before.records.len() + 1);
        cluster.converge(&after).await;

        let leadership = group.leadership().borrow().clone();
        assert!(leadership.is_leader && leadership.leader == Some(new));
        // RPCs to the dead candidate fail and are forgotten, they do not pile up.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            group.outstanding_rpcs() <= 4,
            "{}",
            group.outstanding_rpcs()
        );
        cluster.stop_all().await;
    });
}

#[test]
fn views_survive_a_restart_of_every_candidate() {
    run(async {
        // A snapshot every 5 entries: the view comes back from the snapshot plus the log.
        let mut cluster = Cluster::start(3, 5).await;
        let leader = cluster.leader().await;
        cluster.propose(vec![new_root(leader)]).await;
        for node in 100..112 {
            cluster.propose(vec![assign(node, leader)]).await;
        }
        let (leader, before) = cluster.settled().await;
        cluster.converge(&before).await;
        let index = cluster.group(leader).status().await.applied_index;
        // Every candidate has applied (and committed) everything before it stops.
        wait_for("commit everywhere", || {
            cluster
                .nodes
                .values()
                .all(|n| {
                    n.group
                        .raft()
                        .metrics()
                        .borrow()
                        .last_applied
                        .map(|l| l.index)
                        == index
                })
                .then_some(())
        })
        .await;
        cluster.stop_all().await;

        for id in cluster.ids.clone() {
            cluster.open(id).await;
            assert_eq!(cluster.snapshot(id), Some(before.clone()), "candidate {id}");
            // The stored snapshot is what the view was restored from (metrics lag a little).
            let raft = cluster.group(id).raft().clone();
            wait_for("the restored snapshot in the metrics", || {
                raft.metrics().borrow().snapshot.map(|s| s.index)
            })
            .await;
        }
        // The group carries on, at new addresses (whoever leads, the root is still the old one).
        cluster.propose(vec![assign(300, before.root)]).await;
        let (_, after) = cluster.settled().await;
        assert_eq!(after.records.len(), before.records.len() + 1);
        cluster.converge(&after).await;
        cluster.stop_all().await;
    });
}

#[test]
fn a_lagging_candidate_catches_up_by_snapshot() {
    run(async {
        let mut cluster = Cluster::start(3, 10).await;
        let leader = cluster.leader().await;
        let lagging = cluster
            .ids
            .iter()
            .copied()
            .find(|id| *id != leader)
            .expect("follower");
        cluster.propose(vec![new_root(leader)]).await;
        cluster.stop(lagging).await;

        for node in 100..160 {
            cluster.propose(vec![assign(node, leader)]).await;
        }
        // The leader has snapshotted and purged the log the lagging candidate would need.
        let leader = cluster.leader().await;
        let purged = wait_for("the leader to purge its log", || {
            let m = cluster.group(leader).raft().metrics().borrow().clone();
            m.purged.filter(|p| p.index > 40).map(|p| p.index)
        })
        .await;

        cluster.open(lagging).await;
        let (_, want) = cluster.settled().await;
        assert_eq!(want.records.len(), 61);
        cluster.converge(&want).await;
        let status = cluster.group(lagging).status().await;
        assert!(
            status.snapshot_index > Some(purged),
            "caught up without a snapshot: {status:?}"
        );

        // And it keeps up with what follows.
        cluster.propose(vec![assign(400, want.root)]).await;
        let (_, want) = cluster.settled().await;
        assert_eq!(want.records.len(), 62);
        cluster.converge(&want).await;
        cluster.stop_all().await;
    });
}

#[test]
fn bad_requests_get_an_error_answer() {
    run(async {
        let mut cluster = Cluster::start(3, 1000).await;
        let local = "127.0.0.1:0".parse().expect("addr");
        // A non-member's requests are not answered at all: its link is closed.
        let (outsider, mut outsider_events) =
            NetEndpoint::bind(local, cluster.credentials(9), NetConfig::default()).expect("bind");
        let request = RaftRequest {
            request_id: 1,
            kind: Kind::AppendEntries as i32,
            body: b"not cbor".to_vec().into(),
            data: Default::default(),
        };
        outsider
            .send(
                1,
                Some(cluster.addrs[&1]),
                ControlMessage::new(Body::RaftRequest(request)),
            )
            .expect("send");
        let reason = loop {
            let event = tokio::time::timeout(PATIENCE, outsider_events.recv())
                .await
                .expect("the link closes")
                .expect("events");
            if let NetEvent::LinkClosed { reason, .. } = event {
                break reason;
            }
        };
        assert!(reason.contains("not a member"), "{reason}");
        assert_eq!(cluster.group(1).refused_requests(), 1);
        outsider.shutdown().await;

        // A member's malformed requests get an error answer. (The probe speaks for candidate
        // 3, stopped first so that the two do not take each other's session.)
        cluster.stop(3).await;
        let (probe, mut events) =
            NetEndpoint::bind(local, cluster.credentials(3), NetConfig::default()).expect("bind");
        let requests = [
            (7, Kind::AppendEntries as i32, b"not cbor".to_vec()),
            (8, 42, b"{}".to_vec()),
            (9, Kind::Vote as i32, b"{\"vote\":1}".to_vec()),
            (10, Kind::InstallSnapshot as i32, Vec::new()),
            (
                11,
                Kind::InstallSnapshot as i32,
                snapshot_chunk_inside_body(3),
            ),
            // A chunk a terabyte in: openraft would grow its buffer to reach it.
            (
                12,
                Kind::InstallSnapshot as i32,
                snapshot_request(3, 1 << 40, "[]"),
            ),
        ];
        for (request_id, kind, body) in requests {
            let request = RaftRequest {
                request_id,
                kind,
                body: body.into(),
                data: if request_id == 12 {
                    vec![7; 16].into()
                } else {
                    Default::default()
                },
            };
            probe
                .send(
                    1,
                    Some(cluster.addrs[&1]),
                    ControlMessage::new(Body::RaftRequest(request)),
                )
                .expect("send");
        }
        let mut answered = BTreeSet::new();
        while answered.len() < 6 {
            let event = tokio::time::timeout(PATIENCE, events.recv())
                .await
                .expect("an answer")
                .expect("events");
            if let NetEvent::Message { from, msg } = event {
                if let Some(Body::RaftResponse(response)) = msg.body {
                    assert_eq!(from.node_id, 1);
                    assert!(!response.error.is_empty(), "{response:?}");
                    assert!(response.body.is_empty());
                    if response.request_id == 11 {
                        assert!(
                            response.error.contains("inside the body"),
                            "{}",
                            response.error
                        );
                    }
                    if response.request_id == 12 {
                        assert!(
                            response.error.contains("snapshot bound"),
                            "{}",
                            response.error
                        );
                    }
                    answered.insert(response.request_id);
                }
            }
        }
        assert_eq!(answered, BTreeSet::from([7, 8, 9, 10, 11, 12]));
        // A response nobody asked for completes nothing.
        let stray = RaftResponse {
            request_id: 1,
            body: b"{}".to_vec().into(),
            error: String::new(),
        };
        probe
            .send(1, None, ControlMessage::new(Body::RaftResponse(stray)))
            .expect("send");

        // The group is unharmed.
        let leader = cluster.leader().await;
        cluster.propose(vec![new_root(leader)]).await;
        let (_, want) = cluster.settled().await;
        cluster.converge(&want).await;
        probe.shutdown().await;
        cluster.stop_all().await;
    });
}

#[test]
fn large_batches_are_split_to_fit_frames() {
    run(async {
        let mut cluster = Cluster::start(3, 1000).await;
        let leader = cluster.leader().await;
        cluster.propose(vec![new_root(leader)]).await;

        let batch = |from: u64, n: u64| -> Vec<ViewChange> {
            (from..from + n)
                .map(|node| wide_assign(node, leader))
                .collect()
        };
        let size = |b: &Vec<ViewChange>| serde_json::to_vec(b).expect("json").len();
        let too_large = batch(1000, 1000);
        assert!(size(&too_large) > MAX_BATCH_BYTES);
        match cluster.group(leader).propose(too_large).await {
            Err(ProposeError::Other(e)) => assert!(e.contains("bytes"), "{e}"),
            other => panic!("an oversized batch was accepted: {other:?}"),
        }

        // Ten batches close to the limit: together more than one frame holds.
        let lagging = cluster
            .ids
            .iter()
            .copied()
            .find(|id| *id != leader)
            .expect("follower");
        cluster.stop(lagging).await;
        for i in 0..10 {
            let b = batch(1000 + i * 350, 350);
            assert!(size(&b) > MAX_BATCH_BYTES * 3 / 4 && size(&b) <= MAX_BATCH_BYTES);
            cluster.propose(b).await;
        }
        cluster.open(lagging).await;
        let (_, want) = cluster.settled().await;
        assert_eq!(want.records.len(), 3501);
        cluster.converge(&want).await;
        for id in cluster.ids.clone() {
            wait_for("no RPC left waiting", || {
                (cluster.group(id).outstanding_rpcs() <= 4).then_some(())
            })
            .await;
        }
        cluster.stop_all().await;
    });
}

#[test]
fn candidates_are_added_and_removed() {
    run(async {
        let mut cluster = Cluster::start(3, 1000).await;
        let leader = cluster.leader().await;
        cluster.propose(vec![new_root(leader)]).await;
        cluster.propose(vec![assign(100, leader)]).await;

        // A pristine fourth candidate joins through the leader only.
        cluster.open(4).await;
        let address = cluster.addrs[&4].to_string();
        let follower = cluster
            .ids
            .iter()
            .copied()
            .find(|id| *id != leader)
            .expect("follower");
        match cluster
            .group(follower)
            .add_candidate(4, address.clone())
            .await
        {
            Err(ProposeError::NotLeader { leader: hint, .. }) => assert_eq!(hint, Some(leader)),
            other => panic!("a follower changed the membership: {other:?}"),
        }
        cluster
            .group(leader)
            .add_candidate(4, address.clone())
            .await
            .expect("add candidate 4");
        let status = cluster.group(leader).status().await;
        assert_eq!(status.voters, vec![1, 2, 3, 4]);
        assert_eq!(cluster.group(leader).member_address(4), Some(address));
        let (_, want) = cluster.settled().await;
        cluster.converge(&want).await;

        // Removing it (twice: the second time it is no member, a no-op).
        cluster
            .group(leader)
            .remove_candidate(4)
            .await
            .expect("remove candidate 4");
        cluster
            .group(leader)
            .remove_candidate(4)
            .await
            .expect("remove a non-member");
        let status = cluster.group(leader).status().await;
        assert_eq!(status.voters, vec![1, 2, 3]);
        assert!(status.learners.is_empty() && !status.members.contains_key(&4));
        cluster.propose(vec![assign(101, leader)]).await;
        cluster.stop_all().await;
    });
}

#[test]
fn a_single_candidate_group_keeps_its_last_voter() {
    run(async {
        let mut cluster = Cluster::start(1, 1000).await;
        let leader = cluster.leader().await;
        assert_eq!(leader, 1);
        cluster.propose(vec![new_root(1)]).await;
        cluster.group(1).catch_up().await.expect("catch up");
        match cluster.group(1).remove_candidate(1).await {
            Err(ProposeError::Other(e)) => assert!(e.contains("last voter"), "{e}"),
            other => panic!("removed the last voter: {other:?}"),
        }
        assert_eq!(cluster.group(1).status().await.voters, vec![1]);
        cluster.stop_all().await;
    });
}

/// An InstallSnapshot in `from`'s own name whose chunk is inside the encoded request instead
/// of beside it.
fn snapshot_chunk_inside_body(from: u64) -> Vec<u8> {
    snapshot_request(from, 0, "[1,2,3]")
}

/// An InstallSnapshot request from `from` at `offset` with `data` (JSON) in its body.
fn snapshot_request(from: u64, offset: u64, data: &str) -> Vec<u8> {
    let json = format!(
        r#"{{"vote":{{"leader_id":{{"term":1,"node_id":{from}}},"committed":true}},"meta":{{"last_log_id":null,"last_membership":{{"log_id":null,"membership":{{"configs":[],"nodes":{{}}}}}},"snapshot_id":"x"}},"offset":{offset},"data":{data},"done":false}}"#
    );
    let value: serde_json::Value = serde_json::from_str(&json).expect("test JSON");
    canopy_raft::wire::encode(&value).expect("encodes")
}
