//! What each certificate role may send: identity comes from the verified certificate, so a
//! message that claims another node's id or a role the certificate lacks is refused.

use canopy_net::{CertRole, Identity};
use canopy_proto::prost::Message;
use canopy_proto::{Body, ControlMessage};
use canopy_tree::Role;

use crate::limits::{max_encoded_len, MAX_ADDRESS_LEN};
use crate::tree_role;

/// A joiner names its own region (the one its certificate carries) and an address the tree
/// can dial: an IP and port, no host name to resolve, nothing unspecified.
fn check_join_fields(from: &Identity, region: &str, address: &str) -> Result<(), Refusal> {
    let bad = |field, reason: String| Refusal::BadField {
        kind: "join_request",
        field,
        reason,
    };
    if region != from.region {
        let shown: String = region.chars().take(64).collect();
        return Err(bad(
            "region",
            format!("{shown:?} is not the certificate's {:?}", from.region),
        ));
    }
    if address.len() > MAX_ADDRESS_LEN {
        return Err(bad(
            "address",
            format!("of {} bytes, more than {MAX_ADDRESS_LEN}", address.len()),
        ));
    }
    let addr: std::net::SocketAddr = address
        .parse()
        .map_err(|_| bad("address", format!("{address:?} is not an ip:port")))?;
    if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(bad("address", format!("{address} cannot be dialled")));
    }
    Ok(())
}

/// Why a message was refused; the link it came on is closed with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{kind} from {role} certificate {node}: the role may not send it")]
    RoleMayNotSend {
        kind: &'static str,
        role: &'static str,
        node: u64,
    },
    #[error("{kind} claims node {claimed} but the certificate names {actual}")]
    WrongNode {
        kind: &'static str,
        claimed: u64,
        actual: u64,
    },
    #[error("{kind} claims role {claimed:?} but the certificate of node {node} is {actual}")]
    WrongRole {
        kind: &'static str,
        claimed: Option<Role>,
        actual: &'static str,
        node: u64,
    },
    #[error("{kind} of {len} bytes, more than the {max} this message type may have")]
    TooLarge {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{kind}: {field} {reason}")]
    BadField {
        kind: &'static str,
        field: &'static str,
        reason: String,
    },
    #[error("empty message")]
    Empty,
}

fn is_rooty(role: CertRole) -> bool {
    matches!(role, CertRole::RootCandidate)
}

fn is_routing(role: CertRole) -> bool {
    matches!(role, CertRole::RootCandidate | CertRole::Router)
}

/// Checks that `from` (as its certificate says) may send `msg`, and that the message is
/// within the size bounds of its type (`max_frame` is the link's frame limit).
pub fn authorize(from: &Identity, msg: &ControlMessage, max_frame: usize) -> Result<(), Refusal> {
    let kind = msg.kind();
    let body = msg.body.as_ref().ok_or(Refusal::Empty)?;
    let (len, max) = (msg.encoded_len(), max_encoded_len(msg, max_frame));
    if len > max {
        return Err(Refusal::TooLarge { kind, len, max });
    }
    let role = from.role;
    let may = |allowed: bool| {
        if allowed {
            Ok(())
        } else {
            Err(Refusal::RoleMayNotSend {
                kind,
                role: role.as_str(),
                node: from.node_id,
            })
        }
    };
    let same_node = |claimed: u64| {
        if claimed == from.node_id {
            Ok(())
        } else {
            Err(Refusal::WrongNode {
                kind,
                claimed,
                actual: from.node_id,
            })
        }
    };
    let same_role = |claimed: i32| {
        let claimed = Role::from_proto(claimed);
        if claimed.is_some() && claimed == tree_role(role) {
            Ok(())
        } else {
            Err(Refusal::WrongRole {
                kind,
                claimed,
                actual: role.as_str(),
                node: from.node_id,
            })
        }
    };
    // Admin certificates are for the CLI: operator requests and nothing else.
    if let Body::AdminRequest(_) = body {
        return may(role == CertRole::Admin);
    }
    may(role != CertRole::Admin)?;
    match body {
        Body::AdminRequest(_) => Ok(()),
        // Only root candidates take part in Raft and answer operators.
        Body::RaftRequest(_) | Body::RaftResponse(_) | Body::AdminResponse(_) => {
            may(is_rooty(role))
        }
        Body::JoinRequest(m) => {
            same_node(m.node_id)?;
            same_role(m.role)?;
            check_join_fields(from, &m.region, &m.address)
        }
        Body::Reattach(m) => {
            same_node(m.node_id)?;
            same_role(m.role)
        }
        Body::NotLeader(_) | Body::AdoptChild(_) | Body::ReleaseChild(_) => may(is_rooty(role)),
        Body::AssignParent(m) => {
            may(is_routing(role))?;
            same_node(m.parent_id)
        }
        Body::Cull(_) => may(is_routing(role)),
        // Only a parent says which of a subtree's tags are local (the tree checks it is ours).
        Body::OutsideInterest(_) => may(is_routing(role)),
        // CA-signed, checked by the receiver; only nodes that have children pass them on.
        Body::Revocations(_) => may(is_routing(role)),
        // The transport consumes these; one that got this far is out of place.
        Body::LinkRefresh(_) => may(false),
        Body::ChildRemoved(m) => {
            may(is_routing(role))?;
            same_node(m.parent_id)
        }
        Body::Heartbeat(m) => same_node(m.sender_id),
        Body::Disconnect(m) => same_node(m.sender_id),
        Body::InterestSnapshot(_) => Ok(()),
        Body::Multicast(m) => {
            // A client has no subtree: whatever it sends, it originates.
            if role == CertRole::Client && m.origin != from.node_id {
                return Err(Refusal::WrongNode {
                    kind,
                    claimed: m.origin,
                    actual: from.node_id,
                });
            }
            Ok(())
        }
    }
}
