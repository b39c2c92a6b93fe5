//! Establishing and running connections: accepting and dialling, checking the identity a
//! peer's certificate names, registering the connection in the link table (one inbound
//! session per node: a newer one replaces the older) and running it as a link until it ends.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use quinn::{Connection, ConnectionError};
use rustls::pki_types::CertificateDer;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::certs::parse_identity;
use crate::config::NetEvent;
use crate::endpoint::{Link, Shared, SHUTDOWN_GRACE, SIMULTANEOUS_DIAL_WINDOW};
use crate::identity::{server_name_for, Identity, NodeId};
use crate::limits::ReadLimits;
use crate::link::{self, Cause, LinkEnd, LinkQueues, CLOSE_BUSY, CLOSE_IDENTITY, CLOSE_NORMAL};
use crate::stats::{bump, ConnSlot, HandshakeSlot};
use crate::sweep::PeerCert;

/// The close reason of a session replaced by a newer one from the same node.
const REPLACED: &str = "replaced by a newer connection from the same certificate";

/// Where a connection being registered comes from.
enum Origin {
    /// It completes the dial link `id`, whose queues these are.
    Dialled { id: u64, queues: LinkQueues },
    /// The peer dialled us; `ended` resolves when the link's task ends.
    Inbound { ended: oneshot::Receiver<()> },
}

/// A connection put in the link table.
struct Registered {
    id: u64,
    queues: LinkQueues,
    /// Whether it is the peer's only live connection.
    first: bool,
    /// The ends of the older inbound sessions it replaced.
    replaced: Vec<oneshot::Receiver<()>>,
    /// The links it is moving away from (closed after a grace if the peer does not).
    retire: Vec<u64>,
}

impl Shared {
    /// Puts an established connection in the table. An inbound one replaces the peer's older
    /// live inbound connections (closed here; their ends are returned). `None` if the dial was
    /// cancelled or we are shutting down.
    fn register(
        &self,
        peer: NodeId,
        conn: &Connection,
        cert: PeerCert,
        origin: Origin,
    ) -> Option<Registered> {
        let mut state = self.lock();
        if state.shut_down {
            return None;
        }
        let mut replaced = Vec::new();
        // One session per certificate: a newer inbound connection replaces the older ones.
        if let (Origin::Inbound { .. }, Some(ban)) = (&origin, state.ban_of(peer)) {
            bump(&self.counters.refused_banned);
            debug!(peer, remote = %conn.remote_address(), %ban, "refused a banned peer");
            conn.close(CLOSE_IDENTITY, ban.as_bytes());
            return None;
        }
        // Checked under the table's lock: trust that changed during the handshake (a
        // revocation, a CA retired) either refuses it here or finds it in the table when it
        // re-checks the live links.
        let tls = self.tls.current();
        if let Err(e) = tls.check_peer(&cert.der, rustls::pki_types::UnixTime::now()) {
            bump(&self.counters.closed_untrusted);
            let reason = format!("peer certificate no longer accepted: {e}");
            warn!(peer, remote = %conn.remote_address(), %reason, "refused a connection");
            conn.close(CLOSE_IDENTITY, reason.as_bytes());
            return None;
        }
        // A node that announced this very certificate on its live link is moving that link
        // to it: the new connection stands beside the old ones, which are closed after a grace.
        let retire = match origin {
            Origin::Inbound { .. } => self.moved_from(&state, peer, &cert),
            Origin::Dialled { .. } => Vec::new(),
        };
        let moving = !retire.is_empty();
        if moving {
            info!(peer, remote = %conn.remote_address(), "peer moves its link to a renewed certificate");
            bump(&self.counters.links_moved);
        }
        let own_cert = tls.own_digest();
        if let (false, Origin::Inbound { .. }, Some(links)) =
            (moving, &origin, state.links.get_mut(&peer))
        {
            // Our own dial stays only if it is as young as a simultaneous dial would be: a
            // later connection with the same certificate is a new session (the peer
            // restarted, or a copy of its certificate came up) and takes the place, visibly.
            let superseded = |l: &Link| {
                l.is_live()
                    && (l.inbound
                        || l.established
                            .is_some_and(|at| at.elapsed() > SIMULTANEOUS_DIAL_WINDOW))
            };
            let (old, keep): (Vec<Link>, Vec<Link>) =
                std::mem::take(links).into_iter().partition(superseded);
            *links = keep;
            for mut old in old {
                if let Some(old_conn) = &old.conn {
                    warn!(
                        peer,
                        old = %old_conn.remote_address(),
                        new = %conn.remote_address(),
                        "{REPLACED}"
                    );
                    // Closed before its queues are dropped, so its writer sees the close.
                    old_conn.close(CLOSE_IDENTITY, REPLACED.as_bytes());
                }
                bump(&self.counters.sessions_replaced);
                replaced.extend(old.ended.take());
            }
        }
        let first = !state
            .links
            .get(&peer)
            .is_some_and(|links| links.iter().any(Link::is_live));
        match origin {
            Origin::Dialled { id, queues } => {
                let link = state
                    .links
                    .get_mut(&peer)?
                    .iter_mut()
                    .find(|l| l.id == id)?;
                link.conn = Some(conn.clone());
                link.cert = Some(cert);
                link.own_cert = own_cert;
                link.established = Some(tokio::time::Instant::now());
                Some(Registered {
                    id,
                    queues,
                    first,
                    replaced,
                    retire,
                })
            }
            Origin::Inbound { ended } => {
                state.next_link += 1;
                let id = state.next_link;
                let (senders, queues) = self.queues();
                state.links.entry(peer).or_default().push(Link {
                    id,
                    senders,
                    conn: Some(conn.clone()),
                    inbound: true,
                    cert: Some(cert),
                    established: Some(tokio::time::Instant::now()),
                    ended: Some(ended),
                    own_cert,
                });
                Some(Registered {
                    id,
                    queues,
                    first,
                    replaced,
                    retire,
                })
            }
        }
    }

    /// Runs an authenticated connection as a link until it ends. `slot` counts it among the
    /// established connections; `_ended` is dropped once the link's readers have stopped.
    async fn run_link(
        self: &Arc<Self>,
        conn: Connection,
        peer: Identity,
        cert: PeerCert,
        origin: Origin,
        slot: ConnSlot,
        _ended: oneshot::Sender<()>,
    ) {
        let node = peer.node_id;
        let Some(registered) = self.register(node, &conn, cert, origin) else {
            conn.close(CLOSE_NORMAL, b"link cancelled");
            return;
        };
        info!(peer = node, remote = %conn.remote_address(), role = %peer.role, "link up");
        if !registered.retire.is_empty() {
            let retire = registered.retire.clone();
            self.runtime.spawn(crate::refresh::retire_after_move(
                self.clone(),
                node,
                retire,
            ));
        }
        let replaced = !registered.replaced.is_empty();
        if replaced {
            // The old session ends before the new one starts: its last messages come before
            // its LinkClosed. Its connection is closed, so this is quick; bounded regardless.
            for ended in registered.replaced {
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, ended).await;
            }
            let closed = NetEvent::LinkClosed {
                peer: node,
                reason: REPLACED.to_owned(),
            };
            let _ = self.events.control.send(closed).await;
        }
        if registered.first || replaced {
            let up = NetEvent::LinkUp { peer: peer.clone() };
            let _ = self.events.control.send(up).await;
        }
        let limits = Arc::new(ReadLimits::new(&self.config, self.counters.clone()));
        let end = link::drive(
            &conn,
            &peer,
            registered.queues,
            &self.events,
            limits,
            self.announcements.clone(),
        )
        .await;
        let reason = match end {
            LinkEnd::Local {
                code,
                reason,
                cause,
            } => {
                warn!(peer = node, %reason, code = %code, "closed link");
                self.count_close(cause);
                // Bound violations are banned for a while; an undecodable frame may be a
                // peer one protocol version apart and only closes the link.
                if matches!(cause, Cause::ControlRate | Cause::Streams) {
                    self.ban(node, &reason);
                    // Every session of the peer: one bad connection ends them all.
                    self.close_peer(node, CLOSE_IDENTITY, &reason);
                }
                reason
            }
            LinkEnd::Gone(reason) => reason,
        };
        info!(peer = node, %reason, "connection ended");
        drop(slot);
        if let Some(event) = self.remove_link(node, registered.id, reason) {
            let _ = self.events.control.send(event).await;
        }
    }

    /// Refuses `peer`'s new connections for `ban_after_violation` after it broke the protocol
    /// or a bound, so it cannot repeat that at once on a fresh connection.
    fn ban(&self, peer: NodeId, reason: &str) {
        let time = self.config.ban_after_violation;
        if time.is_zero() {
            return;
        }
        let now = tokio::time::Instant::now();
        let mut state = self.lock();
        state.banned.retain(|_, (until, _)| *until > now);
        state.banned.insert(peer, (now + time, reason.to_owned()));
    }

    /// Counts a close this side decided.
    fn count_close(&self, cause: Cause) {
        let counters = &self.counters;
        match cause {
            Cause::Normal => {}
            Cause::Protocol => bump(&counters.closed_protocol),
            Cause::Streams => {
                bump(&counters.closed_protocol);
                bump(&counters.closed_streams);
            }
            Cause::ControlRate => bump(&counters.closed_control_rate),
        }
    }

    /// Checks an inbound connection's certificate identity and runs it as a link.
    async fn handle_incoming(self: Arc<Self>, incoming: quinn::Incoming, handshake: HandshakeSlot) {
        let remote = incoming.remote_address();
        // Not cut short here: tried with a bound, diallers saw their side of the handshake
        // complete and kept a link with nothing behind it on this side for longer than the
        // test waited. The idle timeout ends a handshake whose dialler went away (one that
        // keeps it alive without finishing holds its turn: see docs/security.md).
        let accepted = incoming.await.map_err(|e| e.to_string());
        drop(handshake);
        let conn = match accepted {
            Ok(conn) => conn,
            Err(error) => {
                bump(&self.counters.handshakes_failed);
                warn!(%remote, %error, "refused inbound connection");
                return;
            }
        };
        let checked = match verified_identity(&conn) {
            Ok((peer, cert)) if peer.cluster == self.identity.cluster => Ok((peer, cert)),
            Ok((peer, _)) => Err(format!("peer is in cluster {:?}", peer.cluster)),
            Err(reason) => Err(reason),
        };
        let (peer, cert) = match checked {
            Ok(accepted) => accepted,
            Err(reason) => {
                bump(&self.counters.refused_identity);
                warn!(%remote, %reason, "refused inbound connection");
                conn.close(CLOSE_IDENTITY, reason.as_bytes());
                return;
            }
        };
        // Also checked before the handshake; this closes the race between handshakes.
        let Some(slot) = self.counters.try_slot(self.config.max_connections) else {
            self.refuse_over_limit(remote);
            conn.close(CLOSE_BUSY, b"too many connections");
            return;
        };
        self.await_announcement(peer.node_id, &cert).await;
        let (ended_tx, ended_rx) = oneshot::channel();
        let origin = Origin::Inbound { ended: ended_rx };
        self.run_link(conn, peer, cert, origin, slot, ended_tx)
            .await;
    }

    /// Counts and logs an inbound connection refused for `max_connections`.
    fn refuse_over_limit(&self, remote: SocketAddr) {
        bump(&self.counters.refused_over_limit);
        warn!(
            %remote,
            max_connections = self.config.max_connections,
            "refused inbound connection: too many connections"
        );
    }
}

/// Accepts inbound connections until the endpoint closes; over `max_connections`, refuses
/// them before the handshake.
pub(crate) async fn accept_loop(shared: Arc<Shared>) {
    let gate = Arc::new(tokio::sync::Semaphore::new(shared.config.max_handshakes));
    let waiting = |shared: &Shared| shared.counters.handshakes_waiting.load(Ordering::Acquire);
    while let Some(incoming) = shared.endpoint.accept().await {
        if !shared.counters.below(shared.config.max_connections) {
            shared.refuse_over_limit(incoming.remote_address());
            incoming.refuse();
            continue;
        }
        // Handshakes cost CPU (signatures, certificate checks): `max_handshakes` run at
        // once and up to `handshake_queue` more wait their turn in arrival order (their
        // diallers only resend their first packet meanwhile). Past that a dialler is refused
        // at once, which costs one packet, and told to come back later (`NetEvent::Busy`),
        // rather than queueing until its handshake times out and it dials again.
        match gate.clone().try_acquire_owned() {
            Ok(permit) => {
                let slot = shared.counters.handshake(permit);
                shared
                    .runtime
                    .spawn(shared.clone().handle_incoming(incoming, slot));
            }
            Err(_) if waiting(&shared) < shared.config.handshake_queue as u64 => {
                let (shared, gate) = (shared.clone(), gate.clone());
                shared
                    .counters
                    .handshakes_waiting
                    .fetch_add(1, Ordering::AcqRel);
                shared.runtime.clone().spawn(async move {
                    let turn =
                        tokio::time::timeout(shared.config.handshake_timeout, gate.acquire_owned())
                            .await;
                    shared
                        .counters
                        .handshakes_waiting
                        .fetch_sub(1, Ordering::AcqRel);
                    match turn {
                        Ok(Ok(permit)) => {
                            let slot = shared.counters.handshake(permit);
                            shared.handle_incoming(incoming, slot).await;
                        }
                        // Waited too long: its dialler may have given up; if not, it comes
                        // back later rather than keep a turn it may no longer want.
                        Ok(Err(_)) | Err(_) => {
                            bump(&shared.counters.refused_busy);
                            debug!(remote = %incoming.remote_address(), "refused inbound connection: waited too long for a handshake");
                            incoming.refuse();
                        }
                    }
                });
            }
            Err(_) => {
                bump(&shared.counters.refused_busy);
                debug!(remote = %incoming.remote_address(), "refused inbound connection: too many handshakes");
                incoming.refuse();
            }
        }
    }
    debug!(node = shared.identity.node_id, "accept loop ended");
}

/// Connects to `peer` at `addr`, checks that the certificate names `peer`, runs the link.
/// `ended` is dropped when the dial or the link it became ends.
pub(crate) async fn dial(
    shared: Arc<Shared>,
    peer: NodeId,
    addr: SocketAddr,
    id: u64,
    queues: LinkQueues,
    ended: oneshot::Sender<()>,
) {
    match connect(&shared, peer, addr).await {
        Ok((conn, identity, cert)) => {
            let slot = shared.counters.slot();
            let origin = Origin::Dialled { id, queues };
            shared
                .run_link(conn, identity, cert, origin, slot, ended)
                .await
        }
        Err(DialFailure { reason, busy }) => {
            if busy {
                bump(&shared.counters.dials_refused_busy);
                debug!(peer, %addr, %reason, "dial refused: the peer is busy");
            } else {
                warn!(peer, %addr, %reason, "dial failed");
            }
            if let Some(event) = shared.remove_link(peer, id, format!("dial failed: {reason}")) {
                let _ = shared.events.control.send(event).await;
            }
            if busy {
                let _ = shared.events.control.send(NetEvent::Busy { peer }).await;
            }
        }
    }
}

/// Why a dial did not become a link.
struct DialFailure {
    reason: String,
    /// The peer refused for being at capacity (it is up: ask again later).
    busy: bool,
}

impl From<String> for DialFailure {
    fn from(reason: String) -> Self {
        DialFailure {
            reason,
            busy: false,
        }
    }
}

/// Whether a connection error is a refusal for being at capacity: QUIC's CONNECTION_REFUSED
/// (refused before the handshake) or our own busy close (after it).
fn refused_busy(e: &ConnectionError) -> bool {
    match e {
        ConnectionError::ConnectionClosed(close) => {
            close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
        }
        ConnectionError::ApplicationClosed(close) => close.error_code == CLOSE_BUSY,
        _ => false,
    }
}

async fn connect(
    shared: &Shared,
    peer: NodeId,
    addr: SocketAddr,
) -> Result<(Connection, Identity, PeerCert), DialFailure> {
    let cluster = &shared.identity.cluster;
    let addr = shared.config.dial_via.get(&addr).copied().unwrap_or(addr);
    let conn = shared
        .endpoint
        .connect(addr, &server_name_for(cluster, peer))
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| DialFailure {
            reason: link::describe(&e),
            busy: refused_busy(&e),
        })?;
    let refuse = |reason: String| {
        bump(&shared.counters.refused_identity);
        close_with(&conn, reason)
    };
    let (identity, cert) = verified_identity(&conn).map_err(refuse)?;
    if identity.node_id != peer || identity.cluster != *cluster {
        return Err(refuse(format!(
            "dialled node {peer} of {cluster} but reached {identity}"
        ))
        .into());
    }
    Ok((conn, identity, cert))
}

fn close_with(conn: &Connection, reason: String) -> String {
    conn.close(CLOSE_IDENTITY, reason.as_bytes());
    reason
}

/// The identity named by the peer's verified certificate, and that certificate's details.
fn verified_identity(conn: &Connection) -> Result<(Identity, PeerCert), String> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| "peer presented no certificate".to_string())?;
    let leaf = certs
        .first()
        .ok_or_else(|| "peer presented an empty certificate chain".to_string())?;
    let identity = parse_identity(leaf).map_err(|e| format!("peer certificate: {e}"))?;
    let cert = PeerCert::parse(identity.node_id, leaf)?;
    Ok((identity, cert))
}
