//! Sealing record bodies: AES-256-GCM under a group data key, with associated data that binds
//! the ciphertext to its header, so a sealed body cannot be moved under another origin, tag,
//! sequence number, chain position or key id.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

/// Length of an AES-GCM nonce.
pub const NONCE_LEN: usize = 12;

/// Domain separation for the record AAD.
const RECORD_CONTEXT: &[u8] = b"canopy-kv-record\0";

/// The associated data of a record: an explicit big-endian concatenation (not the protobuf
/// encoding, which has more than one valid form).
pub fn record_aad(
    origin: u64,
    key_tag: u64,
    origin_seq: u64,
    tag_seq: u64,
    prev_hash: &[u8],
    key_id: u32,
) -> Vec<u8> {
    let mut aad = Vec::with_capacity(RECORD_CONTEXT.len() + 8 * 4 + 4 + prev_hash.len() + 4);
    aad.extend_from_slice(RECORD_CONTEXT);
    aad.extend_from_slice(&origin.to_be_bytes());
    aad.extend_from_slice(&key_tag.to_be_bytes());
    aad.extend_from_slice(&origin_seq.to_be_bytes());
    aad.extend_from_slice(&tag_seq.to_be_bytes());
    aad.extend_from_slice(&(prev_hash.len() as u32).to_be_bytes());
    aad.extend_from_slice(prev_hash);
    aad.extend_from_slice(&key_id.to_be_bytes());
    aad
}

fn key(secret: &[u8]) -> Option<LessSafeKey> {
    UnboundKey::new(&AES_256_GCM, secret)
        .ok()
        .map(LessSafeKey::new)
}

/// AES-256-GCM seal; `None` only for a key of the wrong length.
pub fn seal(
    secret: &[u8],
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Option<Vec<u8>> {
    let key = key(secret)?;
    let mut buf = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut buf,
    )
    .ok()?;
    Some(buf)
}

/// AES-256-GCM open; `None` if anything (key, nonce, aad, ciphertext, tag) does not match.
pub fn open(secret: &[u8], nonce: &[u8], aad: &[u8], ciphertext: &[u8]) -> Option<Vec<u8>> {
    let key = key(secret)?;
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buf = ciphertext.to_vec();
    let len = key
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .ok()?
        .len();
    buf.truncate(len);
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_opens_only_with_the_same_key_nonce_and_aad() {
        let k = [7u8; 32];
        let n = [1u8; NONCE_LEN];
        let aad = record_aad(1, 2, 3, 4, &[9; 32], 1);
        let c = seal(&k, n, &aad, b"hello").expect("seal");
        assert_eq!(open(&k, &n, &aad, &c).as_deref(), Some(&b"hello"[..]));
        assert!(open(&[8u8; 32], &n, &aad, &c).is_none());
        assert!(open(&k, &[2u8; NONCE_LEN], &aad, &c).is_none());
        assert!(open(&k, &n, &record_aad(1, 2, 3, 5, &[9; 32], 1), &c).is_none());
        assert!(open(&k, &n[..11], &aad, &c).is_none());
        let mut flipped = c.clone();
        flipped[0] ^= 1;
        assert!(open(&k, &n, &aad, &flipped).is_none());
    }
}
