//! Key tags: what routers see of a key.
//!
//! A key's channel is the key up to and including its first `/` (the whole key if it has
//! none). Its tag is the first 8 bytes (big-endian) of HMAC-SHA256(tag secret,
//! `"canopy-kv-tag\0" || channel`): keyed, so a router without the group secret cannot guess
//! which channel a tag stands for, and a fixed function of bytes, so every build and platform
//! agrees on it. Tag 0 is the tree's broadcast tag and is never produced (0 maps to 1).

use ring::hmac;

use crate::keys::GroupKeys;

/// Domain separation for the tag HMAC.
const TAG_CONTEXT: &[u8] = b"canopy-kv-tag\0";

/// The channel of `key`: up to and including the first `/`, else the whole key.
pub fn channel_of(key: &str) -> &str {
    match key.find('/') {
        Some(i) => &key[..=i],
        None => key,
    }
}

/// The tag of a channel under a tag secret.
pub fn channel_tag(tag_secret: &[u8], channel: &str) -> u64 {
    let key = hmac::Key::new(hmac::HMAC_SHA256, tag_secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(TAG_CONTEXT);
    ctx.update(channel.as_bytes());
    let mac = ctx.sign();
    let mut first = [0u8; 8];
    first.copy_from_slice(&mac.as_ref()[..8]);
    match u64::from_be_bytes(first) {
        0 => 1,
        tag => tag,
    }
}

/// The tag of `key` (of its channel) under the group's tag secret.
pub fn tag_of(keys: &GroupKeys, key: &str) -> u64 {
    channel_tag(keys.tag_secret(), channel_of(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels() {
        assert_eq!(channel_of("users/alice"), "users/");
        assert_eq!(channel_of("users/alice/x"), "users/");
        assert_eq!(channel_of("flat"), "flat");
        assert_eq!(channel_of("/x"), "/");
    }
}
