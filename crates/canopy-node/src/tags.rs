//! Key tags: what routers see of an application key.

use std::hash::{Hash, Hasher};

use canopy_tree::{KeyTag, BROADCAST_TAG};

/// The tag of `key` in `cluster`: an opaque hash, so routers filter on it without learning
/// the key. (The KV layer will key this hash with the group's data key.)
pub fn key_tag(cluster: &str, key: &str) -> KeyTag {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    "canopy-key-tag".hash(&mut hasher);
    cluster.hash(&mut hasher);
    key.hash(&mut hasher);
    match hasher.finish() {
        BROADCAST_TAG => 1,
        tag => tag,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_differ_by_key_and_cluster_and_are_stable() {
        assert_eq!(key_tag("c", "a"), key_tag("c", "a"));
        assert_ne!(key_tag("c", "a"), key_tag("c", "b"));
        assert_ne!(key_tag("c", "a"), key_tag("d", "a"));
        assert_ne!(key_tag("c", "a"), BROADCAST_TAG);
    }
}
