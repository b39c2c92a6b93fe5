//! Catch-up: asking the replicas of a tag for what this one lacks, answering such requests, and
//! opening the sealed answers.
//!
//! A request is multicast on the tag itself, so it reaches exactly the replicas holding it; its
//! `have` (the contiguous head per origin) doubles as an announcement of the requester's chain
//! heads. Any replica may answer for any origin because records verify themselves.
//!
//! Who answers (so that a request on a busy tag does not draw an answer from every replica):
//! a replica holding records the requester lacks answers when it is the origin of any of them;
//! otherwise when it ranks among the [`ANSWERERS`] lowest by SHA-256(request_id || id) among
//! the replicas it has heard asking on the tag (the requester excluded). Replicas that know
//! the same peers pick the same few, however many replicas the tag has, and every request
//! (a retry included) picks a different few.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

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
/// requests must not make replicas answer again). Equal to the request lifetime: a request
/// whose reply key has expired at the requester is of no use to anyone, so a replay of it must
/// already be refused as stale. (It was 60 s, twice the lifetime: an eavesdropper could replay
/// a requester's expired requests and spend its answer budget.) The replay filter holds every
/// request until it falls outside this window, so it needs no other eviction.
pub const REQUEST_SKEW_MS: u64 = REQUEST_TTL_MS;
/// Opportunistic requests (unknown signer, a peer announcing a head ahead of ours): at most one
/// per tag this often.
pub const OPPORTUNISTIC_INTERVAL_MS: u64 = 1_000;
/// A gap still open after a catch-up is asked for again this often.
pub const GAP_RETRY_MS: u64 = 2_000;
/// Bound of the rate-limit maps and of the seen-request set.
const MAX_TRACKED: usize = 4096;
/// Entries one requester may hold in the replay filter (requests within the skew window). A
/// requester flooding the filter is refused its own requests before it can fill the filter for
/// everyone (an honest requester sends a few per second at most, and is answered at most
/// `MAX_ANSWERS_PER_SECOND` times anyway).
const MAX_SEEN_PER_REQUESTER: usize = MAX_TRACKED / 8;
/// A follow-up request (for an answer that said `more`) that draws no answer is asked again
/// this much later: a responder answers one requester at most `MAX_ANSWERS_PER_SECOND` times a
/// second and drops the rest, so a long history would otherwise stall until the periodic
/// safety net. One answer-rate window.
pub const FOLLOW_UP_RETRY_MS: u64 = 1_000;
/// Consecutive retries of one follow-up without progress before giving up (the gap retry and
/// the periodic catch-up remain).
pub const MAX_FOLLOW_UP_RETRIES: u32 = 3;

pub(crate) struct Outstanding {
    pub tag: u64,
    pub secret: StaticSecret,
    pub expires_ms: u64,
}

/// Replicas that answer a request besides the origins of what it lacks: the ones whose
/// SHA-256(request_id || id) ranks lowest among the replicas a responder knows on the tag.
/// Every responder that knows the same replicas picks the same few, whatever their number (a
/// read-heavy channel must not answer a newcomer from every replica), and each request picks
/// a different few, so a retry reaches others.
pub const ANSWERERS: usize = 3;
/// Replicas remembered per tag for that ranking.
const MAX_REPLICAS_PER_TAG: usize = 256;
/// A round (an epoch change, the periodic safety net) asks on at most this many tags at once,
/// then waits [`ROUND_PACE_MS`]: a responder answers one requester at most
/// `MAX_ANSWERS_PER_SECOND` times a second, and requests past the `MAX_OUTSTANDING` slots
/// would evict each other's reply keys before their answers come.
pub const ROUND_BURST: usize = 2;
pub const ROUND_PACE_MS: u64 = 500;
/// A gap that catch-up does not fill is asked for again after `GAP_RETRY_MS`, doubling up to
/// this, so a chain an insider never completes costs a request a minute, not one every 2 s.
pub const GAP_RETRY_MAX_MS: u64 = 60_000;

/// A pending retry of a tag's follow-up request.
pub(crate) struct FollowUpRetry {
    pub due_ms: u64,
    pub attempts: u32,
}

#[derive(Default)]
pub(crate) struct CatchupState {
    pub next_periodic: Option<u64>,
    pub gap_due: HashMap<u64, u64>,
    /// Tags on which a record was dropped (parking full): the gap is asked for even though
    /// nothing of it is parked, until a catch-up answer on the tag brings something new.
    pub gap_dropped: HashSet<u64>,
    pub outstanding: HashMap<u64, Outstanding>,
    pub last_opportunistic: HashMap<u64, u64>,
    pub follow_ups: HashMap<u64, (u64, u32)>,
    /// Per tag: the follow-up to ask again if no answer makes progress first.
    pub follow_up_retry: HashMap<u64, FollowUpRetry>,
    pub answers: HashMap<u64, (u64, u32)>,
    /// The replay filter: (expiry, requester, request id), expiry = issued_at + skew, so the
    /// oldest entry is the first to fall out of the accepted window.
    pub seen: BTreeSet<(u64, u64, u64)>,
    pub seen_set: HashSet<(u64, u64)>,
    pub seen_per_requester: HashMap<u64, usize>,
    /// Per tag, the replicas heard asking on it (bounded): who else can answer.
    pub replicas: HashMap<u64, BTreeSet<u64>>,
    /// Tags waiting for a request of a round (epoch change, periodic), asked a few at a time.
    pub round: VecDeque<u64>,
    pub round_set: HashSet<u64>,
    pub next_round_ms: u64,
    /// Per tag: consecutive gap retries that brought nothing, for the backoff.
    pub gap_attempts: HashMap<u64, u32>,
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
    now.saturating_add(base - base / 4)
        .saturating_add(random_u64(config) % spread.max(1))
}

impl CatchupState {
    pub(crate) fn start(&mut self, now: u64, config: &ReplicaConfig) {
        if self.next_periodic.is_none() {
            self.next_periodic = Some(jittered(config, now));
        }
    }

    /// Remembers that `replica` holds `tag` (it asked on it).
    pub(crate) fn note_replica(&mut self, tag: u64, replica: u64) {
        let known = self.replicas.entry(tag).or_default();
        if known.len() < MAX_REPLICAS_PER_TAG {
            known.insert(replica);
        }
    }

    /// Whether `me` is among the [`ANSWERERS`] replicas of `tag` picked for `request_id` (the
    /// requester excluded).
    pub(crate) fn selected(&self, tag: u64, requester: u64, request_id: u64, me: u64) -> bool {
        let score = |id: u64| {
            let mut m = [0u8; 16];
            m[..8].copy_from_slice(&request_id.to_be_bytes());
            m[8..].copy_from_slice(&id.to_be_bytes());
            let h = sha256(&m);
            u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]])
        };
        let mine = score(me);
        let lower = self.replicas.get(&tag).map_or(0, |known| {
            known
                .iter()
                .filter(|&&r| r != me && r != requester && score(r) < mine)
                .count()
        });
        lower < ANSWERERS
    }

    /// Queues `tags` for the next requests of a round (each at most once).
    pub(crate) fn queue_round(&mut self, tags: impl IntoIterator<Item = u64>) {
        for tag in tags {
            if self.round_set.insert(tag) {
                self.round.push_back(tag);
            }
        }
    }

    /// When the next gap retry of `tag` is due, backing off after unanswered ones.
    pub(crate) fn gap_retry_at(&mut self, tag: u64, now: u64) -> u64 {
        let attempts = self.gap_attempts.entry(tag).or_insert(0);
        let wait = GAP_RETRY_MS
            .saturating_mul(1u64 << (*attempts).min(16))
            .min(GAP_RETRY_MAX_MS);
        *attempts = attempts.saturating_add(1);
        now.saturating_add(wait)
    }

    /// Admits a request into the replay filter. Entries are dropped only once their request
    /// is outside the accepted skew (and so refused as stale anyway): evicting fresher
    /// entries would let a flood of cheap requests re-admit replays. A full filter refuses new
    /// requests instead, and one requester may hold only its share of it.
    fn admit(
        &mut self,
        requester: u64,
        request_id: u64,
        issued_at_ms: u64,
        now: u64,
    ) -> Result<(), Reject> {
        while let Some(&(expiry, r, id)) = self.seen.first() {
            if expiry >= now {
                break;
            }
            self.seen.pop_first();
            self.seen_set.remove(&(r, id));
            if let Some(n) = self.seen_per_requester.get_mut(&r) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.seen_per_requester.remove(&r);
                }
            }
        }
        if self.seen_set.contains(&(requester, request_id)) {
            return Err(Reject::Replay);
        }
        if self
            .seen_per_requester
            .get(&requester)
            .copied()
            .unwrap_or(0)
            >= MAX_SEEN_PER_REQUESTER
        {
            return Err(Reject::RateLimited);
        }
        if self.seen_set.len() >= MAX_TRACKED {
            return Err(Reject::ReplayFilterFull);
        }
        let expiry = issued_at_ms.saturating_add(REQUEST_SKEW_MS);
        self.seen.insert((expiry, requester, request_id));
        self.seen_set.insert((requester, request_id));
        *self.seen_per_requester.entry(requester).or_insert(0) += 1;
        Ok(())
    }
}

impl Replica {
    /// A signed catch-up request on `tag`, remembering its reply secret. When all
    /// `MAX_OUTSTANDING` slots are taken, the oldest is given up only if `evict`: requests
    /// that anyone can provoke (an unknown signer, an announced head) never take a slot from
    /// one in progress.
    pub(crate) fn request_catchup_with(
        &mut self,
        tag: u64,
        now_ms: u64,
        evict: bool,
    ) -> Option<Publish> {
        self.catchup
            .outstanding
            .retain(|_, r| r.expires_ms > now_ms);
        if !evict && self.catchup.outstanding.len() >= MAX_OUTSTANDING {
            return None;
        }
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
                expires_ms: now_ms.saturating_add(REQUEST_TTL_MS),
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

    /// A signed catch-up request on `tag` (see [`Replica::request_catchup_with`]), evicting
    /// the oldest outstanding request if needed.
    pub(crate) fn request_catchup(&mut self, tag: u64, now_ms: u64) -> Option<Publish> {
        self.request_catchup_with(tag, now_ms, true)
    }

    /// A request for an opportunistic reason, at most once per tag per second, and only if an
    /// outstanding slot is free.
    pub(crate) fn request_catchup_limited(&mut self, tag: u64, now_ms: u64) -> Option<Publish> {
        let last = self.catchup.last_opportunistic.get(&tag).copied();
        if last.is_some_and(|l| now_ms.saturating_sub(l) < OPPORTUNISTIC_INTERVAL_MS) {
            return None;
        }
        if self.catchup.last_opportunistic.len() >= MAX_TRACKED {
            self.catchup.last_opportunistic.clear();
        }
        self.catchup.last_opportunistic.insert(tag, now_ms);
        self.request_catchup_with(tag, now_ms, false)
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
        if let Err(r) = self
            .catchup
            .admit(req.requester, req.request_id, req.issued_at_ms, now_ms)
        {
            return self.counters.reject(r);
        }
        self.counters.catchup_requests_received += 1;
        self.catchup.note_replica(tag, req.requester);

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
        for ((t, o), h) in &self.heads {
            if *t != tag {
                continue;
            }
            // `have` is the requester's (peer-controlled) claim: a position at or beyond our
            // head (u64::MAX included) means it holds everything we do. Checked, so it can
            // neither overflow nor wrap around to "send the whole history".
            let from = match have.get(o) {
                None => 1,
                Some(&seq) if seq >= h.tag_seq => continue,
                Some(&seq) => match seq.checked_add(1) {
                    Some(f) => f,
                    None => continue,
                },
            };
            if h.tag_seq >= from {
                missing.push((*o, from));
            }
        }
        if missing.is_empty() {
            return;
        }
        missing.sort_unstable();
        let is_origin = missing.iter().any(|(o, _)| *o == self.me);
        if !(is_origin
            || self
                .catchup
                .selected(tag, req.requester, req.request_id, self.me))
        {
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
                // The certificate the record names (its signer_digest), not the origin's current
                // one: after a renewal the origin's old records are still signed by the old
                // key. Own certificates are stored by digest as they change (see
                // `Replica::note_own_certificate`), others' when they are checked.
                let digest = crate::record::decode_header(&rec)
                    .map(|h| h.signer_digest)
                    .unwrap_or_default();
                rec.signer_certificate = if let Some(c) = certs.get(&digest) {
                    c.clone()
                } else {
                    let der: Bytes = match <&[u8; 32]>::try_from(digest.as_ref()) {
                        Ok(d) => match self.store.get_cert(d).ok().flatten() {
                            Some(der) => der.into(),
                            None if *d == cert_digest(self.creds.certificate()) => {
                                Bytes::copy_from_slice(self.creds.certificate())
                            }
                            None => Bytes::new(),
                        },
                        Err(_) => Bytes::new(),
                    };
                    certs.insert(digest, der.clone());
                    der
                };
                let size = rec.encoded_len();
                if !records.is_empty()
                    && (records.len() >= self.config.answer_max_records
                        || bytes.saturating_add(size) > self.config.answer_max_bytes)
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
        let applied_before = self.counters.applied;
        for rec in resp.records {
            self.on_record(rec, None, tag, now_ms, out);
        }
        // Anyone who saw the request can seal an "answer" to its reply key (a router included:
        // the key and the request id are in the clear), so an answer's `more` is acted on only
        // when the answer proved itself by applying at least one verified record we did not
        // hold. An answer that applies nothing new (forged, or a second replica's duplicate)
        // spends no follow-up budget, takes no outstanding slot and cancels no retry.
        if self.counters.applied == applied_before {
            return;
        }
        self.catchup.gap_dropped.remove(&tag);
        // Progress: a gap still open on the tag is asked for at the short interval again.
        self.catchup.gap_attempts.remove(&tag);
        if !resp.more {
            self.catchup.follow_up_retry.remove(&tag);
            return;
        }
        if allow(
            &mut self.catchup.follow_ups,
            tag,
            now_ms,
            60_000,
            MAX_FOLLOW_UPS_PER_MINUTE,
        ) {
            if let Some(p) = self.request_catchup(tag, now_ms) {
                out.push(p);
                // The responder may drop it (answer rate limit): ask again after the window
                // unless an answer makes progress first.
                self.catchup.follow_up_retry.insert(
                    tag,
                    FollowUpRetry {
                        due_ms: now_ms.saturating_add(FOLLOW_UP_RETRY_MS),
                        attempts: 0,
                    },
                );
            }
        }
    }

    /// The node reattached or the tree's epoch changed (root failover included): ask for what
    /// was missed on every subscribed tag, and carry the certificate on the next record per tag.
    pub fn on_epoch_change(&mut self, now_ms: u64) -> Vec<Publish> {
        self.catchup.start(now_ms, &self.config);
        self.epoch += 1;
        // Queued, not sent at once: a burst of epoch changes (a parent may announce one per
        // heartbeat) asks on each tag once, paced.
        let tags: Vec<u64> = self.tags.iter().copied().collect();
        self.catchup.queue_round(tags);
        let out = self.drain_round(now_ms);
        self.counters.published += out.len() as u64;
        out
    }

    /// The next few requests of a queued round, if their pace allows.
    fn drain_round(&mut self, now_ms: u64) -> Vec<Publish> {
        let mut out = Vec::new();
        if self.catchup.round.is_empty() || now_ms < self.catchup.next_round_ms {
            return out;
        }
        for _ in 0..ROUND_BURST {
            let Some(tag) = self.catchup.round.pop_front() else {
                break;
            };
            self.catchup.round_set.remove(&tag);
            if self.tags.contains(&tag) {
                out.extend(self.request_catchup(tag, now_ms));
            }
        }
        self.catchup.next_round_ms = now_ms.saturating_add(ROUND_PACE_MS);
        out
    }

    /// Timers: gap catch-ups after the reorder grace, retries of unanswered follow-ups, the
    /// periodic safety net, expiry of
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
            // A tag whose record was dropped from full parking keeps its gap: nothing of it
            // may be parked, but the record is still missing.
            if self.catchup.gap_dropped.contains(&tag) || self.parked.keys().any(|k| k.0 == tag) {
                out.extend(self.request_catchup(tag, now_ms));
                let next = self.catchup.gap_retry_at(tag, now_ms);
                self.catchup.gap_due.insert(tag, next);
            } else {
                self.catchup.gap_due.remove(&tag);
                self.catchup.gap_attempts.remove(&tag);
            }
        }
        let retries: Vec<u64> = self
            .catchup
            .follow_up_retry
            .iter()
            .filter(|(_, r)| r.due_ms <= now_ms)
            .map(|(t, _)| *t)
            .collect();
        for tag in retries {
            out.extend(self.request_catchup(tag, now_ms));
            if let Some(r) = self.catchup.follow_up_retry.get_mut(&tag) {
                r.attempts += 1;
                r.due_ms = now_ms.saturating_add(FOLLOW_UP_RETRY_MS);
                if r.attempts >= MAX_FOLLOW_UP_RETRIES {
                    self.catchup.follow_up_retry.remove(&tag);
                }
            }
        }
        if self.catchup.next_periodic.is_some_and(|t| t <= now_ms) {
            let tags: Vec<u64> = self.tags.iter().copied().collect();
            self.catchup.queue_round(tags);
            self.catchup.next_periodic = Some(jittered(&self.config, now_ms));
        }
        out.extend(self.drain_round(now_ms));
        self.counters.published += out.len() as u64;
        out
    }

    /// When [`Replica::on_tick`] has work next (None before the first call with a time).
    pub fn next_wake_ms(&self) -> Option<u64> {
        let gaps = self.catchup.gap_due.values().copied();
        let expiries = self.catchup.outstanding.values().map(|o| o.expires_ms);
        let retries = self.catchup.follow_up_retry.values().map(|r| r.due_ms);
        let round = (!self.catchup.round.is_empty()).then_some(self.catchup.next_round_ms);
        self.catchup
            .next_periodic
            .into_iter()
            .chain(gaps)
            .chain(expiries)
            .chain(retries)
            .chain(round)
            .min()
    }
}
