//! A scenario file: the cluster (regions and their nodes), the write load, and the faults.

use std::path::Path;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub cluster: ClusterSpec,
    pub regions: Vec<RegionSpec>,
    #[serde(default)]
    pub workload: WorkloadSpec,
    #[serde(default)]
    pub faults: Vec<FaultSpec>,
    /// The emulated WAN between regions (none: every node reaches every other directly).
    #[serde(default)]
    pub wan: Vec<WanLink>,
    /// How long the run waits after the last fault for the tree to settle before checking.
    #[serde(default = "default_settle_s")]
    pub settle_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSpec {
    /// The root group's timer profile: "lan" or "wan".
    pub raft_profile: String,
    pub heartbeat_ms: u64,
    /// Root candidates' child and parent timeouts, in heartbeats.
    pub timeout_heartbeats: u64,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            raft_profile: "lan".into(),
            heartbeat_ms: 200,
            timeout_heartbeats: 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    pub name: String,
    #[serde(default)]
    pub candidates: usize,
    #[serde(default)]
    pub routers: usize,
    #[serde(default)]
    pub clients: usize,
}

/// One region pair of the emulated WAN, the same both ways.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WanLink {
    pub between: [String; 2],
    pub rtt_ms: u64,
    #[serde(default)]
    pub jitter_ms: u64,
    /// Probability that a datagram is lost, each way.
    #[serde(default)]
    pub loss: f64,
    /// Each way; 0 for no cap.
    #[serde(default)]
    pub bandwidth_mbps: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadSpec {
    /// Clients that write (the first ones of each region in turn); every client reads.
    pub writers: usize,
    /// Writes per second, per writer.
    pub writes_per_second: f64,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        WorkloadSpec {
            writers: 3,
            writes_per_second: 10.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    pub kind: FaultKind,
    /// How many times.
    #[serde(default = "one")]
    pub repeat: usize,
    /// Time between the end of one injection and the next.
    #[serde(default = "default_every_ms")]
    pub every_ms: u64,
    /// Pauses and partitions: how long they last.
    #[serde(default = "default_duration_ms")]
    pub duration_ms: u64,
    /// Partitions: the region cut off from the others.
    #[serde(default)]
    pub region: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL the root leader, wait for another candidate to serve, restart it.
    KillLeader,
    /// SIGKILL a random router and restart it.
    KillRouter,
    /// SIGSTOP the leader for `pause_ms`, then SIGCONT.
    PauseLeader,
    /// Restart every node in turn (SIGTERM, then start again).
    RollingRestart,
    /// Cut `region` off from every other region for `duration_ms`, then heal.
    Partition,
    /// `canopy certs rotate` every node's certificate in turn (nodes reload their files and
    /// move their live links to the new certificate).
    RotateCertificates,
    /// One writer puts as fast as its node answers (8 at a time) for `duration_ms`, on top
    /// of the load; every write it has acknowledged is owed like the others.
    Flood,
}

fn one() -> usize {
    1
}

fn default_every_ms() -> u64 {
    3000
}

fn default_duration_ms() -> u64 {
    2000
}

fn default_settle_s() -> u64 {
    10
}

impl Scenario {
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let scenario: Scenario =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        scenario
            .validate()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(scenario)
    }

    fn validate(&self) -> Result<(), String> {
        let candidates: usize = self.regions.iter().map(|r| r.candidates).sum();
        let clients: usize = self.regions.iter().map(|r| r.clients).sum();
        if !matches!(candidates, 1 | 3 | 5) {
            return Err(format!("regions: {candidates} root candidates (1, 3 or 5)"));
        }
        if clients < 2 {
            return Err(format!(
                "regions: {clients} clients (at least 2: a writer and a reader)"
            ));
        }
        if self.workload.writers == 0 || self.workload.writers > clients {
            return Err(format!(
                "workload.writers: {} of {clients} clients",
                self.workload.writers
            ));
        }
        if !(self.workload.writes_per_second > 0.0 && self.workload.writes_per_second <= 1000.0) {
            return Err("workload.writes_per_second: in (0, 1000]".into());
        }
        if !matches!(self.cluster.raft_profile.as_str(), "lan" | "wan") {
            return Err(format!(
                "cluster.raft_profile: {:?} (lan or wan)",
                self.cluster.raft_profile
            ));
        }
        for link in &self.wan {
            for region in &link.between {
                if !self.regions.iter().any(|r| r.name == *region) {
                    return Err(format!("wan: no region {region:?}"));
                }
            }
            if !(0.0..=1.0).contains(&link.loss) || link.bandwidth_mbps < 0.0 {
                return Err("wan: loss in [0, 1], bandwidth_mbps not negative".into());
            }
        }
        for fault in &self.faults {
            if fault.kind == FaultKind::Partition {
                let Some(region) = &fault.region else {
                    return Err("faults: a partition names its region".into());
                };
                if self.wan.is_empty() || !self.regions.iter().any(|r| r.name == *region) {
                    return Err(format!(
                        "faults: partition of {region:?} needs that region and a [[wan]]"
                    ));
                }
            }
        }
        if self.regions.len() > 200
            || self
                .regions
                .iter()
                .any(|r| r.candidates + r.routers + r.clients > 200)
        {
            return Err("regions: at most 200 regions of at most 200 nodes".into());
        }
        Ok(())
    }
}
