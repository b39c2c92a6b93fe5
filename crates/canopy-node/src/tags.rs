//! Tags for raw multicasts (benchmarks, the hostile suite): what routers filter on.
//!
//! Application keys never use this: a replica tags a key with `canopy_kv::tag_of`, keyed
//! with the group's tag secret that routers do not hold. These tags are keyed only with the
//! cluster's name, so anyone who knows it can compute them; they carry no application key.

use canopy_tree::KeyTag;

/// The tag of `name` for raw multicasts in `cluster`: HMAC-SHA256 keyed with the cluster
/// name (stable across builds and platforms, never the broadcast tag).
pub fn key_tag(cluster: &str, name: &str) -> KeyTag {
    canopy_kv::channel_tag(cluster.as_bytes(), name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use canopy_tree::BROADCAST_TAG;

    #[test]
    fn tags_differ_by_name_and_cluster_and_are_stable() {
        assert_eq!(key_tag("c", "a"), key_tag("c", "a"));
        assert_ne!(key_tag("c", "a"), key_tag("c", "b"));
        assert_ne!(key_tag("c", "a"), key_tag("d", "a"));
        assert_ne!(key_tag("c", "a"), BROADCAST_TAG);
    }
}
