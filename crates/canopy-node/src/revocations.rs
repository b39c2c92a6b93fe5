//! Revocation lists through the tree: the root group commits them, the leader floods them to
//! its links, and every router passes on what it did not hold before.
//!
//! A list counts only once it verifies with a CA of the receiving node's own bundle (see
//! `canopy_net::crl`), so a credentialed peer can neither forge nor widen one; a stale or
//! repeated list changes nothing and goes no further, which is what ends the flood. A node
//! that attaches later gets the lists from its parent with the first message the parent
//! sends it after they changed.

use std::collections::HashMap;

use bytes::Bytes;
use canopy_net::{CertRole, NetEndpoint, NodeId, RevocationList, RevocationSet};
use canopy_proto::v1::Revocations;
use canopy_proto::{Body, ControlMessage};
use tracing::{info, warn};

use crate::runtime::Runtime;

/// Which TLS generation each child was last sent the lists at.
#[derive(Debug, Default)]
pub(crate) struct RevocationRelay {
    sent: HashMap<NodeId, u64>,
}

impl RevocationRelay {
    pub(crate) fn forget(&mut self, peer: NodeId) {
        self.sent.remove(&peer);
    }
}

/// Parses lists off the wire, keeping the ones that parse; the errors say why the others
/// did not.
pub(crate) fn parse_lists(raw: &[Bytes]) -> (Vec<RevocationList>, Vec<String>) {
    let mut lists = Vec::new();
    let mut errors = Vec::new();
    for der in raw.iter().take(canopy_net::crl::MAX_CRLS) {
        match RevocationList::from_der(der) {
            Ok(list) => lists.push(list),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if raw.len() > canopy_net::crl::MAX_CRLS {
        errors.push(format!(
            "{} lists, only the first {} were looked at",
            raw.len(),
            canopy_net::crl::MAX_CRLS
        ));
    }
    (lists, errors)
}

/// Keeps the lists `net` can verify, one by one (a list from a CA this node does not trust,
/// as during a CA rollover, must not cost the others); returns whether anything changed.
pub(crate) fn adopt(net: &NetEndpoint, lists: Vec<RevocationList>, source: &str) -> bool {
    let mut changed = false;
    for list in lists {
        match net.add_revocations(vec![list]) {
            Ok(update) => {
                if update.changed {
                    info!(
                        node = net.identity().node_id,
                        source,
                        closed = ?update.closed,
                        "revocation list in force"
                    );
                }
                changed |= update.changed;
            }
            Err(e) => warn!(
                node = net.identity().node_id,
                source,
                error = %e,
                "ignoring a revocation list"
            ),
        }
    }
    changed
}

/// The merged set of `current` and `lists` (each verified with `net`'s bundle), for the root
/// group to commit; `None` when nothing would change.
pub(crate) fn merged_for_commit(
    net: &NetEndpoint,
    current: &[Vec<u8>],
    lists: &[Bytes],
) -> Result<Option<Vec<Vec<u8>>>, String> {
    let roots = net.credentials();
    let mut set = RevocationSet::default();
    for der in current {
        if let Ok(list) = RevocationList::from_der(der) {
            if list.verify(roots.roots_der()).is_ok() {
                set.merge(list);
            }
        }
    }
    let (parsed, errors) = parse_lists(lists);
    if let Some(error) = errors.first() {
        return Err(error.clone());
    }
    if parsed.is_empty() {
        return Err("no revocation list in the request".into());
    }
    let mut changed = false;
    for list in parsed {
        list.verify(roots.roots_der()).map_err(|e| e.to_string())?;
        let number = canopy_net::hex(list.number());
        match set.from_issuer(list.issuer()) {
            Some(held) if held.der() == list.der() => continue,
            Some(held) if !list.newer_than(held) => {
                // An operator pushing from an old copy of the CA directory must hear that
                // nothing was revoked, not that it was committed.
                return Err(format!(
                    "list {number} is not newer than the committed list {} of the same CA: \
                     nothing committed (sign a new list from the current registry)",
                    canopy_net::hex(held.number())
                ));
            }
            _ => {}
        }
        if !set.merge(list) {
            return Err(format!(
                "list {number} comes from a CA beyond the {} whose lists are kept",
                canopy_net::crl::MAX_CRLS
            ));
        }
        changed = true;
    }
    Ok(changed.then(|| set.ders()))
}

fn message(lists: Vec<Vec<u8>>) -> ControlMessage {
    ControlMessage::new(Body::Revocations(Revocations {
        lists: lists.into_iter().map(Bytes::from).collect(),
    }))
}

/// Sends the lists in force to every linked peer but `except`, and returns those peers
/// (clients pass nothing on).
pub(crate) fn flood(net: &NetEndpoint, except: Option<NodeId>) -> Vec<NodeId> {
    if net.identity().role == CertRole::Client {
        return Vec::new();
    }
    let lists = net.revocations();
    if lists.is_empty() {
        return Vec::new();
    }
    let mut sent = Vec::new();
    for peer in net.connected_peers() {
        if Some(peer) != except && net.send(peer, None, message(lists.clone())).is_ok() {
            sent.push(peer);
        }
    }
    sent
}

impl Runtime {
    /// Lists from a peer (its role was checked by `authorize`): keep what verifies, and pass
    /// on whatever was new.
    pub(crate) fn on_revocations(&mut self, from: NodeId, msg: Revocations) {
        let (lists, errors) = parse_lists(&msg.lists);
        for error in errors {
            warn!(node = self.node.id(), peer = from, %error, "unreadable revocation list");
        }
        if adopt(&self.net, lists, "tree") {
            self.flood_revocations(Some(from));
        }
    }

    /// Sends the lists in force to every linked peer but `except`.
    pub(crate) fn flood_revocations(&mut self, except: Option<NodeId>) {
        let generation = self.net.tls_generation();
        for peer in flood(&self.net, except) {
            self.revocations.sent.insert(peer, generation);
        }
    }

    /// A serving root that loses a router sends the lists in force straight to that
    /// router's children (from its view), before it forgets the router: a router dropped
    /// because it was revoked would otherwise be the only one to tell them, and its parent
    /// closed its link the moment the lists came into force. Routers further down pass them
    /// on as usual. A router lost for another reason costs its children one message.
    pub(crate) fn push_lists_past(&mut self, lost: NodeId) {
        if !self.node.is_serving_root() {
            return;
        }
        let lists = self.net.revocations();
        if lists.is_empty() {
            return;
        }
        let Some(view) = self.node.view() else {
            return;
        };
        let Some(entry) = view.get(lost).filter(|e| e.role.is_router()) else {
            return;
        };
        let children: Vec<(NodeId, Option<std::net::SocketAddr>)> = entry
            .children()
            .filter_map(|c| view.get(c).map(|e| (c, e.address.parse().ok())))
            .collect();
        let generation = self.net.tls_generation();
        for (child, address) in children {
            if self
                .net
                .send(child, address, message(lists.clone()))
                .is_ok()
            {
                self.revocations.sent.insert(child, generation);
            }
        }
    }

    /// Before anything goes to a child: if it has not had the lists in force, they go first
    /// (a child that attached after they changed, or reattached).
    pub(crate) fn revocations_before_send(&mut self, to: NodeId) {
        let generation = self.net.tls_generation();
        if self.revocations.sent.get(&to) == Some(&generation) {
            return;
        }
        if self.node.child_may_want(to, 0).is_none() {
            return;
        }
        self.revocations.sent.insert(to, generation);
        let lists = self.net.revocations();
        if !lists.is_empty() {
            self.send(to, message(lists));
        }
    }
}
