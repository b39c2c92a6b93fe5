//! The endpoint's interface types: settings, events, errors.

use std::net::SocketAddr;
use std::time::Duration;

use canopy_proto::{ControlMessage, FrameError, LENGTH_PREFIX_LEN};
use quinn::{IdleTimeout, TransportConfig, VarInt};

use crate::certs::CertError;
use crate::identity::{Identity, NodeId};

/// Capacity of the control lane of [`NetEvents`](crate::NetEvents) (every event but multicast
/// messages). When a lane is full, the readers feeding it stop reading and QUIC flow control
/// pushes back on the peers.
pub const EVENT_QUEUE: usize = 1024;
/// Capacity of the data lane of [`NetEvents`](crate::NetEvents) (multicast messages).
pub const DATA_EVENT_QUEUE: usize = 1024;
/// Capacity of the Raft lane (Raft requests and responses from root candidates).
pub const RAFT_EVENT_QUEUE: usize = 1024;
/// Concurrent unidirectional streams a peer may open (it needs two).
const MAX_UNI_STREAMS: u32 = 4;

/// Transport settings.
///
/// Every quantity a peer controls is bounded here; a peer over a bound costs only its own link
/// (closed with a logged reason and counted in [`NetStats`](crate::NetStats)), except for the
/// data rate, which is enforced by reading that peer's data more slowly.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Largest frame body accepted and sent, in bytes.
    pub max_frame_len: usize,
    /// Frames queued per link for the control stream before the peer counts as too slow.
    pub control_queue: usize,
    /// Frames queued per link for the data stream before the peer counts as too slow.
    pub data_queue: usize,
    /// Bytes of frames queued per link (both queues) and not yet taken by the link's writer
    /// before the peer counts as too slow. Must hold at least one largest frame.
    pub max_queued_bytes_per_link: usize,
    /// Multicast frames per second accepted from one link, with a burst of the same size. A peer
    /// sending faster is read more slowly (backpressure onto that peer only), never closed.
    pub data_rate_per_link: u32,
    /// Non-multicast frames per second accepted from one link, with a burst of twice that.
    /// A peer sending faster has its link closed with [`CLOSE_PROTOCOL`](crate::CLOSE_PROTOCOL).
    pub control_rate_per_link: u32,
    /// Established connections at once (inbound and outbound). Inbound connections over the
    /// bound are refused; outbound dials are never refused but count.
    pub max_connections: usize,
    /// Inbound handshakes under way at once; more wait their turn (see `handshake_queue`).
    pub max_handshakes: usize,
    /// Inbound connections that may wait for their handshake to begin; more are refused
    /// before the handshake (cheaply) and their diallers told to come back later.
    pub handshake_queue: usize,
    /// How long an inbound connection may wait in the queue for its handshake to begin.
    /// One that waited longer is refused and its dialler told to come back later: in a
    /// storm that is cheaper for both sides than a turn its dialler may no longer want (a
    /// handshake whose dialler went away holds its turn until `idle_timeout`).
    pub handshake_timeout: Duration,
    /// How often live links are re-checked (expired peer certificates are closed).
    pub recheck_interval: Duration,
    /// How long a peer whose link was closed for breaking the protocol or a bound (bad frames,
    /// too many streams, control rate) is refused new connections. Zero: not at all.
    pub ban_after_violation: Duration,
    /// QUIC keep-alive interval (keeps quiet links from idling out).
    pub keep_alive: Duration,
    /// QUIC idle timeout: a peer silent this long is gone.
    pub idle_timeout: Duration,
    /// Addresses this node reaches through another one: a dial to a key goes to its value
    /// (a NAT's public side, or a relay that emulates a WAN). The peer's identity is checked
    /// as always, so a wrong entry only fails to connect.
    pub dial_via: std::sync::Arc<std::collections::HashMap<SocketAddr, SocketAddr>>,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            max_frame_len: canopy_proto::DEFAULT_MAX_FRAME_LEN,
            control_queue: 1024,
            data_queue: 4096,
            max_queued_bytes_per_link: 16 << 20,
            data_rate_per_link: 50_000,
            control_rate_per_link: 2_000,
            max_connections: 16_384,
            max_handshakes: 64,
            handshake_queue: 2048,
            handshake_timeout: Duration::from_secs(2),
            recheck_interval: Duration::from_secs(1),
            ban_after_violation: Duration::from_secs(10),
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            dial_via: Default::default(),
        }
    }
}

impl NetConfig {
    /// The QUIC transport parameters for these settings.
    pub fn transport_config(&self) -> Result<TransportConfig, NetError> {
        if self.max_frame_len == 0 || self.control_queue == 0 || self.data_queue == 0 {
            return Err(NetError::Config(
                "max_frame_len, control_queue and data_queue must be positive".into(),
            ));
        }
        if self.data_rate_per_link == 0
            || self.control_rate_per_link == 0
            || self.max_connections == 0
            || self.max_handshakes == 0
            || self.handshake_timeout.is_zero()
            || self.recheck_interval.is_zero()
        {
            return Err(NetError::Config(
                "data_rate_per_link, control_rate_per_link, max_connections, max_handshakes, \
                 handshake_timeout and recheck_interval must be positive"
                    .into(),
            ));
        }
        let largest_frame = self.max_frame_len.saturating_add(LENGTH_PREFIX_LEN);
        if self.max_queued_bytes_per_link < largest_frame {
            return Err(NetError::Config(format!(
                "max_queued_bytes_per_link ({}) must hold one largest frame ({largest_frame} bytes)",
                self.max_queued_bytes_per_link
            )));
        }
        if self.keep_alive.is_zero() || self.keep_alive >= self.idle_timeout {
            return Err(NetError::Config(format!(
                "keep_alive ({:?}) must be positive and below idle_timeout ({:?})",
                self.keep_alive, self.idle_timeout
            )));
        }
        let idle = IdleTimeout::try_from(self.idle_timeout).map_err(|_| {
            NetError::Config(format!("idle_timeout {:?} too large", self.idle_timeout))
        })?;
        let mut transport = TransportConfig::default();
        transport
            .keep_alive_interval(Some(self.keep_alive))
            .max_idle_timeout(Some(idle))
            .max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS))
            .max_concurrent_bidi_streams(VarInt::from_u32(0))
            .datagram_receive_buffer_size(None);
        Ok(transport)
    }
}

/// What the network tells the node.
#[derive(Debug)]
pub enum NetEvent {
    /// A message from a peer; `from` is the identity its certificate names.
    Message { from: Identity, msg: ControlMessage },
    /// The first connection to `peer` is established (again, after a `LinkClosed`, or after a
    /// reconnect that overlapped the old connection). Also follows the `LinkClosed` of a session
    /// replaced by a newer inbound connection from the same node.
    LinkUp { peer: Identity },
    /// The last connection to `peer`, or a dial to it, ended; or the peer's inbound session was
    /// replaced by a newer one (a `LinkUp` follows). Messages received after it come from a
    /// new session.
    LinkClosed { peer: NodeId, reason: String },
    /// A dial to `peer` was refused because the peer is at capacity (too many connections,
    /// or too many handshakes at once); follows the dial's `LinkClosed`. Try again later,
    /// with jitter: the peer is up.
    Busy { peer: NodeId },
}

/// Why an endpoint could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The credentials could not be turned into TLS configurations.
    #[error("credentials: {0}")]
    Credentials(#[from] CertError),
    /// The UDP socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// `bind` was called outside a tokio runtime.
    #[error("NetEndpoint::bind must be called inside a tokio runtime")]
    NoRuntime,
    /// Unusable [`NetConfig`].
    #[error("invalid network configuration: {0}")]
    Config(String),
}

/// Why [`NetEndpoint::send`](crate::NetEndpoint::send) did not queue a message.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The link's queue was full (in frames or bytes): the peer is too slow. Its link was closed.
    #[error("send queue full: the peer is too slow, its link was closed")]
    QueueFull,
    /// No link to the peer and no address to dial.
    #[error("no link to the peer and no address to dial")]
    NoAddress,
    /// The message cannot be framed (no body, or larger than `max_frame_len`).
    #[error("cannot frame the message: {0}")]
    Frame(#[from] FrameError),
    /// The link went down while sending; a `LinkClosed` event follows.
    #[error("the link to the peer went down")]
    LinkDown,
    /// The endpoint was shut down.
    #[error("the endpoint is shut down")]
    Shutdown,
    /// The peer is banned for a while after going over a bound (see `NetEndpoint::ban`).
    #[error("the peer is refused for now: {0}")]
    Banned(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bounds_are_checked() {
        assert!(NetConfig::default().transport_config().is_ok());
        let invalid = [
            NetConfig {
                data_rate_per_link: 0,
                ..NetConfig::default()
            },
            NetConfig {
                control_rate_per_link: 0,
                ..NetConfig::default()
            },
            NetConfig {
                max_connections: 0,
                ..NetConfig::default()
            },
            NetConfig {
                recheck_interval: Duration::ZERO,
                ..NetConfig::default()
            },
            NetConfig {
                max_queued_bytes_per_link: canopy_proto::DEFAULT_MAX_FRAME_LEN,
                ..NetConfig::default()
            },
        ];
        for config in invalid {
            assert!(
                matches!(config.transport_config(), Err(NetError::Config(_))),
                "{config:?}"
            );
        }
    }
}
