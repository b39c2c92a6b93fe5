//! A rogue that goes through the tree's front door: it joins like a client or a router (its
//! certificate's role), is placed by the root, attaches and heartbeats like an honest child,
//! and then does what the test wants from inside.

use std::net::SocketAddr;
use std::time::Duration;

use canopy_net::{CertRole, NetEvent};
use canopy_proto::v1::{
    Heartbeat, InterestDelta, InterestSnapshot, JoinRequest, Reattach, Role, SubtreeSize,
};
use canopy_proto::{Body, ControlMessage};
use canopy_tree::{KeyTag, NodeId};
use tokio::task::JoinHandle;

use crate::support::{Rogue, Tree, SETTLE};

impl Rogue {
    fn wire_role(&self) -> Role {
        match self.endpoint.identity().role {
            CertRole::Router => Role::Router,
            _ => Role::Client,
        }
    }

    /// The subtree an honest node of the rogue's role reports when it has no children.
    pub fn own_subtree(&self) -> SubtreeSize {
        match self.wire_role() {
            Role::Router => SubtreeSize {
                clients: 0,
                routers: 1,
            },
            _ => SubtreeSize {
                clients: 1,
                routers: 0,
            },
        }
    }

    /// Joins the tree as far as being placed: a join request to the root, then the
    /// `AssignParent`. Returns the parent's id and address; the rogue has not attached yet.
    pub async fn get_placed(&mut self, tree: &Tree) -> (NodeId, SocketAddr) {
        self.get_placed_at(tree, 0).await
    }

    /// [`Rogue::get_placed`] with the join's attempt number (a retry keeps the root away from
    /// the parent the rogue already has).
    pub async fn get_placed_at(&mut self, tree: &Tree, attempt: u32) -> (NodeId, SocketAddr) {
        let root = tree.root().await;
        let join = ControlMessage::new(Body::JoinRequest(JoinRequest {
            node_id: self.id(),
            role: self.wire_role() as i32,
            region: self.endpoint.identity().region.clone(),
            address: self.endpoint.local_addr().to_string(),
            attempt,
            subtree: None,
        }));
        self.send(root, tree.address(root), join);
        let placed = tokio::time::timeout(SETTLE, async {
            loop {
                match self.events.recv().await {
                    Some(NetEvent::Message { from, msg }) => {
                        if let Some(Body::AssignParent(a)) = msg.body {
                            let addr = a.parent_address.parse().expect("parent address");
                            return (from.node_id, addr, a.assignment_id);
                        }
                    }
                    Some(_) => {}
                    None => panic!("rogue endpoint closed"),
                }
            }
        })
        .await
        .expect("the root places the rogue");
        self.assignment_id = placed.2;
        (placed.0, placed.1)
    }

    /// Attaches to `parent` with an interest snapshot of `tags`.
    pub fn attach(&self, parent: NodeId, addr: SocketAddr, tags: Vec<KeyTag>) {
        let reattach = Reattach {
            node_id: self.id(),
            role: self.wire_role() as i32,
            assignment_id: self.assignment_id,
            subtree: Some(self.own_subtree()),
            interest: Some(InterestSnapshot { tags, more: false }),
        };
        self.send(parent, addr, ControlMessage::new(Body::Reattach(reattach)));
    }

    /// A child-to-parent heartbeat, with an interest delta if given.
    pub fn heartbeat(&self, interest: Option<InterestDelta>) -> ControlMessage {
        ControlMessage::new(Body::Heartbeat(Heartbeat {
            sender_id: self.id(),
            subtree: Some(self.own_subtree()),
            topology_epoch: 0,
            interest,
            assignment_id: self.assignment_id,
            root_id: 0,
        }))
    }

    /// Heartbeats `parent` every 200 ms, like an honest child, until the task is aborted.
    pub fn keep_alive(&self, parent: NodeId, addr: SocketAddr) -> JoinHandle<()> {
        let endpoint = self.endpoint.clone();
        let heartbeat = self.heartbeat(None);
        tokio::spawn(async move {
            loop {
                let _ = endpoint.send(parent, Some(addr), heartbeat.clone());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }
}

impl Tree {
    /// In how many of `samples` looks, 200 ms apart, `id` had a parent.
    pub async fn attached_samples(&self, id: NodeId, samples: usize) -> usize {
        let mut attached = 0;
        for _ in 0..samples {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if self.parent(id).await.is_some() {
                attached += 1;
            }
        }
        attached
    }
}
