//! openraft's storage conformance suite against the sled log store and state machine.

use std::sync::Arc;

use canopy_raft::store::{open_db, open_store, LogStore, StateMachine};
use canopy_raft::{CandidateId, TypeConfig};
use canopy_tree::TreeConfig;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{StorageError, StorageIOError};

/// Each build gets a fresh temporary directory, removed when the suite drops the guard.
struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<CandidateId>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let db = open_db(dir.path())
            .await
            .map_err(|e| StorageIOError::write(&e))?;
        let (log, sm) = open_store(&db, Arc::new(TreeConfig::default()))
            .map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn sled_store_passes_the_openraft_suite() {
    // The suite runs each case on its own tokio runtime, so this test is not async.
    if let Err(e) = Suite::test_all(SledBuilder) {
        panic!("storage suite failed: {e}");
    }
}
