//! Group key material: the tag secret and the data keys, in a TOML file only client nodes hold.
//!
//! ```toml
//! # Canopy group key material: only client nodes hold this file.
//! tag_secret = "<64 hex>"
//! current = 2
//! [[data_keys]]
//! id = 1
//! key = "<64 hex>"
//! ```
//!
//! Records are sealed with the `current` data key and name its id, so rotating adds a key and
//! makes it current while the old ones stay to open old records. The tag secret never rotates:
//! every key tag is derived from it, so changing it would move every channel to a new tag and
//! split the group between nodes holding the old and the new file.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::Path;

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::error::KeyFileError;

/// Length of every secret (tag secret and data keys): 256 bits.
pub const SECRET_LEN: usize = 32;

/// The group's secrets: a tag secret and data keys by id.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupKeys {
    tag_secret: [u8; SECRET_LEN],
    current: u32,
    data_keys: BTreeMap<u32, [u8; SECRET_LEN]>,
}

impl fmt::Debug for GroupKeys {
    // Never print secrets (they end up in logs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupKeys")
            .field("current", &self.current)
            .field("data_key_ids", &self.data_keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    tag_secret: Option<String>,
    current: Option<u32>,
    #[serde(default)]
    data_keys: Vec<DataKeyEntry>,
}

#[derive(Serialize, Deserialize)]
struct DataKeyEntry {
    id: Option<u32>,
    key: Option<String>,
}

impl GroupKeys {
    /// Fresh key material from the system RNG: a tag secret and data key 1.
    pub fn generate() -> Result<GroupKeys, KeyFileError> {
        let rng = SystemRandom::new();
        let mut tag_secret = [0u8; SECRET_LEN];
        let mut key = [0u8; SECRET_LEN];
        rng.fill(&mut tag_secret)
            .map_err(|_| KeyFileError::Random)?;
        rng.fill(&mut key).map_err(|_| KeyFileError::Random)?;
        Ok(GroupKeys::from_parts(tag_secret, [(1, key)]))
    }

    /// Key material from known secrets (tests, vectors); the highest id is current.
    pub fn from_parts(
        tag_secret: [u8; SECRET_LEN],
        data_keys: impl IntoIterator<Item = (u32, [u8; SECRET_LEN])>,
    ) -> GroupKeys {
        let data_keys: BTreeMap<_, _> = data_keys.into_iter().collect();
        let current = data_keys.keys().next_back().copied().unwrap_or(0);
        GroupKeys {
            tag_secret,
            current,
            data_keys,
        }
    }

    /// Adds a new data key (id one above the highest) and makes it current; returns its id.
    /// Old keys stay so records sealed with them still open.
    pub fn rotate(&mut self) -> Result<u32, KeyFileError> {
        let mut key = [0u8; SECRET_LEN];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| KeyFileError::Random)?;
        let id = self
            .data_keys
            .keys()
            .next_back()
            .map_or(1, |id| id.saturating_add(1));
        self.data_keys.insert(id, key);
        self.current = id;
        Ok(id)
    }

    /// The tag secret.
    pub(crate) fn tag_secret(&self) -> &[u8; SECRET_LEN] {
        &self.tag_secret
    }

    /// The id of the data key new records are sealed with.
    pub fn current_key_id(&self) -> u32 {
        self.current
    }

    /// Ids of every data key held.
    pub fn key_ids(&self) -> Vec<u32> {
        self.data_keys.keys().copied().collect()
    }

    /// The data key `id`, if held.
    pub(crate) fn data_key(&self, id: u32) -> Option<&[u8; SECRET_LEN]> {
        self.data_keys.get(&id)
    }

    /// Reads a key file. Refuses a file readable by group or others.
    pub fn load(path: &Path) -> Result<GroupKeys, KeyFileError> {
        let io = |source| KeyFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyFileError::Permissions {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        GroupKeys::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<GroupKeys, KeyFileError> {
        let p = || path.to_path_buf();
        let file: KeyFile = toml::from_str(text).map_err(|e| KeyFileError::Parse {
            path: p(),
            reason: e.to_string(),
        })?;
        let secret = |key: String, value: Option<String>| {
            let value = value.ok_or_else(|| KeyFileError::Missing {
                path: p(),
                key: key.clone(),
            })?;
            let bytes = decode_hex(value.trim()).ok_or_else(|| KeyFileError::BadHex {
                path: p(),
                key: key.clone(),
            })?;
            <[u8; SECRET_LEN]>::try_from(bytes.as_slice()).map_err(|_| KeyFileError::WrongLength {
                path: p(),
                key,
                len: bytes.len(),
            })
        };
        let tag_secret = secret("tag_secret".into(), file.tag_secret)?;
        let current = file.current.ok_or_else(|| KeyFileError::Missing {
            path: p(),
            key: "current".into(),
        })?;
        if file.data_keys.is_empty() {
            return Err(KeyFileError::Missing {
                path: p(),
                key: "data_keys".into(),
            });
        }
        let mut data_keys = BTreeMap::new();
        for (i, entry) in file.data_keys.into_iter().enumerate() {
            let id = entry.id.ok_or_else(|| KeyFileError::Missing {
                path: p(),
                key: format!("data_keys[{i}].id"),
            })?;
            let key = secret(format!("data_keys[{i}].key"), entry.key)?;
            if data_keys.insert(id, key).is_some() {
                return Err(KeyFileError::DuplicateId { path: p(), id });
            }
        }
        if !data_keys.contains_key(&current) {
            return Err(KeyFileError::UnknownCurrent { path: p(), current });
        }
        Ok(GroupKeys {
            tag_secret,
            current,
            data_keys,
        })
    }

    /// Writes the key file, created with mode 0600 from the start (never world-readable, not
    /// even between create and chmod), replacing `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), KeyFileError> {
        let file = KeyFile {
            tag_secret: Some(encode_hex(&self.tag_secret)),
            current: Some(self.current),
            data_keys: self
                .data_keys
                .iter()
                .map(|(id, key)| DataKeyEntry {
                    id: Some(*id),
                    key: Some(encode_hex(key)),
                })
                .collect(),
        };
        let body = toml::to_string(&file).map_err(|e| KeyFileError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let text =
            format!("# Canopy group key material: only client nodes hold this file.\n{body}");
        let io = |source| KeyFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        assert_eq!(
            decode_hex(&encode_hex(&[0, 1, 0xab, 0xff])),
            Some(vec![0, 1, 0xab, 0xff])
        );
        assert_eq!(decode_hex("abc"), None);
        assert_eq!(decode_hex("zz"), None);
        assert_eq!(decode_hex("é1"), None);
    }
}
