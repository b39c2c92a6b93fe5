//! Changing a running endpoint's TLS material: a reloaded certificate, key, CA bundle or
//! revocation file, and revocation lists pushed through the tree.
//!
//! New handshakes use the new material at once. Live links are then checked again as a new
//! handshake would check them; those whose peer is now revoked or no longer chains to a
//! trusted CA are closed, and the same verifier refuses the peer's next connection.

use rustls::pki_types::UnixTime;
use tracing::{error, info, warn};

use crate::certs::CertError;
use crate::crl::{RevocationList, RevocationSet};
use crate::endpoint::{NetEndpoint, Shared};
use crate::identity::NodeId;
use crate::link::CLOSE_IDENTITY;
use crate::live::TlsState;
use crate::stats::bump;
use crate::tls::Credentials;

/// What a reload or a pushed revocation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustUpdate {
    /// Something changed (false: the same material again; nothing was done).
    pub changed: bool,
    /// The TLS generation in force afterwards.
    pub generation: u64,
    /// Peers whose links were closed because their certificate is no longer accepted.
    pub closed: Vec<NodeId>,
    /// Why peers will refuse this node's own certificate under the new trust (it is revoked),
    /// if they will.
    pub own_refused: Option<String>,
}

impl NetEndpoint {
    /// Installs new credentials and the revocation lists of the node's own file, keeping the
    /// lists pushed through the tree. Refused, with the old material kept, when the new
    /// certificate names another identity, does not chain to the new bundle or has expired,
    /// or a list in the name of a CA of the new bundle is not signed by it. Lists of CAs the
    /// new bundle does not hold are dropped.
    pub fn reload(
        &self,
        creds: Credentials,
        file_lists: Vec<RevocationList>,
    ) -> Result<TrustUpdate, CertError> {
        let shared = self.shared();
        let _update = lock(&shared.tls.update);
        let current = shared.tls.current();
        if creds.identity() != &shared.identity {
            return Err(CertError::InvalidIdentity(format!(
                "the new certificate names {}, but this node is {}; a node keeps its identity \
                 across reloads (restart it to take another)",
                creds.identity(),
                shared.identity
            )));
        }
        creds.verify()?;
        let mut file_set = RevocationSet::default();
        for list in file_lists {
            // A CA that left the bundle takes its list along (retiring a CA must not wait for
            // a new revocation file); a list in a trusted CA's name that it did not sign is
            // refused with the rest of the files.
            if !list.issuer_in(creds.roots_der()) {
                warn!(
                    node = shared.identity.node_id,
                    "ignoring a revocation list of a CA the new bundle does not trust"
                );
                continue;
            }
            list.verify(creds.roots_der())?;
            file_set.merge(list);
        }
        if creds.chain() == current.creds.chain()
            && creds.roots_der() == current.creds.roots_der()
            && file_set == current.file_lists
        {
            return Ok(TrustUpdate {
                generation: current.generation,
                ..TrustUpdate::default()
            });
        }
        let renewed = creds.chain() != current.creds.chain();
        let state = TlsState::build(creds, file_set, current.pushed.clone())?;
        let update = install(shared, state, "reloaded credentials");
        drop(_update);
        if renewed {
            // Peers keep seeing the old certificate on live links until they re-handshake.
            self.refresh_links();
        }
        Ok(update)
    }

    /// Merges revocation lists that came through the tree. Each must be signed by a CA of the
    /// bundle; a list no newer than the one held from the same CA changes nothing.
    pub fn add_revocations(&self, lists: Vec<RevocationList>) -> Result<TrustUpdate, CertError> {
        let shared = self.shared();
        let _update = lock(&shared.tls.update);
        let current = shared.tls.current();
        for list in &lists {
            list.verify(current.creds.roots_der())?;
        }
        let mut pushed = current.pushed.clone();
        let mut changed = false;
        for list in lists {
            changed |= pushed.merge(list);
        }
        let mut effective = current.effective.clone();
        if !changed || !effective.merge_all(&pushed) {
            return Ok(TrustUpdate {
                generation: current.generation,
                ..TrustUpdate::default()
            });
        }
        let state = TlsState::build(current.creds.clone(), current.file_lists.clone(), pushed)?;
        Ok(install(shared, state, "revocation list from the tree"))
    }

    /// The revocation lists in force (the newest per CA, from the file and the tree), DER.
    pub fn revocations(&self) -> Vec<Vec<u8>> {
        self.shared().tls.current().effective.ders()
    }

    /// Counts changes of the TLS material since the endpoint was bound.
    pub fn tls_generation(&self) -> u64 {
        self.shared().tls.current().generation
    }

    /// The credentials in force.
    pub fn credentials(&self) -> Credentials {
        self.shared().tls.current().creds.clone()
    }

    /// The certificates each live link was established with: the peer's, and whether this
    /// node presented the certificate in force now (false until a renewal has moved it).
    pub fn link_certificates(&self) -> Vec<LinkCertificate> {
        let shared = self.shared();
        let own = shared.tls.current().own_digest();
        let state = shared.lock();
        let mut links: Vec<LinkCertificate> = state
            .links
            .iter()
            .flat_map(|(&peer, links)| links.iter().map(move |link| (peer, link)))
            .filter(|(_, link)| link.is_live())
            .filter_map(|(peer, link)| {
                let cert = link.cert.as_ref()?;
                Some(LinkCertificate {
                    peer,
                    inbound: link.inbound,
                    peer_serial: crate::cert_info::normalize_serial(&cert.serial),
                    presented_current: own.is_some() && link.own_cert == own,
                })
            })
            .collect();
        links.sort_by_key(|l| (l.peer, l.inbound));
        links
    }
}

/// One live link's certificates (see [`NetEndpoint::link_certificates`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkCertificate {
    pub peer: NodeId,
    /// Accepted from the peer rather than dialled.
    pub inbound: bool,
    /// The serial of the certificate the peer presented (big-endian bytes).
    pub peer_serial: Vec<u8>,
    /// Whether this node presented the certificate it holds now.
    pub presented_current: bool,
}

/// Makes `state` current and closes the links it no longer accepts.
fn install(shared: &Shared, state: TlsState, what: &str) -> TrustUpdate {
    let now = UnixTime::now();
    let own_refused = state
        .creds
        .chain()
        .first()
        .and_then(|leaf| state.check_peer(leaf, now).err())
        .map(|e| e.to_string());
    shared.tls.replace(state);
    let current = shared.tls.current();
    let closed = recheck_links(shared, &current, now);
    info!(
        node = shared.identity.node_id,
        generation = current.generation,
        closed = closed.len(),
        "{what} in force"
    );
    if let Some(reason) = &own_refused {
        error!(
            node = shared.identity.node_id,
            %reason,
            "this node's own certificate is refused under the new trust: peers will refuse it"
        );
    }
    TrustUpdate {
        changed: true,
        generation: current.generation,
        closed,
        own_refused,
    }
}

/// Closes every live link whose peer certificate `state` refuses.
fn recheck_links(shared: &Shared, state: &TlsState, now: UnixTime) -> Vec<NodeId> {
    let mut closed = shared.close_links_where(CLOSE_IDENTITY, |cert| {
        state
            .check_peer(&cert.der, now)
            .err()
            .map(|e| format!("peer certificate no longer accepted: {e}"))
    });
    for peer in &closed {
        warn!(
            node = shared.identity.node_id,
            peer, "closed link: peer certificate no longer accepted"
        );
        bump(&shared.counters.closed_untrusted);
    }
    closed.sort_unstable();
    closed.dedup();
    closed
}

fn lock(mutex: &std::sync::Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
