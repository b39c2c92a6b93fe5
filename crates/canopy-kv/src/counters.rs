//! What the replica did and refused, by reason. Plain numbers: the node prints them and tests
//! assert them.

/// Why an incoming record, request or unicast was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// Did not decode, or a field has an impossible form.
    Malformed,
    /// The signer (or a live multicast's origin) is not the claimed origin / requester.
    ForgedOrigin,
    /// The record is not for the tag it arrived on (tree tag, header tag and key disagree).
    WrongTag,
    /// The attached certificate does not match its digest, does not chain to the CA, is not
    /// valid now, or is not a client's.
    BadCertificate,
    /// The signature does not verify.
    BadSignature,
    /// A live multicast of a record already held (same header).
    Replay,
    /// A record already held arrived again through catch-up (normal overlap between answers).
    Duplicate,
    /// A different record at a held chain position (equivocation), or a prev_hash that does not
    /// link to the held head.
    ChainBreak,
    /// The body or a unicast does not open.
    BadSeal,
    /// Sealed with a data key id this node does not hold (not stored: it can be fetched again
    /// once the key file is updated).
    UnknownKey,
    /// On a tag this replica does not subscribe to.
    NotSubscribed,
    /// A catch-up request issued too far from now.
    StaleRequest,
    /// A catch-up request over the per-requester answer rate, or from a requester that already
    /// holds its share of the replay filter.
    RateLimited,
    /// A record larger than this replica's key and value limits allow (checked on the sealed
    /// size before any signature check or AEAD open, and on the opened key and value).
    TooLarge,
    /// A record whose clock is more than `MAX_FORWARD_DRIFT_MS` ahead of the local wall clock
    /// (not stored: it can be fetched again by catch-up once it is no longer in the future).
    FutureClock,
    /// A catch-up request refused because the replay filter is full of requests still within
    /// the accepted skew (refused rather than evicting entries that would re-admit replays).
    ReplayFilterFull,
}

/// Counters of a replica (see [`Reject`] for the rejection reasons).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplicaCounters {
    pub malformed: u64,
    pub forged_origin: u64,
    pub wrong_tag: u64,
    pub bad_certificate: u64,
    /// Records parked because their signer's certificate was unknown (a catch-up follows).
    pub unknown_signer: u64,
    pub bad_signature: u64,
    pub replay: u64,
    pub duplicate: u64,
    pub chain_break: u64,
    pub bad_seal: u64,
    pub unknown_key: u64,
    pub not_subscribed: u64,
    pub stale_request: u64,
    pub rate_limited: u64,
    pub too_large: u64,
    pub future_clock: u64,
    pub replay_filter_full: u64,
    /// Records parked behind a gap in their chain.
    pub parked: u64,
    /// Records dropped because their waiting space was full: parked behind a gap (the gap is
    /// still asked for), or waiting for an unknown signer (bounded by count and bytes).
    pub parked_dropped: u64,
    /// Records stored and merged (local writes included).
    pub applied: u64,
    /// Changes reported to the application.
    pub changes_emitted: u64,
    /// Publishes returned to the driver.
    pub published: u64,
    pub catchup_requests_sent: u64,
    pub catchup_requests_received: u64,
    pub catchup_requests_answered: u64,
    pub catchup_records_sent: u64,
    pub catchup_answers_opened: u64,
    /// Records applied from catch-up answers.
    pub records_recovered: u64,
    /// Store failures while applying received records.
    pub storage_errors: u64,
}

impl ReplicaCounters {
    pub(crate) fn reject(&mut self, reason: Reject) {
        let c = match reason {
            Reject::Malformed => &mut self.malformed,
            Reject::ForgedOrigin => &mut self.forged_origin,
            Reject::WrongTag => &mut self.wrong_tag,
            Reject::BadCertificate => &mut self.bad_certificate,
            Reject::BadSignature => &mut self.bad_signature,
            Reject::Replay => &mut self.replay,
            Reject::Duplicate => &mut self.duplicate,
            Reject::ChainBreak => &mut self.chain_break,
            Reject::BadSeal => &mut self.bad_seal,
            Reject::UnknownKey => &mut self.unknown_key,
            Reject::NotSubscribed => &mut self.not_subscribed,
            Reject::StaleRequest => &mut self.stale_request,
            Reject::RateLimited => &mut self.rate_limited,
            Reject::TooLarge => &mut self.too_large,
            Reject::FutureClock => &mut self.future_clock,
            Reject::ReplayFilterFull => &mut self.replay_filter_full,
        };
        *c += 1;
    }

    /// Sum of every rejection counter.
    pub fn rejected(&self) -> u64 {
        self.malformed
            + self.forged_origin
            + self.wrong_tag
            + self.bad_certificate
            + self.bad_signature
            + self.replay
            + self.duplicate
            + self.chain_break
            + self.bad_seal
            + self.unknown_key
            + self.not_subscribed
            + self.stale_request
            + self.rate_limited
            + self.too_large
            + self.future_clock
            + self.replay_filter_full
    }
}
