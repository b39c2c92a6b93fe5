//! The two receive lanes between the endpoint and the node.
//!
//! Multicast messages go to the data lane, everything else (other messages, `LinkUp`,
//! `LinkClosed`) to the control lane. Both are bounded; a reader that finds its lane full
//! waits, so a flood of data stalls only the data lane (and, through QUIC flow control, the
//! flooding peer's data stream) while control traffic keeps flowing.

use canopy_proto::Body;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use crate::config::{NetEvent, DATA_EVENT_QUEUE, EVENT_QUEUE};

/// What [`NetEndpoint::bind`](crate::NetEndpoint::bind) hands the node: the endpoint's events
/// in two bounded lanes. Use [`NetEvents::recv`], which prefers control events, or read the
/// lanes separately.
#[derive(Debug)]
pub struct NetEvents {
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
        tokio::select! {
            biased;
            Some(event) = self.control.recv() => Some(event),
            Some(event) = self.data.recv() => Some(event),
            else => None,
        }
    }

    /// The next event if one is waiting right now, control first.
    pub fn try_recv(&mut self) -> Option<NetEvent> {
        match self.control.try_recv() {
            Ok(event) => Some(event),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => self.data.try_recv().ok(),
        }
    }
}

/// The endpoint's side of the two lanes.
#[derive(Debug, Clone)]
pub(crate) struct EventSenders {
    /// The control lane.
    pub control: mpsc::Sender<NetEvent>,
    /// The data lane.
    pub data: mpsc::Sender<NetEvent>,
}

/// Both lanes, with their default capacities.
pub(crate) fn lanes() -> (EventSenders, NetEvents) {
    let (control_tx, control_rx) = mpsc::channel(EVENT_QUEUE);
    let (data_tx, data_rx) = mpsc::channel(DATA_EVENT_QUEUE);
    (
        EventSenders {
            control: control_tx,
            data: data_tx,
        },
        NetEvents {
            control: control_rx,
            data: data_rx,
        },
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
        senders
            .data
            .send(message(Body::Multicast(Multicast::default())))
            .await
            .expect("data");
        assert!(events.recv().await.is_some_and(|e| is_data(&e)));
        drop(senders.data);
        assert!(events.recv().await.is_none());
    }
}
