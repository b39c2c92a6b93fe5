//! The three receive lanes between the endpoint and the node.
//!
//! Raft messages go to the Raft lane, multicast messages to the data lane, everything else
//! (other messages, `LinkUp`, `LinkClosed`) to the control lane. All are bounded; a reader
//! that finds its lane full waits, so a flood of data stalls only the data lane (and, through
//! QUIC flow control, the flooding peer's data stream) while control traffic keeps flowing,
//! and a storm of joins on the control lane never delays the root group's heartbeats: a
//! root candidate takes the Raft lane ([`NetEvents::take_raft`]) and drains it on a task of
//! its own.

use canopy_proto::Body;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use crate::config::{NetEvent, DATA_EVENT_QUEUE, EVENT_QUEUE, RAFT_EVENT_QUEUE};

/// What [`NetEndpoint::bind`](crate::NetEndpoint::bind) hands the node: the endpoint's events
/// in three bounded lanes. Use [`NetEvents::recv`], which prefers Raft, then control events,
/// or read the lanes separately.
#[derive(Debug)]
pub struct NetEvents {
    /// Messages whose body is a Raft request or response (capacity [`RAFT_EVENT_QUEUE`]);
    /// `None` once taken by [`NetEvents::take_raft`].
    raft: Option<mpsc::Receiver<NetEvent>>,
    /// Every event except multicast messages, in the order the endpoint produced them
    /// (capacity [`EVENT_QUEUE`]).
    pub control: mpsc::Receiver<NetEvent>,
    /// Messages whose body is [`Body::Multicast`], whichever stream they came on (capacity
    /// [`DATA_EVENT_QUEUE`]).
    pub data: mpsc::Receiver<NetEvent>,
}

impl NetEvents {
    /// The next event, a control event whenever one is waiting. `None` once both lanes are
    /// closed (the endpoint is gone). Cancel-safe: usable in `tokio::select!`.
    pub async fn recv(&mut self) -> Option<NetEvent> {
        let has_raft = self.raft.is_some();
        let raft = async {
            match self.raft.as_mut() {
                Some(lane) => lane.recv().await,
                None => None,
            }
        };
        tokio::select! {
            biased;
            Some(event) = raft, if has_raft => Some(event),
            Some(event) = self.control.recv() => Some(event),
            Some(event) = self.data.recv() => Some(event),
            else => None,
        }
    }

    /// The next event if one is waiting right now, control first.
    pub fn try_recv(&mut self) -> Option<NetEvent> {
        if let Some(event) = self.raft.as_mut().and_then(|lane| lane.try_recv().ok()) {
            return Some(event);
        }
        match self.control.try_recv() {
            Ok(event) => Some(event),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => self.data.try_recv().ok(),
        }
    }

    /// Takes the Raft lane out, for a task that serves it alone; afterwards [`recv`] and
    /// [`try_recv`] see only control and data events. `None` if already taken.
    ///
    /// [`recv`]: NetEvents::recv
    /// [`try_recv`]: NetEvents::try_recv
    pub fn take_raft(&mut self) -> Option<mpsc::Receiver<NetEvent>> {
        self.raft.take()
    }
}

/// The endpoint's side of the three lanes.
#[derive(Debug, Clone)]
pub(crate) struct EventSenders {
    /// The Raft lane.
    pub raft: mpsc::Sender<NetEvent>,
    /// The control lane.
    pub control: mpsc::Sender<NetEvent>,
    /// The data lane.
    pub data: mpsc::Sender<NetEvent>,
}

/// The lanes, with their default capacities.
pub(crate) fn lanes() -> (EventSenders, NetEvents) {
    let (raft_tx, raft_rx) = mpsc::channel(RAFT_EVENT_QUEUE);
    let (control_tx, control_rx) = mpsc::channel(EVENT_QUEUE);
    let (data_tx, data_rx) = mpsc::channel(DATA_EVENT_QUEUE);
    (
        EventSenders {
            raft: raft_tx,
            control: control_tx,
            data: data_tx,
        },
        NetEvents {
            raft: Some(raft_rx),
            control: control_rx,
            data: data_rx,
        },
    )
}

/// Whether an event belongs on the Raft lane.
pub(crate) fn is_raft(event: &NetEvent) -> bool {
    matches!(
        event,
        NetEvent::Message { msg, .. }
            if matches!(msg.body, Some(Body::RaftRequest(_) | Body::RaftResponse(_)))
    )
}

/// Whether an event belongs on the data lane.
pub(crate) fn is_data(event: &NetEvent) -> bool {
    matches!(
        event,
        NetEvent::Message { msg, .. } if matches!(msg.body, Some(Body::Multicast(_)))
    )
}

impl EventSenders {
    /// Sends `event` on its lane, waiting while the lane is full. `Err` if nobody listens.
    pub async fn send(&self, event: NetEvent) -> Result<(), ()> {
        let lane = if is_data(&event) {
            &self.data
        } else if is_raft(&event) {
            &self.raft
        } else {
            &self.control
        };
        lane.send(event).await.map_err(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use canopy_proto::v1::{Heartbeat, Multicast};
    use canopy_proto::ControlMessage;

    use crate::identity::{CertRole, Identity};

    fn message(body: Body) -> NetEvent {
        NetEvent::Message {
            from: Identity {
                cluster: "test".into(),
                node_id: 1,
                role: CertRole::Router,
                region: "local".into(),
            },
            msg: ControlMessage::new(body),
        }
    }

    #[tokio::test]
    async fn control_is_preferred_and_none_only_when_both_lanes_close() {
        let (senders, mut events) = lanes();
        senders
            .send(message(Body::Multicast(Multicast::default())))
            .await
            .expect("data");
        senders
            .send(message(Body::Heartbeat(Heartbeat::default())))
            .await
            .expect("control");
        senders
            .send(NetEvent::LinkClosed {
                peer: 1,
                reason: "x".into(),
            })
            .await
            .expect("control");
        let kinds: Vec<bool> = [events.recv().await, events.try_recv(), events.recv().await]
            .iter()
            .map(|e| is_data(e.as_ref().expect("event")))
            .collect();
        assert_eq!(kinds, vec![false, false, true]);
        assert!(events.try_recv().is_none());
        drop(senders.control);
        drop(senders.raft);
        senders
            .data
            .send(message(Body::Multicast(Multicast::default())))
            .await
            .expect("data");
        assert!(events.recv().await.is_some_and(|e| is_data(&e)));
        drop(senders.data);
        assert!(events.recv().await.is_none());
    }

    #[tokio::test]
    async fn raft_has_its_own_lane_first_and_can_be_taken_out() {
        use canopy_proto::v1::RaftRequest;
        let (senders, mut events) = lanes();
        senders
            .send(message(Body::Heartbeat(Heartbeat::default())))
            .await
            .expect("control");
        senders
            .send(message(Body::RaftRequest(RaftRequest::default())))
            .await
            .expect("raft");
        let first = events.recv().await.expect("event");
        assert!(is_raft(&first), "Raft goes before control");
        assert!(!is_raft(&events.recv().await.expect("event")));

        let mut lane = events.take_raft().expect("the lane");
        assert!(events.take_raft().is_none(), "taken once");
        senders
            .send(message(Body::RaftRequest(RaftRequest::default())))
            .await
            .expect("raft");
        assert!(lane.recv().await.is_some_and(|e| is_raft(&e)));
        assert!(events.try_recv().is_none(), "the node no longer sees Raft");
        // With the Raft lane taken, the node's lanes still end when the endpoint goes.
        drop(senders);
        assert!(events.recv().await.is_none());
    }
}
