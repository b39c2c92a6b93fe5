//! Who a node is: cluster, node id, role and region, as named by its certificate.
//!
//! The textual forms here are the certificate's subject alternative names: the DNS SAN
//! [`Identity::server_name`] (dialled as the TLS server name) and the URI SAN
//! [`Identity::uri`] (carrying role and region). Both are canonical: parsing a name and
//! printing it again gives the same string, which is how [`crate::parse_identity`] rejects
//! look-alike encodings.

use std::fmt;
use std::str::FromStr;

/// A node's id, unique within a cluster.
pub type NodeId = u64;

/// Scheme and authority prefix of the URI SAN.
const URI_PREFIX: &str = "canopy://";
/// Suffix of the DNS SAN.
const DNS_SUFFIX: &str = ".canopy";
/// Longest cluster name: one DNS label.
const MAX_CLUSTER_LEN: usize = 63;
/// Longest region name.
const MAX_REGION_LEN: usize = 64;

/// The role a certificate allows its holder to act in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertRole {
    /// A member of the Raft group whose leader is the root router.
    RootCandidate,
    /// An inner tree node: forwards, never reads payloads.
    Router,
    /// A leaf: publishes, receives, keeps a KV replica.
    Client,
    /// An operator tool (status, certificate management).
    Admin,
}

impl CertRole {
    /// Every role, in a stable order.
    pub const ALL: [CertRole; 4] = [
        CertRole::RootCandidate,
        CertRole::Router,
        CertRole::Client,
        CertRole::Admin,
    ];

    /// The role's name as it appears in the certificate URI SAN.
    pub fn as_str(&self) -> &'static str {
        match self {
            CertRole::RootCandidate => "root-candidate",
            CertRole::Router => "router",
            CertRole::Client => "client",
            CertRole::Admin => "admin",
        }
    }
}

impl fmt::Display for CertRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of [`CertRole::as_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?} (expected root-candidate, router, client or admin)")]
pub struct UnknownRole(pub String);

impl FromStr for CertRole {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CertRole::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// A node's identity. On a live link it comes only from the peer's verified certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Cluster name: one lowercase DNS label.
    pub cluster: String,
    /// Node id within the cluster.
    pub node_id: NodeId,
    /// What the node may act as.
    pub role: CertRole,
    /// Deployment region (may be empty).
    pub region: String,
}

impl Identity {
    /// The DNS SAN and TLS server name: `<node_id>.<cluster>.canopy`.
    pub fn server_name(&self) -> String {
        server_name_for(&self.cluster, self.node_id)
    }

    /// The URI SAN: `canopy://<cluster>/<role>/<node_id>?region=<region>`.
    pub fn uri(&self) -> String {
        format!(
            "{URI_PREFIX}{}/{}/{}?region={}",
            self.cluster, self.role, self.node_id, self.region
        )
    }

    /// Parses a URI SAN as produced by [`Identity::uri`]; only the canonical form is accepted.
    pub fn from_uri(uri: &str) -> Result<Identity, String> {
        let rest = uri
            .strip_prefix(URI_PREFIX)
            .ok_or_else(|| format!("URI {uri:?} does not start with {URI_PREFIX}"))?;
        let (path, query) = rest
            .split_once('?')
            .ok_or_else(|| format!("URI {uri:?} has no region"))?;
        let region = query
            .strip_prefix("region=")
            .ok_or_else(|| format!("URI {uri:?}: query must be region=<region>"))?;
        let mut parts = path.split('/');
        let (Some(cluster), Some(role), Some(node), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "URI {uri:?}: path must be <cluster>/<role>/<node_id>"
            ));
        };
        let node_id: NodeId = node
            .parse()
            .map_err(|_| format!("URI {uri:?}: node id {node:?} is not a u64"))?;
        let role: CertRole = role.parse().map_err(|e: UnknownRole| e.to_string())?;
        let identity = Identity {
            cluster: cluster.to_owned(),
            node_id,
            role,
            region: region.to_owned(),
        };
        identity.validate()?;
        if identity.uri() != uri {
            return Err(format!("URI {uri:?} is not in canonical form"));
        }
        Ok(identity)
    }

    /// Checks that every field can be carried in the certificate names unambiguously.
    pub fn validate(&self) -> Result<(), String> {
        // 0 means "unknown" on the wire (e.g. a redirect without a leader hint).
        if self.node_id == 0 {
            return Err("node id 0 is reserved".into());
        }
        validate_cluster(&self.cluster)?;
        validate_region(&self.region)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} of {} (region {:?})",
            self.role, self.node_id, self.cluster, self.region
        )
    }
}

/// The TLS server name (and DNS SAN) of node `node` in `cluster`: `<node>.<cluster>.canopy`.
pub fn server_name_for(cluster: &str, node: NodeId) -> String {
    format!("{node}.{cluster}{DNS_SUFFIX}")
}

/// A cluster name is one lowercase DNS label: `[a-z0-9-]`, 1 to 63 characters, no hyphen at
/// either end.
pub fn validate_cluster(cluster: &str) -> Result<(), String> {
    let ok_chars = cluster
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if cluster.is_empty()
        || cluster.len() > MAX_CLUSTER_LEN
        || !ok_chars
        || cluster.starts_with('-')
        || cluster.ends_with('-')
    {
        return Err(format!(
            "invalid cluster name {cluster:?}: use 1-{MAX_CLUSTER_LEN} of [a-z0-9-], \
             not starting or ending with '-'"
        ));
    }
    Ok(())
}

/// A region is up to 64 characters of `[A-Za-z0-9._-]` (empty allowed).
pub fn validate_region(region: &str) -> Result<(), String> {
    let ok_chars = region
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if region.len() > MAX_REGION_LEN || !ok_chars {
        return Err(format!(
            "invalid region {region:?}: use up to {MAX_REGION_LEN} of [A-Za-z0-9._-]"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Identity {
        Identity {
            cluster: "prod-1".into(),
            node_id: 42,
            role: CertRole::RootCandidate,
            region: "eu-west_1".into(),
        }
    }

    #[test]
    fn names() {
        let id = sample();
        assert_eq!(id.server_name(), "42.prod-1.canopy");
        assert_eq!(
            id.uri(),
            "canopy://prod-1/root-candidate/42?region=eu-west_1"
        );
        assert_eq!(Identity::from_uri(&id.uri()), Ok(id));
    }

    #[test]
    fn roles_round_trip() {
        for role in CertRole::ALL {
            assert_eq!(role.as_str().parse::<CertRole>(), Ok(role));
        }
        assert!("Router".parse::<CertRole>().is_err());
    }

    #[test]
    fn rejects_non_canonical_uris() {
        for bad in [
            "canopy://prod-1/router/+42?region=eu",
            "canopy://prod-1/router/042?region=eu",
            "canopy://prod-1/router/42",
            "canopy://prod-1/router/42?region=eu&x=1",
            "canopy://prod-1/router/42/x?region=eu",
            "canopy://Prod/router/42?region=eu",
            "canopy://prod-1/boss/42?region=eu",
            "https://prod-1/router/42?region=eu",
            "canopy://prod-1/router/42?region=e/u",
        ] {
            assert!(Identity::from_uri(bad).is_err(), "{bad}");
        }
    }
}
