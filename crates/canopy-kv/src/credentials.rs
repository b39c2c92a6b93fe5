//! Who signs: the [`Credentials`] the driver supplies (the node's certificate and key, and the
//! cluster CA check), the [`Signer`] a checked certificate yields, and the replica's cache of
//! checked certificates so the CA check runs once per certificate, not once per record.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ED25519};

/// The signature algorithm of a certificate key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureAlgorithm {
    /// Ed25519; the public key is the 32 raw bytes.
    Ed25519,
    /// ECDSA P-256 with SHA-256, ASN.1 DER signatures; the public key is the 65-byte
    /// uncompressed point.
    EcdsaP256Sha256,
}

/// A certificate that chains to the cluster CA: whom it names and the key to check their
/// signatures with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The node id the certificate names.
    pub node_id: u64,
    /// Whether the certificate's role is client (only clients write records or ask for them).
    pub is_client: bool,
    /// The key's algorithm.
    pub algorithm: SignatureAlgorithm,
    /// The raw subject public key.
    pub public_key: Vec<u8>,
}

/// The node's own identity and the cluster's trust, as the replica needs them.
///
/// canopy-node implements this over `canopy_net::Authority` (a few lines: see the crate docs).
pub trait Credentials: Send + Sync {
    /// The own node id.
    fn node_id(&self) -> u64;
    /// The own leaf certificate (DER).
    fn certificate(&self) -> &[u8];
    /// Signs `message` with the own certificate's key.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String>;
    /// Checks that a DER certificate chains to the cluster CA and is valid now; `Err` is the
    /// reason it does not.
    fn check_certificate(&self, der: &[u8]) -> Result<Signer, String>;
    /// Whether `signature` over `message` verifies with `signer`'s key. The default checks it
    /// with ring; override it to batch or to use another library.
    fn verify(&self, signer: &Signer, message: &[u8], signature: &[u8]) -> bool {
        verify_signature(signer, message, signature)
    }
}

/// Checks a signature with ring against a signer's raw public key.
pub fn verify_signature(signer: &Signer, message: &[u8], signature: &[u8]) -> bool {
    match signer.algorithm {
        SignatureAlgorithm::Ed25519 => UnparsedPublicKey::new(&ED25519, &signer.public_key)
            .verify(message, signature)
            .is_ok(),
        SignatureAlgorithm::EcdsaP256Sha256 => {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &signer.public_key)
                .verify(message, signature)
                .is_ok()
        }
    }
}

/// SHA-256 of a certificate (DER): how records name their signer.
pub fn cert_digest(der: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Checked certificates by digest, bounded, oldest evicted first. An entry is trusted for
/// `ttl_ms` after its check; after that the certificate is checked again (it may have expired
/// or the CA bundle changed).
pub(crate) struct CertCache {
    map: HashMap<[u8; 32], (Arc<Signer>, u64)>,
    order: VecDeque<[u8; 32]>,
    capacity: usize,
    ttl_ms: u64,
}

impl CertCache {
    pub(crate) fn new(capacity: usize, ttl_ms: u64) -> CertCache {
        CertCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            ttl_ms,
        }
    }

    pub(crate) fn get(&self, digest: &[u8; 32], now_ms: u64) -> Option<Arc<Signer>> {
        let (signer, checked_at) = self.map.get(digest)?;
        (now_ms.saturating_sub(*checked_at) < self.ttl_ms).then(|| signer.clone())
    }

    pub(crate) fn insert(&mut self, digest: [u8; 32], signer: Arc<Signer>, now_ms: u64) {
        if self.map.insert(digest, (signer, now_ms)).is_none() {
            self.order.push_back(digest);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}
