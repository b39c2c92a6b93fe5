//! Durable state of one candidate, in one sled database under its data directory:
//!
//! - tree `logs`: the Raft log, key = big-endian index, value = the JSON entry;
//! - tree `meta`: the vote, the committed log id and the last purged log id;
//! - tree `state`: the current snapshot of the state machine (its metadata and its data).
//!
//! The state machine itself (the tree view) lives in memory; its durable form is the current
//! snapshot. On open it is loaded from that snapshot, and openraft reapplies the committed log
//! entries past it (the committed log id is stored, so a restart does not wait for a leader).

mod log;
mod state_machine;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use canopy_tree::TreeConfig;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use log::LogStore;
pub(crate) use state_machine::SharedApplied;
pub use state_machine::StateMachine;

/// sled's page cache per candidate: several candidates often share one machine.
pub const CACHE_CAPACITY: u64 = 16 * 1024 * 1024;
/// How long [`open_db`] keeps retrying while a previous instance still holds the lock
/// (a just shut down group whose background tasks are still letting go of the database).
const LOCK_PATIENCE: Duration = Duration::from_secs(10);

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("cannot decode stored {what}: {source}")]
    Decode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Opens (creating if needed) the candidate's sled database in `dir`, with a small cache.
/// Waits up to 10 s for the lock of a previous instance in this process to be released.
pub async fn open_db(dir: &Path) -> Result<sled::Db, StoreError> {
    open_db_within(dir, LOCK_PATIENCE).await
}

async fn open_db_within(dir: &Path, patience: Duration) -> Result<sled::Db, StoreError> {
    let config = sled::Config::new().path(dir).cache_capacity(CACHE_CAPACITY);
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Builds the log store and the state machine of one candidate on an open database; the state
/// machine starts from the stored snapshot, if any.
pub fn open_store(
    db: &sled::Db,
    tree: Arc<TreeConfig>,
) -> Result<(LogStore, StateMachine), StoreError> {
    let (log, sm, _) = open_store_counted(db, tree)?;
    Ok((log, sm))
}

/// Like [`open_store`], also returning the [`Holders`] count of the two and all their clones.
pub(crate) fn open_store_counted(
    db: &sled::Db,
    tree: Arc<TreeConfig>,
) -> Result<(LogStore, StateMachine, Holders), StoreError> {
    let holders = Holders::default();
    let log = LogStore::new(db, holders.clone())?;
    let sm = StateMachine::new(db, tree, holders.clone())?;
    Ok((log, sm, holders))
}

/// Counts the live log stores and state machines (clones included) of one database: openraft's
/// tasks keep clones for a moment after it stops, and sled's lock is only released once the
/// last handle is gone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Holders(Arc<()>);

impl Holders {
    /// Waits until this is the last one, at most `patience`; false if others remain.
    pub async fn wait_alone(&self, patience: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        while Arc::strong_count(&self.0) > 1 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

pub(crate) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode { what, source })
}

pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode { what, source })
}

/// Reads and decodes one JSON value.
pub(crate) fn read_json<T: DeserializeOwned>(
    tree: &sled::Tree,
    key: &[u8],
    what: &'static str,
) -> Result<Option<T>, StoreError> {
    match tree.get(key)? {
        Some(bytes) => decode(what, &bytes).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_corrupt_snapshot_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open_db(dir.path()).await.expect("open");
        let state = db.open_tree("state").expect("tree");
        state
            .insert(b"snapshot_meta", &b"{not json"[..])
            .expect("insert");
        let err = open_store(&db, Arc::new(TreeConfig::default()))
            .expect_err("a corrupt snapshot must not open");
        assert!(matches!(err, StoreError::Decode { .. }), "{err}");

        // Metadata without data is refused too.
        let meta = serde_json::json!({
            "last_log_id": null,
            "last_membership": {"log_id": null, "membership": {"configs": [], "nodes": {}}},
            "snapshot_id": "x"
        });
        state
            .insert(b"snapshot_meta", serde_json::to_vec(&meta).expect("json"))
            .expect("insert");
        let err = open_store(&db, Arc::new(TreeConfig::default()))
            .expect_err("metadata without data must not open");
        assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    }

    #[tokio::test]
    async fn a_second_open_of_a_live_store_fails_after_waiting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _db = open_db(dir.path()).await.expect("open");
        // The lock is held: the retries run out and the error says why.
        let err = open_db_within(dir.path(), Duration::from_millis(200))
            .await
            .expect_err("locked");
        assert!(err.to_string().contains("lock"), "{err}");
    }
}
