//! Protocol settings shared by every node of a tree.

use std::time::Duration;

/// Timers and shape limits of the tree. Every node of one tree should use the same values.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeConfig {
    /// How often a node heartbeats its parent and each child.
    pub heartbeat_interval: Duration,
    /// How often a serving root heartbeats its own children (at most `heartbeat_interval`).
    /// A child of the root that has heard nothing from it for twice this long accepts a
    /// takeover placement from another candidate; keep that below the root group's vote
    /// lease minus a Raft heartbeat, or a new root's placements wait for the parent timeout.
    pub root_heartbeat_interval: Duration,
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
    /// Upward filters: a parent tells each router child which of its subtree's tags nobody
    /// outside wants, and the router keeps multicasts for those below it. Off, every
    /// multicast climbs to the root (the seed design).
    pub upward_filters: bool,
    /// Cache-aware reallocation: the root moves clients towards the routers of the other
    /// writers of their keys (see `node::reallocate`), and stops culling for balance.
    pub reallocate: bool,
    /// Bounds on what one peer can make this node accept or hold.
    pub limits: TreeLimits,
}

/// Bounds on the quantities a peer controls. A child over a bound loses its link (the node
/// sends it a `Disconnect` and asks the driver to close the link); nobody else notices.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeLimits {
    /// A placement grant older than this (by the receiver's clock) is refused, so a grant
    /// recorded earlier cannot be replayed to move a node. Also the tolerated clock skew.
    pub placement_max_age: Duration,
    /// Most distinct key tags one client link may advertise.
    pub max_tags_per_client_link: usize,
    /// Most distinct key tags one router link may advertise (its whole subtree's interest).
    pub max_tags_per_router_link: usize,
    /// Most tags one interest delta carries; larger changes go up in several heartbeats.
    pub max_tags_per_delta: usize,
    /// Largest subtree (clients plus routers) a child may report.
    pub max_subtree_nodes: u64,
    /// Interest work (tags added, removed, or in a snapshot together with the set it
    /// replaces) per second a client link may cause; the burst is twice the link's tag bound.
    pub client_interest_tags_per_sec: f64,
    /// The same for a router link (its whole subtree's changes).
    pub router_interest_tags_per_sec: f64,
}

impl Default for TreeLimits {
    fn default() -> Self {
        TreeLimits {
            placement_max_age: Duration::from_secs(60),
            max_tags_per_client_link: 16_384,
            // A router link carries its whole subtree's interest (every node's own id tag
            // at least): 2^22 tags, 32 MiB of tags, holds subtrees of millions (snapshots
            // go up in chunks of `max_tags_per_delta`).
            max_tags_per_router_link: 1 << 22,
            max_tags_per_delta: 16_384,
            max_subtree_nodes: 100_000_000,
            client_interest_tags_per_sec: 4096.0,
            router_interest_tags_per_sec: 131_072.0,
        }
    }
}

impl Default for TreeConfig {
    fn default() -> Self {
        TreeConfig {
            heartbeat_interval: Duration::from_millis(1000),
            root_heartbeat_interval: Duration::from_millis(100),
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
            upward_filters: true,
            reallocate: false,
            limits: TreeLimits::default(),
        }
    }
}

/// How a replicated root candidate times its leadership, derived from the root group's Raft
/// timers (see `canopy_raft::RaftTimers::reign`).
///
/// Safety rests on one inequality: a follower refuses to vote for anyone else until it has
/// heard nothing from the leader for `election_after`, so a leader that stops acting as root
/// `lease` after the last heartbeat a quorum acknowledged (`lease < election_after`) has
/// stopped before any other candidate can have been elected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReignConfig {
    /// A leader acts as root only while a quorum acknowledged it within this long.
    pub lease: Duration,
    /// A follower that has heard nothing from a leader for this long asks for an election:
    /// the followers' vote lease, so no earlier election could win.
    pub election_after: Duration,
    /// Gap between the election attempts of candidates of consecutive rank: longer than a
    /// vote round trip, so the first candidate's election completes before the next tries.
    pub election_stagger: Duration,
    /// A takeover or proposal not committed within this long ends the reign.
    pub commit_timeout: Duration,
}

impl ReignConfig {
    /// The reign timers for a root group whose leader heartbeats every `heartbeat` and whose
    /// followers refuse other candidates' votes until they have heard nothing from the
    /// leader for `vote_lease` (openraft's `election_timeout_max`): serve only within
    /// `vote_lease - heartbeat` of the last heartbeat a quorum accepted (stopped before any
    /// follower's vote lease can run out), ask for an election half a heartbeat after one's
    /// own vote lease ran out and two heartbeats after the candidate ranked before (its vote
    /// may need a connection set up first: two round trips), and end a
    /// reign whose proposal has not committed within four vote leases (at least a second:
    /// a slow disk under load is not a lost leadership, and the lease covers that case).
    pub fn for_raft(heartbeat: Duration, vote_lease: Duration) -> ReignConfig {
        ReignConfig {
            lease: vote_lease.saturating_sub(heartbeat),
            election_after: vote_lease + heartbeat / 2,
            election_stagger: heartbeat * 2,
            commit_timeout: (vote_lease * 4).max(Duration::from_secs(1)),
        }
    }

    /// Checks `0 < lease < election_after` and non-zero gaps.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("lease", self.lease),
            ("election_after", self.election_after),
            ("election_stagger", self.election_stagger),
            ("commit_timeout", self.commit_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroTimer(name));
            }
        }
        if self.lease >= self.election_after {
            return Err(ConfigError::LeaseTooLong);
        }
        Ok(())
    }
}

impl Default for ReignConfig {
    /// openraft's default timers (heartbeat 50 ms, election 150..300 ms).
    fn default() -> Self {
        ReignConfig::for_raft(Duration::from_millis(50), Duration::from_millis(300))
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
    /// The root's heartbeat to its children is slower than every node's heartbeat.
    #[error("root_heartbeat_interval must not be longer than heartbeat_interval")]
    RootHeartbeatTooLong,
    /// A leader's lease is not shorter than the followers' vote lease.
    #[error("the leader lease must be shorter than election_after")]
    LeaseTooLong,
}

impl TreeConfig {
    /// Checks that the settings can work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let timers = [
            ("heartbeat_interval", self.heartbeat_interval),
            ("root_heartbeat_interval", self.root_heartbeat_interval),
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
        if self.root_heartbeat_interval > self.heartbeat_interval {
            return Err(ConfigError::RootHeartbeatTooLong);
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
        let l = &self.limits;
        if l.placement_max_age.is_zero() {
            return Err(ConfigError::ZeroTimer("placement_max_age"));
        }
        for (name, value) in [
            ("max_tags_per_client_link", l.max_tags_per_client_link),
            ("max_tags_per_router_link", l.max_tags_per_router_link),
            ("max_tags_per_delta", l.max_tags_per_delta),
        ] {
            if value == 0 {
                return Err(ConfigError::ZeroLimit(name));
            }
        }
        if l.max_subtree_nodes == 0 {
            return Err(ConfigError::ZeroLimit("max_subtree_nodes"));
        }
        for (name, rate) in [
            (
                "client_interest_tags_per_sec",
                l.client_interest_tags_per_sec,
            ),
            (
                "router_interest_tags_per_sec",
                l.router_interest_tags_per_sec,
            ),
        ] {
            if !(rate.is_finite() && rate >= 1.0) {
                return Err(ConfigError::ZeroLimit(name));
            }
        }
        Ok(())
    }

    /// Most children of any kind one router may have: the K of "at most K+1 sends".
    pub fn max_children(&self) -> usize {
        self.max_child_routers + self.max_clients
    }
}
