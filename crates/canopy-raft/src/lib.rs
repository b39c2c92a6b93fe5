//! Canopy's root group: the Raft group of 3 or 5 root candidates whose leader serves as the
//! tree's root.
//!
//! The replicated state machine is the tree view (`Option<canopy_tree::TreeView>`, `None` until
//! the first `ViewChange::NewRoot`); one log entry is one batch of
//! [`ViewChange`](canopy_tree::ViewChange)s. The leader commits every structural change here
//! before it acts on it, so a new leader takes over with the view already in hand.
//!
//! - [`RootGroup`]: opens a candidate from its data directory, bootstraps the group, proposes
//!   batches, reports leadership and status, changes membership, shuts down.
//! - [`store`]: openraft storage v2 on sled: the log, the vote, the committed log id, and the
//!   state machine whose durable form is its current snapshot.
//! - `network`: Raft RPCs as `RaftRequest` / `RaftResponse` messages over canopy-net (bodies are
//!   the JSON of openraft's types), with request ids, timeouts and failure on link loss.
//! - [`RaftTimers`]: heartbeat and election timers, LAN and WAN presets.
//!
//! The crate does not read the network itself: the node runtime owns the endpoint's event
//! receiver and hands Raft bodies to [`RootGroup::on_message`] and link losses to
//! [`RootGroup::on_link_closed`].
//!
//! Layering: this crate may depend on `canopy-net`, `canopy-proto` and `canopy-tree` only. It
//! must never depend on `canopy-node` (which depends on it), and the tokio-free layers
//! (`canopy-proto`, `canopy-tree`, `canopy-sim`) must never depend on it.

mod contact;
mod group;
mod network;
mod service;
pub mod store;
mod timers;
pub mod wire;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use group::RootGroup;
pub use network::{RpcFailure, MAX_RPC_BODY, SNAPSHOT_CHUNK};
pub use timers::RaftTimers;

/// A root candidate's id (its node id in the cluster's certificates).
pub type CandidateId = u64;

openraft::declare_raft_types!(
    /// openraft's type configuration of the root group.
    pub TypeConfig:
        D = Vec<canopy_tree::ViewChange>,
        R = (),
        NodeId = CandidateId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// One entry of the root group's log.
pub type Entry = openraft::Entry<TypeConfig>;

/// Build a snapshot after this many log entries since the last one, by default.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 1000;
/// Largest batch [`RootGroup::propose`] accepts, as JSON (one log entry must fit one frame).
pub const MAX_BATCH_BYTES: usize = 128 * 1024;
/// Largest snapshot a candidate installs. openraft writes a chunk at whatever offset it
/// names, into memory: without a bound, one chunk at a far offset from a member would make
/// every follower allocate that much. (A view of a million nodes is far below this.)
pub const MAX_SNAPSHOT_BYTES: u64 = 512 << 20;
/// How long [`RootGroup::add_candidate`] waits for the new candidate to catch up.
pub const LEARNER_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings of one candidate.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub id: CandidateId,
    /// The sled database lives here.
    pub data_dir: PathBuf,
    pub timers: RaftTimers,
    pub tree: Arc<canopy_tree::TreeConfig>,
    /// Build a snapshot after this many logs since the last (default 1000). The leader keeps
    /// as many logs again behind its snapshot; a follower further behind gets the snapshot.
    pub snapshot_every: u64,
}

impl GroupConfig {
    /// LAN timers, the default tree configuration, a snapshot every 1000 logs.
    pub fn new(id: CandidateId, data_dir: impl Into<PathBuf>) -> GroupConfig {
        GroupConfig {
            id,
            data_dir: data_dir.into(),
            timers: RaftTimers::lan(),
            tree: Arc::new(canopy_tree::TreeConfig::default()),
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
        }
    }
}

/// Leadership as one candidate sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    pub id: CandidateId,
    pub term: u64,
    pub leader: Option<CandidateId>,
    pub is_leader: bool,
    /// This candidate's own evidence, by its own clock (only from
    /// [`RootGroup::leadership_now`]): as leader, when it sent the last request a quorum
    /// accepted in its term; as follower, when it last accepted a leader's entries or granted
    /// a vote.
    pub contact: Option<std::time::Instant>,
}

/// A snapshot of one candidate's Raft and view state.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupStatus {
    pub id: CandidateId,
    pub term: u64,
    pub leader: Option<CandidateId>,
    /// Leader, Follower, Candidate, Learner (or Shutdown).
    pub state: String,
    pub voters: Vec<CandidateId>,
    pub learners: Vec<CandidateId>,
    pub members: BTreeMap<CandidateId, String>,
    pub last_log_index: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    /// Topology epoch of the applied view.
    pub epoch: Option<u64>,
    pub view_nodes: usize,
}

/// Why a proposal, read barrier or membership change failed.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader can do this; `leader`/`address` name the leader if known.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        leader: Option<CandidateId>,
        address: Option<String>,
    },
    #[error("{0}")]
    Other(String),
}

/// Why a candidate could not be opened or bootstrapped.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The sled database could not be opened, read or written.
    #[error("root group storage: {0}")]
    Storage(String),
    /// Unusable settings (timers, snapshot interval, membership).
    #[error("invalid root group configuration: {0}")]
    Config(String),
    /// openraft failed or has stopped.
    #[error("raft: {0}")]
    Raft(String),
}

impl From<store::StoreError> for GroupError {
    fn from(e: store::StoreError) -> Self {
        GroupError::Storage(e.to_string())
    }
}
