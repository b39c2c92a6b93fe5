//! The replica's sled database: one `Db` per node directory, with trees
//!
//! - `records`: (tag, origin, tag_seq) big-endian → `SignedRecord` bytes, certificate stripped;
//! - `heads`: (tag, origin) → tag_seq (8 bytes) and SHA-256 of that record's header (32);
//! - `values`: key → [`StoredValue`] (LWW winner, tombstones included);
//! - `own`: the own `origin_seq` counter and clock;
//! - `certs`: certificate digest → DER (bounded), so answers can carry certificates;
//! - `interests`: kind byte + key or prefix → tag.
//!
//! A record, its head and the merged value move in one multi-tree transaction, so a crash never
//! leaves a head ahead of its record or a value without its record.

use std::collections::HashMap;
use std::path::Path;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::error::KvError;

/// What `values` holds for a key: the LWW winner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredValue {
    /// The winning write's clock.
    pub hlc: u64,
    /// Its origin.
    pub origin: u64,
    /// Its per-origin sequence number.
    pub origin_seq: u64,
    /// Whether it was a delete.
    pub deleted: bool,
    /// The value (empty for a delete).
    pub value: Vec<u8>,
}

const VALUE_VERSION: u8 = 1;

impl StoredValue {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(26 + self.value.len());
        out.push(VALUE_VERSION);
        out.extend_from_slice(&self.hlc.to_be_bytes());
        out.extend_from_slice(&self.origin.to_be_bytes());
        out.extend_from_slice(&self.origin_seq.to_be_bytes());
        out.push(u8::from(self.deleted));
        out.extend_from_slice(&self.value);
        out
    }

    fn decode(bytes: &[u8]) -> Result<StoredValue, String> {
        if bytes.len() < 26 {
            return Err(format!("value entry of {} bytes", bytes.len()));
        }
        if bytes[0] != VALUE_VERSION {
            return Err(format!("value entry version {}", bytes[0]));
        }
        let deleted = match bytes[25] {
            0 => false,
            1 => true,
            b => return Err(format!("deleted flag {b}")),
        };
        Ok(StoredValue {
            hlc: be64(&bytes[1..9]),
            origin: be64(&bytes[9..17]),
            origin_seq: be64(&bytes[17..25]),
            deleted,
            value: bytes[26..].to_vec(),
        })
    }

    /// Whether `self` wins last-writer-wins against `other`: by (hlc, origin).
    pub fn beats(&self, other: &StoredValue) -> bool {
        (self.hlc, self.origin) > (other.hlc, other.origin)
    }
}

/// The head of one origin's chain on one tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The highest contiguous tag_seq held.
    pub tag_seq: u64,
    /// SHA-256 of that record's header.
    pub hash: [u8; 32],
}

/// The kind of a persisted interest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InterestKind {
    /// One key.
    Exact,
    /// Every key starting with the pattern (which ends in '/').
    Prefix,
    /// A channel this node writes to: replicated, but no changes reported.
    Channel,
}

impl InterestKind {
    fn byte(self) -> u8 {
        match self {
            InterestKind::Exact => 0,
            InterestKind::Prefix => 1,
            InterestKind::Channel => 2,
        }
    }

    fn from_byte(b: u8) -> Option<InterestKind> {
        match b {
            0 => Some(InterestKind::Exact),
            1 => Some(InterestKind::Prefix),
            2 => Some(InterestKind::Channel),
            _ => None,
        }
    }
}

/// One record to store with the merge of its value.
pub struct Apply<'a> {
    pub tag: u64,
    pub origin: u64,
    pub tag_seq: u64,
    pub header_hash: [u8; 32],
    pub record: &'a [u8],
    pub key: &'a str,
    pub value: StoredValue,
    /// For local writes: the own counters to persist with the record.
    pub own: Option<(u64, u64)>,
}

pub struct Store {
    db: sled::Db,
    records: sled::Tree,
    heads: sled::Tree,
    values: sled::Tree,
    own: sled::Tree,
    certs: sled::Tree,
    interests: sled::Tree,
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn record_key(tag: u64, origin: u64, tag_seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&tag.to_be_bytes());
    k[8..16].copy_from_slice(&origin.to_be_bytes());
    k[16..].copy_from_slice(&tag_seq.to_be_bytes());
    k
}

fn head_key(tag: u64, origin: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&tag.to_be_bytes());
    k[8..].copy_from_slice(&origin.to_be_bytes());
    k
}

const OWN_SEQ: &[u8] = b"origin_seq";
const OWN_HLC: &[u8] = b"hlc";

/// How long opening waits for another handle's lock on the database to go.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

impl Store {
    pub fn open(path: &Path, cache_capacity: u64) -> Result<Store, KvError> {
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity);
        // sled's background flusher holds the lock of a just-dropped database a moment
        // longer: a replica reopened at once (a restart) waits for it, a little.
        let deadline = std::time::Instant::now() + LOCK_PATIENCE;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        };
        Ok(Store {
            records: db.open_tree("records")?,
            heads: db.open_tree("heads")?,
            values: db.open_tree("values")?,
            own: db.open_tree("own")?,
            certs: db.open_tree("certs")?,
            interests: db.open_tree("interests")?,
            db,
        })
    }

    pub fn flush(&self) -> Result<(), KvError> {
        self.db.flush()?;
        Ok(())
    }

    pub fn load_heads(&self) -> Result<HashMap<(u64, u64), Head>, KvError> {
        let mut heads = HashMap::new();
        for entry in self.heads.iter() {
            let (k, v) = entry?;
            if k.len() != 16 || v.len() != 40 {
                return Err(KvError::Corrupt {
                    tree: "heads",
                    reason: format!("entry of {}+{} bytes", k.len(), v.len()),
                });
            }
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&v[8..]);
            heads.insert(
                (be64(&k[..8]), be64(&k[8..])),
                Head {
                    tag_seq: be64(&v[..8]),
                    hash,
                },
            );
        }
        Ok(heads)
    }

    /// The own (origin_seq, hlc), zero for a fresh store.
    pub fn load_own(&self) -> Result<(u64, u64), KvError> {
        let read = |k: &[u8]| -> Result<u64, KvError> {
            match self.own.get(k)? {
                None => Ok(0),
                Some(v) if v.len() == 8 => Ok(be64(&v)),
                Some(v) => Err(KvError::Corrupt {
                    tree: "own",
                    reason: format!("{} of {} bytes", String::from_utf8_lossy(k), v.len()),
                }),
            }
        };
        Ok((read(OWN_SEQ)?, read(OWN_HLC)?))
    }

    pub fn load_interests(&self) -> Result<Vec<(InterestKind, String, u64)>, KvError> {
        let mut out = Vec::new();
        for entry in self.interests.iter() {
            let (k, v) = entry?;
            let corrupt = |reason: &str| KvError::Corrupt {
                tree: "interests",
                reason: reason.into(),
            };
            let kind = k
                .first()
                .and_then(|b| InterestKind::from_byte(*b))
                .ok_or_else(|| corrupt("bad kind"))?;
            let pattern =
                String::from_utf8(k[1..].to_vec()).map_err(|_| corrupt("pattern not UTF-8"))?;
            if v.len() != 8 {
                return Err(corrupt("tag not 8 bytes"));
            }
            out.push((kind, pattern, be64(&v)));
        }
        Ok(out)
    }

    pub fn remove_interest(&self, kind: InterestKind, pattern: &str) -> Result<(), KvError> {
        let mut k = Vec::with_capacity(1 + pattern.len());
        k.push(kind.byte());
        k.extend_from_slice(pattern.as_bytes());
        self.interests.remove(k)?;
        Ok(())
    }

    pub fn put_interest(&self, kind: InterestKind, pattern: &str, tag: u64) -> Result<(), KvError> {
        let mut k = Vec::with_capacity(1 + pattern.len());
        k.push(kind.byte());
        k.extend_from_slice(pattern.as_bytes());
        self.interests.insert(k, &tag.to_be_bytes())?;
        Ok(())
    }

    pub fn get_record(
        &self,
        tag: u64,
        origin: u64,
        tag_seq: u64,
    ) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self
            .records
            .get(record_key(tag, origin, tag_seq))?
            .map(|v| v.to_vec()))
    }

    /// Records of (tag, origin) from `from_seq` on, in order, as (tag_seq, bytes).
    pub fn records_from(
        &self,
        tag: u64,
        origin: u64,
        from_seq: u64,
    ) -> impl Iterator<Item = Result<(u64, Vec<u8>), KvError>> + '_ {
        self.records
            .range(record_key(tag, origin, from_seq)..=record_key(tag, origin, u64::MAX))
            .map(|entry| {
                let (k, v) = entry?;
                if k.len() != 24 {
                    return Err(KvError::Corrupt {
                        tree: "records",
                        reason: format!("key of {} bytes", k.len()),
                    });
                }
                Ok((be64(&k[16..]), v.to_vec()))
            })
    }

    pub fn get_value(&self, key: &str) -> Result<Option<StoredValue>, KvError> {
        match self.values.get(key.as_bytes())? {
            None => Ok(None),
            Some(v) => StoredValue::decode(&v)
                .map(Some)
                .map_err(|reason| KvError::Corrupt {
                    tree: "values",
                    reason: format!("{key:?}: {reason}"),
                }),
        }
    }

    /// Live (non-deleted) values under `prefix`, in key order, at most `limit`.
    pub fn scan(&self, prefix: &str, limit: usize) -> Result<Vec<(String, StoredValue)>, KvError> {
        let mut out = Vec::new();
        for entry in self.values.scan_prefix(prefix.as_bytes()) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = entry?;
            let key = String::from_utf8(k.to_vec()).map_err(|_| KvError::Corrupt {
                tree: "values",
                reason: "key not UTF-8".into(),
            })?;
            let value = StoredValue::decode(&v).map_err(|reason| KvError::Corrupt {
                tree: "values",
                reason: format!("{key:?}: {reason}"),
            })?;
            if !value.deleted {
                out.push((key, value));
            }
        }
        Ok(out)
    }

    pub fn get_cert(&self, digest: &[u8; 32]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.certs.get(digest)?.map(|v| v.to_vec()))
    }

    /// Stores a certificate unless `max` are already stored; returns whether it is stored.
    pub fn put_cert(&self, digest: &[u8; 32], der: &[u8], max: usize) -> Result<bool, KvError> {
        if self.certs.contains_key(digest)? {
            return Ok(true);
        }
        if self.certs.len() >= max {
            return Ok(false);
        }
        self.certs.insert(digest, der)?;
        Ok(true)
    }

    /// Stores a record, advances its chain's head and merges its value, atomically. Returns
    /// whether the record lost last-writer-wins (the stored value stays).
    pub fn apply(&self, a: &Apply<'_>) -> Result<bool, KvError> {
        let result = (&self.records, &self.heads, &self.values, &self.own).transaction(
            |(records, heads, values, own)| {
                records.insert(&record_key(a.tag, a.origin, a.tag_seq)[..], a.record)?;
                let mut head = [0u8; 40];
                head[..8].copy_from_slice(&a.tag_seq.to_be_bytes());
                head[8..].copy_from_slice(&a.header_hash);
                heads.insert(&head_key(a.tag, a.origin)[..], &head[..])?;
                let superseded = match values.get(a.key.as_bytes())? {
                    Some(old) => {
                        let old = StoredValue::decode(&old)
                            .map_err(ConflictableTransactionError::Abort)?;
                        !a.value.beats(&old)
                    }
                    None => false,
                };
                if !superseded {
                    values.insert(a.key.as_bytes(), a.value.encode())?;
                }
                if let Some((seq, hlc)) = a.own {
                    own.insert(OWN_SEQ, &seq.to_be_bytes())?;
                    own.insert(OWN_HLC, &hlc.to_be_bytes())?;
                }
                Ok(superseded)
            },
        );
        result.map_err(|e| match e {
            TransactionError::Abort(reason) => KvError::Corrupt {
                tree: "values",
                reason: format!("{:?}: {reason}", a.key),
            },
            TransactionError::Storage(e) => KvError::Storage(e.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_corruption_is_an_error() {
        let v = StoredValue {
            hlc: 5,
            origin: 6,
            origin_seq: 7,
            deleted: false,
            value: b"x".to_vec(),
        };
        assert_eq!(StoredValue::decode(&v.encode()), Ok(v.clone()));
        assert!(StoredValue::decode(&v.encode()[..10]).is_err());
        let mut bad = v.encode();
        bad[25] = 9;
        assert!(StoredValue::decode(&bad).is_err());
    }
}
