//! Unicasts readable only by their addressee (catch-up answers).
//!
//! The requester puts an X25519 public key (`reply_key`) in its signed request and keeps the
//! secret. A responder makes a fresh X25519 key, agrees a shared secret with the reply key,
//! derives an AES-256-GCM key with HKDF-SHA256 (salt = request id, big-endian; info =
//! `"canopy-kv-unicast"`) and seals with a random nonce and aad = `to || request_id`. Routers
//! and other clients (even ones subscribed to the addressee's unicast tag, even ones holding
//! the group keys) see only ciphertext.
//!
//! x25519-dalek rather than ring here: ring's X25519 private keys are single-use
//! (`EphemeralPrivateKey`), and a request's reply key must open every answer to it.

use bytes::Bytes;
use canopy_proto::v1::SealedUnicast;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hkdf;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::random::Entropy;
use crate::seal::NONCE_LEN;

const INFO: &[u8] = b"canopy-kv-unicast";

fn aead_key(shared: &[u8; 32], request_id: u64) -> Option<LessSafeKey> {
    let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, &request_id.to_be_bytes());
    let prk = salt.extract(shared);
    let okm = prk.expand(&[INFO], &AES_256_GCM).ok()?;
    Some(LessSafeKey::new(UnboundKey::from(okm)))
}

fn aad(to: u64, request_id: u64) -> [u8; 16] {
    let mut aad = [0u8; 16];
    aad[..8].copy_from_slice(&to.to_be_bytes());
    aad[8..].copy_from_slice(&request_id.to_be_bytes());
    aad
}

/// A fresh X25519 secret from `rng`.
pub fn new_secret(rng: &dyn Entropy) -> Option<StaticSecret> {
    let mut bytes = [0u8; 32];
    rng.fill(&mut bytes).ok()?;
    Some(StaticSecret::from(bytes))
}

/// Seals `plaintext` to `reply_key` (32 bytes). `None` if the reply key is unusable (wrong
/// length, or a low-order point that would give a predictable shared secret) or the RNG fails.
pub fn seal_to(
    rng: &dyn Entropy,
    to: u64,
    request_id: u64,
    reply_key: &[u8],
    plaintext: &[u8],
) -> Option<SealedUnicast> {
    let reply: [u8; 32] = reply_key.try_into().ok()?;
    let ephemeral = new_secret(rng)?;
    let shared = ephemeral.diffie_hellman(&PublicKey::from(reply));
    if !shared.was_contributory() {
        return None;
    }
    let key = aead_key(shared.as_bytes(), request_id)?;
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce).ok()?;
    let mut sealed = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad(to, request_id)),
        &mut sealed,
    )
    .ok()?;
    Some(SealedUnicast {
        to,
        request_id,
        ephemeral_key: Bytes::copy_from_slice(PublicKey::from(&ephemeral).as_bytes()),
        nonce: Bytes::copy_from_slice(&nonce),
        sealed: sealed.into(),
    })
}

/// Opens a unicast with the reply secret kept for its request; `None` if it does not open.
pub fn open_with(secret: &StaticSecret, unicast: &SealedUnicast) -> Option<Vec<u8>> {
    let ephemeral: [u8; 32] = unicast.ephemeral_key.as_ref().try_into().ok()?;
    let shared = secret.diffie_hellman(&PublicKey::from(ephemeral));
    if !shared.was_contributory() {
        return None;
    }
    let key = aead_key(shared.as_bytes(), unicast.request_id)?;
    let nonce = Nonce::try_assume_unique_for_key(&unicast.nonce).ok()?;
    let mut buf = unicast.sealed.to_vec();
    let len = key
        .open_in_place(
            nonce,
            Aad::from(aad(unicast.to, unicast.request_id)),
            &mut buf,
        )
        .ok()?
        .len();
    buf.truncate(len);
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SystemEntropy;

    #[test]
    fn only_the_reply_secret_opens() {
        let rng = SystemEntropy::new();
        let mine = new_secret(&rng).expect("secret");
        let theirs = new_secret(&rng).expect("secret");
        let reply = PublicKey::from(&mine);
        let u = seal_to(&rng, 5, 77, reply.as_bytes(), b"answer").expect("seal");
        assert_eq!(open_with(&mine, &u).as_deref(), Some(&b"answer"[..]));
        assert!(open_with(&theirs, &u).is_none());
        let mut other = u.clone();
        other.to = 6;
        assert!(open_with(&mine, &other).is_none());
        let mut other = u.clone();
        other.request_id = 78;
        assert!(open_with(&mine, &other).is_none());
        // A low-order reply key is refused rather than sealed under a guessable key.
        assert!(seal_to(&rng, 5, 77, &[0u8; 32], b"x").is_none());
        assert!(seal_to(&rng, 5, 77, &[1u8; 31], b"x").is_none());
    }
}
