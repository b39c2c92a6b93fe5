//! The crate's errors: write and storage failures ([`KvError`]) and key-file problems
//! ([`KeyFileError`]). Rejected incoming records are not errors: they are counted by reason in
//! [`crate::ReplicaCounters`].

use std::path::PathBuf;

/// Why a local operation (open, write, read, subscribe) failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// Keys must not be empty.
    #[error("empty key")]
    EmptyKey,
    /// The key is longer than `ReplicaConfig::max_key_len` bytes.
    #[error("key too large: {len} bytes (at most {max})")]
    KeyTooLarge {
        /// The key's length in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The value is longer than `ReplicaConfig::max_value_len` bytes.
    #[error("value too large: {len} bytes (at most {max})")]
    ValueTooLarge {
        /// The value's length in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The store (sled) failed.
    #[error("storage: {0}")]
    Storage(String),
    /// An entry read back from the store does not decode.
    #[error("corrupt entry in store tree {tree}: {reason}")]
    Corrupt {
        /// The sled tree holding the entry.
        tree: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The credentials could not sign.
    #[error("signing failed: {0}")]
    Signing(String),
    /// The group key material has no current data key, or the system RNG failed.
    #[error("crypto: {0}")]
    Crypto(String),
}

impl From<sled::Error> for KvError {
    fn from(e: sled::Error) -> Self {
        KvError::Storage(e.to_string())
    }
}

/// Why a group key file could not be read or written. Every variant names the file; the
/// content errors also name the offending key.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file may be read by group or others: group keys must be private to the node.
    #[error("{}: readable by group or others (mode {mode:o}); run `chmod 600` on it", path.display())]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not valid TOML, or a key of the wrong type.
    #[error("{}: {reason}", path.display())]
    Parse {
        /// The key file.
        path: PathBuf,
        /// The TOML parser's message.
        reason: String,
    },
    /// A required key is absent.
    #[error("{}: missing key `{key}`", path.display())]
    Missing {
        /// The key file.
        path: PathBuf,
        /// The missing key (e.g. `tag_secret`, `data_keys[1].key`).
        key: String,
    },
    /// A secret is not hex.
    #[error("{}: `{key}` is not hex", path.display())]
    BadHex {
        /// The key file.
        path: PathBuf,
        /// The offending key.
        key: String,
    },
    /// A secret is not 32 bytes.
    #[error("{}: `{key}` is {len} bytes, expected 32 (64 hex digits)", path.display())]
    WrongLength {
        /// The key file.
        path: PathBuf,
        /// The offending key.
        key: String,
        /// Its decoded length.
        len: usize,
    },
    /// `current` names no entry of `data_keys`.
    #[error("{}: `current` = {current} is not the id of any `data_keys` entry", path.display())]
    UnknownCurrent {
        /// The key file.
        path: PathBuf,
        /// The value of `current`.
        current: u32,
    },
    /// Two `data_keys` entries share an id.
    #[error("{}: `data_keys` has id {id} twice", path.display())]
    DuplicateId {
        /// The key file.
        path: PathBuf,
        /// The repeated id.
        id: u32,
    },
    /// The system RNG failed while generating keys.
    #[error("system random number generator failed")]
    Random,
}
