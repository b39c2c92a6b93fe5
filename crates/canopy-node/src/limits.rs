//! Bounds on what one peer can make a node do, checked before the tree sees a message:
//! sizes of message types and string fields, and rates of the messages that cost the node
//! real work (join requests at the root, whole interest snapshots at a parent).

use canopy_net::NetConfig;
use canopy_proto::ControlMessage;
use canopy_tree::{NodeId, TreeLimits};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// Largest encoding of a small control message (join, assignment with its signed grant,
/// cull, disconnect, removal report, redirect, operator request).
pub const MAX_SMALL_CONTROL_BYTES: usize = 4096;
/// Longest `host:port` a joiner may name.
pub const MAX_ADDRESS_LEN: usize = 64;

/// Per-peer rate bounds of a node. Over a bound, the peer's link is closed and counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerLimits {
    /// Join requests per second one peer may send (a legitimate joiner backs off to one
    /// every `join_timeout_ms` or slower, plus one redirect).
    pub joins_per_sec: f64,
    /// Burst of join requests above the rate.
    pub join_burst: u32,
    /// Whole interest snapshots (`Reattach`, `InterestSnapshot`) per second one peer may send:
    /// each makes the parent rebuild that link's filter.
    pub snapshots_per_sec: f64,
    /// Burst of snapshots above the rate.
    pub snapshot_burst: u32,
    /// Interest work (tags added or removed, and tags in a snapshot together with the set it
    /// replaces) per second one client link may cause; the burst is twice
    /// `max_tags_per_client_link`. Nodes pace their own changes under it.
    pub client_interest_tags_per_sec: f64,
    /// The same for a router link (its whole subtree's changes); the burst is twice
    /// `max_tags_per_router_link`.
    pub router_interest_tags_per_sec: f64,
    /// A placement grant older than this is refused (ms; also the tolerated clock skew).
    pub placement_max_age_ms: u64,
    /// Most distinct key tags one client link may advertise.
    pub max_tags_per_client_link: usize,
    /// Most distinct key tags one router link may advertise.
    pub max_tags_per_router_link: usize,
    /// Most tags in one interest delta (larger changes are sent in pieces).
    pub max_tags_per_delta: usize,
    /// Largest subtree a child may report.
    pub max_subtree_nodes: u64,
    /// A joiner's claimed address must have the IP its connection comes from, so nobody can
    /// point the tree's dials at another host. Turn off only behind NAT or relays that
    /// change source addresses.
    pub check_join_address_ip: bool,
    /// Established connections a node holds at most (transport).
    pub max_connections: usize,
    /// Inbound handshakes under way at once; more are refused at once and told to come back
    /// later (transport; what keeps a root responsive in a join storm).
    pub max_handshakes: usize,
    /// Inbound connections that may wait for their handshake; more are refused as busy.
    pub handshake_queue: usize,
    /// How long an inbound connection may wait in the queue for its handshake (ms); past
    /// that it is refused as busy (transport).
    pub handshake_timeout_ms: u64,
    /// Non-multicast messages per second one link may carry (burst twice that); over it the
    /// link is closed (transport).
    pub control_rate_per_link: u32,
    /// Multicasts per second read from one link; faster senders are slowed down, not closed
    /// (transport).
    pub data_rate_per_link: u32,
    /// Bytes queued for sending on one link before the peer counts as too slow (transport).
    pub max_queued_bytes_per_link: usize,
    /// After a peer is refused for going over a bound, its new connections are refused for
    /// this long (ms; 0: only its link is closed).
    pub ban_ms: u64,
}

impl Default for PeerLimits {
    fn default() -> Self {
        let tree = TreeLimits::default();
        let net = NetConfig::default();
        PeerLimits {
            joins_per_sec: 2.0,
            join_burst: 8,
            snapshots_per_sec: 5.0,
            snapshot_burst: 10,
            client_interest_tags_per_sec: tree.client_interest_tags_per_sec,
            router_interest_tags_per_sec: tree.router_interest_tags_per_sec,
            placement_max_age_ms: tree.placement_max_age.as_millis() as u64,
            max_tags_per_client_link: tree.max_tags_per_client_link,
            max_tags_per_router_link: tree.max_tags_per_router_link,
            max_tags_per_delta: tree.max_tags_per_delta,
            max_subtree_nodes: tree.max_subtree_nodes,
            check_join_address_ip: true,
            max_connections: net.max_connections,
            max_handshakes: net.max_handshakes,
            handshake_queue: net.handshake_queue,
            handshake_timeout_ms: net.handshake_timeout.as_millis() as u64,
            control_rate_per_link: net.control_rate_per_link,
            data_rate_per_link: net.data_rate_per_link,
            max_queued_bytes_per_link: net.max_queued_bytes_per_link,
            ban_ms: 10_000,
        }
    }
}

impl PeerLimits {
    /// `net` with the transport bounds of these limits.
    pub fn net_config(&self, net: NetConfig) -> NetConfig {
        NetConfig {
            max_connections: self.max_connections,
            max_handshakes: self.max_handshakes,
            handshake_queue: self.handshake_queue,
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            control_rate_per_link: self.control_rate_per_link,
            data_rate_per_link: self.data_rate_per_link,
            max_queued_bytes_per_link: self.max_queued_bytes_per_link,
            ban_after_violation: self.ban(),
            ..net
        }
    }

    /// How long a refused peer's new connections are refused.
    pub fn ban(&self) -> Duration {
        Duration::from_millis(self.ban_ms)
    }

    /// The bounds the tree state machine enforces.
    pub fn tree_limits(&self) -> TreeLimits {
        TreeLimits {
            placement_max_age: Duration::from_millis(self.placement_max_age_ms),
            max_tags_per_client_link: self.max_tags_per_client_link,
            max_tags_per_router_link: self.max_tags_per_router_link,
            max_tags_per_delta: self.max_tags_per_delta,
            max_subtree_nodes: self.max_subtree_nodes,
            client_interest_tags_per_sec: self.client_interest_tags_per_sec,
            router_interest_tags_per_sec: self.router_interest_tags_per_sec,
        }
    }

    /// Checks that every rate and burst is positive.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let rates = [
            ("limits.joins_per_sec", self.joins_per_sec),
            ("limits.snapshots_per_sec", self.snapshots_per_sec),
        ];
        for (key, rate) in rates {
            if !(rate.is_finite() && rate > 0.0) {
                return Err((key, format!("must be a positive number, not {rate}")));
            }
        }
        for (key, burst) in [
            ("limits.join_burst", self.join_burst),
            ("limits.snapshot_burst", self.snapshot_burst),
        ] {
            if burst == 0 {
                return Err((key, "must be at least 1".into()));
            }
        }
        let counts = [
            ("limits.max_connections", self.max_connections as u64),
            ("limits.max_handshakes", self.max_handshakes as u64),
            ("limits.handshake_timeout_ms", self.handshake_timeout_ms),
            (
                "limits.control_rate_per_link",
                u64::from(self.control_rate_per_link),
            ),
            (
                "limits.data_rate_per_link",
                u64::from(self.data_rate_per_link),
            ),
            (
                "limits.max_queued_bytes_per_link",
                self.max_queued_bytes_per_link as u64,
            ),
            ("limits.placement_max_age_ms", self.placement_max_age_ms),
            (
                "limits.max_tags_per_client_link",
                self.max_tags_per_client_link as u64,
            ),
            (
                "limits.max_tags_per_router_link",
                self.max_tags_per_router_link as u64,
            ),
            ("limits.max_tags_per_delta", self.max_tags_per_delta as u64),
            ("limits.max_subtree_nodes", self.max_subtree_nodes),
        ];
        for (key, value) in counts {
            if value == 0 {
                return Err((key, "must be at least 1".into()));
            }
        }
        Ok(())
    }
}

/// The largest encoding a message of this kind may have, given the link's frame limit.
pub fn max_encoded_len(msg: &ControlMessage, max_frame: usize) -> usize {
    use canopy_proto::v1::admin_request::Command;
    use canopy_proto::Body;
    match &msg.body {
        // Revocation lists are as large as they are; the frame bounds them.
        Some(Body::AdminRequest(request))
            if matches!(request.command, Some(Command::Revoke(_))) =>
        {
            max_frame
        }
        Some(
            Body::JoinRequest(_)
            | Body::NotLeader(_)
            | Body::AssignParent(_)
            | Body::AdoptChild(_)
            | Body::Cull(_)
            | Body::Disconnect(_)
            | Body::ChildRemoved(_)
            | Body::ReleaseChild(_)
            | Body::AdminRequest(_),
        ) => MAX_SMALL_CONTROL_BYTES.min(max_frame),
        _ => max_frame,
    }
}

/// What a rate bound applies to. (Interest work per tag is the tree's to charge: it knows
/// what a snapshot replaces.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateKind {
    /// Join requests.
    Join,
    /// Whole interest snapshots (`Reattach`, `InterestSnapshot`).
    Snapshot,
}

impl RateKind {
    /// The rate bound `msg` counts against, if any.
    pub fn of(msg: &ControlMessage) -> Option<RateKind> {
        use canopy_proto::Body;
        match msg.body {
            Some(Body::JoinRequest(_)) => Some(RateKind::Join),
            // A chunk that more chunks follow is part of one snapshot, which counts once (by
            // its last chunk); the tree charges every chunk per tag and bounds the whole.
            Some(Body::InterestSnapshot(ref chunk)) if chunk.more => None,
            Some(Body::Reattach(_) | Body::InterestSnapshot(_) | Body::Revocations(_)) => {
                Some(RateKind::Snapshot)
            }
            _ => None,
        }
    }

    /// Tokens per second, burst, and what the bound is called in a refusal.
    fn params(self, limits: &PeerLimits) -> (f64, f64, &'static str) {
        match self {
            RateKind::Join => (
                limits.joins_per_sec,
                f64::from(limits.join_burst),
                "join requests",
            ),
            RateKind::Snapshot => (
                limits.snapshots_per_sec,
                f64::from(limits.snapshot_burst),
                "interest snapshots",
            ),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets per (peer, kind). A bucket outlives the peer's link (reconnecting does not
/// refill it); it is dropped once it has refilled, when nothing is owed any more.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: HashMap<(NodeId, RateKind), Bucket>,
    admitted: u64,
}

impl RateLimiter {
    /// Takes one token for `peer`'s message of `kind`; `Err` names the bound if none is left.
    pub fn admit(
        &mut self,
        limits: &PeerLimits,
        peer: NodeId,
        kind: RateKind,
        now: Instant,
    ) -> Result<(), String> {
        let (rate, burst, what) = kind.params(limits);
        self.admitted += 1;
        if self.admitted.is_multiple_of(1024) {
            self.prune(limits, now);
        }
        let bucket = self.buckets.entry((peer, kind)).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at);
        bucket.tokens = (bucket.tokens + elapsed.as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(format!("{what} over {rate}/s (burst {burst})"))
        }
    }

    /// Drops the buckets that have refilled completely (they hold no debt).
    fn prune(&mut self, limits: &PeerLimits, now: Instant) {
        self.buckets.retain(|(_, kind), bucket| {
            let (rate, burst, _) = kind.params(limits);
            let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
            bucket.tokens + elapsed * rate < burst
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_admitted_then_the_rate_holds() {
        let limits = PeerLimits {
            joins_per_sec: 2.0,
            join_burst: 3,
            ..PeerLimits::default()
        };
        let mut limiter = RateLimiter::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.admit(&limits, 7, RateKind::Join, t0).is_ok());
        }
        assert!(limiter.admit(&limits, 7, RateKind::Join, t0).is_err());
        // Another peer and another kind have their own buckets.
        assert!(limiter.admit(&limits, 8, RateKind::Join, t0).is_ok());
        assert!(limiter.admit(&limits, 7, RateKind::Snapshot, t0).is_ok());
        let later = t0 + Duration::from_millis(500);
        assert!(limiter.admit(&limits, 7, RateKind::Join, later).is_ok());
        assert!(limiter.admit(&limits, 7, RateKind::Join, later).is_err());
    }

    #[test]
    fn a_chunked_snapshot_counts_once_by_its_last_chunk() {
        use canopy_proto::v1::InterestSnapshot;
        use canopy_proto::{Body, ControlMessage};
        let chunk = |more| {
            ControlMessage::new(Body::InterestSnapshot(InterestSnapshot {
                tags: vec![1, 2, 3],
                more,
            }))
        };
        assert_eq!(RateKind::of(&chunk(true)), None);
        assert_eq!(RateKind::of(&chunk(false)), Some(RateKind::Snapshot));
    }
}
