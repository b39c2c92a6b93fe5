//! Operator requests: a root candidate answers `AdminRequest`s from admin certificates
//! (cluster status, membership changes through Raft), and [`AdminClient`] is the CLI's end.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use canopy_net::{CertRole, Credentials, NetConfig, NetEndpoint, NetEvent};
use canopy_proto::v1::{
    admin_request::Command, AdminRequest, AdminResponse, CandidateChange, ClusterStatusRequest,
};
use canopy_proto::{Body, ControlMessage};
use canopy_raft::{ProposeError, RootGroup};
use canopy_tree::{NodeId, Role, TreeView};
use serde::{Deserialize, Serialize};

/// The tree as the committed view describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeSummary {
    pub root: NodeId,
    pub epoch: u64,
    pub nodes: usize,
    pub routers: usize,
    pub clients: usize,
    /// Nodes directly under the root.
    pub root_children: usize,
    /// Nodes whose parent left and that have not rejoined yet.
    pub detached: usize,
    /// Depth of the deepest attached node (root = 0).
    pub depth: u32,
}

impl TreeSummary {
    pub fn of(view: &TreeView) -> TreeSummary {
        let mut summary = TreeSummary {
            root: view.root(),
            epoch: view.epoch,
            nodes: view.len(),
            ..TreeSummary::default()
        };
        for (_, entry) in view.iter() {
            match entry.role {
                Role::Router => summary.routers += 1,
                Role::Client => summary.clients += 1,
                Role::Root => {}
            }
            if entry.parent == Some(view.root()) {
                summary.root_children += 1;
            }
            if entry.detached_since.is_some() {
                summary.detached += 1;
            } else {
                summary.depth = summary.depth.max(entry.depth);
            }
        }
        summary
    }
}

/// Answers one operator request and sends the response back to `from`.
/// Operator requests a candidate answers at once; more are refused with "busy".
pub(crate) const MAX_ADMIN_IN_FLIGHT: usize = 8;

pub(crate) async fn answer_admin(
    group: Option<RootGroup>,
    net: NetEndpoint,
    from: NodeId,
    request: AdminRequest,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let mut response = AdminResponse {
        request_id: request.request_id,
        ..AdminResponse::default()
    };
    match (group, request.command) {
        // Operator requests may wait on Raft; only so many are answered at once.
        _ if permit.is_none() => {
            response.error = format!(
                "busy: {MAX_ADMIN_IN_FLIGHT} operator requests are being answered; try again"
            );
        }
        (None, _) => response.error = "this node is not a root candidate".into(),
        (_, None) => response.error = "empty admin request".into(),
        (Some(group), Some(Command::Status(_))) => {
            let status = serde_json::json!({
                "raft": group.status().await,
                "tree": group.view().map(|v| TreeSummary::of(&v)),
            });
            response.status_json = status.to_string();
        }
        (Some(group), Some(Command::AddCandidate(change))) => {
            let result = if change.address.parse::<SocketAddr>().is_err() {
                Err(ProposeError::Other(format!(
                    "candidate address {:?} is not host:port",
                    change.address
                )))
            } else {
                group.add_candidate(change.node_id, change.address).await
            };
            fill_error(&mut response, result);
        }
        (Some(group), Some(Command::RemoveCandidate(change))) => {
            let result = group.remove_candidate(change.node_id).await;
            fill_error(&mut response, result);
        }
        (Some(group), Some(Command::Revoke(revoke))) => {
            match commit_revocations(&group, &net, &revoke.lists).await {
                Ok(status) => response.status_json = status.to_string(),
                Err(e) => fill_error(&mut response, Err(e)),
            }
        }
    }
    let _ = net.send(
        from,
        None,
        ControlMessage::new(Body::AdminResponse(response)),
    );
}

/// One revocation commit at a time per candidate: each reads the committed set and writes
/// it back merged, and two at once would lose one.
static REVOKE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Commits `lists` (merged with what is committed) through the root group, puts them in
/// force here and floods them down the tree.
async fn commit_revocations(
    group: &RootGroup,
    net: &NetEndpoint,
    lists: &[bytes::Bytes],
) -> Result<serde_json::Value, ProposeError> {
    let _one_at_a_time = REVOKE_LOCK.lock().await;
    // Everything committed so far is applied here before the set is read.
    group.catch_up().await?;
    let current = group.revocations();
    let merged =
        crate::revocations::merged_for_commit(net, &current, lists).map_err(ProposeError::Other)?;
    let changed = merged.is_some();
    let committed = match merged {
        Some(merged) => {
            group
                .propose(vec![canopy_tree::ViewChange::Revocations {
                    lists: merged.clone(),
                }])
                .await?;
            merged
        }
        None => current,
    };
    let (parsed, _) = crate::revocations::parse_lists(
        &committed
            .iter()
            .cloned()
            .map(bytes::Bytes::from)
            .collect::<Vec<_>>(),
    );
    crate::revocations::adopt(net, parsed, "root group");
    let flooded = crate::revocations::flood(net, None);
    Ok(serde_json::json!({
        "lists": committed.len(),
        "changed": changed,
        "sent_to": flooded,
    }))
}

fn fill_error(response: &mut AdminResponse, result: Result<(), ProposeError>) {
    if let Err(e) = result {
        response.error = e.to_string();
        if let ProposeError::NotLeader { leader, address } = e {
            response.leader_hint = leader.unwrap_or(0);
            response.leader_address = address.unwrap_or_default();
        }
    }
}

/// Why an operator request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("the credentials are not an admin certificate (role {0})")]
    NotAdmin(&'static str),
    #[error("cannot open an endpoint: {0}")]
    Net(#[from] canopy_net::NetError),
    #[error("cannot send to candidate {id} at {address}: {error}")]
    Send {
        id: NodeId,
        address: SocketAddr,
        error: canopy_net::SendError,
    },
    #[error("candidate {id} at {address} did not answer within {timeout:?}")]
    Timeout {
        id: NodeId,
        address: SocketAddr,
        timeout: Duration,
    },
    #[error("candidate {id} refused: {message}")]
    Refused {
        id: NodeId,
        message: String,
        leader: Option<(NodeId, String)>,
    },
    #[error("candidate {id} sent a status that is not JSON: {error}")]
    BadStatus { id: NodeId, error: String },
}

/// The operator's end: an admin certificate's endpoint that asks root candidates.
pub struct AdminClient {
    net: NetEndpoint,
    events: canopy_net::NetEvents,
    next_id: u64,
    timeout: Duration,
}

impl AdminClient {
    /// Opens an endpoint on an ephemeral loopback-or-any port with admin credentials.
    pub fn connect(creds: Credentials, bind: Option<SocketAddr>) -> Result<Self, AdminError> {
        let role = creds.identity().role;
        if role != CertRole::Admin {
            return Err(AdminError::NotAdmin(role.as_str()));
        }
        let bind = bind.unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let (net, events) = NetEndpoint::bind(bind, creds, NetConfig::default())?;
        Ok(AdminClient {
            net,
            events,
            next_id: 1,
            timeout: Duration::from_secs(5),
        })
    }

    async fn ask(
        &mut self,
        id: NodeId,
        address: SocketAddr,
        command: Command,
    ) -> Result<AdminResponse, AdminError> {
        let request_id = self.next_id;
        self.next_id += 1;
        let request = AdminRequest {
            request_id,
            command: Some(command),
        };
        let msg = ControlMessage::new(Body::AdminRequest(request));
        self.net
            .send(id, Some(address), msg)
            .map_err(|error| AdminError::Send { id, address, error })?;
        let timeout = self.timeout;
        let wait = async {
            while let Some(event) = self.events.recv().await {
                if let NetEvent::Message { from, msg } = event {
                    if let Some(Body::AdminResponse(r)) = msg.body {
                        if from.node_id == id && r.request_id == request_id {
                            return Some(r);
                        }
                    }
                }
            }
            None
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Some(response)) if response.error.is_empty() => Ok(response),
            Ok(Some(response)) => Err(AdminError::Refused {
                id,
                message: response.error,
                leader: (response.leader_hint != 0)
                    .then_some((response.leader_hint, response.leader_address)),
            }),
            Ok(None) | Err(_) => Err(AdminError::Timeout {
                id,
                address,
                timeout,
            }),
        }
    }

    /// One candidate's status as JSON (`raft` and `tree`).
    pub async fn status(
        &mut self,
        id: NodeId,
        address: SocketAddr,
    ) -> Result<serde_json::Value, AdminError> {
        let response = self
            .ask(id, address, Command::Status(ClusterStatusRequest {}))
            .await?;
        serde_json::from_str(&response.status_json).map_err(|e| AdminError::BadStatus {
            id,
            error: e.to_string(),
        })
    }

    /// Adds or removes a candidate, asking `candidates` in turn and following leader hints.
    pub async fn change_membership(
        &mut self,
        candidates: &[(NodeId, SocketAddr)],
        change: MembershipChange,
    ) -> Result<NodeId, AdminError> {
        let command = match &change {
            MembershipChange::Add { id, address } => Command::AddCandidate(CandidateChange {
                node_id: *id,
                address: address.to_string(),
            }),
            MembershipChange::Remove { id } => Command::RemoveCandidate(CandidateChange {
                node_id: *id,
                address: String::new(),
            }),
        };
        Ok(self.ask_leader(candidates, command).await?.0)
    }

    /// Commits certificate revocation lists (DER) through the root group, which pushes them
    /// down the tree. Returns the leader that committed them and its report (`lists`: how
    /// many lists are in force, `changed`: false when every list was in force already,
    /// `sent_to`: the peers it sent them to). A list older than the committed one of its CA
    /// is an error.
    pub async fn revoke(
        &mut self,
        candidates: &[(NodeId, SocketAddr)],
        lists: Vec<Vec<u8>>,
    ) -> Result<(NodeId, serde_json::Value), AdminError> {
        let command = Command::Revoke(canopy_proto::v1::RevokeRequest {
            lists: lists.into_iter().map(bytes::Bytes::from).collect(),
        });
        let (id, response) = self.ask_leader(candidates, command).await?;
        let report =
            serde_json::from_str(&response.status_json).map_err(|e| AdminError::BadStatus {
                id,
                error: e.to_string(),
            })?;
        Ok((id, report))
    }

    /// Asks `candidates` in turn, following leader hints, until one accepts `command`.
    async fn ask_leader(
        &mut self,
        candidates: &[(NodeId, SocketAddr)],
        command: Command,
    ) -> Result<(NodeId, AdminResponse), AdminError> {
        let mut known: HashMap<NodeId, SocketAddr> = candidates.iter().copied().collect();
        let mut queue: Vec<(NodeId, SocketAddr)> = candidates.to_vec();
        queue.reverse();
        let mut last = None;
        let mut tries = 0;
        while let Some((id, address)) = queue.pop() {
            tries += 1;
            if tries > candidates.len() + 4 {
                break;
            }
            match self.ask(id, address, command.clone()).await {
                Ok(response) => return Ok((id, response)),
                Err(AdminError::Refused {
                    leader: Some((leader, leader_address)),
                    ..
                }) if leader != id => {
                    let address = leader_address
                        .parse()
                        .ok()
                        .or_else(|| known.get(&leader).copied());
                    if let Some(address) = address {
                        known.insert(leader, address);
                        queue.push((leader, address));
                    }
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(AdminError::Refused {
            id: 0,
            message: "no candidate accepted the change".into(),
            leader: None,
        }))
    }

    /// Closes the endpoint.
    pub async fn close(self) {
        self.net.shutdown().await;
    }
}

/// A change to the root group's membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    Add { id: NodeId, address: SocketAddr },
    Remove { id: NodeId },
}
