//! The replica's only source of randomness (nonces, request ids, X25519 secrets, jitter):
//! injected, so tests can be deterministic while production uses the OS RNG.

use ring::rand::SecureRandom;

/// The random source failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("random source failed")]
pub struct EntropyError;

/// A source of random bytes. Production must use a cryptographic RNG ([`SystemEntropy`]):
/// AES-GCM nonces and X25519 secrets come from it.
pub trait Entropy: Send + Sync {
    /// Fills `dest`; `Err` if the source failed.
    fn fill(&self, dest: &mut [u8]) -> Result<(), EntropyError>;
}

/// The operating system's RNG (ring's `SystemRandom`).
#[derive(Debug)]
pub struct SystemEntropy(ring::rand::SystemRandom);

impl Default for SystemEntropy {
    fn default() -> Self {
        SystemEntropy::new()
    }
}

impl SystemEntropy {
    /// The OS RNG.
    pub fn new() -> SystemEntropy {
        SystemEntropy(ring::rand::SystemRandom::new())
    }
}

impl Entropy for SystemEntropy {
    fn fill(&self, dest: &mut [u8]) -> Result<(), EntropyError> {
        self.0.fill(dest).map_err(|_| EntropyError)
    }
}
