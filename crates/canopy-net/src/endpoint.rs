//! The node's QUIC endpoint: accepts and dials links, keeps the link table, routes sends.
//!
//! The link table maps each peer to its live connections (normally one; two while both sides
//! dialled each other at once) and to at most one dial in progress. Sends go to the newest
//! live connection, or queue on the dial. A peer's `LinkUp` is emitted when it gets its first
//! established connection, `LinkClosed` when its last connection (or dial) ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use canopy_proto::{Body, ControlMessage, FrameCodec};
use quinn::{Connection, VarInt};
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tracing::{debug, info, warn};

use crate::certs::parse_identity;
use crate::config::{NetConfig, NetError, NetEvent, SendError, EVENT_QUEUE};
use crate::fault::{FaultSocket, Faults};
use crate::identity::{server_name_for, Identity, NodeId};
use crate::link::{self, LinkEnd, LinkQueues, LinkSenders, CLOSE_IDENTITY, CLOSE_NORMAL};
use crate::tls::Credentials;

/// How long [`NetEndpoint::shutdown`] waits for connections to finish closing.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

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

struct Shared {
    endpoint: quinn::Endpoint,
    identity: Identity,
    config: NetConfig,
    codec: FrameCodec,
    events: mpsc::Sender<NetEvent>,
    runtime: tokio::runtime::Handle,
    local_addr: SocketAddr,
    state: Mutex<State>,
    /// Switches that make the socket drop datagrams (fault injection).
    faults: Arc<Faults>,
}

#[derive(Default)]
struct State {
    links: HashMap<NodeId, Vec<Link>>,
    next_link: u64,
    shut_down: bool,
}

/// One connection to a peer, or a dial in progress (`conn` is `None`).
struct Link {
    id: u64,
    senders: LinkSenders,
    conn: Option<Connection>,
}

impl Link {
    fn is_live(&self) -> bool {
        self.conn
            .as_ref()
            .is_some_and(|c| c.close_reason().is_none())
            && !self.senders.control.is_closed()
    }
}

impl NetEndpoint {
    /// Binds a quinn endpoint (server + client) on `addr`; inbound events go to the returned
    /// receiver. Must be called inside a tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        creds: Credentials,
        config: NetConfig,
    ) -> Result<(NetEndpoint, mpsc::Receiver<NetEvent>), NetError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetError::NoRuntime)?;
        let transport = Arc::new(config.transport_config()?);
        let server = creds.quic_server_config(transport.clone())?;
        let client = creds.quic_client_config(transport)?;
        let faults = Arc::new(Faults::default());
        let mut endpoint = bind_socket(addr, server, faults.clone())
            .map_err(|source| NetError::Bind { addr, source })?;
        endpoint.set_default_client_config(client);
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| NetError::Bind { addr, source })?;
        let (events, receiver) = mpsc::channel(EVENT_QUEUE);
        let shared = Arc::new(Shared {
            endpoint,
            identity: creds.identity().clone(),
            codec: FrameCodec::new(config.max_frame_len),
            config,
            events,
            runtime,
            local_addr,
            state: Mutex::new(State::default()),
            faults,
        });
        info!(node = shared.identity.node_id, %local_addr, "canopy endpoint listening");
        shared.runtime.spawn(accept_loop(shared.clone()));
        Ok((
            NetEndpoint {
                handle: Arc::new(Handle { shared }),
            },
            receiver,
        ))
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.shared.local_addr
    }

    /// The identity the own certificate names.
    pub fn identity(&self) -> &Identity {
        &self.handle.shared.identity
    }

    /// Non-blocking: queues `msg` on the link to `peer`, dialling `addr` if there is no link yet
    /// (the dial runs in a spawned task; messages queue meanwhile). Multicast bodies go on the
    /// data stream, everything else on the control stream. If the link's bounded queue is full
    /// the peer is too slow: its link is closed (`LinkClosed` with reason "send queue full") and
    /// `Err(QueueFull)` returned. `Err(NoAddress)` if there is no link and `addr` is `None`.
    pub fn send(
        &self,
        peer: NodeId,
        addr: Option<SocketAddr>,
        msg: ControlMessage,
    ) -> Result<(), SendError> {
        let shared = &self.handle.shared;
        let is_data = matches!(msg.body, Some(Body::Multicast(_)));
        let mut frame = BytesMut::new();
        shared.codec.encode_into(&msg, &mut frame)?;
        let frame = frame.freeze();
        let result = {
            let mut state = shared.lock();
            if state.shut_down {
                return Err(SendError::Shutdown);
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
            queue.try_send(frame)
        };
        match result {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                warn!(peer, "send queue full, closing the link to the slow peer");
                shared.close_peer(peer, link::CLOSE_QUEUE_FULL, "send queue full");
                Err(SendError::QueueFull)
            }
            Err(TrySendError::Closed(_)) => Err(SendError::LinkDown),
        }
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

/// The link to send on: the newest live connection, else the dial in progress.
fn pick(links: &[Link]) -> Option<&Link> {
    links
        .iter()
        .rev()
        .find(|l| l.is_live())
        .or_else(|| links.iter().rev().find(|l| l.conn.is_none()))
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the table consistent (no multi-step updates).
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a dial-in-progress link for `peer` and spawns the dial.
    fn start_dial(
        self: &Arc<Self>,
        state: &mut State,
        peer: NodeId,
        addr: SocketAddr,
    ) -> LinkSenders {
        let (senders, queues) = link::queues(self.config.control_queue, self.config.data_queue);
        state.next_link += 1;
        let id = state.next_link;
        state.links.entry(peer).or_default().push(Link {
            id,
            senders: senders.clone(),
            conn: None,
        });
        debug!(peer, %addr, "dialling");
        self.runtime
            .spawn(dial(self.clone(), peer, addr, id, queues));
        senders
    }

    /// Removes every link to `peer`, closes their connections, emits `LinkClosed`.
    fn close_peer(&self, peer: NodeId, code: VarInt, reason: &str) {
        let removed = self.lock().links.remove(&peer);
        let Some(links) = removed else { return };
        for conn in links.iter().filter_map(|l| l.conn.as_ref()) {
            conn.close(code, reason.as_bytes());
        }
        self.emit_now(NetEvent::LinkClosed {
            peer,
            reason: reason.to_owned(),
        });
    }

    /// Removes one link; returns the `LinkClosed` event if it was the peer's last.
    fn remove_link(&self, peer: NodeId, id: u64, reason: String) -> Option<NetEvent> {
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

    /// Emits an event from a synchronous context without blocking.
    fn emit_now(&self, event: NetEvent) {
        match self.events.try_send(event) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(event)) => {
                let events = self.events.clone();
                self.runtime.spawn(async move {
                    let _ = events.send(event).await;
                });
            }
        }
    }

    /// Puts an established connection in the table; `dialled` is the dial link it completes,
    /// with that link's queues. Returns the link id, its queues and whether it is the peer's
    /// first established connection; `None` if the dial was cancelled or we are shutting down.
    fn register(
        &self,
        peer: NodeId,
        conn: &Connection,
        dialled: Option<(u64, LinkQueues)>,
    ) -> Option<(u64, LinkQueues, bool)> {
        let mut state = self.lock();
        if state.shut_down {
            return None;
        }
        let first = !state
            .links
            .get(&peer)
            .is_some_and(|links| links.iter().any(Link::is_live));
        match dialled {
            Some((id, queues)) => {
                let link = state
                    .links
                    .get_mut(&peer)?
                    .iter_mut()
                    .find(|l| l.id == id)?;
                link.conn = Some(conn.clone());
                Some((id, queues, first))
            }
            None => {
                state.next_link += 1;
                let id = state.next_link;
                let (senders, queues) =
                    link::queues(self.config.control_queue, self.config.data_queue);
                state.links.entry(peer).or_default().push(Link {
                    id,
                    senders,
                    conn: Some(conn.clone()),
                });
                Some((id, queues, first))
            }
        }
    }

    /// Runs an authenticated connection as a link until it ends.
    async fn run_link(&self, conn: Connection, peer: Identity, dialled: Option<(u64, LinkQueues)>) {
        let node = peer.node_id;
        let Some((id, queues, first)) = self.register(node, &conn, dialled) else {
            conn.close(CLOSE_NORMAL, b"link cancelled");
            return;
        };
        info!(peer = node, remote = %conn.remote_address(), role = %peer.role, "link up");
        if first {
            let _ = self
                .events
                .send(NetEvent::LinkUp { peer: peer.clone() })
                .await;
        }
        let end = link::drive(
            &conn,
            &peer,
            queues,
            &self.events,
            self.config.max_frame_len,
        )
        .await;
        let reason = match end {
            LinkEnd::Local { code, reason } => match conn.close_reason() {
                Some(err) => link::describe(&err),
                None => {
                    warn!(peer = node, %reason, "closing link");
                    conn.close(code, reason.as_bytes());
                    reason
                }
            },
            LinkEnd::Gone(reason) => reason,
        };
        info!(peer = node, %reason, "connection ended");
        if let Some(event) = self.remove_link(node, id, reason) {
            let _ = self.events.send(event).await;
        }
    }

    /// Checks an inbound connection's certificate identity and runs it as a link.
    async fn handle_incoming(self: Arc<Self>, incoming: quinn::Incoming) {
        let remote = incoming.remote_address();
        let conn = match incoming.await {
            Ok(conn) => conn,
            Err(e) => {
                warn!(%remote, error = %e, "refused inbound connection");
                return;
            }
        };
        let peer = match verified_identity(&conn) {
            Ok(peer) if peer.cluster == self.identity.cluster => peer,
            Ok(peer) => {
                let reason = format!("peer is in cluster {:?}", peer.cluster);
                warn!(%remote, %reason, "refused inbound connection");
                conn.close(CLOSE_IDENTITY, reason.as_bytes());
                return;
            }
            Err(reason) => {
                warn!(%remote, %reason, "refused inbound connection");
                conn.close(CLOSE_IDENTITY, reason.as_bytes());
                return;
            }
        };
        self.run_link(conn, peer, None).await;
    }
}

async fn accept_loop(shared: Arc<Shared>) {
    while let Some(incoming) = shared.endpoint.accept().await {
        shared
            .runtime
            .spawn(shared.clone().handle_incoming(incoming));
    }
    debug!(node = shared.identity.node_id, "accept loop ended");
}

/// Connects to `peer` at `addr`, checks that the certificate names `peer`, runs the link.
async fn dial(shared: Arc<Shared>, peer: NodeId, addr: SocketAddr, id: u64, queues: LinkQueues) {
    match connect(&shared, peer, addr).await {
        Ok((conn, identity)) => shared.run_link(conn, identity, Some((id, queues))).await,
        Err(reason) => {
            warn!(peer, %addr, %reason, "dial failed");
            if let Some(event) = shared.remove_link(peer, id, format!("dial failed: {reason}")) {
                let _ = shared.events.send(event).await;
            }
        }
    }
}

async fn connect(
    shared: &Shared,
    peer: NodeId,
    addr: SocketAddr,
) -> Result<(Connection, Identity), String> {
    let cluster = &shared.identity.cluster;
    let conn = shared
        .endpoint
        .connect(addr, &server_name_for(cluster, peer))
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| link::describe(&e))?;
    let identity = verified_identity(&conn).map_err(|reason| close_with(&conn, reason))?;
    if identity.node_id != peer || identity.cluster != *cluster {
        let reason = format!("dialled node {peer} of {cluster} but reached {identity}");
        return Err(close_with(&conn, reason));
    }
    Ok((conn, identity))
}

fn close_with(conn: &Connection, reason: String) -> String {
    conn.close(CLOSE_IDENTITY, reason.as_bytes());
    reason
}

/// The identity named by the peer's verified certificate.
fn verified_identity(conn: &Connection) -> Result<Identity, String> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| "peer presented no certificate".to_string())?;
    let leaf = certs
        .first()
        .ok_or_else(|| "peer presented an empty certificate chain".to_string())?;
    parse_identity(leaf).map_err(|e| format!("peer certificate: {e}"))
}
