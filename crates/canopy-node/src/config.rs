//! The daemon's TOML configuration. Every error names the file and, where it can, the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use canopy_tree::TreeConfig;

use crate::limits::PeerLimits;
use serde::{Deserialize, Serialize};

/// A configuration that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// A node's whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Where this node accepts tree links, e.g. "127.0.0.1:7401".
    pub listen: SocketAddr,
    /// The node's region (must match its certificate).
    #[serde(default)]
    pub region: String,
    pub tls: TlsConfig,
    /// Every root candidate: how a node finds the root.
    pub root_candidates: Vec<RootCandidateConfig>,
    #[serde(default)]
    pub timers: TimerConfig,
    #[serde(default)]
    pub tree: TreeShapeConfig,
    /// Largest frame accepted on a link, in bytes.
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: usize,
    /// Keys whose multicasts this node wants (clients).
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Raft settings (root candidates only).
    #[serde(default)]
    pub raft: RaftConfig,
    /// Per-peer rate bounds.
    #[serde(default)]
    pub limits: PeerLimits,
    /// The local application API (client nodes).
    #[serde(default)]
    pub api: ApiConfig,
    /// The replica of the key-value store (client nodes).
    #[serde(default)]
    pub kv: KvConfig,
    /// Prometheus metrics over HTTP.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Peers' addresses this node reaches through another address (`[[dial_via]] to = ...,
    /// via = ...`): a NAT's public side, or a relay that emulates a WAN.
    #[serde(default)]
    pub dial_via: Vec<DialVia>,
}

/// Dials to `to` go to `via` instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialVia {
    pub to: SocketAddr,
    pub via: SocketAddr,
}

/// Where a node serves its Prometheus metrics (`GET /metrics`); none by default. Bind it to
/// loopback or a management network: the metrics are not authenticated.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub listen: Option<SocketAddr>,
}

/// Where a client node serves its application API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// The Unix socket (relative to the file); only this user may connect.
    #[serde(default = "default_api_socket")]
    pub socket: PathBuf,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            socket: default_api_socket(),
        }
    }
}

/// The socket a client node serves its API on when `[api] socket` is not given; the CLI
/// uses the same default.
pub fn default_api_socket() -> PathBuf {
    PathBuf::from("api.sock")
}

/// A client node's replica of the key-value store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvConfig {
    /// Where the replica keeps its records and values (sled; relative to the file).
    #[serde(default = "default_kv_dir")]
    pub data_dir: PathBuf,
    /// The group key file (`canopy keys init`). Client nodes need it; routers and root
    /// candidates must not have it, so they cannot read what they forward.
    #[serde(default)]
    pub group_keys: Option<PathBuf>,
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig {
            data_dir: default_kv_dir(),
            group_keys: None,
        }
    }
}

fn default_kv_dir() -> PathBuf {
    PathBuf::from("kv-data")
}

/// Which timer defaults a root group uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RaftProfile {
    /// One site: heartbeat 100 ms, election timeout 400–800 ms.
    #[default]
    Lan,
    /// Candidates in several regions (RTT up to ~250 ms): heartbeat 500 ms, election
    /// timeout 2.5–5 s.
    Wan,
}

/// Raft settings of a root candidate. Timers left out take the profile's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// Where the candidate keeps its Raft log, vote and snapshots (relative to the file).
    pub data_dir: PathBuf,
    pub profile: RaftProfile,
    pub heartbeat_ms: Option<u64>,
    pub election_min_ms: Option<u64>,
    pub election_max_ms: Option<u64>,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_every: u64,
    /// Bootstrap the group from `root_candidates` on first start. Set it to false on a
    /// candidate that joins a running group (`canopy cluster add-candidate`).
    pub bootstrap: bool,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            data_dir: PathBuf::from("raft-data"),
            profile: RaftProfile::Lan,
            heartbeat_ms: None,
            election_min_ms: None,
            election_max_ms: None,
            snapshot_every: 1000,
            bootstrap: true,
        }
    }
}

impl RaftConfig {
    /// The group's timers, or the offending key and why.
    pub fn timers(&self) -> Result<canopy_raft::RaftTimers, (&'static str, String)> {
        let mut timers = match self.profile {
            RaftProfile::Lan => canopy_raft::RaftTimers::lan(),
            RaftProfile::Wan => canopy_raft::RaftTimers::wan(),
        };
        let ms = Duration::from_millis;
        if let Some(v) = self.heartbeat_ms {
            timers.heartbeat = ms(v);
        }
        if let Some(v) = self.election_min_ms {
            timers.election_min = ms(v);
        }
        if let Some(v) = self.election_max_ms {
            timers.election_max = ms(v);
        }
        let key = if timers.heartbeat.is_zero() {
            "raft.heartbeat_ms"
        } else if timers.election_min <= timers.heartbeat {
            "raft.election_min_ms"
        } else {
            "raft.election_max_ms"
        };
        timers.validate().map_err(|message| (key, message))?;
        if self.snapshot_every == 0 {
            return Err(("raft.snapshot_every", "must be greater than zero".into()));
        }
        Ok(timers)
    }
}

fn default_max_frame() -> usize {
    canopy_proto::DEFAULT_MAX_FRAME_LEN
}

/// Certificate, key and cluster CA bundle, as PEM files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA-signed revocation lists (`canopy certs revoke` writes `crl.pem`); optional.
    #[serde(default)]
    pub crl: Option<PathBuf>,
    /// How often the files above are checked for changes, in milliseconds; a change is in
    /// force (and links to newly revoked peers closed) within this long.
    #[serde(default = "default_reload_ms")]
    pub reload_ms: u64,
}

fn default_reload_ms() -> u64 {
    500
}

impl TlsConfig {
    /// The files the node's TLS material comes from.
    pub fn files(&self) -> crate::reload::CredentialFiles {
        crate::reload::CredentialFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            crl: self.crl.clone(),
        }
    }
}

/// One root candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootCandidateConfig {
    pub id: u64,
    pub address: SocketAddr,
}

/// Protocol timers in milliseconds. The defaults suit a LAN; across regions raise the
/// timeouts well above the round-trip time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimerConfig {
    pub heartbeat_ms: u64,
    /// How often a serving root heartbeats its own children.
    pub root_heartbeat_ms: u64,
    pub child_timeout_ms: u64,
    pub parent_timeout_ms: u64,
    pub join_timeout_ms: u64,
    pub join_backoff_max_ms: u64,
    pub interest_batch_ms: u64,
    pub rebalance_ms: u64,
    pub orphan_grace_ms: u64,
}

impl Default for TimerConfig {
    fn default() -> Self {
        let tree = TreeConfig::default();
        let ms = |d: Duration| d.as_millis() as u64;
        TimerConfig {
            heartbeat_ms: ms(tree.heartbeat_interval),
            root_heartbeat_ms: ms(tree.root_heartbeat_interval),
            child_timeout_ms: ms(tree.child_timeout),
            parent_timeout_ms: ms(tree.parent_timeout),
            join_timeout_ms: ms(tree.join_timeout),
            join_backoff_max_ms: ms(tree.join_backoff_max),
            interest_batch_ms: ms(tree.interest_batch_delay),
            rebalance_ms: ms(tree.rebalance_interval),
            orphan_grace_ms: ms(tree.orphan_grace),
        }
    }
}

/// Shape limits of the tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TreeShapeConfig {
    pub max_child_routers: usize,
    pub max_clients: usize,
    pub imbalance_bound: u32,
    /// Routers keep below them multicasts whose key nobody outside their subtree wants.
    pub upward_filters: bool,
    /// The root moves clients next to the other writers of their keys.
    pub reallocate: bool,
}

impl Default for TreeShapeConfig {
    fn default() -> Self {
        let tree = TreeConfig::default();
        TreeShapeConfig {
            max_child_routers: tree.max_child_routers,
            max_clients: tree.max_clients,
            imbalance_bound: tree.imbalance_bound,
            upward_filters: tree.upward_filters,
            reallocate: tree.reallocate,
        }
    }
}

impl NodeConfig {
    /// Reads and checks a configuration file. TLS paths are taken relative to the file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        let mut config = NodeConfig::parse(&text, path)?;
        if let Some(dir) = path.parent() {
            for p in [
                &mut config.tls.ca,
                &mut config.tls.cert,
                &mut config.tls.key,
                &mut config.raft.data_dir,
                &mut config.api.socket,
                &mut config.kv.data_dir,
            ]
            .into_iter()
            .chain(config.kv.group_keys.as_mut())
            .chain(config.tls.crl.as_mut())
            {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
        }
        Ok(config)
    }

    /// Parses and checks configuration text; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<NodeConfig, ConfigError> {
        let config: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config
            .tree_config()
            .map_err(|(key, message)| ConfigError::Invalid {
                file: file.to_owned(),
                key,
                message,
            })?;
        config
            .raft
            .timers()
            .map_err(|(key, message)| ConfigError::Invalid {
                file: file.to_owned(),
                key,
                message,
            })?;
        config
            .limits
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                file: file.to_owned(),
                key,
                message,
            })?;
        if config.tls.reload_ms == 0 || config.tls.reload_ms > 3_600_000 {
            return Err(ConfigError::Invalid {
                file: file.to_owned(),
                key: "tls.reload_ms",
                message: format!(
                    "{} is not between 1 and 3600000 milliseconds",
                    config.tls.reload_ms
                ),
            });
        }
        if config.root_candidates.is_empty() {
            return Err(ConfigError::Invalid {
                file: file.to_owned(),
                key: "root_candidates",
                message: "at least one root candidate is needed".into(),
            });
        }
        Ok(config)
    }

    /// The protocol settings, or the offending key and why.
    pub fn tree_config(&self) -> Result<TreeConfig, (&'static str, String)> {
        let t = &self.timers;
        let ms = Duration::from_millis;
        let tree = TreeConfig {
            heartbeat_interval: ms(t.heartbeat_ms),
            root_heartbeat_interval: ms(t.root_heartbeat_ms),
            child_timeout: ms(t.child_timeout_ms),
            parent_timeout: ms(t.parent_timeout_ms),
            join_timeout: ms(t.join_timeout_ms),
            join_backoff_max: ms(t.join_backoff_max_ms),
            interest_batch_delay: ms(t.interest_batch_ms),
            rebalance_interval: ms(t.rebalance_ms),
            orphan_grace: ms(t.orphan_grace_ms),
            max_child_routers: self.tree.max_child_routers,
            max_clients: self.tree.max_clients,
            imbalance_bound: self.tree.imbalance_bound,
            upward_filters: self.tree.upward_filters,
            reallocate: self.tree.reallocate,
            limits: self.limits.tree_limits(),
        };
        tree.validate().map_err(|e| {
            use canopy_tree::ConfigError as E;
            let key = match &e {
                E::ZeroTimer(name) | E::TimeoutTooShort(name) | E::ZeroLimit(name) => {
                    config_key(name)
                }
                E::LeaseTooLong => "raft.election_max_ms",
                E::RootHeartbeatTooLong => "timers.root_heartbeat_ms",
            };
            (key, e.to_string())
        })?;
        Ok(tree)
    }
}

/// The TOML key of a tree setting.
fn config_key(setting: &str) -> &'static str {
    match setting {
        "heartbeat_interval" => "timers.heartbeat_ms",
        "root_heartbeat_interval" => "timers.root_heartbeat_ms",
        "child_timeout" => "timers.child_timeout_ms",
        "parent_timeout" => "timers.parent_timeout_ms",
        "join_timeout" => "timers.join_timeout_ms",
        "join_backoff_max" => "timers.join_backoff_max_ms",
        "rebalance_interval" => "timers.rebalance_ms",
        "orphan_grace" => "timers.orphan_grace_ms",
        "max_child_routers" => "tree.max_child_routers",
        "max_clients" => "tree.max_clients",
        "imbalance_bound" => "tree.imbalance_bound",
        "placement_max_age" => "limits.placement_max_age_ms",
        "max_tags_per_client_link" => "limits.max_tags_per_client_link",
        "max_tags_per_router_link" => "limits.max_tags_per_router_link",
        "max_tags_per_delta" => "limits.max_tags_per_delta",
        "max_subtree_nodes" => "limits.max_subtree_nodes",
        "client_interest_tags_per_sec" => "limits.client_interest_tags_per_sec",
        "router_interest_tags_per_sec" => "limits.router_interest_tags_per_sec",
        _ => "timers",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen = "127.0.0.1:7401"
region = "eu"
[tls]
ca = "ca.pem"
cert = "node.pem"
key = "node.key"
[[root_candidates]]
id = 1
address = "127.0.0.1:7400"
"#;

    #[test]
    fn good_config_parses_with_defaults() {
        let c = NodeConfig::parse(GOOD, Path::new("n.toml")).unwrap();
        assert_eq!(c.timers, TimerConfig::default());
        assert_eq!(c.root_candidates.len(), 1);
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let text = GOOD.replace("region = \"eu\"", "regoin = \"eu\"");
        let err = NodeConfig::parse(&text, Path::new("n.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("n.toml: "), "{err}");
        assert!(err.contains("regoin"), "{err}");
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn bad_value_names_file_and_key() {
        let text = format!("{GOOD}\n[timers]\nheartbeat_ms = 0\n");
        let err = NodeConfig::parse(&text, Path::new("n.toml"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "n.toml: timers.heartbeat_ms: heartbeat_interval must be greater than zero"
        );
        let text = format!("{GOOD}\n[timers]\nchild_timeout_ms = 500\n");
        let err = NodeConfig::parse(&text, Path::new("n.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("n.toml: timers.child_timeout_ms:"), "{err}");
    }

    #[test]
    fn the_documented_example_parses_with_the_documented_defaults() {
        let doc = include_str!("../../../docs/operations.md");
        let start = doc
            .find("```toml\nlisten")
            .expect("example in operations.md")
            + 8;
        let end = start + doc[start..].find("```").expect("end of example");
        let c = NodeConfig::parse(&doc[start..end], Path::new("operations.md")).unwrap();
        assert_eq!(c.limits, PeerLimits::default());
        assert_eq!(c.timers, TimerConfig::default());
    }

    #[test]
    fn limits_are_configurable_and_checked() {
        let text = format!("{GOOD}\n[limits]\njoins_per_sec = 0.5\nmax_tags_per_delta = 100\n");
        let c = NodeConfig::parse(&text, Path::new("n.toml")).unwrap();
        assert_eq!(c.limits.joins_per_sec, 0.5);
        assert_eq!(c.tree_config().unwrap().limits.max_tags_per_delta, 100);
        let text = format!("{GOOD}\n[limits]\njoins_per_sec = 0\n");
        let err = NodeConfig::parse(&text, Path::new("n.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("n.toml: limits.joins_per_sec:"), "{err}");
        let text = format!("{GOOD}\n[limits]\nmax_connections = 0\n");
        let err = NodeConfig::parse(&text, Path::new("n.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("n.toml: limits.max_connections:"), "{err}");
        let text = format!("{GOOD}\n[limits]\nmax_tagz = 3\n");
        let err = NodeConfig::parse(&text, Path::new("n.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_tagz"), "{err}");
    }

    #[test]
    fn raft_profiles_and_bad_timers() {
        let lan = NodeConfig::parse(GOOD, Path::new("n.toml")).unwrap();
        let wan = format!("{GOOD}\n[raft]\nprofile = \"wan\"\n");
        let wan = NodeConfig::parse(&wan, Path::new("n.toml")).unwrap();
        let (lan, wan) = (lan.raft.timers().unwrap(), wan.raft.timers().unwrap());
        assert!(wan.election_min > lan.election_max, "{wan:?} vs {lan:?}");
        let text = format!("{GOOD}\n[raft]\nheartbeat_ms = 900\n");
        let err = NodeConfig::parse(&text, Path::new("n.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("n.toml: raft.election_min_ms:"), "{err}");
        let text = format!("{GOOD}\n[raft]\nprofile = \"moon\"\n");
        let err = NodeConfig::parse(&text, Path::new("n.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("profile"), "{err}");
    }

    #[test]
    fn bad_address_is_reported() {
        let text = GOOD.replace("127.0.0.1:7401", "not an address");
        let err = NodeConfig::parse(&text, Path::new("n.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen"), "{err}");
    }
}
