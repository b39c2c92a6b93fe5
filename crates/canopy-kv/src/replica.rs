//! The replica: local writes, receiving records (verify, de-duplicate, chain, merge) and the
//! application-facing reads, subscriptions and changes. Catch-up is in `catchup.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use canopy_proto::v1::{kv_envelope, KvEnvelope, RecordBody, RecordHeader, SignedRecord};
use prost::Message;

use crate::catchup::CatchupState;
use crate::counters::{Reject, ReplicaCounters};
use crate::credentials::{cert_digest, CertCache, Credentials, Signer};
use crate::error::KvError;
use crate::hlc::{physical_ms, Hlc, MAX_FORWARD_DRIFT_MS};
use crate::keys::GroupKeys;
use crate::random::{Entropy, SystemEntropy};
use crate::record::{self, sha256, RecordDraft};
use crate::store::{Apply, Head, InterestKind, Store, StoredValue};
use crate::tag::{channel_of, tag_of};

/// Tunables of a replica. Build with [`ReplicaConfig::new`], which takes the one setting with
/// no sane default, then override fields.
#[derive(Clone)]
pub struct ReplicaConfig {
    /// Longest key, bytes (UTF-8).
    pub max_key_len: usize,
    /// Longest value, bytes.
    pub max_value_len: usize,
    /// Safety-net catch-up on every subscribed tag, this often (±25 % jitter).
    pub catchup_interval_ms: u64,
    /// How long a gap may stay open before a catch-up asks for it (reordering is normal).
    pub reorder_grace_ms: u64,
    /// A node's unicast tag (the tree's `canopy_tree::node_tag`), where answers to its
    /// catch-up requests are published.
    pub unicast_tag: fn(u64) -> u64,
    /// Parked records (waiting for a gap to fill), over all chains.
    pub max_parked: usize,
    /// Parked records per tag.
    pub max_parked_per_tag: usize,
    /// Parked records per origin: when an origin's share is full its oldest parked record is
    /// dropped (and its gap still asked for), so one client with the key file cannot fill the
    /// parking space with gaps it never fills and crowd out everyone else's records.
    pub max_parked_per_origin: usize,
    /// Records waiting for their signer's certificate.
    pub max_unknown_signer: usize,
    /// Encoded bytes of the records waiting for their signer's certificate. They are held
    /// before any signature check (anyone, a router included, can send them), so they are
    /// bounded by size, not only by count; the oldest go first.
    pub max_unknown_signer_bytes: usize,
    /// The same, per claimed origin (the origin is not verified yet: this keeps one flood
    /// from evicting every other origin's records, the total bound is the real limit).
    pub max_unknown_signer_bytes_per_origin: usize,
    /// Checked certificates kept in memory.
    pub cert_cache_capacity: usize,
    /// A cached certificate check is trusted this long, then repeated.
    pub cert_recheck_ms: u64,
    /// Certificates kept on disk (to attach to catch-up answers).
    pub max_stored_certs: usize,
    /// Records in one catch-up answer.
    pub answer_max_records: usize,
    /// Encoded record bytes in one catch-up answer.
    pub answer_max_bytes: usize,
    /// sled's page cache.
    pub cache_capacity_bytes: u64,
    /// Randomness for nonces, request ids and reply keys: must be a CSPRNG in production.
    pub entropy: Arc<dyn Entropy>,
    /// `put` and `delete` flush the store before they return. A driver that commits writes
    /// in groups turns this off and calls [`Replica::flush`] before it acknowledges any of
    /// them (one disk sync for many writes; still durable before acknowledged).
    pub flush_each_write: bool,
}

impl ReplicaConfig {
    /// Defaults, with the tree's node tag function (`canopy_tree::node_tag`; this crate does
    /// not depend on the tree).
    pub fn new(unicast_tag: fn(u64) -> u64) -> ReplicaConfig {
        ReplicaConfig {
            max_key_len: 1024,
            max_value_len: 64 * 1024,
            catchup_interval_ms: 30_000,
            reorder_grace_ms: 200,
            unicast_tag,
            max_parked: 4096,
            max_parked_per_tag: 1024,
            max_parked_per_origin: 1024,
            max_unknown_signer: 1024,
            max_unknown_signer_bytes: 8 << 20,
            max_unknown_signer_bytes_per_origin: 1 << 20,
            cert_cache_capacity: 4096,
            cert_recheck_ms: 3_600_000,
            max_stored_certs: 65_536,
            answer_max_records: 256,
            answer_max_bytes: 512 * 1024,
            cache_capacity_bytes: 64 << 20,
            entropy: Arc::new(SystemEntropy::new()),
            flush_each_write: true,
        }
    }
}

/// A payload for the driver to multicast on `key_tag`: an encoded [`KvEnvelope`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub key_tag: u64,
    pub payload: Bytes,
}

/// A local write, durable: its clock, its sequence number and what to publish.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    pub hlc: u64,
    pub origin_seq: u64,
    pub publishes: Vec<Publish>,
}

/// A key's value in the replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Bytes,
    pub hlc: u64,
    pub origin: u64,
    pub origin_seq: u64,
    /// Always false from [`Replica::get`] / [`Replica::scan`], which hide tombstones.
    pub deleted: bool,
}

/// A subscription's tag and the catch-up request to publish for it (empty if the tag was
/// already subscribed).
#[derive(Debug, Clone)]
pub struct Subscribed {
    pub tag: u64,
    pub publishes: Vec<Publish>,
}

/// One applied record matching a subscription, reported once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    /// `None` for a delete.
    pub value: Option<Bytes>,
    pub origin: u64,
    pub origin_seq: u64,
    pub hlc: u64,
    /// The record lost last-writer-wins: the key's value did not change.
    pub superseded: bool,
}

/// A verified, opened record waiting for its chain predecessor (or being applied).
pub(crate) struct Ready {
    pub header: RecordHeader,
    pub hash: [u8; 32],
    /// The record as stored (certificate stripped).
    pub stored: Vec<u8>,
    pub body: RecordBody,
    pub via_catchup: bool,
    /// Arrival order among parked records (set when parked), to evict the oldest.
    pub arrived: u64,
}

/// A record whose signer is not known yet.
pub(crate) struct UnknownSigner {
    pub record: SignedRecord,
    pub tag: u64,
    pub digest: [u8; 32],
    /// The claimed (unverified) origin.
    pub origin: u64,
    /// Encoded bytes held (header and signature).
    pub size: usize,
}

/// Protobuf framing of a `RecordBody` around its key and value (field tags, length prefixes,
/// `deleted`, `hlc`) plus the AES-GCM tag, rounded up: a sealed body longer than
/// `max_key_len + max_value_len + BODY_OVERHEAD` cannot hold a key and value within limits.
const BODY_OVERHEAD: usize = 64;
/// Protobuf framing of a `RecordHeader` around its sealed body (integers, prev_hash, nonce,
/// signer_digest), rounded up.
const HEADER_OVERHEAD: usize = 256;
/// Longest signature accepted (Ed25519: 64 bytes, ECDSA P-256 DER: at most 72).
const MAX_SIGNATURE_LEN: usize = 256;

pub(crate) struct Interest {
    pub kind: InterestKind,
    pub pattern: String,
}

/// A client's replica of the KV store. See the crate docs.
pub struct Replica {
    pub(crate) config: ReplicaConfig,
    pub(crate) creds: Arc<dyn Credentials>,
    pub(crate) keys: GroupKeys,
    pub(crate) store: Store,
    pub(crate) me: u64,
    pub(crate) my_digest: [u8; 32],
    pub(crate) hlc: Hlc,
    pub(crate) origin_seq: u64,
    pub(crate) heads: HashMap<(u64, u64), Head>,
    pub(crate) interests: Vec<Interest>,
    pub(crate) tags: BTreeSet<u64>,
    pub(crate) certs: CertCache,
    pub(crate) parked: HashMap<(u64, u64), BTreeMap<u64, Ready>>,
    pub(crate) parked_total: usize,
    /// Arrival counter of parked records.
    pub(crate) parked_seq: u64,
    pub(crate) unknown: VecDeque<UnknownSigner>,
    /// Sum of `size` over `unknown`.
    pub(crate) unknown_bytes: usize,
    pub(crate) new_signer: bool,
    pub(crate) catchup: CatchupState,
    /// Bumped by `on_epoch_change`; a tag's first record after a bump carries the certificate.
    pub(crate) epoch: u64,
    pub(crate) cert_epoch: HashMap<u64, u64>,
    pub(crate) changes: Vec<Change>,
    pub(crate) counters: ReplicaCounters,
    pub(crate) dirty: bool,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("node_id", &self.me)
            .field("tags", &self.tags.len())
            .finish_non_exhaustive()
    }
}

impl Replica {
    /// Opens (or creates) the replica stored at `path`.
    pub fn open(
        path: &Path,
        config: ReplicaConfig,
        credentials: Arc<dyn Credentials>,
        keys: GroupKeys,
    ) -> Result<Replica, KvError> {
        let store = Store::open(path, config.cache_capacity_bytes)?;
        let heads = store.load_heads()?;
        let (origin_seq, hlc) = store.load_own()?;
        let mut interests = Vec::new();
        let mut tags = BTreeSet::new();
        for (kind, pattern, tag) in store.load_interests()? {
            tags.insert(tag);
            interests.push(Interest { kind, pattern });
        }
        let me = credentials.node_id();
        let my_digest = cert_digest(credentials.certificate());
        // Own certificates are kept by digest, like everyone else's, so that catch-up answers
        // attach to each record the certificate it was signed under (after a renewal the old
        // records still name the old one).
        store.put_cert(&my_digest, credentials.certificate(), usize::MAX)?;
        let certs = CertCache::new(config.cert_cache_capacity, config.cert_recheck_ms);
        Ok(Replica {
            catchup: CatchupState::default(),
            config,
            keys,
            store,
            me,
            my_digest,
            hlc: Hlc::new(hlc),
            origin_seq,
            heads,
            interests,
            tags,
            certs,
            parked: HashMap::new(),
            parked_total: 0,
            parked_seq: 0,
            unknown: VecDeque::new(),
            unknown_bytes: 0,
            new_signer: false,
            epoch: 0,
            cert_epoch: HashMap::new(),
            changes: Vec::new(),
            counters: ReplicaCounters::default(),
            dirty: false,
            creds: credentials,
        })
    }

    /// This replica's node id.
    pub fn node_id(&self) -> u64 {
        self.me
    }

    /// Replaces the credentials (the node reloaded its certificate, CA bundle or revocation
    /// lists). Certificates checked under the old trust are checked again when next seen,
    /// and new records are signed under the new certificate.
    pub fn set_credentials(&mut self, credentials: Arc<dyn Credentials>) {
        self.creds = credentials;
        self.certs = CertCache::new(self.config.cert_cache_capacity, self.config.cert_recheck_ms);
    }

    /// Replaces the group keys (after the key file was updated), e.g. to add a rotated data
    /// key. Records refused as `unknown_key` come back with the next catch-up.
    pub fn set_keys(&mut self, keys: GroupKeys) {
        self.keys = keys;
    }

    /// Writes `value` under `key`.
    pub fn put(&mut self, key: &str, value: Bytes, now_ms: u64) -> Result<WriteOutcome, KvError> {
        self.write(key, Some(value), now_ms)
    }

    /// Deletes `key` (a tombstone write).
    pub fn delete(&mut self, key: &str, now_ms: u64) -> Result<WriteOutcome, KvError> {
        self.write(key, None, now_ms)
    }

    /// The credentials may renew the certificate while the replica runs: sign new records
    /// under the current one's digest, and keep it by digest for catch-up answers.
    fn note_own_certificate(&mut self) -> Result<(), KvError> {
        let digest = cert_digest(self.creds.certificate());
        if digest != self.my_digest {
            self.store
                .put_cert(&digest, self.creds.certificate(), usize::MAX)?;
            self.my_digest = digest;
            // Peers do not know the new certificate: the next record on every tag carries it.
            self.cert_epoch.clear();
        }
        Ok(())
    }

    /// Longest sealed body a record within this replica's key and value limits can have.
    fn max_sealed_body(&self) -> usize {
        self.config
            .max_key_len
            .saturating_add(self.config.max_value_len)
            .saturating_add(BODY_OVERHEAD)
    }

    fn check_key(&self, key: &str) -> Result<(), KvError> {
        if key.is_empty() {
            return Err(KvError::EmptyKey);
        }
        if key.len() > self.config.max_key_len {
            return Err(KvError::KeyTooLarge {
                len: key.len(),
                max: self.config.max_key_len,
            });
        }
        Ok(())
    }

    fn write(
        &mut self,
        key: &str,
        value: Option<Bytes>,
        now_ms: u64,
    ) -> Result<WriteOutcome, KvError> {
        self.check_key(key)?;
        if let Some(v) = &value {
            if v.len() > self.config.max_value_len {
                return Err(KvError::ValueTooLarge {
                    len: v.len(),
                    max: self.config.max_value_len,
                });
            }
        }
        self.catchup.start(now_ms, &self.config);
        self.note_own_certificate()?;
        let tag = tag_of(&self.keys, key);
        let mut publishes = Vec::new();
        // Writers replicate their channels: they keep their chain and can answer catch-up.
        if !self.tags.contains(&tag) {
            self.add_interest(InterestKind::Channel, channel_of(key), tag)?;
            publishes.extend(self.request_catchup(tag, now_ms));
        }
        let mut hlc = self.hlc;
        let stamp = hlc.tick(now_ms);
        let exhausted = || KvError::Crypto("sequence numbers exhausted".into());
        let origin_seq = self.origin_seq.checked_add(1).ok_or_else(exhausted)?;
        let head = self.heads.get(&(tag, self.me)).copied();
        let tag_seq = match head {
            None => 1,
            Some(h) => h.tag_seq.checked_add(1).ok_or_else(exhausted)?,
        };
        let prev_hash = head.map(|h| h.hash.to_vec()).unwrap_or_default();
        let attach =
            tag_seq == 1 || tag_seq % 32 == 0 || self.cert_epoch.get(&tag) != Some(&self.epoch);
        let deleted = value.is_none();
        let value = value.unwrap_or_default();
        let draft = RecordDraft {
            origin: self.me,
            key_tag: tag,
            origin_seq,
            tag_seq,
            prev_hash: &prev_hash,
            body: RecordBody {
                key: key.to_owned(),
                value: value.clone(),
                deleted,
                hlc: stamp,
            },
            signer_digest: self.my_digest,
            attach_certificate: attach,
        };
        let (signed, hash) = record::seal_and_sign(
            &draft,
            &self.keys,
            self.creds.as_ref(),
            self.config.entropy.as_ref(),
        )?;
        let stored = SignedRecord {
            signer_certificate: Bytes::new(),
            ..signed.clone()
        }
        .encode_to_vec();
        let superseded = self.store.apply(&Apply {
            tag,
            origin: self.me,
            tag_seq,
            header_hash: hash,
            record: &stored,
            key,
            value: StoredValue {
                hlc: stamp,
                origin: self.me,
                origin_seq,
                deleted,
                value: value.to_vec(),
            },
            own: Some((origin_seq, stamp)),
        })?;
        // The record is in the store: the chain moves on even if the flush below fails, so a
        // later write never reuses this position (that would be equivocation). An unflushed,
        // unpublished record reaches peers through catch-up.
        self.hlc = hlc;
        self.origin_seq = origin_seq;
        self.heads.insert((tag, self.me), Head { tag_seq, hash });
        self.cert_epoch.insert(tag, self.epoch);
        // Durable before acknowledged (by the driver, when it commits writes in groups).
        if self.config.flush_each_write {
            self.store.flush()?;
        }
        self.counters.applied += 1;
        self.emit_change(
            key,
            (!deleted).then_some(value),
            self.me,
            origin_seq,
            stamp,
            superseded,
        );
        let envelope = KvEnvelope {
            body: Some(kv_envelope::Body::Record(signed)),
        };
        publishes.push(Publish {
            key_tag: tag,
            payload: envelope.encode_to_vec().into(),
        });
        self.counters.published += publishes.len() as u64;
        Ok(WriteOutcome {
            hlc: stamp,
            origin_seq,
            publishes,
        })
    }

    /// The current value of `key`; `None` if absent or deleted.
    pub fn get(&self, key: &str) -> Result<Option<Entry>, KvError> {
        Ok(self
            .store
            .get_value(key)?
            .filter(|v| !v.deleted)
            .map(entry_of))
    }

    /// Live keys starting with `prefix`, in key order, at most `limit`.
    pub fn scan(&self, prefix: &str, limit: usize) -> Result<Vec<(String, Entry)>, KvError> {
        Ok(self
            .store
            .scan(prefix, limit)?
            .into_iter()
            .map(|(k, v)| (k, entry_of(v)))
            .collect())
    }

    /// Subscribes to a key, or to a prefix when `key_or_prefix` ends in '/'. Both map to the
    /// tag of their channel; changes are filtered locally. Persisted. A tag new to this replica
    /// comes with a catch-up request for its whole history.
    pub fn subscribe(&mut self, key_or_prefix: &str, now_ms: u64) -> Result<Subscribed, KvError> {
        self.subscribe_as(key_or_prefix, now_ms, true)
    }

    /// [`Replica::subscribe`] for as long as this replica runs (a watch): not persisted, so
    /// a watch that ended before a restart leaves nothing subscribed. Drop it with
    /// [`Replica::unsubscribe`].
    pub fn subscribe_transient(
        &mut self,
        key_or_prefix: &str,
        now_ms: u64,
    ) -> Result<Subscribed, KvError> {
        self.subscribe_as(key_or_prefix, now_ms, false)
    }

    fn subscribe_as(
        &mut self,
        key_or_prefix: &str,
        now_ms: u64,
        persist: bool,
    ) -> Result<Subscribed, KvError> {
        self.check_key(key_or_prefix)?;
        self.catchup.start(now_ms, &self.config);
        let kind = if key_or_prefix.ends_with('/') {
            InterestKind::Prefix
        } else {
            InterestKind::Exact
        };
        let tag = tag_of(&self.keys, key_or_prefix);
        let new_tag = !self.tags.contains(&tag);
        let known = self
            .interests
            .iter()
            .any(|i| i.kind == kind && i.pattern == key_or_prefix);
        if !known {
            if persist {
                self.add_interest(kind, key_or_prefix, tag)?;
            } else {
                self.tags.insert(tag);
                self.interests.push(Interest {
                    kind,
                    pattern: key_or_prefix.to_owned(),
                });
            }
        }
        let publishes: Vec<Publish> = if new_tag {
            self.request_catchup(tag, now_ms).into_iter().collect()
        } else {
            Vec::new()
        };
        self.counters.published += publishes.len() as u64;
        Ok(Subscribed { tag, publishes })
    }

    fn add_interest(&mut self, kind: InterestKind, pattern: &str, tag: u64) -> Result<(), KvError> {
        self.store.put_interest(kind, pattern, tag)?;
        self.store.flush()?;
        self.tags.insert(tag);
        self.interests.push(Interest {
            kind,
            pattern: pattern.to_owned(),
        });
        Ok(())
    }

    /// Whether `key_or_prefix` is subscribed (as given to [`Replica::subscribe`]).
    pub fn is_subscribed(&self, key_or_prefix: &str) -> bool {
        self.interests
            .iter()
            .any(|i| i.kind != InterestKind::Channel && i.pattern == key_or_prefix)
    }

    /// Drops the subscription to `key_or_prefix` (as given to [`Replica::subscribe`]).
    /// Returns the tag the tree node should unsubscribe from, if no other subscription and no
    /// channel this node writes to still needs it. Values and records already held stay.
    pub fn unsubscribe(&mut self, key_or_prefix: &str) -> Result<Option<u64>, KvError> {
        let kind = if key_or_prefix.ends_with('/') {
            InterestKind::Prefix
        } else {
            InterestKind::Exact
        };
        let before = self.interests.len();
        self.interests
            .retain(|i| !(i.kind == kind && i.pattern == key_or_prefix));
        if self.interests.len() == before {
            return Ok(None);
        }
        self.store.remove_interest(kind, key_or_prefix)?;
        self.store.flush()?;
        let tag = tag_of(&self.keys, key_or_prefix);
        let still_needed = self
            .interests
            .iter()
            .any(|i| tag_of(&self.keys, &i.pattern) == tag);
        if still_needed {
            return Ok(None);
        }
        self.tags.remove(&tag);
        Ok(Some(tag))
    }

    /// Tags the driver must subscribe the tree node to: every subscribed channel, those this
    /// node writes to included.
    pub fn subscribed_tags(&self) -> Vec<u64> {
        self.tags.iter().copied().collect()
    }

    /// Changes applied since the last call, in apply order.
    pub fn drain_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// The counters.
    pub fn counters(&self) -> ReplicaCounters {
        self.counters.clone()
    }

    /// Makes everything received so far durable (local writes always are).
    pub fn flush(&self) -> Result<(), KvError> {
        self.store.flush()
    }

    /// A multicast the tree delivered: `origin` and `key_tag` are the tree-level fields (which
    /// a router may have rewritten), `payload` an encoded [`KvEnvelope`].
    pub fn on_multicast(
        &mut self,
        origin: u64,
        key_tag: u64,
        payload: &[u8],
        now_ms: u64,
    ) -> Vec<Publish> {
        self.catchup.start(now_ms, &self.config);
        let mut out = Vec::new();
        match KvEnvelope::decode(payload).ok().and_then(|e| e.body) {
            None => self.counters.reject(Reject::Malformed),
            Some(kv_envelope::Body::Record(r)) => {
                self.on_record(r, Some(origin), key_tag, now_ms, &mut out)
            }
            Some(kv_envelope::Body::CatchupRequest(r)) => {
                self.on_request(origin, key_tag, r, now_ms, &mut out)
            }
            Some(kv_envelope::Body::Unicast(u)) => self.on_unicast(u, now_ms, &mut out),
        }
        self.retry_unknown_signers(now_ms, &mut out);
        self.counters.published += out.len() as u64;
        out
    }

    /// Resolves a record's or request's signer: from the attached certificate (which must match
    /// the digest), the cache, or the stored certificates. `Ok(None)`: not known yet.
    pub(crate) fn resolve_signer(
        &mut self,
        digest: &[u8],
        attached: &[u8],
        now_ms: u64,
    ) -> Result<Option<Arc<Signer>>, Reject> {
        let digest: [u8; 32] = digest.try_into().map_err(|_| Reject::Malformed)?;
        if !attached.is_empty() && cert_digest(attached) != digest {
            return Err(Reject::BadCertificate);
        }
        if let Some(s) = self.certs.get(&digest, now_ms) {
            return Ok(Some(s));
        }
        let der = if attached.is_empty() {
            match self.store.get_cert(&digest) {
                Ok(Some(der)) => der,
                Ok(None) => return Ok(None),
                Err(e) => {
                    tracing::warn!(error = %e, "reading a stored certificate");
                    return Ok(None);
                }
            }
        } else {
            attached.to_vec()
        };
        let signer = Arc::new(
            self.creds
                .check_certificate(&der)
                .map_err(|_| Reject::BadCertificate)?,
        );
        if let Err(e) = self
            .store
            .put_cert(&digest, &der, self.config.max_stored_certs)
        {
            tracing::warn!(error = %e, "storing a certificate");
        }
        self.certs.insert(digest, signer.clone(), now_ms);
        self.new_signer = true;
        Ok(Some(signer))
    }

    /// Steps 2-9 of receiving a record. `live_origin`: the multicast's origin (None for records
    /// from catch-up answers, which have no tree origin to compare).
    pub(crate) fn on_record(
        &mut self,
        mut signed: SignedRecord,
        live_origin: Option<u64>,
        tag: u64,
        now_ms: u64,
        out: &mut Vec<Publish>,
    ) {
        // Sizes first, before decoding, verifying, opening or queueing anything: a record
        // that cannot hold a key and value within this replica's limits is refused however
        // it is signed (writers refuse such writes, so only a hostile sender makes one).
        let max_body = self.max_sealed_body();
        if signed.header.len() > max_body.saturating_add(HEADER_OVERHEAD)
            || signed.signature.len() > MAX_SIGNATURE_LEN
        {
            return self.counters.reject(Reject::TooLarge);
        }
        let header = match record::decode_header(&signed) {
            Ok(h) => h,
            Err(r) => return self.counters.reject(r),
        };
        if header.sealed_body.len() > max_body {
            return self.counters.reject(Reject::TooLarge);
        }
        if live_origin.is_some_and(|o| o != header.origin) {
            return self.counters.reject(Reject::ForgedOrigin);
        }
        if header.key_tag != tag {
            return self.counters.reject(Reject::WrongTag);
        }
        if !self.tags.contains(&tag) {
            return self.counters.reject(Reject::NotSubscribed);
        }
        let signer =
            match self.resolve_signer(&header.signer_digest, &signed.signer_certificate, now_ms) {
                Err(r) => return self.counters.reject(r),
                Ok(Some(s)) => s,
                Ok(None) => {
                    self.counters.unknown_signer += 1;
                    let mut digest = [0u8; 32];
                    digest.copy_from_slice(&header.signer_digest);
                    let size = signed.header.len().saturating_add(signed.signature.len());
                    self.queue_unknown(UnknownSigner {
                        record: signed,
                        tag,
                        digest,
                        origin: header.origin,
                        size,
                    });
                    // Answers always carry certificates.
                    out.extend(self.request_catchup_limited(tag, now_ms));
                    return;
                }
            };
        if !signer.is_client {
            return self.counters.reject(Reject::BadCertificate);
        }
        if signer.node_id != header.origin {
            return self.counters.reject(Reject::ForgedOrigin);
        }
        if !record::verify(&signed, &signer, self.creds.as_ref()) {
            return self.counters.reject(Reject::BadSignature);
        }
        let hash = sha256(&signed.header);
        let duplicate = if live_origin.is_some() {
            Reject::Replay
        } else {
            Reject::Duplicate
        };
        let chain = (tag, header.origin);
        let held = self.heads.get(&chain).map_or(0, |h| h.tag_seq);
        if header.tag_seq <= held {
            let same = match self.stored_header_hash(tag, header.origin, header.tag_seq) {
                Ok(Some(h)) => h == hash,
                Ok(None) | Err(_) => {
                    self.counters.storage_errors += 1;
                    return;
                }
            };
            return self
                .counters
                .reject(if same { duplicate } else { Reject::ChainBreak });
        }
        if let Some(p) = self.parked.get(&chain).and_then(|m| m.get(&header.tag_seq)) {
            let same = p.hash == hash;
            return self
                .counters
                .reject(if same { duplicate } else { Reject::ChainBreak });
        }
        let body = match record::open_body(&header, &self.keys) {
            Ok(b) => b,
            Err(r) => return self.counters.reject(r),
        };
        if body.key.len() > self.config.max_key_len || body.value.len() > self.config.max_value_len
        {
            return self.counters.reject(Reject::TooLarge);
        }
        if tag_of(&self.keys, &body.key) != header.key_tag {
            return self.counters.reject(Reject::WrongTag);
        }
        // A clock far ahead of ours would win last-writer-wins against every honest write of
        // the key until the wall clock catches up (forever for u64::MAX). Refused and not
        // remembered, like an unknown key: the gap it leaves is asked for again by catch-up,
        // and the record applies once it is no longer implausibly far ahead.
        if physical_ms(body.hlc) > now_ms.saturating_add(MAX_FORWARD_DRIFT_MS) {
            return self.counters.reject(Reject::FutureClock);
        }
        signed.signer_certificate.clear();
        let ready = Ready {
            stored: signed.encode_to_vec(),
            header,
            hash,
            body,
            via_catchup: live_origin.is_none(),
            arrived: 0,
        };
        if held.checked_add(1) == Some(ready.header.tag_seq) {
            self.apply_chain(chain, ready, now_ms);
        } else {
            self.park(chain, ready, now_ms);
        }
    }

    fn stored_header_hash(
        &self,
        tag: u64,
        origin: u64,
        seq: u64,
    ) -> Result<Option<[u8; 32]>, KvError> {
        let Some(bytes) = self.store.get_record(tag, origin, seq)? else {
            return Ok(None);
        };
        let r = SignedRecord::decode(bytes.as_slice()).map_err(|e| KvError::Corrupt {
            tree: "records",
            reason: e.to_string(),
        })?;
        Ok(Some(sha256(&r.header)))
    }

    /// Parked records of `origin` and of `tag`.
    fn parked_counts(&self, origin: u64, tag: u64) -> (usize, usize) {
        self.parked
            .iter()
            .fold((0, 0), |(of_origin, on_tag), ((t, o), m)| {
                (
                    of_origin + if *o == origin { m.len() } else { 0 },
                    on_tag + if *t == tag { m.len() } else { 0 },
                )
            })
    }

    /// Drops `origin`'s oldest parked record; returns its tag.
    fn evict_oldest_parked(&mut self, origin: u64) -> Option<u64> {
        let (chain, seq) = self
            .parked
            .iter()
            .filter(|(k, _)| k.1 == origin)
            .flat_map(|(k, m)| m.iter().map(move |(seq, r)| (r.arrived, *k, *seq)))
            .min()
            .map(|(_, k, seq)| (k, seq))?;
        let m = self.parked.get_mut(&chain)?;
        m.remove(&seq)?;
        if m.is_empty() {
            self.parked.remove(&chain);
        }
        self.parked_total = self.parked_total.saturating_sub(1);
        Some(chain.0)
    }

    /// Keeps a dropped record's gap open: asked for after the reorder grace, even with nothing
    /// of the tag parked.
    fn keep_gap(&mut self, tag: u64, now_ms: u64) {
        self.counters.parked_dropped += 1;
        self.catchup.gap_dropped.insert(tag);
        self.catchup
            .gap_due
            .entry(tag)
            .or_insert(now_ms.saturating_add(self.config.reorder_grace_ms));
    }

    fn park(&mut self, chain: (u64, u64), mut ready: Ready, now_ms: u64) {
        let (tag, origin) = chain;
        let (of_origin, _) = self.parked_counts(origin, tag);
        if of_origin >= self.config.max_parked_per_origin.max(1) {
            // The origin's share is full: its oldest parked record makes room (one client
            // cannot hold more than its share of the parking space).
            if let Some(t) = self.evict_oldest_parked(origin) {
                self.keep_gap(t, now_ms);
            }
        }
        let (_, on_tag) = self.parked_counts(origin, tag);
        if self.parked_total >= self.config.max_parked || on_tag >= self.config.max_parked_per_tag {
            // Catch-up fetches it again: the gap stays open although nothing of it is parked.
            self.keep_gap(tag, now_ms);
        } else {
            self.counters.parked += 1;
            self.parked_total += 1;
            self.parked_seq += 1;
            ready.arrived = self.parked_seq;
            self.parked
                .entry(chain)
                .or_default()
                .insert(ready.header.tag_seq, ready);
        }
        self.catchup
            .gap_due
            .entry(tag)
            .or_insert(now_ms.saturating_add(self.config.reorder_grace_ms));
    }

    /// Queues a record whose signer is not known yet, within the count and byte bounds: the
    /// claimed origin's oldest entries make room first, then the oldest overall.
    fn queue_unknown(&mut self, u: UnknownSigner) {
        let per_origin = self.config.max_unknown_signer_bytes_per_origin;
        if u.size > per_origin || u.size > self.config.max_unknown_signer_bytes {
            self.counters.parked_dropped += 1;
            return;
        }
        let mut of_origin: usize = self
            .unknown
            .iter()
            .filter(|x| x.origin == u.origin)
            .map(|x| x.size)
            .sum();
        while of_origin.saturating_add(u.size) > per_origin {
            let Some(i) = self.unknown.iter().position(|x| x.origin == u.origin) else {
                break;
            };
            if let Some(old) = self.unknown.remove(i) {
                of_origin = of_origin.saturating_sub(old.size);
                self.unknown_bytes = self.unknown_bytes.saturating_sub(old.size);
                self.counters.parked_dropped += 1;
            }
        }
        while !self.unknown.is_empty()
            && (self.unknown.len() >= self.config.max_unknown_signer
                || self.unknown_bytes.saturating_add(u.size) > self.config.max_unknown_signer_bytes)
        {
            if let Some(old) = self.unknown.pop_front() {
                self.unknown_bytes = self.unknown_bytes.saturating_sub(old.size);
                self.counters.parked_dropped += 1;
            }
        }
        if self.config.max_unknown_signer == 0 {
            self.counters.parked_dropped += 1;
            return;
        }
        self.unknown_bytes += u.size;
        self.unknown.push_back(u);
    }

    /// Applies `ready` (the successor of the chain's head) and then every parked successor.
    fn apply_chain(&mut self, chain: (u64, u64), ready: Ready, now_ms: u64) {
        let mut next = Some(ready);
        while let Some(r) = next.take() {
            if !self.apply_one(chain, r, now_ms) {
                break;
            }
            let held = self.heads.get(&chain).map_or(0, |h| h.tag_seq);
            if let Some(m) = self.parked.get_mut(&chain) {
                next = held.checked_add(1).and_then(|n| m.remove(&n));
                if next.is_some() {
                    self.parked_total -= 1;
                }
                // Anything at or below the head is stale (applied some other way).
                let stale: Vec<u64> = m.range(..=held).map(|(k, _)| *k).collect();
                for k in stale {
                    m.remove(&k);
                    self.parked_total -= 1;
                }
                if m.is_empty() {
                    self.parked.remove(&chain);
                }
            }
        }
        if !self.parked.keys().any(|k| k.0 == chain.0)
            && !self.catchup.gap_dropped.contains(&chain.0)
        {
            self.catchup.gap_due.remove(&chain.0);
        }
    }

    fn apply_one(&mut self, chain: (u64, u64), r: Ready, now_ms: u64) -> bool {
        let head = self.heads.get(&chain).copied();
        let linked = match head {
            None => r.header.tag_seq == 1 && r.header.prev_hash.is_empty(),
            Some(h) => {
                h.tag_seq.checked_add(1) == Some(r.header.tag_seq)
                    && r.header.prev_hash[..] == h.hash[..]
            }
        };
        if !linked {
            self.counters.reject(Reject::ChainBreak);
            return false;
        }
        let value = StoredValue {
            hlc: r.body.hlc,
            origin: r.header.origin,
            origin_seq: r.header.origin_seq,
            deleted: r.body.deleted,
            value: if r.body.deleted {
                Vec::new()
            } else {
                r.body.value.to_vec()
            },
        };
        let applied = self.store.apply(&Apply {
            tag: chain.0,
            origin: chain.1,
            tag_seq: r.header.tag_seq,
            header_hash: r.hash,
            record: &r.stored,
            key: &r.body.key,
            value,
            own: None,
        });
        let superseded = match applied {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "applying a record");
                self.counters.storage_errors += 1;
                return false;
            }
        };
        // Received records are flushed lazily (on_tick, or sled's own 500 ms flush): losing
        // them in a crash only means fetching them again.
        self.dirty = true;
        self.heads.insert(
            chain,
            Head {
                tag_seq: r.header.tag_seq,
                hash: r.hash,
            },
        );
        self.hlc.observe(r.body.hlc, now_ms);
        self.counters.applied += 1;
        if r.via_catchup {
            self.counters.records_recovered += 1;
        }
        let value = (!r.body.deleted).then_some(r.body.value);
        self.emit_change(
            &r.body.key,
            value,
            r.header.origin,
            r.header.origin_seq,
            r.body.hlc,
            superseded,
        );
        true
    }

    fn emit_change(
        &mut self,
        key: &str,
        value: Option<Bytes>,
        origin: u64,
        origin_seq: u64,
        hlc: u64,
        superseded: bool,
    ) {
        let wanted = self.interests.iter().any(|i| match i.kind {
            InterestKind::Exact => i.pattern == key,
            InterestKind::Prefix => key.starts_with(&i.pattern),
            InterestKind::Channel => false,
        });
        if wanted {
            self.counters.changes_emitted += 1;
            self.changes.push(Change {
                key: key.to_owned(),
                value,
                origin,
                origin_seq,
                hlc,
                superseded,
            });
        }
    }

    /// Records parked for an unknown signer whose certificate has since been checked.
    fn retry_unknown_signers(&mut self, now_ms: u64, out: &mut Vec<Publish>) {
        while std::mem::take(&mut self.new_signer) {
            let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.unknown)
                .into_iter()
                .partition(|u| self.certs.get(&u.digest, now_ms).is_some());
            self.unknown = waiting.into();
            self.unknown_bytes = self.unknown.iter().map(|u| u.size).sum();
            for u in ready {
                self.on_record(u.record, None, u.tag, now_ms, out);
            }
        }
    }
}

fn entry_of(v: StoredValue) -> Entry {
    Entry {
        value: Bytes::from(v.value),
        hlc: v.hlc,
        origin: v.origin,
        origin_seq: v.origin_seq,
        deleted: v.deleted,
    }
}
