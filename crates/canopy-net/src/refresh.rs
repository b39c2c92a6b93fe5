//! Moving live links to a renewed certificate without ending their sessions.
//!
//! A node whose certificate was renewed announces, on each live link, the digest of the
//! certificate it is about to present ([`LinkRefresh`]), then dials the peer again. The peer
//! lets a new connection from that node with exactly that certificate stand beside the old
//! one instead of replacing it as a new session: neither side sees the link go down, sends
//! move to the new connection, and the old one is closed once the new one is up and what was
//! queued on it had time to arrive. The announcement travels on the old, authenticated
//! connection, so a copy of the node's certificate on another machine cannot use it, and a
//! node that restarted (with or without a new certificate) still shows as a new session.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use canopy_proto::v1::LinkRefresh;
use canopy_proto::{Body, ControlMessage};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::certs::parse_identity;
use crate::endpoint::{Link, NetEndpoint, Shared, State};
use crate::identity::NodeId;
use crate::link::CLOSE_NORMAL;
use crate::sweep::PeerCert;

/// How long an announcement waits for its connection.
const ANNOUNCEMENT_TTL: Duration = Duration::from_secs(10);
/// How long an inbound connection with a renewed certificate waits for its announcement
/// before it is taken for a new session (bounded: it holds a connection slot meanwhile).
pub const ANNOUNCEMENT_WAIT: Duration = Duration::from_secs(1);
/// How often that wait looks for the announcement.
const ANNOUNCEMENT_POLL: Duration = Duration::from_millis(5);
/// How long the old connection stays open once the new one is up, for what was queued on it.
const OLD_CONNECTION_GRACE: Duration = Duration::from_secs(1);
/// How long the renewing side waits for the new connection before giving up on it.
const DIAL_PATIENCE: Duration = Duration::from_secs(10);
/// How long the accepting side keeps the old connections after a move before it closes
/// them itself (the renewing side normally does so after `OLD_CONNECTION_GRACE`).
const ACCEPTOR_GRACE: Duration = Duration::from_secs(3);
/// The close reason of a connection whose link moved to a renewed certificate.
const MOVED: &str = "link moved to a connection with a renewed certificate";

/// SHA-256 of a certificate's DER.
pub(crate) fn digest(der: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// What peers announced on their live links: the certificate their next connection
/// presents. One entry per peer (the latest), expiring.
#[derive(Debug, Default)]
pub(crate) struct Announcements {
    by_peer: Mutex<HashMap<NodeId, ([u8; 32], Instant)>>,
}

impl Announcements {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, ([u8; 32], Instant)>> {
        self.by_peer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `peer` said so on one of its live links. A digest of the wrong length is ignored.
    pub(crate) fn announce(&self, peer: NodeId, certificate_sha256: &[u8]) {
        let Ok(digest) = <[u8; 32]>::try_from(certificate_sha256) else {
            debug!(peer, "ignoring a link refresh with a malformed digest");
            return;
        };
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, (_, at)| now.duration_since(*at) < ANNOUNCEMENT_TTL);
        map.insert(peer, (digest, now));
    }

    /// Whether `peer` announced the certificate `der`, leaving the announcement in place.
    fn holds(&self, peer: NodeId, der: &[u8]) -> bool {
        self.lock().get(&peer).is_some_and(|(announced, at)| {
            at.elapsed() < ANNOUNCEMENT_TTL && *announced == digest(der)
        })
    }

    /// Whether `peer` announced the certificate `der` (the announcement is used up).
    pub(crate) fn take(&self, peer: NodeId, der: &[u8]) -> bool {
        let mut map = self.lock();
        match map.get(&peer) {
            Some((announced, at))
                if at.elapsed() < ANNOUNCEMENT_TTL && *announced == digest(der) =>
            {
                map.remove(&peer);
                true
            }
            _ => false,
        }
    }
}

impl Shared {
    /// The live links of `peer` that an inbound connection presenting `cert` moves away
    /// from; empty when it is no move. A move needs a live link, an announcement of exactly
    /// this certificate on it, a certificate none of the live links already uses (so a node
    /// cannot multiply its sessions by announcing the one it has), and the same identity.
    pub(crate) fn moved_from(&self, state: &State, peer: NodeId, cert: &PeerCert) -> Vec<u64> {
        let live = renewal_of(state, peer, cert);
        if live.is_empty() || !self.announcements.take(peer, &cert.der) {
            return Vec::new();
        }
        live
    }

    /// Before an inbound connection from `peer` is registered: if it presents a renewed
    /// certificate of a peer with live links and the announcement has not arrived yet, waits
    /// for it a bounded while. The announcement travels on the old connection and the dial
    /// on a new one, so the dial can overtake it; without the wait the move would be taken
    /// for a new session, which ends the live link.
    pub(crate) async fn await_announcement(&self, peer: NodeId, cert: &PeerCert) {
        let deadline = Instant::now() + ANNOUNCEMENT_WAIT;
        loop {
            let waiting = {
                let state = self.lock();
                !renewal_of(&state, peer, cert).is_empty()
                    && !self.announcements.holds(peer, &cert.der)
            };
            if !waiting {
                return;
            }
            if Instant::now() >= deadline {
                debug!(
                    peer,
                    "a renewed certificate came without an announcement: a new session"
                );
                return;
            }
            tokio::time::sleep(ANNOUNCEMENT_POLL).await;
        }
    }
}

/// The live links of `peer` that a connection presenting `cert` could move away from: all of
/// them, if there are any, none uses this certificate, and it names the same identity.
fn renewal_of(state: &State, peer: NodeId, cert: &PeerCert) -> Vec<u64> {
    let Some(links) = state.links.get(&peer) else {
        return Vec::new();
    };
    let live: Vec<&Link> = links.iter().filter(|l| l.is_live()).collect();
    let new_digest = digest(&cert.der);
    let new_identity = parse_identity(&cert.der).ok();
    let renewal = !live.is_empty()
        && new_identity.is_some()
        && live.iter().all(|l| {
            l.cert.as_ref().is_some_and(|old| {
                digest(&old.der) != new_digest && parse_identity(&old.der).ok() == new_identity
            })
        });
    if !renewal {
        return Vec::new();
    }
    live.iter().map(|l| l.id).collect()
}

/// After a peer moved its link to a new connection, closes the old ones it still keeps open
/// once the grace is over: the accepting side never depends on the peer to do it.
pub(crate) async fn retire_after_move(shared: Arc<Shared>, peer: NodeId, old: Vec<u64>) {
    tokio::time::sleep(ACCEPTOR_GRACE).await;
    close_moved(&shared, peer, &old);
}

/// Closes the links `old` of `peer` that are still in the table, as moved.
fn close_moved(shared: &Shared, peer: NodeId, old: &[u64]) {
    let state = shared.lock();
    for link in state
        .links
        .get(&peer)
        .into_iter()
        .flatten()
        .filter(|l| old.contains(&l.id))
    {
        if let Some(conn) = &link.conn {
            debug!(peer, "{MOVED}");
            conn.close(CLOSE_NORMAL, MOVED.as_bytes());
        }
    }
}

impl NetEndpoint {
    /// Re-handshakes every live link on which this node presented a certificate other than
    /// its current one, without ending any session. Returns the peers being moved.
    pub fn refresh_links(&self) -> Vec<NodeId> {
        let shared = self.shared_arc();
        let current = shared.tls.current();
        let Some(own) = current.own_digest() else {
            return Vec::new();
        };
        let announce = ControlMessage::new(Body::LinkRefresh(LinkRefresh {
            certificate_sha256: Bytes::copy_from_slice(&own),
        }));
        let stale: Vec<(NodeId, SocketAddr, Vec<u64>)> = {
            let state = shared.lock();
            state
                .links
                .iter()
                .filter_map(|(&peer, links)| {
                    let live: Vec<_> = links.iter().filter(|l| l.is_live()).collect();
                    let addr = live.last()?.conn.as_ref()?.remote_address();
                    let stale = live.iter().all(|l| l.own_cert != Some(own));
                    stale.then(|| (peer, addr, live.iter().map(|l| l.id).collect()))
                })
                .collect()
        };
        let mut moving = Vec::new();
        for (peer, addr, old) in stale {
            if self.send(peer, None, announce.clone()).is_err() {
                continue;
            }
            let new = {
                let mut state = shared.lock();
                shared.start_dial(&mut state, peer, addr);
                state.next_link
            };
            moving.push(peer);
            shared
                .runtime
                .spawn(retire_when_moved(shared.clone(), peer, new, old));
        }
        if !moving.is_empty() {
            info!(node = shared.identity.node_id, peers = ?moving, "moving links to the renewed certificate");
        }
        moving
    }
}

/// Once link `new` to `peer` is up, closes the `old` ones after a grace; if it does not come
/// up, the old ones stay.
async fn retire_when_moved(shared: Arc<Shared>, peer: NodeId, new: u64, old: Vec<u64>) {
    let deadline = Instant::now() + DIAL_PATIENCE;
    loop {
        let state = {
            let state = shared.lock();
            state
                .links
                .get(&peer)
                .and_then(|links| links.iter().find(|l| l.id == new))
                .map(|l| l.is_live())
        };
        match state {
            Some(true) => break,
            Some(false) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => {
                warn!(
                    peer,
                    "the renewed connection did not come up; keeping the old one"
                );
                return;
            }
        }
    }
    tokio::time::sleep(OLD_CONNECTION_GRACE).await;
    close_moved(&shared, peer, &old);
}
