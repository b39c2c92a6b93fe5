//! Live links are re-checked: each link records its peer's leaf certificate ([`PeerCert`]),
//! a sweeper closes links whose certificate has expired, and
//! [`NetEndpoint::close_peers_where`](crate::NetEndpoint::close_peers_where) closes links by
//! any certificate property (for revocation).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use quinn::VarInt;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::time::MissedTickBehavior;
use tracing::{debug, warn};

use crate::config::NetEvent;
use crate::endpoint::Shared;
use crate::identity::NodeId;
use crate::link::CLOSE_IDENTITY;
use crate::stats::bump;

/// What a live link knows about its peer's leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// The node the certificate names.
    pub node_id: NodeId,
    /// The certificate's serial number, as encoded (big-endian bytes).
    pub serial: Vec<u8>,
    /// The issuer's distinguished name, DER-encoded (compare with a CRL's issuer).
    pub issuer_der: Vec<u8>,
    /// The issuer's distinguished name, readable (`CN=canopy test CA, O=canopy`).
    pub issuer: String,
    /// The last second the certificate is valid, in Unix seconds.
    pub not_after: i64,
    /// The certificate itself (DER), to check it again after the trust changes.
    pub der: Vec<u8>,
}

impl PeerCert {
    /// Reads the fields from a DER leaf certificate naming `node_id`.
    pub(crate) fn parse(node_id: NodeId, leaf_der: &[u8]) -> Result<Self, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(leaf_der)
            .map_err(|e| format!("peer certificate: {e}"))?;
        Ok(PeerCert {
            node_id,
            serial: cert.raw_serial().to_vec(),
            issuer_der: cert.issuer().as_raw().to_vec(),
            issuer: cert.issuer().to_string(),
            not_after: cert.validity().not_after.timestamp(),
            der: leaf_der.to_vec(),
        })
    }

    /// Whether the certificate has expired at Unix time `now`.
    pub fn expired_at(&self, now: i64) -> bool {
        self.not_after < now
    }
}

/// The current Unix time in seconds.
pub(crate) fn unix_now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        // A clock before 1970: nothing has expired yet as far as we can tell.
        Err(_) => 0,
    }
}

/// An RFC 3339 rendering of a Unix time, or the number if it is out of range.
fn rfc3339(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("unix time {secs}"))
}

/// Every `recheck_interval`, closes the links whose peer certificate has expired. Ends when
/// the endpoint shuts down.
pub(crate) async fn sweeper(shared: Arc<Shared>) {
    let mut ticks = tokio::time::interval(shared.config.recheck_interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if shared.lock().shut_down {
            break;
        }
        let now = unix_now();
        let closed = shared.close_links_where(CLOSE_IDENTITY, |cert| {
            cert.expired_at(now)
                .then(|| format!("peer certificate expired at {}", rfc3339(cert.not_after)))
        });
        for _ in &closed {
            bump(&shared.counters.closed_expired);
        }
    }
    debug!(node = shared.identity.node_id, "sweeper ended");
}

impl Shared {
    /// Closes every established link whose peer certificate `decide` gives a reason for, with
    /// `code` and that reason. A peer left without links gets a `LinkClosed`. Returns the
    /// closed links' peers, one entry per link.
    pub(crate) fn close_links_where(
        &self,
        code: VarInt,
        decide: impl Fn(&PeerCert) -> Option<String>,
    ) -> Vec<NodeId> {
        let mut closed = Vec::new();
        let mut emptied = Vec::new();
        {
            let mut state = self.lock();
            if state.shut_down {
                return closed;
            }
            for (&peer, links) in state.links.iter_mut() {
                let mut last_reason = None;
                let mut keep = Vec::with_capacity(links.len());
                for link in std::mem::take(links) {
                    let Some(reason) = link.cert.as_ref().and_then(&decide) else {
                        keep.push(link);
                        continue;
                    };
                    // Close before the link (and its queues) is dropped, so its writer sees
                    // the connection closed rather than a removed link.
                    if let Some(conn) = &link.conn {
                        warn!(peer, remote = %conn.remote_address(), %reason, "closing link");
                        conn.close(code, reason.as_bytes());
                    }
                    closed.push(peer);
                    last_reason = Some(reason);
                }
                *links = keep;
                if let (true, Some(reason)) = (links.is_empty(), last_reason) {
                    emptied.push((peer, reason));
                }
            }
            for (peer, _) in &emptied {
                state.links.remove(peer);
            }
        }
        for (peer, reason) in emptied {
            self.emit_now(NetEvent::LinkClosed { peer, reason });
        }
        closed
    }
}
