//! The replicated state machine: the tree view, applied in memory; its durable form is the
//! current snapshot in sled.

use std::io::Cursor;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use canopy_tree::{TreeConfig, TreeView, ViewChange, ViewSnapshot};
use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::{decode, encode, read_json, Holders, StoreError};
use crate::{CandidateId, Entry, TypeConfig};

const SNAPSHOT_META: &[u8] = b"snapshot_meta";
const SNAPSHOT_DATA: &[u8] = b"snapshot_data";
/// Version of [`SnapshotPayload`].
const SNAPSHOT_FORMAT: u32 = 1;

type StorageResult<T> = Result<T, StorageError<CandidateId>>;
type Meta = SnapshotMeta<CandidateId, BasicNode>;

/// What a snapshot's data holds (JSON).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotPayload {
    pub format: u32,
    /// Log id of the last entry the snapshot includes (also in its metadata).
    pub last_log_id: Option<LogId<CandidateId>>,
    pub view: Option<ViewSnapshot>,
    /// The committed revocation lists (DER); absent in snapshots from before they existed.
    #[serde(default)]
    pub revocations: Vec<Vec<u8>>,
}

fn next_revocations_version() -> u64 {
    static VERSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    VERSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The applied state: what the committed log up to `last_applied` amounts to.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub view: Option<TreeView>,
    /// The cluster's revocation lists as last committed (DER).
    pub revocations: Vec<Vec<u8>>,
    /// Changes whenever `revocations` is set (never repeats within a process), so readers
    /// can tell a new set without comparing lists.
    pub revocations_version: u64,
    pub last_applied: Option<LogId<CandidateId>>,
    pub last_membership: StoredMembership<CandidateId, BasicNode>,
}

/// The applied state, shared with [`RootGroup`](crate::RootGroup) for `view()` and `status()`.
#[derive(Debug, Clone, Default)]
pub(crate) struct SharedApplied(Arc<RwLock<Applied>>);

impl SharedApplied {
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        // Every update of `Applied` is a plain assignment: a panic elsewhere leaves it whole.
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Applied> {
        self.0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The state machine; clones share everything (a clone is also the snapshot builder).
#[derive(Clone)]
pub struct StateMachine {
    db: sled::Db,
    state_tree: sled::Tree,
    tree_config: Arc<TreeConfig>,
    applied: SharedApplied,
    /// Serialises "is this snapshot newer than the stored one? then store it".
    snapshot_lock: Arc<Mutex<()>>,
    /// Counts the live handles on the database (see [`super::Holders`]).
    _holder: Holders,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("applied", &self.applied.read().last_applied)
            .finish_non_exhaustive()
    }
}

impl StateMachine {
    /// Opens the state machine, starting from the stored snapshot if there is one.
    pub(crate) fn new(
        db: &sled::Db,
        tree_config: Arc<TreeConfig>,
        holder: Holders,
    ) -> Result<Self, StoreError> {
        let sm = StateMachine {
            db: db.clone(),
            state_tree: db.open_tree("state")?,
            tree_config,
            applied: SharedApplied::default(),
            snapshot_lock: Arc::new(Mutex::new(())),
            _holder: holder,
        };
        if let Some((meta, data)) = sm.stored_snapshot()? {
            let applied = sm.restore(&meta, &data)?;
            *sm.applied.write() = applied;
        }
        Ok(sm)
    }

    pub(crate) fn shared(&self) -> SharedApplied {
        self.applied.clone()
    }

    fn stored_snapshot(&self) -> Result<Option<(Meta, Vec<u8>)>, StoreError> {
        let meta: Option<Meta> = read_json(&self.state_tree, SNAPSHOT_META, "snapshot metadata")?;
        let Some(meta) = meta else { return Ok(None) };
        let data = self
            .state_tree
            .get(SNAPSHOT_DATA)?
            .ok_or_else(|| StoreError::Invalid("snapshot metadata without data".into()))?;
        Ok(Some((meta, data.to_vec())))
    }

    /// The applied state a snapshot describes.
    fn restore(&self, meta: &Meta, data: &[u8]) -> Result<Applied, StoreError> {
        let payload: SnapshotPayload = decode("snapshot", data)?;
        if payload.format != SNAPSHOT_FORMAT {
            return Err(StoreError::Invalid(format!(
                "snapshot format {} (this build reads {SNAPSHOT_FORMAT})",
                payload.format
            )));
        }
        if payload.last_log_id != meta.last_log_id {
            return Err(StoreError::Invalid(format!(
                "snapshot data is at {:?} but its metadata at {:?}",
                payload.last_log_id, meta.last_log_id
            )));
        }
        let view = match &payload.view {
            Some(snapshot) => Some(
                TreeView::from_snapshot(snapshot, &self.tree_config).ok_or_else(|| {
                    StoreError::Invalid("snapshot view lacks its root or a parent".into())
                })?,
            ),
            None => None,
        };
        Ok(Applied {
            view,
            revocations: payload.revocations,
            revocations_version: next_revocations_version(),
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
        })
    }

    /// Stores `meta`/`data` as the current snapshot unless a newer one is stored already.
    async fn store_snapshot(&self, meta: &Meta, data: &[u8]) -> Result<(), StoreError> {
        {
            let _guard = self
                .snapshot_lock
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let stored: Option<Meta> =
                read_json(&self.state_tree, SNAPSHOT_META, "snapshot metadata")?;
            if stored.is_some_and(|s| s.last_log_id > meta.last_log_id) {
                return Ok(());
            }
            let mut batch = sled::Batch::default();
            batch.insert(SNAPSHOT_META, encode("snapshot metadata", meta)?);
            batch.insert(SNAPSHOT_DATA, data);
            self.state_tree.apply_batch(batch)?;
        }
        // Durable before openraft purges the logs it covers.
        self.db.flush_async().await?;
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let (meta, data) = {
            let applied = self.applied.read();
            let payload = SnapshotPayload {
                format: SNAPSHOT_FORMAT,
                last_log_id: applied.last_applied,
                view: applied.view.as_ref().map(TreeView::to_snapshot),
                revocations: applied.revocations.clone(),
            };
            let data = encode("snapshot", &payload)
                .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
            let stamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            let snapshot_id = match applied.last_applied {
                Some(id) => format!("{}-{}-{stamp}", id.leader_id, id.index),
                None => format!("none-{stamp}"),
            };
            let meta = Meta {
                last_log_id: applied.last_applied,
                last_membership: applied.last_membership.clone(),
                snapshot_id,
            };
            (meta, data)
        };
        self.store_snapshot(&meta, &data)
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(
        Option<LogId<CandidateId>>,
        StoredMembership<CandidateId, BasicNode>,
    )> {
        let applied = self.applied.read();
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<()>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        let mut applied = self.applied.write();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(changes) => {
                    for change in changes {
                        match change {
                            ViewChange::Revocations { lists } => {
                                applied.revocations = lists;
                                applied.revocations_version = next_revocations_version();
                            }
                            change => change.apply_to(&mut applied.view, &self.tree_config),
                        }
                    }
                }
                EntryPayload::Membership(membership) => {
                    applied.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                }
            }
            replies.push(());
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let restored = self
            .restore(meta, &data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        self.store_snapshot(meta, &data)
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        *self.applied.write() = restored;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let stored = self
            .stored_snapshot()
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(stored.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
