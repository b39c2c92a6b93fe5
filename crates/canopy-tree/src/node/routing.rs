//! Multicast routing: up to the parent, down only where a child link may want the tag,
//! never back over the link a copy arrived on.

use bytes::Bytes;
use canopy_proto::v1::Multicast;
use canopy_proto::{Body, ControlMessage};

use super::Node;
use crate::io::{DropReason, Output, TreeEvent};
use crate::{KeyTag, NodeId, Role, BROADCAST_TAG};

impl Node {
    pub(super) fn publish(&mut self, key_tag: KeyTag, payload: Bytes, out: &mut Vec<Output>) {
        self.origin_seq += 1;
        let key_seq = self.key_seqs.entry(key_tag).or_insert(0);
        *key_seq += 1;
        let multicast = Multicast {
            origin: self.id,
            key_tag,
            origin_seq: self.origin_seq,
            key_seq: *key_seq,
            payload,
        };
        if self.parent.is_none() && self.root.is_none() {
            out.push(Output::Event(TreeEvent::PublishedWhileDetached));
        }
        self.forward(multicast, None, out);
    }

    pub(super) fn on_multicast(
        &mut self,
        from: NodeId,
        multicast: Multicast,
        out: &mut Vec<Output>,
    ) {
        let from_child = self.children.get(&from).is_some_and(|c| c.attached);
        if self.parent() != Some(from) && !from_child && !self.is_leaving_parent(from) {
            self.dropped(from, "multicast", DropReason::NotANeighbour, out);
            return;
        }
        // The transport names the link a copy arrived on; a copy of our own is a loop.
        if multicast.origin == self.id {
            self.dropped(from, "multicast", DropReason::Malformed, out);
            return;
        }
        // A client has no subtree: whatever it sends, it originates.
        let from_client = self
            .children
            .get(&from)
            .is_some_and(|c| c.role == Role::Client);
        if from_client && multicast.origin != from {
            self.dropped(from, "multicast", DropReason::Unauthorized, out);
            return;
        }
        if self.root.is_some() {
            self.root_observe(from, multicast.origin, multicast.key_tag);
        }
        let deliver = self.wants_delivery(multicast.key_tag) && !self.delivered_already(&multicast);
        // What the parent being left sends is for this client only: the tree carries it on
        // along the links it came by.
        if self.is_leaving_parent(from) {
            if deliver {
                out.push(Output::Deliver(multicast));
            }
            return;
        }
        if deliver {
            out.push(Output::Deliver(multicast.clone()));
        }
        self.forward(multicast, Some(from), out);
    }

    fn wants_delivery(&self, tag: KeyTag) -> bool {
        if tag == BROADCAST_TAG {
            return self.role == Role::Client;
        }
        self.interest.wants_locally(tag)
    }

    /// Sends one copy to every tree neighbour except `arrived_from` whose subtree may want
    /// the tag: at most (children + 1) copies, all identical (the driver encodes it once).
    fn forward(&self, multicast: Multicast, arrived_from: Option<NodeId>, out: &mut Vec<Output>) {
        let tag = multicast.key_tag;
        let up = self
            .parent()
            .filter(|&p| Some(p) != arrived_from && self.sends_up(tag));
        let slot = self.interest.slot_of(tag);
        let down = self.children.iter().filter(|(&id, link)| {
            link.attached && Some(id) != arrived_from && link.interest.wants(tag, slot)
        });
        for to in up.into_iter().chain(down.map(|(&id, _)| id)) {
            out.push(Output::Send {
                to,
                msg: ControlMessage::new(Body::Multicast(multicast.clone())),
            });
        }
    }
}
