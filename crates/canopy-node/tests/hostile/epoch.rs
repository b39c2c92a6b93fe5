//! A router the root placed can tell its children any topology epoch while it is their
//! parent (it can as well drop their traffic), but not for good: a placed node takes its
//! epoch from the root's signed grant, and a fresh join forgets what a parent claimed.

use std::time::Duration;

use canopy_net::{CertRole, NetEvent};
use canopy_proto::prost::Message;
use canopy_proto::v1::{AssignParent, Heartbeat, Placement};
use canopy_proto::{Body, ControlMessage};
use canopy_tree::NodeId;

use crate::support::{Rogue, Tree, SETTLE};

const ROGUE: NodeId = 970;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_former_parent_cannot_poison_the_epoch_for_good() {
    let _serial = crate::support::serial().await;
    let mut tree = Tree::start(1, 1, 1).await;
    let root = tree.root().await;
    let honest_router = tree.routers[0].identity.node_id;

    // The rogue joins as an ordinary router and attaches under the root.
    let mut rogue = Rogue::new(&tree, ROGUE, CertRole::Router);
    let (parent, parent_addr) = rogue.get_placed(&tree).await;
    rogue.attach(parent, parent_addr, vec![]);
    let parent_hb = |rogue: &Rogue| rogue.send(parent, parent_addr, rogue.heartbeat(None));
    parent_hb(&rogue);

    // A new honest client joins; the rogue is the least-loaded router, so the root places
    // the client under it with a genuine grant. The rogue passes the grant on, but with the
    // highest possible epoch, and keeps saying so in its heartbeats.
    let victim = tree
        .cluster
        .add_client(vec![tree.tag])
        .await
        .expect("client");
    let victim_id = victim.identity.node_id;
    tree.clients.push(victim);
    let deadline = tokio::time::Instant::now() + SETTLE;
    let mut tick = tokio::time::interval(Duration::from_millis(150));
    let mut child: Option<std::net::SocketAddr> = None;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "victim never placed under the rogue"
        );
        tokio::select! {
            event = rogue.events.recv() => {
                if let Some(NetEvent::Message { msg, .. }) = event {
                    if let Some(Body::AdoptChild(adopt)) = msg.body {
                        assert_eq!(adopt.child_id, victim_id);
                        let grant = adopt.grant.expect("the root's grant");
                        let placement = Placement::decode(grant.placement.as_ref()).unwrap();
                        let addr = adopt.address.parse().unwrap();
                        child = Some(addr);
                        rogue.send(victim_id, addr, ControlMessage::new(Body::AssignParent(
                            AssignParent {
                                child_id: victim_id,
                                parent_id: ROGUE,
                                parent_address: placement.parent_address,
                                assignment_id: adopt.assignment_id,
                                topology_epoch: u64::MAX,
                                grant: Some(grant),
                            },
                        )));
                    }
                }
            }
            _ = tick.tick() => {
                parent_hb(&rogue);
                if let Some(addr) = child {
                    rogue.send(victim_id, addr, ControlMessage::new(Body::Heartbeat(Heartbeat {
                        sender_id: ROGUE,
                        subtree: None,
                        topology_epoch: u64::MAX,
                        interest: None,
                        assignment_id: 0,
                        root_id: root,
                    })));
                    let status = tree.cluster.node(victim_id).unwrap().handle.status().await.unwrap();
                    if status.parent == Some(ROGUE) && status.epoch == u64::MAX {
                        break;
                    }
                }
            }
        }
    }

    // The rogue goes away. The victim rejoins and the root places it under the honest
    // router, with the root's epoch.
    rogue.shutdown().await;
    let status = tokio::time::timeout(SETTLE, async {
        loop {
            let s = tree
                .cluster
                .node(victim_id)
                .unwrap()
                .handle
                .status()
                .await
                .unwrap();
            if s.parent == Some(honest_router) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the victim is placed under the honest router");
    tree.assert_whole_and_delivering().await;
    let root_status = tree
        .cluster
        .node(root)
        .unwrap()
        .handle
        .status()
        .await
        .unwrap();
    let root_epoch = root_status.view_epoch.unwrap_or(root_status.epoch);
    assert_eq!(
        status.epoch, root_epoch,
        "the victim follows the root's epoch again"
    );
    tree.shutdown().await;
}
