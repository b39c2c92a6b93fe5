//! Records: building one (seal the body, sign the header) and checking one (signature, seal).
//! The chain and replay checks need the replica's state and live in `replica.rs`.
//!
//! What the origin signs is the encoded [`RecordHeader`] exactly as carried; receivers verify
//! those bytes and never re-encode, so prost's encoding choices cannot break signatures. The
//! next record's `prev_hash` is SHA-256 of the same bytes.

use bytes::Bytes;
use canopy_proto::v1::{RecordBody, RecordHeader, SignedRecord};
use prost::Message;

use crate::counters::Reject;
use crate::credentials::{Credentials, Signer};
use crate::error::KvError;
use crate::keys::GroupKeys;
use crate::random::Entropy;
use crate::seal::{self, NONCE_LEN};

/// SHA-256.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Everything of a record but its crypto.
#[derive(Debug, Clone)]
pub struct RecordDraft<'a> {
    pub origin: u64,
    pub key_tag: u64,
    pub origin_seq: u64,
    pub tag_seq: u64,
    /// SHA-256 of the previous header on this (origin, tag) chain; empty for tag_seq 1.
    pub prev_hash: &'a [u8],
    pub body: RecordBody,
    /// SHA-256 of the signer's certificate.
    pub signer_digest: [u8; 32],
    /// Carry the certificate (DER) in the record.
    pub attach_certificate: bool,
}

/// Seals the body with the current data key, signs the header; returns the record and the
/// SHA-256 of its header (the next record's `prev_hash`).
pub fn seal_and_sign(
    draft: &RecordDraft<'_>,
    keys: &GroupKeys,
    credentials: &dyn Credentials,
    rng: &dyn Entropy,
) -> Result<(SignedRecord, [u8; 32]), KvError> {
    let key_id = keys.current_key_id();
    let data_key = keys
        .data_key(key_id)
        .ok_or_else(|| KvError::Crypto(format!("no data key {key_id}")))?;
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce)
        .map_err(|_| KvError::Crypto("random source failed".into()))?;
    let aad = seal::record_aad(
        draft.origin,
        draft.key_tag,
        draft.origin_seq,
        draft.tag_seq,
        draft.prev_hash,
        key_id,
    );
    let sealed_body = seal::seal(data_key, nonce, &aad, &draft.body.encode_to_vec())
        .ok_or_else(|| KvError::Crypto("seal failed".into()))?;
    let header = RecordHeader {
        origin: draft.origin,
        key_tag: draft.key_tag,
        origin_seq: draft.origin_seq,
        tag_seq: draft.tag_seq,
        prev_hash: Bytes::copy_from_slice(draft.prev_hash),
        key_id,
        nonce: Bytes::copy_from_slice(&nonce),
        sealed_body: sealed_body.into(),
        signer_digest: Bytes::copy_from_slice(&draft.signer_digest),
    }
    .encode_to_vec();
    let signature = credentials.sign(&header).map_err(KvError::Signing)?;
    let hash = sha256(&header);
    let header = Bytes::from(header);
    let signer_certificate = if draft.attach_certificate {
        Bytes::copy_from_slice(credentials.certificate())
    } else {
        Bytes::new()
    };
    Ok((
        SignedRecord {
            header,
            signature: signature.into(),
            signer_certificate,
        },
        hash,
    ))
}

/// Decodes a record's header and checks the forms of its fields.
pub fn decode_header(record: &SignedRecord) -> Result<RecordHeader, Reject> {
    let h = RecordHeader::decode(record.header.as_ref()).map_err(|_| Reject::Malformed)?;
    let prev_ok = if h.tag_seq == 1 {
        h.prev_hash.is_empty()
    } else {
        h.prev_hash.len() == 32
    };
    if h.tag_seq == 0
        || h.origin_seq == 0
        || !prev_ok
        || h.nonce.len() != NONCE_LEN
        || h.signer_digest.len() != 32
    {
        return Err(Reject::Malformed);
    }
    Ok(h)
}

/// Whether the record's signature verifies with `signer`'s key.
pub fn verify(record: &SignedRecord, signer: &Signer, credentials: &dyn Credentials) -> bool {
    credentials.verify(signer, &record.header, &record.signature)
}

/// Opens a record's body with the data key it names.
pub fn open_body(header: &RecordHeader, keys: &GroupKeys) -> Result<RecordBody, Reject> {
    let data_key = keys.data_key(header.key_id).ok_or(Reject::UnknownKey)?;
    let aad = seal::record_aad(
        header.origin,
        header.key_tag,
        header.origin_seq,
        header.tag_seq,
        &header.prev_hash,
        header.key_id,
    );
    let plain =
        seal::open(data_key, &header.nonce, &aad, &header.sealed_body).ok_or(Reject::BadSeal)?;
    RecordBody::decode(plain.as_slice()).map_err(|_| Reject::Malformed)
}
