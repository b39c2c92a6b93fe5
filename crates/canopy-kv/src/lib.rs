//! canopy-kv: a client node's replica of Canopy's eventually consistent key-value store.
//!
//! Clients multicast their writes through the tree as records that routers can neither read
//! nor forge: each record's body (key, value, clock) is sealed with the group's data key
//! (AES-256-GCM), its header is signed with the origin's certificate key, and it is linked to
//! the origin's previous record on the same key tag by a SHA-256 hash chain, so receivers
//! detect forgery, replay, reordering and loss. Routers see only the key tag, a keyed hash of
//! the key's channel under a group secret they never hold ([`tag_of`]). Lost records come back
//! through catch-up: a signed request on the tag, answered by any replica that holds the
//! records (they verify themselves) with a unicast only the requester can open.
//!
//! The crate is sans-IO: no sockets, no async runtime, no clock reads. The driver (canopy-node's
//! KV task) feeds it the multicasts the tree delivers and the wall-clock time, and publishes the
//! [`Publish`]es it returns. Randomness comes from the injected [`Entropy`] (the OS RNG in
//! production). It must not depend on tokio, canopy-net, canopy-tree's runtime or the simulator:
//! node ids and key tags are plain `u64`s, the wire types come from canopy-proto, and the
//! node's certificate and the cluster CA come in through the [`Credentials`] trait.
//!
//! Primitives: ring (already in the tree through rustls) for AES-256-GCM, HMAC-SHA256,
//! SHA-256, HKDF and Ed25519 / ECDSA verification; x25519-dalek for the reply keys of catch-up
//! requests, which must open several answers (ring's X25519 keys are single-use).
//!
//! # Implementing [`Credentials`] over `canopy_net::Authority`
//!
//! ```
//! struct NodeCredentials {
//!     id: u64,
//!     authority: canopy_net::Authority,
//! }
//! impl canopy_kv::Credentials for NodeCredentials {
//!     fn node_id(&self) -> u64 { self.id }
//!     fn certificate(&self) -> &[u8] { self.authority.certificate() }
//!     fn sign(&self, m: &[u8]) -> Result<Vec<u8>, String> {
//!         self.authority.sign(m).map_err(|e| e.to_string())
//!     }
//!     fn check_certificate(&self, der: &[u8]) -> Result<canopy_kv::Signer, String> {
//!         let c = self.authority.check_certificate(der).map_err(|e| e.to_string())?;
//!         Ok(canopy_kv::Signer {
//!             node_id: c.identity.node_id,
//!             is_client: c.identity.role == canopy_net::CertRole::Client,
//!             algorithm: match c.algorithm {
//!                 canopy_net::KeyAlgorithm::Ed25519 => canopy_kv::SignatureAlgorithm::Ed25519,
//!                 canopy_net::KeyAlgorithm::EcdsaP256 => canopy_kv::SignatureAlgorithm::EcdsaP256Sha256,
//!             },
//!             public_key: c.public_key,
//!         })
//!     }
//! }
//! ```
//!
//! # Keys, subscriptions and changes
//!
//! A key's channel is its text up to and including the first `/` (the whole key if it has
//! none); all keys of a channel share one tag, so a replica holds whole channels. Subscribe to
//! an exact key, or to a prefix by ending the pattern in `/` (`users/`, `users/alice/`): both
//! subscribe the channel's tag and filter locally. Writers replicate the channels they write to
//! (persisted) so they keep their chains and answer catch-up; that alone reports no changes.
//! [`Replica::drain_changes`] reports each applied record matching a subscription exactly once,
//! local writes included, with `superseded` set when it lost last-writer-wins by
//! (hlc, origin). Deletes are tombstones: [`Replica::get`] and [`Replica::scan`] hide them.
//!
//! # Receiving a record
//!
//! Sizes first (a record that cannot hold a key and value within the configured limits is
//! refused before any other work); decode; the header's origin must equal the multicast's origin (live records) and its tag
//! the multicast's tag; the signer comes from the certificate cache (by SHA-256 digest) or the
//! attached certificate (checked once against the CA, must be a client's and name the origin);
//! the signature must verify; a held chain position is a replay (same header) or a chain break
//! (equivocation); the body must open with the data key it names (an unknown key id is counted
//! and not remembered, so the record can be fetched again after the key file is updated); the
//! key and value inside must be within the limits and the key must map to the header's tag;
//! the clock must be at most [`hlc::MAX_FORWARD_DRIFT_MS`] ahead of the wall clock (a
//! far-future clock is refused and not remembered, so catch-up fetches it again later); then
//! the record applies when it links to the held head, or is parked behind a gap (bounded per
//! origin, tag and in all) until its predecessors arrive. Every refusal is counted by
//! reason in [`ReplicaCounters`].
//!
//! # Durability
//!
//! Local writes are flushed to disk before `put` / `delete` return. Received records are
//! flushed lazily (by [`Replica::on_tick`], or sled's own flush every 500 ms): a crash loses at
//! most the last moments of received records, which catch-up fetches again.

mod catchup;
mod counters;
mod credentials;
mod error;
pub mod hlc;
mod keys;
mod random;
pub mod record;
mod replica;
pub mod seal;
mod store;
mod tag;
mod unicast;

pub use catchup::{
    ANSWERERS, FOLLOW_UP_RETRY_MS, GAP_RETRY_MAX_MS, GAP_RETRY_MS, MAX_ANSWERS_PER_SECOND,
    MAX_FOLLOW_UPS_PER_MINUTE, MAX_FOLLOW_UP_RETRIES, MAX_OUTSTANDING, REQUEST_SKEW_MS,
    REQUEST_TTL_MS, ROUND_BURST, ROUND_PACE_MS,
};
pub use counters::{Reject, ReplicaCounters};
pub use credentials::{cert_digest, verify_signature, Credentials, SignatureAlgorithm, Signer};
pub use error::{KeyFileError, KvError};
pub use keys::{GroupKeys, SECRET_LEN};
pub use random::{Entropy, EntropyError, SystemEntropy};
pub use replica::{Change, Entry, Publish, Replica, ReplicaConfig, Subscribed, WriteOutcome};
pub use tag::{channel_of, channel_tag, tag_of};
