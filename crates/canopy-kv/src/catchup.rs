//! Catch-up: asking the replicas of a tag for what this one lacks, answering such requests, and
//! opening the sealed answers.
//!
//! A request is multicast on the tag itself, so it reaches exactly the replicas holding it; its
//! `have` (the contiguous head per origin) doubles as an announcement of the requester's chain
//! heads. Any replica may answer for any origin because records verify themselves.
//!
//! Who answers (so that a request on a busy tag does not draw an answer from every replica):
//! a replica holding records the requester lacks answers when it is the origin of any of them;
//! otherwise when it knows fewer than 4 origins on the tag (a small group, where few replicas
//! can answer and a silent request would cost a whole retry round); otherwise when the first
//! byte of SHA-256(request_id || own node id) is below 96 (about 3 in 8 replicas, a different
//! random-looking set for every request, so a retry draws different answerers).

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::Bytes;
use canopy_proto::v1::{
    kv_envelope, CatchupRequest, CatchupResponse, ChainPosition, KvEnvelope, SealedUnicast,
    SignedCatchupRequest, SignedRecord,
};
use prost::Message;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::counters::Reject;
use crate::credentials::cert_digest;
use crate::record::sha256;
use crate::replica::{Publish, Replica, ReplicaConfig};
use crate::unicast;

/// Outstanding requests kept (each holds a reply secret).
pub const MAX_OUTSTANDING: usize = 64;
/// How long a request's answers are accepted.
pub const REQUEST_TTL_MS: u64 = 30_000;
/// Follow-up requests (answers with `more`) per tag per minute.
pub const MAX_FOLLOW_UPS_PER_MINUTE: u32 = 64;
/// Answers per requester per second.
pub const MAX_ANSWERS_PER_SECOND: u32 = 4;
/// Requests issued further than this from the receiver's clock are ignored (replayed old
/// requests must not make replicas answer again).
pub const REQUEST_SKEW_MS: u64 = 60_000;
/// Opportunistic requests (unknown signer, a peer announcing a head ahead of ours): at most one
/// per tag this often.
pub const OPPORTUNISTIC_INTERVAL_MS: u64 = 1_000;
/// A gap still open after a catch-up is asked for again this often.
pub const GAP_RETRY_MS: u64 = 2_000;
/// Bound of the rate-limit maps and of the seen-request set.
const MAX_TRACKED: usize = 4096;

pub(crate) struct Outstanding {
    pub tag: u64,
    pub secret: StaticSecret,
    pub expires_ms: u64,
}

#[derive(Default)]
pub(crate) struct CatchupState {
    pub next_periodic: Option<u64>,
    pub gap_due: HashMap<u64, u64>,
    pub outstanding: HashMap<u64, Outstanding>,
    pub last_opportunistic: HashMap<u64, u64>,
    pub follow_ups: HashMap<u64, (u64, u32)>,
    pub answers: HashMap<u64, (u64, u32)>,
    pub seen: VecDeque<(u64, u64)>,
    pub seen_set: HashSet<(u64, u64)>,
}

/// A fixed-window rate limit: at most `max` per `window_ms` per key, map bounded.
fn allow(map: &mut HashMap<u64, (u64, u32)>, key: u64, now: u64, window_ms: u64, max: u32) -> bool {
    if map.len() >= MAX_TRACKED && !map.contains_key(&key) {
        map.retain(|_, (start, _)| now.saturating_sub(*start) < window_ms);
        if map.len() >= MAX_TRACKED {
            map.clear();
        }
    }
    let entry = map.entry(key).or_insert((now, 0));
    if now.saturating_sub(entry.0) >= window_ms {
        *entry = (now, 0);
    }
    if entry.1 >= max {
        return false;
    }
    entry.1 += 1;
    true
}

fn random_u64(config: &ReplicaConfig) -> u64 {
    let mut b = [0u8; 8];
    // A failing RNG leaves zeros: only jitter and request ids depend on this, and request ids
    // need not be secret (the reply key is what protects answers).
    let _ = config.entropy.fill(&mut b);
    u64::from_be_bytes(b)
}

fn jittered(config: &ReplicaConfig, now: u64) -> u64 {
    let base = config.catchup_interval_ms.max(1);
    let spread = base / 2;
    now + base - base / 4 + random_u64(config) % spread.max(1)
}

impl CatchupState {
    pub(crate) fn start(&mut self, now: u64, config: &ReplicaConfig) {
        if self.next_periodic.is_none() {
            self.next_periodic = Some(jittered(config, now));
        }
    }
}

impl Replica {
    /// A signed catch-up request on `tag`, remembering its reply secret.
    pub(crate) fn request_catchup(&mut self, tag: u64, now_ms: u64) -> Option<Publish> {
        let secret = unicast::new_secret(self.config.entropy.as_ref())?;
        let request_id = random_u64(&self.config);
        let mut have: Vec<ChainPosition> = self
            .heads
            .iter()
            .filter(|(k, _)| k.0 == tag)
            .map(|(k, h)| ChainPosition {
                origin: k.1,
                tag_seq: h.tag_seq,
            })
            .collect();
        have.sort_by_key(|p| p.origin);
        let request = CatchupRequest {
            requester: self.me,
            key_tag: tag,
            request_id,
            reply_key: Bytes::copy_from_slice(PublicKey::from(&secret).as_bytes()),
            have,
            issued_at_ms: now_ms,
        }
        .encode_to_vec();
        let signature = match self.creds.sign(&request) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "signing a catch-up request");
                return None;
            }
        };
        let o = &mut self.catchup.outstanding;
        o.retain(|_, r| r.expires_ms > now_ms);
        while o.len() >= MAX_OUTSTANDING {
            let Some(oldest) = o.iter().min_by_key(|(_, r)| r.expires_ms).map(|(k, _)| *k) else {
                break;
            };
            o.remove(&oldest);
        }
        o.insert(
            request_id,
            crate::catchup::Outstanding {
                tag,
                secret,
                expires_ms: now_ms + REQUEST_TTL_MS,
            },
        );
        self.counters.catchup_requests_sent += 1;
        let envelope = KvEnvelope {
            body: Some(kv_envelope::Body::CatchupRequest(SignedCatchupRequest {
                request: request.into(),
                signature: signature.into(),
                signer_certificate: Bytes::copy_from_slice(self.creds.certificate()),
            })),
        };
        Some(Publish {
            key_tag: tag,
            payload: envelope.encode_to_vec().into(),
        })
    }

    /// A request for an opportunistic reason, at most once per tag per second.
    pub(crate) fn request_catchup_limited(&mut self, tag: u64, now_ms: u64) -> Option<Publish> {
        let last = self.catchup.last_opportunistic.get(&tag).copied();
        if last.is_some_and(|l| now_ms.saturating_sub(l) < OPPORTUNISTIC_INTERVAL_MS) {
            return None;
        }
        if self.catchup.last_opportunistic.len() >= MAX_TRACKED {
            self.catchup.last_opportunistic.clear();
        }
        self.catchup.last_opportunistic.insert(tag, now_ms);
        self.request_catchup(tag, now_ms)
    }

    pub(crate) fn on_request(
        &mut self,
        origin: u64,
        tag: u64,
        signed: SignedCatchupRequest,
        now_ms: u64,
        out: &mut Vec<Publish>,
    ) {
        let Ok(req) = CatchupRequest::decode(signed.request.as_ref()) else {
            return self.counters.reject(Reject::Malformed);
        };
        if req.requester == self.me {
            return;
        }
        if req.requester != origin {
            return self.counters.reject(Reject::ForgedOrigin);
        }
        if req.key_tag != tag {
            return self.counters.reject(Reject::WrongTag);
        }
        if !self.tags.contains(&tag) {
            return self.counters.reject(Reject::NotSubscribed);
        }
        if signed.signer_certificate.is_empty() {
            return self.counters.reject(Reject::BadCertificate);
        }
        let digest = cert_digest(&signed.signer_certificate);
        let signer = match self.resolve_signer(&digest, &signed.signer_certificate, now_ms) {
            Ok(Some(s)) => s,
            Ok(None) => return self.counters.reject(Reject::BadCertificate),
            Err(r) => return self.counters.reject(r),
        };
        if !signer.is_client {
            return self.counters.reject(Reject::BadCertificate);
        }
        if signer.node_id != req.requester {
            return self.counters.reject(Reject::ForgedOrigin);
        }
        if !self
            .creds
            .verify(&signer, &signed.request, &signed.signature)
        {
            return self.counters.reject(Reject::BadSignature);
        }
        if req.issued_at_ms.abs_diff(now_ms) > REQUEST_SKEW_MS {
            return self.counters.reject(Reject::StaleRequest);
        }
        let id = (req.requester, req.request_id);
        if !self.catchup.seen_set.insert(id) {
            return self.counters.reject(Reject::Replay);
        }
        self.catchup.seen.push_back(id);
        if self.catchup.seen.len() > MAX_TRACKED {
            if let Some(old) = self.catchup.seen.pop_front() {
                self.catchup.seen_set.remove(&old);
            }
        }
        self.counters.catchup_requests_received += 1;

        let have: HashMap<u64, u64> = req
            .have
            .iter()
            .rev()
            .map(|p| (p.origin, p.tag_seq))
            .collect();
        // The request doubles as a head announcement: the requester holds more of some chain.
        let behind = have.iter().any(|(o, seq)| {
            *o != self.me && *seq > self.heads.get(&(tag, *o)).map_or(0, |h| h.tag_seq)
        });
        if behind {
            out.extend(self.request_catchup_limited(tag, now_ms));
        }

        let mut missing: Vec<(u64, u64)> = Vec::new();
        let mut origins = 0usize;
        for ((t, o), h) in &self.heads {
            if *t != tag {
                continue;
            }
            origins += 1;
            let from = have.get(o).copied().unwrap_or(0) + 1;
            if h.tag_seq >= from {
                missing.push((*o, from));
            }
        }
        if missing.is_empty() {
            return;
        }
        missing.sort_unstable();
        let is_origin = missing.iter().any(|(o, _)| *o == self.me);
        let selected = {
            let mut m = [0u8; 16];
            m[..8].copy_from_slice(&req.request_id.to_be_bytes());
            m[8..].copy_from_slice(&self.me.to_be_bytes());
            sha256(&m)[0] < 96
        };
        if !(is_origin || origins < 4 || selected) {
            return;
        }
        if !allow(
            &mut self.catchup.answers,
            req.requester,
            now_ms,
            1_000,
            MAX_ANSWERS_PER_SECOND,
        ) {
            return self.counters.reject(Reject::RateLimited);
        }
        if let Some(p) = self.answer(&req, &missing) {
            out.push(p);
        }
    }

    /// Builds and seals the answer to `req`: oldest first per origin, bounded, `more` when cut.
    fn answer(&mut self, req: &CatchupRequest, missing: &[(u64, u64)]) -> Option<Publish> {
        let tag = req.key_tag;
        let mut records: Vec<SignedRecord> = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        let mut certs: HashMap<Bytes, Bytes> = HashMap::new();
        'origins: for (origin, from) in missing {
            for item in self.store.records_from(tag, *origin, *from) {
                let mut rec = match item
                    .ok()
                    .and_then(|(_, b)| SignedRecord::decode(b.as_slice()).ok())
                {
                    Some(r) => r,
                    None => {
                        self.counters.storage_errors += 1;
                        break;
                    }
                };
                rec.signer_certificate = if *origin == self.me {
                    Bytes::copy_from_slice(self.creds.certificate())
                } else {
                    let digest = crate::record::decode_header(&rec)
                        .map(|h| h.signer_digest)
                        .unwrap_or_default();
                    if let Some(c) = certs.get(&digest) {
                        c.clone()
                    } else {
                        let der: Bytes = <&[u8; 32]>::try_from(digest.as_ref())
                            .ok()
                            .and_then(|d| self.store.get_cert(d).ok().flatten())
                            .unwrap_or_default()
                            .into();
                        certs.insert(digest, der.clone());
                        der
                    }
                };
                let size = rec.encoded_len();
                if !records.is_empty()
                    && (records.len() >= self.config.answer_max_records
                        || bytes + size > self.config.answer_max_bytes)
                {
                    more = true;
                    break 'origins;
                }
                bytes += size;
                records.push(rec);
            }
        }
        let count = records.len() as u64;
        let response = CatchupResponse {
            responder: self.me,
            key_tag: tag,
            request_id: req.request_id,
            records,
            more,
        }
        .encode_to_vec();
        let Some(sealed) = unicast::seal_to(
            self.config.entropy.as_ref(),
            req.requester,
            req.request_id,
            &req.reply_key,
            &response,
        ) else {
            self.counters.reject(Reject::Malformed);
            return None;
        };
        self.counters.catchup_requests_answered += 1;
        self.counters.catchup_records_sent += count;
        let envelope = KvEnvelope {
            body: Some(kv_envelope::Body::Unicast(sealed)),
        };
        Some(Publish {
            key_tag: (self.config.unicast_tag)(req.requester),
            payload: envelope.encode_to_vec().into(),
        })
    }

    pub(crate) fn on_unicast(&mut self, u: SealedUnicast, now_ms: u64, out: &mut Vec<Publish>) {
        if u.to != self.me {
            return self.counters.reject(Reject::BadSeal);
        }
        let Some(o) = self.catchup.outstanding.get(&u.request_id) else {
            return self.counters.reject(Reject::BadSeal);
        };
        if o.expires_ms <= now_ms {
            return self.counters.reject(Reject::BadSeal);
        }
        let tag = o.tag;
        let Some(plain) = unicast::open_with(&o.secret, &u) else {
            return self.counters.reject(Reject::BadSeal);
        };
        let Ok(resp) = CatchupResponse::decode(plain.as_slice()) else {
            return self.counters.reject(Reject::Malformed);
        };
        if resp.request_id != u.request_id || resp.key_tag != tag {
            return self.counters.reject(Reject::Malformed);
        }
        self.counters.catchup_answers_opened += 1;
        for rec in resp.records {
            self.on_record(rec, None, tag, now_ms, out);
        }
        if resp.more
            && allow(
                &mut self.catchup.follow_ups,
                tag,
                now_ms,
                60_000,
                MAX_FOLLOW_UPS_PER_MINUTE,
            )
        {
            out.extend(self.request_catchup(tag, now_ms));
        }
    }

    /// The node reattached or the tree's epoch changed (root failover included): ask for what
    /// was missed on every subscribed tag, and carry the certificate on the next record per tag.
    pub fn on_epoch_change(&mut self, now_ms: u64) -> Vec<Publish> {
        self.catchup.start(now_ms, &self.config);
        self.epoch += 1;
        let tags: Vec<u64> = self.tags.iter().copied().collect();
        let out: Vec<Publish> = tags
            .into_iter()
            .filter_map(|t| self.request_catchup(t, now_ms))
            .collect();
        self.counters.published += out.len() as u64;
        out
    }

    /// Timers: gap catch-ups after the reorder grace, the periodic safety net, expiry of
    /// outstanding requests, and the lazy flush of received records. Call again at
    /// [`Replica::next_wake_ms`].
    pub fn on_tick(&mut self, now_ms: u64) -> Vec<Publish> {
        self.catchup.start(now_ms, &self.config);
        let mut out = Vec::new();
        self.catchup
            .outstanding
            .retain(|_, r| r.expires_ms > now_ms);
        if std::mem::take(&mut self.dirty) {
            if let Err(e) = self.store.flush() {
                tracing::warn!(error = %e, "flushing received records");
                self.dirty = true;
            }
        }
        let due: Vec<u64> = self
            .catchup
            .gap_due
            .iter()
            .filter(|(_, d)| **d <= now_ms)
            .map(|(t, _)| *t)
            .collect();
        for tag in due {
            if self.parked.keys().any(|k| k.0 == tag) {
                out.extend(self.request_catchup(tag, now_ms));
                self.catchup.gap_due.insert(tag, now_ms + GAP_RETRY_MS);
            } else {
                self.catchup.gap_due.remove(&tag);
            }
        }
        if self.catchup.next_periodic.is_some_and(|t| t <= now_ms) {
            let tags: Vec<u64> = self.tags.iter().copied().collect();
            for tag in tags {
                out.extend(self.request_catchup(tag, now_ms));
            }
            self.catchup.next_periodic = Some(jittered(&self.config, now_ms));
        }
        self.counters.published += out.len() as u64;
        out
    }

    /// When [`Replica::on_tick`] has work next (None before the first call with a time).
    pub fn next_wake_ms(&self) -> Option<u64> {
        let gaps = self.catchup.gap_due.values().copied();
        let expiries = self.catchup.outstanding.values().map(|o| o.expires_ms);
        self.catchup
            .next_periodic
            .into_iter()
            .chain(gaps)
            .chain(expiries)
            .min()
    }
}
