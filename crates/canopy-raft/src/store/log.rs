//! The Raft log, the vote and the committed log id on sled (openraft storage v2).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::mpsc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};

use super::{decode, encode, read_json, Holders, StoreError};
use crate::{CandidateId, Entry, TypeConfig};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

type StorageResult<T> = Result<T, StorageError<CandidateId>>;

/// The log store. Clones share the same sled trees (a clone is also the log reader).
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    logs: sled::Tree,
    meta: sled::Tree,
    /// The last committed log id saved here, for status reports.
    committed: Arc<Mutex<Option<LogId<CandidateId>>>>,
    /// Counts the live handles on the database (see [`super::Holders`]).
    holder: Holders,
    /// The task that makes appended entries durable and then tells openraft (started on the
    /// first append; it ends when the last clone of the store is dropped).
    flusher: Arc<OnceLock<mpsc::UnboundedSender<LogFlushed<TypeConfig>>>>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn index_of(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| StoreError::Invalid(format!("log key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

impl LogStore {
    pub(crate) fn new(db: &sled::Db, holder: Holders) -> Result<LogStore, StoreError> {
        let meta = db.open_tree("meta")?;
        let committed = read_json(&meta, COMMITTED, "committed log id")?.flatten();
        Ok(LogStore {
            db: db.clone(),
            logs: db.open_tree("logs")?,
            meta,
            committed: Arc::new(Mutex::new(committed)),
            holder,
            flusher: Arc::default(),
        })
    }

    /// The flusher's queue, starting it if needed (inside the runtime openraft runs on).
    fn flusher(&self) -> &mpsc::UnboundedSender<LogFlushed<TypeConfig>> {
        self.flusher.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run_flusher(self.db.clone(), self.holder.clone(), rx));
            tx
        })
    }

    /// The committed log id as last saved by openraft.
    pub(crate) fn committed_handle(&self) -> Arc<Mutex<Option<LogId<CandidateId>>>> {
        self.committed.clone()
    }

    fn last_purged(&self) -> Result<Option<LogId<CandidateId>>, StoreError> {
        Ok(read_json(&self.meta, LAST_PURGED, "last purged log id")?.flatten())
    }

    fn read_range<RB: RangeBounds<u64>>(&self, range: RB) -> Result<Vec<Entry>, StoreError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => match i.checked_add(1) {
                Some(i) => i,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let mut entries = Vec::new();
        for item in self.logs.range(key(start)..) {
            let (k, v) = item?;
            let index = index_of(&k)?;
            if !range.contains(&index) {
                break;
            }
            let entry: Entry = decode("log entry", &v)?;
            if entry.log_id.index != index {
                return Err(StoreError::Invalid(format!(
                    "log entry {} stored at index {index}",
                    entry.log_id
                )));
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    /// Removes every entry in `range` in one batch.
    fn remove_range<RB: RangeBounds<[u8; 8]>>(&self, range: RB) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for item in self.logs.range(range) {
            let (k, _) = item?;
            batch.remove(k);
        }
        self.logs.apply_batch(batch)?;
        Ok(())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }
}

/// Makes appends durable in order, many per disk sync: each sync covers every append made
/// before it began (sled flushes the whole database), so the appends waiting when it starts
/// are reported durable, in the order they were made, once it ends.
async fn run_flusher(
    db: sled::Db,
    _holder: Holders,
    mut queue: mpsc::UnboundedReceiver<LogFlushed<TypeConfig>>,
) {
    while let Some(first) = queue.recv().await {
        let mut waiting = vec![first];
        while let Ok(more) = queue.try_recv() {
            waiting.push(more);
        }
        let result = db.flush_async().await.map(|_| ());
        for callback in waiting {
            let outcome = result
                .as_ref()
                .map(|_| ())
                .map_err(|e| io::Error::other(e.to_string()));
            callback.log_io_completed(outcome);
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry>> {
        self.read_range(range)
            .map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let state = || -> Result<LogState<TypeConfig>, StoreError> {
            let last_purged_log_id = self.last_purged()?;
            let last_stored = match self.logs.last()? {
                Some((_, v)) => Some(decode::<Entry>("log entry", &v)?.log_id),
                None => None,
            };
            // Entries at or below the purge point may survive a crash during a purge.
            let last_log_id = std::cmp::max(last_stored, last_purged_log_id);
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        };
        state().map_err(|e| StorageIOError::read_logs(&e).into())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<CandidateId>) -> StorageResult<()> {
        let write = async {
            self.meta.insert(VOTE, encode("vote", vote)?)?;
            // A vote must be durable before it is acted upon.
            self.flush().await
        };
        write
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<CandidateId>>> {
        read_json(&self.meta, VOTE, "vote").map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<CandidateId>>) -> StorageResult<()> {
        // Not flushed: losing it only means reapplying less on restart, until a leader says more.
        let write = || -> Result<(), StoreError> {
            self.meta
                .insert(COMMITTED, encode("committed log id", &committed)?)?;
            Ok(())
        };
        write().map_err(|e| StorageIOError::write(&e))?;
        *self
            .committed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<CandidateId>>> {
        Ok(read_json(&self.meta, COMMITTED, "committed log id")
            .map_err(|e| StorageIOError::read(&e))?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let write = || -> Result<(), StoreError> {
            let mut batch = sled::Batch::default();
            for entry in entries {
                batch.insert(&key(entry.log_id.index), encode("log entry", &entry)?);
            }
            self.logs.apply_batch(batch)?;
            Ok(())
        };
        match write() {
            // openraft counts these entries toward a quorum only once the flusher reports
            // them durable; meanwhile its core goes on (heartbeats, answers), instead of
            // waiting out a disk sync that can take longer than the leader's lease.
            Ok(()) => match self.flusher().send(callback) {
                Ok(()) => Ok(()),
                Err(unsent) => {
                    let e = StoreError::Invalid("the log flusher stopped".into());
                    unsent
                        .0
                        .log_io_completed(Err(io::Error::other(e.to_string())));
                    Err(StorageIOError::write_logs(&e).into())
                }
            },
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<CandidateId>) -> StorageResult<()> {
        let write = async {
            self.remove_range(key(log_id.index)..)?;
            self.flush().await
        };
        write
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<CandidateId>) -> StorageResult<()> {
        // The purge point first: a crash halfway leaves stale entries below it, never a gap.
        let write = || -> Result<(), StoreError> {
            self.meta
                .insert(LAST_PURGED, encode("last purged log id", &Some(log_id))?)?;
            self.remove_range(..=key(log_id.index))
        };
        write().map_err(|e| StorageIOError::write_logs(&e).into())
    }
}
