//! Counters of the endpoint's refusals and closes, and its connection gauge.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

/// A snapshot of [`NetEndpoint::stats`](crate::NetEndpoint::stats): counters since the
/// endpoint was bound, and `connections`, a gauge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Inbound connections refused because `max_connections` were established.
    pub refused_over_limit: u64,
    /// Connections refused for the identity their certificate names (no or a malformed canopy
    /// identity, another cluster, not the node that was dialled).
    pub refused_identity: u64,
    /// Inbound handshakes that failed (among them certificates TLS rejects: unknown CA,
    /// expired, none presented).
    pub handshakes_failed: u64,
    /// Sessions closed because a newer connection from the same certificate took their place.
    pub sessions_replaced: u64,
    /// Inbound connections refused because their peer is banned for a while after going over
    /// a bound ([`NetEndpoint::ban`](crate::NetEndpoint::ban)).
    pub refused_banned: u64,
    /// Links closed for a protocol violation: bad frames and too many streams.
    pub closed_protocol: u64,
    /// Links closed for sending control messages faster than `control_rate_per_link`.
    pub closed_control_rate: u64,
    /// Links closed for opening more than two streams (also counted in `closed_protocol`).
    pub closed_streams: u64,
    /// Links closed because the peer's certificate expired while the link was live.
    pub closed_expired: u64,
    /// Links closed after a reload or a pushed revocation list because the peer's certificate
    /// is revoked or no longer chains to the trusted CAs.
    pub closed_untrusted: u64,
    /// Inbound connections that took over a peer's live link after it announced a renewed
    /// certificate (no session ended).
    pub links_moved: u64,
    /// Links closed because the peer read too slowly and a send queue overflowed (frames or
    /// bytes).
    pub closed_queue_full: u64,
    /// Times a link's reader waited because the peer sent multicasts faster than
    /// `data_rate_per_link`.
    pub data_throttled: u64,
    /// Inbound connections refused before their handshake because `max_handshakes` were
    /// under way and `handshake_queue` more waiting, or after waiting `handshake_timeout`
    /// for their turn (the dialler is told it is busy and comes back later).
    pub refused_busy: u64,
    /// Own dials the peer refused for being busy.
    pub dials_refused_busy: u64,
    /// Established connections now (gauge).
    pub connections: u64,
    /// Inbound handshakes under way now (gauge).
    pub handshakes: u64,
    /// Inbound connections waiting for their handshake to begin (gauge).
    pub handshakes_waiting: u64,
}

/// The live counters behind [`NetStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub refused_over_limit: AtomicU64,
    pub refused_identity: AtomicU64,
    pub handshakes_failed: AtomicU64,
    pub sessions_replaced: AtomicU64,
    pub refused_banned: AtomicU64,
    pub closed_protocol: AtomicU64,
    pub closed_control_rate: AtomicU64,
    pub closed_streams: AtomicU64,
    pub closed_expired: AtomicU64,
    pub closed_untrusted: AtomicU64,
    pub links_moved: AtomicU64,
    pub closed_queue_full: AtomicU64,
    pub data_throttled: AtomicU64,
    pub refused_busy: AtomicU64,
    pub dials_refused_busy: AtomicU64,
    connections: AtomicU64,
    handshakes: AtomicU64,
    pub handshakes_waiting: AtomicU64,
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    /// A consistent-enough snapshot (each counter is read once).
    pub fn snapshot(&self) -> NetStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStats {
            refused_over_limit: get(&self.refused_over_limit),
            refused_identity: get(&self.refused_identity),
            handshakes_failed: get(&self.handshakes_failed),
            sessions_replaced: get(&self.sessions_replaced),
            refused_banned: get(&self.refused_banned),
            closed_protocol: get(&self.closed_protocol),
            closed_control_rate: get(&self.closed_control_rate),
            closed_streams: get(&self.closed_streams),
            closed_expired: get(&self.closed_expired),
            closed_untrusted: get(&self.closed_untrusted),
            links_moved: get(&self.links_moved),
            closed_queue_full: get(&self.closed_queue_full),
            data_throttled: get(&self.data_throttled),
            refused_busy: get(&self.refused_busy),
            dials_refused_busy: get(&self.dials_refused_busy),
            connections: get(&self.connections),
            handshakes: get(&self.handshakes),
            handshakes_waiting: get(&self.handshakes_waiting),
        }
    }

    /// Whether fewer than `max` connections are established.
    pub fn below(&self, max: usize) -> bool {
        self.connections.load(Ordering::Acquire) < max as u64
    }

    /// Takes a connection slot if fewer than `max` are taken.
    pub fn try_slot(self: &Arc<Self>, max: usize) -> Option<ConnSlot> {
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max as u64).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnSlot {
                counters: self.clone(),
            })
    }

    /// Counts a handshake under way until the slot is dropped; `permit` is its turn at the
    /// endpoint's handshake gate, given back with it.
    pub fn handshake(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> HandshakeSlot {
        self.handshakes.fetch_add(1, Ordering::AcqRel);
        HandshakeSlot {
            counters: self.clone(),
            _permit: permit,
        }
    }

    /// Takes a connection slot regardless of the bound (own dials).
    pub fn slot(self: &Arc<Self>) -> ConnSlot {
        self.connections.fetch_add(1, Ordering::AcqRel);
        ConnSlot {
            counters: self.clone(),
        }
    }
}

/// One established connection in the gauge; released on drop.
#[derive(Debug)]
pub(crate) struct ConnSlot {
    counters: Arc<Counters>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.counters.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One inbound handshake under way; released on drop.
#[derive(Debug)]
pub(crate) struct HandshakeSlot {
    counters: Arc<Counters>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.counters.handshakes.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_released() {
        let counters = Arc::new(Counters::default());
        let a = counters.try_slot(2).expect("first");
        let _b = counters.try_slot(2).expect("second");
        assert!(counters.try_slot(2).is_none());
        assert!(!counters.below(2));
        let forced = counters.slot();
        assert_eq!(counters.snapshot().connections, 3);
        drop(forced);
        drop(a);
        assert!(counters.below(2));
        assert!(counters.try_slot(2).is_some());
        assert_eq!(counters.snapshot().connections, 1);
        let gate = Arc::new(tokio::sync::Semaphore::new(1));
        let permit = gate.clone().try_acquire_owned().expect("permit");
        let h = counters.handshake(permit);
        assert_eq!(counters.snapshot().handshakes, 1);
        assert!(gate.clone().try_acquire_owned().is_err());
        drop(h);
        assert_eq!(counters.snapshot().handshakes, 0);
        assert!(gate.try_acquire_owned().is_ok());
    }
}
