//! [`RootGroup`]: one root candidate's Raft node, its storage and its RPC plumbing.

mod membership;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canopy_net::NetEndpoint;
use canopy_proto::{Body, ControlMessage};
use canopy_tree::{TreeView, ViewChange};
use openraft::error::{
    CheckIsLeaderError, ClientWriteError, ForwardToLeader, InitializeError, RaftError,
};
use openraft::{BasicNode, LogId, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::network::{NetworkFactory, Rpc, SNAPSHOT_CHUNK};
use crate::store::{open_db, open_store_counted, Holders, SharedApplied};
use crate::{
    service, CandidateId, GroupConfig, GroupError, GroupStatus, Leadership, ProposeError,
    TypeConfig, MAX_BATCH_BYTES,
};

type Metrics = RaftMetrics<CandidateId, BasicNode>;
type WriteError = RaftError<CandidateId, ClientWriteError<CandidateId, BasicNode>>;

/// One root candidate. Cheap to clone; all clones drive the same Raft node.
#[derive(Clone)]
pub struct RootGroup {
    inner: Arc<Inner>,
}

struct Inner {
    id: CandidateId,
    raft: Raft<TypeConfig>,
    rpc: Arc<Rpc>,
    applied: SharedApplied,
    committed: Arc<Mutex<Option<LogId<CandidateId>>>>,
    db: Mutex<Option<sled::Db>>,
    holders: Holders,
    leadership: watch::Receiver<Leadership>,
    stop: watch::Sender<bool>,
    runtime: tokio::runtime::Handle,
    shut_down: AtomicBool,
    /// Raft requests refused: from a non-member, or claiming another node's leadership.
    refused: Arc<AtomicU64>,
    /// Who may speak Raft to a candidate that knows no membership yet.
    known: Mutex<Vec<CandidateId>>,
    timers: crate::RaftTimers,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropped without `shutdown`: stop Raft in the background rather than leave it running.
        if !self.shut_down.swap(true, Ordering::SeqCst) {
            let _ = self.stop.send(true);
            self.rpc.close();
            let raft = self.raft.clone();
            self.runtime.spawn(async move {
                let _ = raft.shutdown().await;
            });
        }
    }
}

fn openraft_config(config: &GroupConfig) -> Result<openraft::Config, GroupError> {
    config.timers.validate().map_err(GroupError::Config)?;
    if config.snapshot_every == 0 {
        return Err(GroupError::Config("snapshot_every must be positive".into()));
    }
    let (heartbeat, election_min, election_max) = config.timers.millis();
    openraft::Config {
        cluster_name: "canopy-root".into(),
        heartbeat_interval: heartbeat,
        election_timeout_min: election_min,
        election_timeout_max: election_max,
        install_snapshot_timeout: election_max.max(1000),
        max_payload_entries: 64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
        snapshot_max_chunk_size: SNAPSHOT_CHUNK,
        // Keep one snapshot interval of logs behind the snapshot for slightly lagging peers.
        max_in_snapshot_log_to_keep: config.snapshot_every,
        ..Default::default()
    }
    .validate()
    .map_err(|e| GroupError::Config(e.to_string()))
}

fn leadership_of(m: &Metrics) -> Leadership {
    let is_leader = m.state == ServerState::Leader;
    Leadership {
        id: m.id,
        term: m.current_term,
        leader: m.current_leader,
        is_leader,
        contact: None,
    }
}

/// Republishes leadership on every metrics update until stopped or Raft is gone.
async fn watch_leadership(
    mut metrics: watch::Receiver<Metrics>,
    tx: watch::Sender<Leadership>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            changed = metrics.changed() => {
                if changed.is_err() {
                    break;
                }
                let leadership = leadership_of(&metrics.borrow_and_update());
                if leadership.is_leader != tx.borrow().is_leader {
                    info!(id = leadership.id, term = leadership.term, leader = ?leadership.leader,
                        is_leader = leadership.is_leader, "root group leadership changed");
                }
                tx.send_replace(leadership);
            }
            _ = stop.changed() => break,
        }
    }
}

impl RootGroup {
    /// Opens (or reopens, from sled) the candidate and starts its Raft task. Raft RPCs go out
    /// through `net`.
    pub async fn open(config: GroupConfig, net: NetEndpoint) -> Result<RootGroup, GroupError> {
        let raft_config = openraft_config(&config)?;
        let runtime = tokio::runtime::Handle::current();
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            GroupError::Storage(format!("cannot create {}: {e}", config.data_dir.display()))
        })?;
        let db = open_db(&config.data_dir).await?;
        let (log, sm, holders) = open_store_counted(&db, config.tree.clone())?;
        let committed = log.committed_handle();
        let applied = sm.shared();
        let rpc = Rpc::new(config.id, net, config.timers.heartbeat * 2);
        let network = NetworkFactory { rpc: rpc.clone() };
        let raft = Raft::new(config.id, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(|e| GroupError::Raft(e.to_string()))?;
        let (tx, leadership) = watch::channel(leadership_of(&raft.metrics().borrow()));
        let (stop, stop_rx) = watch::channel(false);
        runtime.spawn(watch_leadership(raft.metrics(), tx, stop_rx));
        info!(id = config.id, dir = %config.data_dir.display(), "root candidate opened");
        Ok(RootGroup {
            inner: Arc::new(Inner {
                id: config.id,
                raft,
                rpc,
                applied,
                committed,
                db: Mutex::new(Some(db)),
                holders,
                leadership,
                stop,
                runtime,
                shut_down: AtomicBool::new(false),
                refused: Arc::new(AtomicU64::new(0)),
                known: Mutex::new(Vec::new()),
                timers: config.timers,
            }),
        })
    }

    /// The timers this candidate runs with.
    pub fn timers(&self) -> crate::RaftTimers {
        self.inner.timers
    }

    /// This candidate's id.
    pub fn id(&self) -> CandidateId {
        self.inner.id
    }

    /// The underlying openraft handle (metrics, waits, triggers).
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.inner.raft
    }

    /// Bootstraps a pristine group with these members (id -> "host:port"). Safe to call on
    /// every candidate with the same map, and a no-op (Ok) on a candidate that already has state.
    pub async fn initialize(
        &self,
        members: BTreeMap<CandidateId, String>,
    ) -> Result<(), GroupError> {
        if !members.contains_key(&self.inner.id) {
            return Err(GroupError::Config(format!(
                "candidate {} is not among the initial members {:?}",
                self.inner.id,
                members.keys().collect::<Vec<_>>()
            )));
        }
        let raft = &self.inner.raft;
        if raft
            .is_initialized()
            .await
            .map_err(|e| GroupError::Raft(e.to_string()))?
        {
            return Ok(());
        }
        let nodes: BTreeMap<CandidateId, BasicNode> = members
            .into_iter()
            .map(|(id, addr)| (id, BasicNode::new(addr)))
            .collect();
        match raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            // State arrived meanwhile (another candidate's leader reached us first).
            Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                debug!(error = %e, "already initialized");
                Ok(())
            }
            Err(RaftError::APIError(InitializeError::NotInMembers(e))) => {
                Err(GroupError::Config(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => Err(GroupError::Raft(e.to_string())),
        }
    }

    /// Hands a Raft message that arrived from candidate `from` to the group: a `RaftRequest`
    /// is handled on a spawned task and answered with a `RaftResponse` sent back through the
    /// endpoint; a `RaftResponse` completes the matching outstanding RPC. Other bodies are
    /// ignored (returns false). The caller passes only messages from peers whose certificate
    /// names the root-candidate role; `from` is the node id that certificate names.
    pub fn on_message(&self, from: CandidateId, body: Body) -> bool {
        match body {
            Body::RaftRequest(request) => {
                if self.inner.shut_down.load(Ordering::SeqCst) {
                    return true;
                }
                if let Err(reason) = self.check_member(from) {
                    self.refuse(from, &reason);
                    return true;
                }
                let raft = self.inner.raft.clone();
                let rpc = self.inner.rpc.clone();
                let refused = self.inner.refused.clone();
                self.inner.runtime.spawn(async move {
                    let contacts = rpc.contacts.clone();
                    let response = match service::handle(&raft, &contacts, from, request).await {
                        Ok(response) => response,
                        Err(impostor) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            warn!(peer = from, reason = %impostor, "refusing a raft request");
                            rpc.net().close_link(from, &impostor);
                            return;
                        }
                    };
                    let msg = ControlMessage::new(Body::RaftResponse(response));
                    if let Err(e) = rpc.net().send(from, None, msg) {
                        debug!(peer = from, error = %e, "cannot answer a raft request");
                    }
                });
                true
            }
            Body::RaftResponse(response) => {
                if let Err(reason) = self.inner.rpc.complete(from, response) {
                    self.refuse(from, &reason);
                }
                true
            }
            _ => false,
        }
    }

    /// Only the group's members (voters and learners) speak Raft to it. A candidate whose
    /// membership is not known yet (a new learner before its first AppendEntries) hears only
    /// the configured candidates ([`RootGroup::set_known_candidates`]).
    fn check_member(&self, from: CandidateId) -> Result<(), String> {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let allowed = if membership.nodes().next().is_none() {
            self.known_candidates().contains(&from)
        } else {
            membership.get_node(&from).is_some()
        };
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "raft request from candidate {from}, which is not a member of the group"
            ))
        }
    }

    fn known_candidates(&self) -> Vec<CandidateId> {
        self.inner
            .known
            .lock()
            .map(|k| k.clone())
            .unwrap_or_default()
    }

    /// The candidates this one may hear Raft from while it knows no membership yet (those of
    /// its configuration). Without them, a candidate with no membership hears nobody.
    pub fn set_known_candidates(&self, candidates: Vec<CandidateId>) {
        if let Ok(mut known) = self.inner.known.lock() {
            *known = candidates;
        }
    }

    fn refuse(&self, from: CandidateId, reason: &str) {
        self.inner.refused.fetch_add(1, Ordering::Relaxed);
        warn!(peer = from, %reason, "refusing a raft request");
        self.inner.rpc.net().close_link(from, reason);
    }

    /// Raft requests refused so far (from non-members, or claiming to come from another
    /// candidate than the certificate names).
    pub fn refused_requests(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// The transport closed its link to `peer`: fails that peer's outstanding RPCs at once.
    pub fn on_link_closed(&self, peer: CandidateId) {
        self.inner.rpc.fail_peer(peer);
    }

    /// How many Raft RPCs this candidate has sent that still await an answer.
    pub fn outstanding_rpcs(&self) -> usize {
        self.inner.rpc.outstanding()
    }

    /// Dials `peer` at `address` instead of the address the membership records (for a
    /// candidate that restarted elsewhere); `None` returns to the recorded address. A change
    /// closes the current link to the peer so the next RPC dials the new address.
    pub fn set_peer_address(&self, peer: CandidateId, address: Option<String>) {
        self.inner.rpc.set_address(peer, address);
    }

    /// Commits one batch of changes (one log entry) and returns its log index once it is
    /// applied here.
    pub async fn propose(&self, changes: Vec<ViewChange>) -> Result<u64, ProposeError> {
        let size = serde_json::to_vec(&changes)
            .map_err(|e| ProposeError::Other(format!("cannot encode the batch: {e}")))?
            .len();
        if size > MAX_BATCH_BYTES {
            return Err(ProposeError::Other(format!(
                "batch of {} changes is {size} bytes, more than {MAX_BATCH_BYTES}",
                changes.len()
            )));
        }
        match self.inner.raft.client_write(changes).await {
            Ok(response) => Ok(response.log_id.index),
            Err(e) => Err(self.write_error(e)),
        }
    }

    /// Waits until this candidate, as leader, has applied everything committed before its
    /// term (openraft's `ensure_linearizable`), so [`view`](Self::view) is complete.
    pub async fn catch_up(&self) -> Result<(), ProposeError> {
        match self.inner.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(self.not_leader(f))
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                Err(ProposeError::Other(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => Err(ProposeError::Other(format!("raft stopped: {e}"))),
        }
    }

    /// Leadership as of now, with this candidate's own evidence of it (`contact`): as leader,
    /// when it sent the last request a quorum accepted in its term; as follower, when it last
    /// accepted a leader's entries or granted a vote.
    pub fn leadership_now(&self) -> Leadership {
        let now = Instant::now();
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        let mut leadership = leadership_of(&metrics);
        leadership.contact = if leadership.is_leader {
            let voters: Vec<CandidateId> =
                metrics.membership_config.membership().voter_ids().collect();
            self.inner
                .rpc
                .contacts
                .quorum_acked(self.inner.id, leadership.term, &voters, now)
        } else {
            self.inner.rpc.contacts.last_heard()
        };
        leadership
    }

    /// Asks Raft for an election now (openraft's own timer would wait the vote lease and
    /// then its election timeout on top). A no-op on a leader or a learner.
    pub fn elect(&self) {
        let raft = self.inner.raft.clone();
        self.inner.runtime.spawn(async move {
            if let Err(e) = raft.trigger().elect().await {
                debug!(error = %e, "could not trigger an election");
            }
        });
    }

    /// A clone of the committed view as applied here (None before the first NewRoot).
    pub fn view(&self) -> Option<TreeView> {
        self.inner.applied.read().view.clone()
    }

    /// The cluster's revocation lists (DER) as committed and applied here.
    pub fn revocations(&self) -> Vec<Vec<u8>> {
        self.inner.applied.read().revocations.clone()
    }

    /// Changes whenever the committed revocation lists are applied anew (0: none yet).
    pub fn revocations_version(&self) -> u64 {
        self.inner.applied.read().revocations_version
    }

    /// Leadership as this candidate sees it; changes on every metrics update.
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.inner.leadership.clone()
    }

    pub async fn status(&self) -> GroupStatus {
        let m = self.inner.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        // Applied index and view from the state machine itself (the metrics lag behind it).
        let (applied_index, epoch, view_nodes) = {
            let applied = self.inner.applied.read();
            let view = applied.view.as_ref();
            (
                applied.last_applied.map(|l| l.index),
                view.map(|v| v.epoch),
                view.map_or(0, TreeView::len),
            )
        };
        let commit_index = self
            .inner
            .committed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .map(|c| c.index);
        GroupStatus {
            id: self.inner.id,
            term: m.current_term,
            leader: m.current_leader,
            state: format!("{:?}", m.state),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            members: membership
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect(),
            last_log_index: m.last_log_index,
            commit_index,
            applied_index,
            snapshot_index: m.snapshot.map(|l| l.index),
            epoch,
            view_nodes,
        }
    }

    /// Stops Raft, fails outstanding RPCs and flushes sled; afterwards the data directory may
    /// be reopened. Later calls return at once.
    pub async fn shutdown(&self) {
        if self.inner.shut_down.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = self.inner.stop.send(true);
        self.inner.rpc.close();
        if let Err(e) = self.inner.raft.shutdown().await {
            warn!(id = self.inner.id, error = %e, "raft task ended badly");
        }
        let db = self
            .inner
            .db
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(db) = db {
            if let Err(e) = db.flush_async().await {
                warn!(id = self.inner.id, error = %e, "cannot flush the root group store");
            }
        }
        // openraft's tasks let go of their store handles shortly after it stops; once they
        // have, sled releases the directory's lock.
        if !self.inner.holders.wait_alone(Duration::from_secs(5)).await {
            warn!(id = self.inner.id, "store handles outlived the shutdown");
        }
        info!(id = self.inner.id, "root candidate shut down");
    }

    fn not_leader(&self, f: ForwardToLeader<CandidateId, BasicNode>) -> ProposeError {
        let address = f
            .leader_node
            .map(|n| n.addr)
            .or_else(|| f.leader_id.and_then(|l| self.member_address(l)));
        ProposeError::NotLeader {
            leader: f.leader_id,
            address,
        }
    }

    fn write_error(&self, e: WriteError) -> ProposeError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => self.not_leader(f),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                ProposeError::Other(format!("membership change refused: {e}"))
            }
            RaftError::Fatal(e) => ProposeError::Other(format!("raft stopped: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RaftTimers;

    #[test]
    fn settings_map_onto_openraft() {
        let mut config = GroupConfig::new(1, "/nonexistent");
        config.snapshot_every = 10;
        let raft = openraft_config(&config).expect("valid");
        assert_eq!(raft.heartbeat_interval, 50);
        assert_eq!(
            (raft.election_timeout_min, raft.election_timeout_max),
            (150, 300)
        );
        assert_eq!(raft.snapshot_policy, SnapshotPolicy::LogsSinceLast(10));
        assert_eq!(raft.max_in_snapshot_log_to_keep, 10);
        // A chunk travels raw beside a small encoded request, within one frame.
        assert!(raft.snapshot_max_chunk_size + 64 * 1024 < crate::MAX_RPC_BODY as u64);

        config.snapshot_every = 0;
        assert!(matches!(
            openraft_config(&config),
            Err(GroupError::Config(_))
        ));
        config.snapshot_every = 10;
        config.timers = RaftTimers {
            heartbeat: Duration::from_millis(500),
            ..RaftTimers::lan()
        };
        assert!(matches!(
            openraft_config(&config),
            Err(GroupError::Config(_))
        ));
    }
}
