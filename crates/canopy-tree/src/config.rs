//! Protocol settings shared by every node of a tree.

use std::time::Duration;

/// Timers and shape limits of the tree. Every node of one tree should use the same values.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeConfig {
    /// How often a node heartbeats its parent and each child.
    pub heartbeat_interval: Duration,
    /// A child not heard from for this long is dropped by its parent.
    pub child_timeout: Duration,
    /// A node not hearing from its parent for this long rejoins through the root.
    pub parent_timeout: Duration,
    /// First wait for an `AssignParent` before a join request is resent.
    pub join_timeout: Duration,
    /// Upper bound of the join resend backoff.
    pub join_backoff_max: Duration,
    /// How long interest changes are batched before an early heartbeat carries them up.
    pub interest_batch_delay: Duration,
    /// How often the root looks for imbalance and culls.
    pub rebalance_interval: Duration,
    /// How long the root keeps a node whose parent left before dropping it from its view.
    pub orphan_grace: Duration,
    /// Most routers one router (or the root) may have as children.
    pub max_child_routers: usize,
    /// Most clients one router may have as children.
    pub max_clients: usize,
    /// Largest difference in direct client counts between routers that the root tolerates
    /// before it culls.
    pub imbalance_bound: u32,
    /// False-positive rate of per-link interest filters.
    pub filter_fp_rate: f64,
}

impl Default for TreeConfig {
    fn default() -> Self {
        TreeConfig {
            heartbeat_interval: Duration::from_millis(1000),
            child_timeout: Duration::from_millis(3500),
            parent_timeout: Duration::from_millis(3500),
            join_timeout: Duration::from_millis(2000),
            join_backoff_max: Duration::from_millis(16_000),
            interest_batch_delay: Duration::from_millis(20),
            rebalance_interval: Duration::from_millis(5000),
            orphan_grace: Duration::from_millis(10_000),
            max_child_routers: 4,
            max_clients: 64,
            imbalance_bound: 2,
            filter_fp_rate: 0.001,
        }
    }
}

/// A setting that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A timer is zero.
    #[error("{0} must be greater than zero")]
    ZeroTimer(&'static str),
    /// A timeout is not longer than the heartbeat interval, so live links would be dropped.
    #[error("{0} must be longer than heartbeat_interval")]
    TimeoutTooShort(&'static str),
    /// A shape limit is zero.
    #[error("{0} must be at least 1")]
    ZeroLimit(&'static str),
    /// The filter false-positive rate is outside (0, 0.5].
    #[error("filter_fp_rate must be in (0, 0.5]")]
    BadFpRate,
}

impl TreeConfig {
    /// Checks that the settings can work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let timers = [
            ("heartbeat_interval", self.heartbeat_interval),
            ("child_timeout", self.child_timeout),
            ("parent_timeout", self.parent_timeout),
            ("join_timeout", self.join_timeout),
            ("join_backoff_max", self.join_backoff_max),
            ("rebalance_interval", self.rebalance_interval),
            ("orphan_grace", self.orphan_grace),
        ];
        for (name, value) in timers {
            if value.is_zero() {
                return Err(ConfigError::ZeroTimer(name));
            }
        }
        for (name, value) in [
            ("child_timeout", self.child_timeout),
            ("parent_timeout", self.parent_timeout),
        ] {
            if value <= self.heartbeat_interval {
                return Err(ConfigError::TimeoutTooShort(name));
            }
        }
        if self.max_child_routers == 0 {
            return Err(ConfigError::ZeroLimit("max_child_routers"));
        }
        if self.max_clients == 0 {
            return Err(ConfigError::ZeroLimit("max_clients"));
        }
        if self.imbalance_bound == 0 {
            return Err(ConfigError::ZeroLimit("imbalance_bound"));
        }
        if !(self.filter_fp_rate > 0.0 && self.filter_fp_rate <= 0.5) {
            return Err(ConfigError::BadFpRate);
        }
        Ok(())
    }

    /// Most children of any kind one router may have: the K of "at most K+1 sends".
    pub fn max_children(&self) -> usize {
        self.max_child_routers + self.max_clients
    }
}
