//! Raft RPCs to other candidates over canopy-net: openraft's `RaftNetworkFactory` /
//! `RaftNetwork` (v2 of 0.9).
//!
//! Every RPC gets a request id and a oneshot in the pending map, goes out as a `RaftRequest`
//! whose body is the CBOR of openraft's request (a snapshot chunk's bytes beside it, raw),
//! and waits for the `RaftResponse` with the same id (whose body is the CBOR of
//! `Result<response, RaftError>`). A failed send or a
//! closed link fails the RPC at once as `Unreachable` (openraft backs off); no answer within
//! the RPC's hard TTL is a `Timeout` while a link to the peer is up, else `Unreachable`.
//! A pending entry is removed when its RPC ends in any way, including being dropped by
//! openraft's own timeout, so nothing leaks when a peer dies.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use canopy_net::NetEndpoint;
use canopy_proto::v1::raft_request::Kind;
use canopy_proto::v1::{RaftRequest, RaftResponse};
use canopy_proto::{Body, ControlMessage};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RPCTypes};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::contact::Contacts;
use crate::{wire, CandidateId, TypeConfig};

/// Largest request body sent (the frame limit is 1 MiB; leave room for the envelope).
pub const MAX_RPC_BODY: usize = 768 * 1024;
/// The AppendEntries budget never shrinks below this (one entry is always sent).
const MIN_RPC_BUDGET: usize = 64 * 1024;
/// Snapshot chunk size: chunks travel as raw bytes beside the encoded request.
pub const SNAPSHOT_CHUNK: u64 = 256 * 1024;

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<CandidateId, BasicNode, RaftError<CandidateId, E>>>;

/// Why an RPC got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum RpcFailure {
    #[error("peer {peer} unreachable: {reason}")]
    Unreachable { peer: CandidateId, reason: String },
    #[error("peer {peer} did not answer within {ttl:?}")]
    Timeout { peer: CandidateId, ttl: Duration },
    #[error("peer {peer} could not handle the request: {reason}")]
    Remote { peer: CandidateId, reason: String },
    #[error("undecodable answer from peer {peer}: {reason}")]
    BadAnswer { peer: CandidateId, reason: String },
}

struct Pending {
    peer: CandidateId,
    tx: oneshot::Sender<RaftResponse>,
}

/// The client side shared by all of a candidate's RPCs.
pub(crate) struct Rpc {
    me: CandidateId,
    net: NetEndpoint,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, Pending>>,
    /// Addresses that override the ones the membership records (peers that moved).
    addresses: RwLock<HashMap<CandidateId, String>>,
    /// Pause before retrying an unreachable peer.
    backoff: Duration,
    closed: AtomicBool,
    /// What peers accepted from this candidate, and when it was sent.
    pub(crate) contacts: Arc<Contacts>,
}

/// Removes its pending entry when the RPC ends, however it ends.
struct PendingGuard<'a> {
    rpc: &'a Rpc,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.rpc.lock().remove(&self.id);
    }
}

impl Rpc {
    pub fn new(me: CandidateId, net: NetEndpoint, backoff: Duration) -> Arc<Rpc> {
        Arc::new(Rpc {
            me,
            net,
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            addresses: RwLock::new(HashMap::new()),
            backoff,
            closed: AtomicBool::new(false),
            contacts: Arc::new(Contacts::default()),
        })
    }

    pub fn net(&self) -> &NetEndpoint {
        &self.net
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Pending>> {
        // Only single inserts and removes happen under this lock.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Completes the RPC the response answers, if `from` is the peer it was sent to. An
    /// answer to a request that went to another peer is never legitimate: `Err` with the
    /// reason (the caller closes that link).
    pub fn complete(&self, from: CandidateId, response: RaftResponse) -> Result<(), String> {
        let mut pending = self.lock();
        match pending.get(&response.request_id) {
            Some(p) if p.peer == from => {
                if let Some(p) = pending.remove(&response.request_id) {
                    let _ = p.tx.send(response);
                }
                Ok(())
            }
            Some(p) => Err(format!(
                "raft response {} from candidate {from} answers a request sent to {}",
                response.request_id, p.peer
            )),
            None => {
                debug!(
                    from,
                    id = response.request_id,
                    "late raft response, ignored"
                );
                Ok(())
            }
        }
    }

    /// How many RPCs await an answer.
    pub fn outstanding(&self) -> usize {
        self.lock().len()
    }

    /// Fails every outstanding RPC to `peer` (its link closed).
    pub fn fail_peer(&self, peer: CandidateId) {
        self.lock().retain(|_, p| p.peer != peer);
    }

    /// Fails every outstanding RPC and refuses new ones.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.lock().clear();
    }

    /// Overrides (or with `None` stops overriding) the address `peer` is dialled at. A change
    /// closes the link to the peer, so a dial to the old address does not hold messages back.
    pub fn set_address(&self, peer: CandidateId, address: Option<String>) {
        let previous = {
            let mut addresses = self
                .addresses
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match &address {
                Some(a) => addresses.insert(peer, a.clone()),
                None => addresses.remove(&peer),
            }
        };
        if previous != address {
            self.net.close_link(peer, "candidate address changed");
        }
    }

    fn address_override(&self, peer: CandidateId) -> Option<String> {
        self.addresses
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&peer)
            .cloned()
    }

    /// Sends one request and waits for its response body.
    async fn call(
        &self,
        peer: CandidateId,
        address: &str,
        kind: Kind,
        (body, data): (Vec<u8>, Vec<u8>),
        ttl: Duration,
    ) -> Result<Vec<u8>, RpcFailure> {
        let unreachable = |reason: String| RpcFailure::Unreachable { peer, reason };
        if self.closed.load(Ordering::SeqCst) {
            return Err(unreachable("this candidate is shutting down".into()));
        }
        let address = self
            .address_override(peer)
            .unwrap_or_else(|| address.to_owned());
        let addr = tokio::time::timeout(ttl, resolve(&address))
            .await
            .ok()
            .flatten();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, Pending { peer, tx });
        let _guard = PendingGuard { rpc: self, id };
        let request = RaftRequest {
            request_id: id,
            kind: kind as i32,
            body: body.into(),
            data: data.into(),
        };
        self.net
            .send(peer, addr, ControlMessage::new(Body::RaftRequest(request)))
            .map_err(|e| unreachable(format!("send to {address}: {e}")))?;
        let response = match tokio::time::timeout(ttl, rx).await {
            Ok(Ok(response)) => response,
            Ok(Err(_)) => return Err(unreachable("the link closed".into())),
            Err(_) if self.net.connected_peers().contains(&peer) => {
                return Err(RpcFailure::Timeout { peer, ttl })
            }
            Err(_) => return Err(unreachable(format!("no link to {address}"))),
        };
        if !response.error.is_empty() {
            return Err(RpcFailure::Remote {
                peer,
                reason: response.error,
            });
        }
        Ok(response.body.to_vec())
    }
}

/// A socket address from "ip:port", or by a DNS lookup of "host:port".
async fn resolve(address: &str) -> Option<SocketAddr> {
    if let Ok(addr) = address.parse() {
        return Some(addr);
    }
    match tokio::net::lookup_host(address).await {
        Ok(mut addrs) => addrs.next(),
        Err(e) => {
            debug!(address, error = %e, "cannot resolve candidate address");
            None
        }
    }
}

/// openraft's network factory: one [`PeerClient`] per target.
pub(crate) struct NetworkFactory {
    pub rpc: Arc<Rpc>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: CandidateId, node: &BasicNode) -> PeerClient {
        PeerClient {
            rpc: self.rpc.clone(),
            target,
            address: node.addr.clone(),
            budget: MAX_RPC_BODY,
        }
    }
}

/// RPCs to one target.
pub(crate) struct PeerClient {
    rpc: Arc<Rpc>,
    target: CandidateId,
    address: String,
    /// Current AppendEntries body budget, in bytes.
    budget: usize,
}

impl PeerClient {
    async fn request<Req, Resp, E>(
        &self,
        kind: Kind,
        action: RPCTypes,
        request: &Req,
        ttl: Duration,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = wire::encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.send(kind, action, (body, Vec::new()), ttl).await
    }

    /// Sends an encoded request (and a snapshot chunk's raw bytes) and decodes the answer.
    async fn send<Resp, E>(
        &self,
        kind: Kind,
        action: RPCTypes,
        (body, data): (Vec<u8>, Vec<u8>),
        ttl: Duration,
    ) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let target = self.target;
        if body.len() + data.len() > MAX_RPC_BODY {
            let failure = RpcFailure::Unreachable {
                peer: target,
                reason: format!(
                    "{action} request of {} bytes exceeds {MAX_RPC_BODY}",
                    body.len() + data.len()
                ),
            };
            warn!(%failure, "raft request too large");
            return Err(RPCError::Unreachable(Unreachable::new(&failure)));
        }
        let answer = match self
            .rpc
            .call(target, &self.address, kind, (body, data), ttl)
            .await
        {
            Ok(answer) => answer,
            Err(RpcFailure::Timeout { .. }) => {
                return Err(RPCError::Timeout(Timeout {
                    action,
                    id: self.rpc.me,
                    target,
                    timeout: ttl,
                }))
            }
            Err(failure @ RpcFailure::Unreachable { .. }) => {
                return Err(RPCError::Unreachable(Unreachable::new(&failure)))
            }
            Err(failure) => return Err(RPCError::Network(NetworkError::new(&failure))),
        };
        match wire::decode::<Result<Resp, RaftError<CandidateId, E>>>(&answer) {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(target, e))),
            Err(e) => {
                let failure = RpcFailure::BadAnswer {
                    peer: target,
                    reason: e.to_string(),
                };
                Err(RPCError::Network(NetworkError::new(&failure)))
            }
        }
    }
}

/// How many leading entries fit in a request body of `budget` bytes.
fn fitting_prefix(rpc: &AppendEntriesRequest<TypeConfig>, budget: usize) -> usize {
    let envelope = AppendEntriesRequest::<TypeConfig> {
        vote: rpc.vote,
        prev_log_id: rpc.prev_log_id,
        leader_commit: rpc.leader_commit,
        entries: Vec::new(),
    };
    // CBOR lays the entries out one after another: the sum of their sizes, plus at most 9
    // bytes for the array's length.
    let mut size = wire::encoded_len(&envelope) + 9;
    let mut fit = 0;
    for entry in &rpc.entries {
        size += wire::encoded_len(entry);
        if size > budget {
            break;
        }
        fit += 1;
    }
    fit
}

impl RaftNetwork<TypeConfig> for PeerClient {
    /// Sends as many entries as fit the current budget (at most [`MAX_RPC_BODY`]); when that
    /// is not all of them, a success is reported as a partial success up to the last one sent.
    /// openraft gives an AppendEntries one heartbeat interval, so a large request that times
    /// out halves the budget for this peer; successes grow it back.
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<CandidateId>> {
        let encode_failed = |e: wire::WireError| RPCError::Network(NetworkError::new(&e));
        let mut body = wire::encode(&rpc).map_err(encode_failed)?;
        let mut partial = None;
        if body.len() > self.budget && rpc.entries.len() > 1 {
            let fit = fitting_prefix(&rpc, self.budget).max(1);
            rpc.entries.truncate(fit);
            partial = rpc.entries.last().map(|e| e.log_id);
            body = wire::encode(&rpc).map_err(encode_failed)?;
            debug!(
                target = self.target,
                fit,
                budget = self.budget,
                "append_entries split"
            );
        }
        let sent = body.len();
        let (sent_at, term) = (Instant::now(), rpc.vote.leader_id().get_term());
        let action = RPCTypes::AppendEntries;
        let result = self
            .send(
                Kind::AppendEntries,
                action,
                (body, Vec::new()),
                option.hard_ttl(),
            )
            .await;
        match &result {
            Err(RPCError::Timeout(_)) if sent > MIN_RPC_BUDGET => {
                self.budget = (sent / 2).max(MIN_RPC_BUDGET);
            }
            Ok(response) => {
                self.budget = self.budget.saturating_mul(2).min(MAX_RPC_BODY);
                // A conflict is a log mismatch: the follower still accepted this leader.
                if !matches!(response, AppendEntriesResponse::HigherVote(_)) {
                    self.rpc.contacts.acked(self.target, term, sent_at);
                }
            }
            Err(_) => {}
        }
        match (result?, partial) {
            (AppendEntriesResponse::Success, Some(last)) => {
                Ok(AppendEntriesResponse::PartialSuccess(Some(last)))
            }
            (response, _) => Ok(response),
        }
    }

    async fn install_snapshot(
        &mut self,
        mut rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<CandidateId>, InstallSnapshotError> {
        let ttl = option.hard_ttl();
        let data = std::mem::take(&mut rpc.data);
        let body = wire::encode(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let action = RPCTypes::InstallSnapshot;
        self.send(Kind::InstallSnapshot, action, (body, data), ttl)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<CandidateId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<CandidateId>> {
        let ttl = option.hard_ttl();
        let (sent_at, term) = (Instant::now(), rpc.vote.leader_id().get_term());
        let response: VoteResponse<CandidateId> =
            self.request(Kind::Vote, RPCTypes::Vote, &rpc, ttl).await?;
        if response.vote_granted {
            self.rpc.contacts.acked(self.target, term, sent_at);
        }
        Ok(response)
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.rpc.backoff))
    }
}
