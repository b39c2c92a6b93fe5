//! The node's QUIC endpoint: accepts and dials links, keeps the link table, routes sends.
//!
//! The link table maps each peer to its live connections (normally one; two while both sides
//! dialled each other at once) and to at most one dial in progress. Sends go to the newest
//! live connection, or queue on the dial in progress. A peer's `LinkUp` is emitted when it gets its first
//! established connection, `LinkClosed` when its last connection (or dial) ends.
//!
//! One session per identity: a newer inbound connection from a node replaces its older
//! connections, which the node sees as `LinkClosed` (emitted once the old connection's
//! readers have stopped) followed by `LinkUp`, logged at warn and counted
//! (`sessions_replaced`). Only our own dial established within [`SIMULTANEOUS_DIAL_WINDOW`]
//! stays beside it (the two nodes dialled each other at once, and neither side's queued
//! messages may be lost). A restarted peer so takes its place at once, and a copy of a
//! certificate never shares a node's place silently.
//! Established connections are bounded by [`NetConfig::max_connections`]; inbound ones over
//! the bound are refused before the handshake. Establishing and running connections is in
//! `session`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use canopy_proto::{Body, ControlMessage, FrameCodec};
use quinn::{Connection, VarInt};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::authority::Authority;
use crate::config::{NetConfig, NetError, NetEvent, SendError};
use crate::crl::RevocationSet;
use crate::events::{self, EventSenders, NetEvents};
use crate::fault::{FaultSocket, Faults};
use crate::identity::{Identity, NodeId};
use crate::link::{self, LinkQueues, LinkSenders, CLOSE_IDENTITY, CLOSE_NORMAL};
use crate::live::{LiveTls, TlsState};
use crate::refresh::Announcements;
use crate::session;
use crate::stats::{bump, Counters, NetStats};
use crate::sweep::{self, PeerCert};
use crate::tls::Credentials;

/// Two nodes that dial each other at once each end up with an inbound and an outbound
/// connection; an inbound connection that comes later than this after our own dial was
/// established is a new session and replaces our dial.
pub const SIMULTANEOUS_DIAL_WINDOW: Duration = Duration::from_secs(2);

/// How long [`NetEndpoint::shutdown`] waits for connections to finish closing, and how long a
/// replacing connection waits for the replaced one's readers to stop.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A node's network endpoint. Cheap to clone; the endpoint closes when the last clone is
/// dropped or [`NetEndpoint::shutdown`] is called.
#[derive(Clone)]
pub struct NetEndpoint {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for NetEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetEndpoint")
            .field("identity", &self.handle.shared.identity)
            .field("local_addr", &self.handle.shared.local_addr)
            .finish_non_exhaustive()
    }
}

/// Owned by the user-facing clones only: dropping the last one closes the endpoint, which
/// ends every task (they hold [`Shared`], not this).
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.lock().shut_down = true;
        self.shared
            .endpoint
            .close(CLOSE_NORMAL, b"endpoint dropped");
    }
}

pub(crate) struct Shared {
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) identity: Identity,
    /// The own certificate, the trust bundle and revocation lists, swapped on reload.
    pub(crate) tls: Arc<LiveTls>,
    /// Peers' announcements of the certificate their next connection presents.
    pub(crate) announcements: Arc<Announcements>,
    pub(crate) config: NetConfig,
    codec: FrameCodec,
    pub(crate) events: EventSenders,
    pub(crate) runtime: tokio::runtime::Handle,
    local_addr: SocketAddr,
    state: Mutex<State>,
    /// Switches that make the socket drop datagrams (fault injection).
    faults: Arc<Faults>,
    pub(crate) counters: Arc<Counters>,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) links: HashMap<NodeId, Vec<Link>>,
    pub(crate) next_link: u64,
    pub(crate) shut_down: bool,
    /// Peers refused until the instant, with the reason (see [`NetEndpoint::ban`]).
    pub(crate) banned: HashMap<NodeId, (tokio::time::Instant, String)>,
}

impl State {
    /// Why `peer` is refused right now, if it is.
    pub(crate) fn ban_of(&self, peer: NodeId) -> Option<String> {
        let (until, reason) = self.banned.get(&peer)?;
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        (!left.is_zero()).then(|| format!("{reason}; refused for another {left:.1?}"))
    }
}

/// One connection to a peer, or a dial in progress (`conn` is `None`).
pub(crate) struct Link {
    pub(crate) id: u64,
    pub(crate) senders: LinkSenders,
    pub(crate) conn: Option<Connection>,
    /// Accepted from the peer rather than dialled.
    pub(crate) inbound: bool,
    /// The peer's leaf certificate, once the connection is established.
    pub(crate) cert: Option<PeerCert>,
    /// Resolves (with an error) once the task running the link has ended and its readers
    /// have stopped.
    pub(crate) ended: Option<oneshot::Receiver<()>>,
    /// When the connection was established.
    pub(crate) established: Option<tokio::time::Instant>,
    /// SHA-256 of the certificate this node presented on it (the one current then).
    pub(crate) own_cert: Option<[u8; 32]>,
}

impl Link {
    /// Established and neither closed nor removed.
    pub(crate) fn is_live(&self) -> bool {
        self.conn
            .as_ref()
            .is_some_and(|c| c.close_reason().is_none())
            && !self.senders.control.is_closed()
    }
}

/// A message encoded as one frame: cheap to clone, the same bytes queued on every link.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    bytes: Bytes,
    /// A multicast: it goes on the data stream.
    is_data: bool,
}

impl NetEndpoint {
    /// Binds a quinn endpoint (server + client) on `addr`; inbound events go to the returned
    /// [`NetEvents`] lanes. Must be called inside a tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        creds: Credentials,
        config: NetConfig,
    ) -> Result<(NetEndpoint, NetEvents), NetError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetError::NoRuntime)?;
        let transport = Arc::new(config.transport_config()?);
        let identity = creds.identity().clone();
        let tls = LiveTls::new(TlsState::build(
            creds,
            RevocationSet::default(),
            RevocationSet::default(),
        )?);
        let server = tls.quic_server_config(transport.clone())?;
        let client = tls.quic_client_config(transport)?;
        let faults = Arc::new(Faults::default());
        let mut endpoint = bind_socket(addr, server, faults.clone())
            .map_err(|source| NetError::Bind { addr, source })?;
        endpoint.set_default_client_config(client);
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| NetError::Bind { addr, source })?;
        let (events, receiver) = events::lanes();
        let shared = Arc::new(Shared {
            endpoint,
            identity,
            tls,
            announcements: Arc::new(Announcements::default()),
            codec: FrameCodec::new(config.max_frame_len),
            config,
            events,
            runtime,
            local_addr,
            state: Mutex::new(State::default()),
            faults,
            counters: Arc::new(Counters::default()),
        });
        info!(node = shared.identity.node_id, %local_addr, "canopy endpoint listening");
        shared.runtime.spawn(session::accept_loop(shared.clone()));
        shared.runtime.spawn(sweep::sweeper(shared.clone()));
        Ok((
            NetEndpoint {
                handle: Arc::new(Handle { shared }),
            },
            receiver,
        ))
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    pub(crate) fn shared_arc(&self) -> Arc<Shared> {
        self.handle.shared.clone()
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.shared.local_addr
    }

    /// The largest frame body this endpoint accepts and sends.
    pub fn max_frame_len(&self) -> usize {
        self.handle.shared.config.max_frame_len
    }

    /// Signs with the own certificate key and checks others' signatures against the CA and
    /// the revocation lists, as of now: a reload does not change an `Authority` already
    /// handed out (its certificate and key stay a matching pair); ask again after
    /// [`NetEndpoint::tls_generation`] moves.
    pub fn authority(&self) -> Authority {
        self.handle.shared.tls.current().authority.clone()
    }

    /// The identity the own certificate names.
    pub fn identity(&self) -> &Identity {
        &self.handle.shared.identity
    }

    /// Non-blocking: queues `msg` on the link to `peer`, dialling `addr` if there is no link yet
    /// (the dial runs in a spawned task; messages queue meanwhile). Multicast bodies go on the
    /// data stream, everything else on the control stream. If the link's bounded queue is full
    /// (`control_queue` / `data_queue` frames, or `max_queued_bytes_per_link` bytes in both
    /// queues) the peer is too slow: its link is closed (`LinkClosed` with reason "send queue
    /// full" or "send queue over N bytes") and `Err(QueueFull)` returned. `Err(NoAddress)` if
    /// there is no link and `addr` is `None`.
    pub fn send(
        &self,
        peer: NodeId,
        addr: Option<SocketAddr>,
        msg: ControlMessage,
    ) -> Result<(), SendError> {
        let frame = self.encode(&msg)?;
        self.send_encoded(peer, addr, &frame)
    }

    /// Encodes `msg` once, for [`NetEndpoint::send_encoded`] to queue on any number of links
    /// (a router forwarding a multicast to several children).
    pub fn encode(&self, msg: &ControlMessage) -> Result<EncodedFrame, SendError> {
        let mut frame = BytesMut::new();
        self.handle.shared.codec.encode_into(msg, &mut frame)?;
        Ok(EncodedFrame {
            bytes: frame.freeze(),
            is_data: matches!(msg.body, Some(Body::Multicast(_))),
        })
    }

    /// [`NetEndpoint::send`] of a message already encoded.
    pub fn send_encoded(
        &self,
        peer: NodeId,
        addr: Option<SocketAddr>,
        frame: &EncodedFrame,
    ) -> Result<(), SendError> {
        let shared = &self.handle.shared;
        let (is_data, frame) = (frame.is_data, frame.bytes.clone());
        let result = {
            let mut state = shared.lock();
            if state.shut_down {
                return Err(SendError::Shutdown);
            }
            // A banned peer is not dialled either: nothing we send would bring it back early.
            if let Some(ban) = state.ban_of(peer) {
                return Err(SendError::Banned(ban));
            }
            let senders = match state.links.get(&peer).and_then(|links| pick(links)) {
                Some(link) => link.senders.clone(),
                None => {
                    let addr = addr.ok_or(SendError::NoAddress)?;
                    shared.start_dial(&mut state, peer, addr)
                }
            };
            let queue = if is_data {
                &senders.data
            } else {
                &senders.control
            };
            queue_frame(&senders, queue, frame)
        };
        match result {
            Ok(()) => Ok(()),
            Err(Some(reason)) => {
                warn!(peer, %reason, "closing the link to the slow peer");
                if shared.close_peer(peer, link::CLOSE_QUEUE_FULL, &reason) {
                    bump(&shared.counters.closed_queue_full);
                }
                Err(SendError::QueueFull)
            }
            Err(None) => Err(SendError::LinkDown),
        }
    }

    /// Counters of refusals and closes since the endpoint was bound, and the number of
    /// established connections.
    pub fn stats(&self) -> NetStats {
        self.handle.shared.counters.snapshot()
    }

    /// Bytes waiting in the send queues of every link, and in the fullest one.
    pub fn send_queue_bytes(&self) -> (u64, u64) {
        let state = self.handle.shared.lock();
        state
            .links
            .values()
            .flatten()
            .map(|link| link.senders.budget.queued() as u64)
            .fold((0, 0), |(sum, max), queued| (sum + queued, max.max(queued)))
    }

    /// The remote UDP address of the newest live connection to `peer`, if any (where the peer
    /// really is, as opposed to where it claims to be).
    pub fn remote_addr(&self, peer: NodeId) -> Option<SocketAddr> {
        let state = self.handle.shared.lock();
        let links = state.links.get(&peer)?;
        let link = links.iter().rev().find(|l| l.is_live())?;
        link.conn.as_ref().map(Connection::remote_address)
    }

    /// Closes every established connection whose peer certificate satisfies `pred`, with
    /// [`CLOSE_IDENTITY`] and `reason` (for example, certificates just
    /// revoked). A peer left without connections gets a `LinkClosed` with `reason`. Returns
    /// the peers whose connections were closed, ascending, each once.
    pub fn close_peers_where(&self, reason: &str, pred: impl Fn(&PeerCert) -> bool) -> Vec<NodeId> {
        let mut peers = self
            .handle
            .shared
            .close_links_where(CLOSE_IDENTITY, |cert| pred(cert).then(|| reason.to_owned()));
        peers.sort_unstable();
        peers.dedup();
        peers
    }

    /// Closes the link(s) to `peer` with `reason` and refuses its new connections for `time`:
    /// a peer that went over a bound does not get to repeat it at once on a fresh connection.
    pub fn ban(&self, peer: NodeId, time: Duration, reason: &str) {
        if !time.is_zero() {
            let now = tokio::time::Instant::now();
            let mut state = self.handle.shared.lock();
            state.banned.retain(|_, (until, _)| *until > now);
            state.banned.insert(peer, (now + time, reason.to_owned()));
        }
        warn!(
            peer,
            reason,
            ?time,
            "closing link and refusing the peer for a while"
        );
        self.handle.shared.close_peer(peer, CLOSE_IDENTITY, reason);
    }

    /// Closes the link(s) to `peer` like [`NetEndpoint::close_link`] if there are any;
    /// quietly does nothing otherwise. Returns whether a link was closed.
    pub fn close_link_if_open(&self, peer: NodeId, reason: &str) -> bool {
        let open = self.handle.shared.lock().links.contains_key(&peer);
        open && {
            debug!(peer, reason, "closing link");
            self.handle.shared.close_peer(peer, CLOSE_NORMAL, reason)
        }
    }

    /// Whether a dial to `peer` is under way and no connection to it is live: closing it
    /// would throw away a handshake that is merely slow.
    pub fn is_dialling(&self, peer: NodeId) -> bool {
        let state = self.handle.shared.lock();
        state.links.get(&peer).is_some_and(|links| {
            !links.iter().any(Link::is_live)
                && links
                    .iter()
                    .any(|l| l.conn.is_none() && !l.senders.control.is_closed())
        })
    }

    /// Closes the link(s) to `peer` with a reason (sent as the QUIC close reason and logged).
    pub fn close_link(&self, peer: NodeId, reason: &str) {
        info!(peer, reason, "closing link");
        self.handle.shared.close_peer(peer, CLOSE_NORMAL, reason);
    }

    /// Peers with at least one established, open connection, in ascending order.
    pub fn connected_peers(&self) -> Vec<NodeId> {
        let state = self.handle.shared.lock();
        let mut peers: Vec<NodeId> = state
            .links
            .iter()
            .filter(|(_, links)| links.iter().any(Link::is_live))
            .map(|(peer, _)| *peer)
            .collect();
        peers.sort_unstable();
        peers
    }

    /// Cuts the node off the network (or reconnects it): while cut, every datagram in and out
    /// is dropped silently, so peers see the node as dead or partitioned away and nothing it
    /// sends, close frames included, arrives. For fault injection in tests, chaos runs and
    /// benchmarks; a production node never sets it.
    pub fn set_cut(&self, cut: bool) {
        self.handle.shared.faults.set_cut(cut);
    }

    /// Partitions the node from these addresses (replacing any earlier set; empty heals):
    /// datagrams to and from them are dropped silently. Fault injection, like
    /// [`NetEndpoint::set_cut`].
    pub fn set_blocked(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        self.handle
            .shared
            .faults
            .set_blocked(addrs.into_iter().collect());
    }

    /// Closes everything and waits briefly for the endpoint to go idle. No `LinkClosed` events
    /// are emitted for links closed by the shutdown.
    pub async fn shutdown(&self) {
        let shared = &self.handle.shared;
        let links = {
            let mut state = shared.lock();
            state.shut_down = true;
            std::mem::take(&mut state.links)
        };
        for conn in links.values().flatten().filter_map(|l| l.conn.as_ref()) {
            conn.close(CLOSE_NORMAL, b"shutdown");
        }
        shared.endpoint.close(CLOSE_NORMAL, b"shutdown");
        if tokio::time::timeout(SHUTDOWN_GRACE, shared.endpoint.wait_idle())
            .await
            .is_err()
        {
            debug!("endpoint did not go idle within {SHUTDOWN_GRACE:?}");
        }
        info!(node = shared.identity.node_id, "canopy endpoint shut down");
    }
}

/// A quinn endpoint on `addr` whose socket can be cut off (see [`NetEndpoint::set_cut`]).
fn bind_socket(
    addr: SocketAddr,
    server: quinn::ServerConfig,
    faults: Arc<Faults>,
) -> std::io::Result<quinn::Endpoint> {
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for quinn"))?;
    let socket = std::net::UdpSocket::bind(addr)?;
    let socket = Arc::new(FaultSocket::new(runtime.wrap_udp_socket(socket)?, faults));
    quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        runtime,
    )
}

/// Queues `frame` on `queue` of a link within its byte budget. `Err(Some(reason))` if the
/// peer is too slow (a bound was hit), `Err(None)` if the link is gone.
fn queue_frame(
    senders: &LinkSenders,
    queue: &tokio::sync::mpsc::Sender<bytes::Bytes>,
    frame: bytes::Bytes,
) -> Result<(), Option<String>> {
    let len = frame.len();
    if !senders.budget.reserve(len) {
        return Err(Some(format!(
            "send queue over {} bytes",
            senders.budget.max()
        )));
    }
    queue.try_send(frame).map_err(|e| {
        senders.budget.release(len);
        match e {
            TrySendError::Full(_) => Some("send queue full".to_owned()),
            TrySendError::Closed(_) => None,
        }
    })
}

/// The link to send on: the newest live connection, else the dial in progress.
fn pick(links: &[Link]) -> Option<&Link> {
    // The newest live connection: of two that the nodes dialled at once, either works; a
    // connection older than the window has already been replaced by a newer one (a peer
    // that restarted), and the newer one is the one that reaches it.
    links
        .iter()
        .rev()
        .find(|l| l.is_live())
        .or_else(|| links.iter().rev().find(|l| l.conn.is_none()))
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the table consistent (no multi-step updates).
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a dial-in-progress link for `peer` and spawns the dial.
    pub(crate) fn start_dial(
        self: &Arc<Self>,
        state: &mut State,
        peer: NodeId,
        addr: SocketAddr,
    ) -> LinkSenders {
        let (senders, queues) = self.queues();
        let (ended_tx, ended_rx) = oneshot::channel();
        state.next_link += 1;
        let id = state.next_link;
        state.links.entry(peer).or_default().push(Link {
            id,
            senders: senders.clone(),
            conn: None,
            inbound: false,
            cert: None,
            established: None,
            ended: Some(ended_rx),
            own_cert: None,
        });
        debug!(peer, %addr, "dialling");
        self.runtime.spawn(session::dial(
            self.clone(),
            peer,
            addr,
            id,
            queues,
            ended_tx,
        ));
        senders
    }

    /// Fresh send queues for a link.
    pub(crate) fn queues(&self) -> (LinkSenders, LinkQueues) {
        link::queues(
            self.config.control_queue,
            self.config.data_queue,
            self.config.max_queued_bytes_per_link,
        )
    }

    /// Removes every link to `peer`, closes their connections, emits `LinkClosed`. Returns
    /// whether there was any.
    pub(crate) fn close_peer(&self, peer: NodeId, code: VarInt, reason: &str) -> bool {
        let removed = self.lock().links.remove(&peer);
        let Some(links) = removed else { return false };
        for conn in links.iter().filter_map(|l| l.conn.as_ref()) {
            conn.close(code, reason.as_bytes());
        }
        self.emit_now(NetEvent::LinkClosed {
            peer,
            reason: reason.to_owned(),
        });
        true
    }

    /// Removes one link; returns the `LinkClosed` event if it was the peer's last.
    pub(crate) fn remove_link(&self, peer: NodeId, id: u64, reason: String) -> Option<NetEvent> {
        let mut state = self.lock();
        let links = state.links.get_mut(&peer)?;
        let before = links.len();
        links.retain(|l| l.id != id);
        if links.len() == before {
            // Already removed by close_link, a full queue or shutdown, which reported it.
            return None;
        }
        if links.is_empty() {
            state.links.remove(&peer);
            Some(NetEvent::LinkClosed { peer, reason })
        } else {
            debug!(peer, %reason, "one of two connections to the peer ended");
            None
        }
    }

    /// Emits a control event from a synchronous context without blocking.
    pub(crate) fn emit_now(&self, event: NetEvent) {
        match self.events.control.try_send(event) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(event)) => {
                let events = self.events.control.clone();
                self.runtime.spawn(async move {
                    let _ = events.send(event).await;
                });
            }
        }
    }
}
