//! Settings the simulator's property tests share.

use std::time::Duration;

use canopy_tree::TreeConfig;

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Timers five times faster than the defaults, so a run covers many heartbeats quickly.
pub fn fast_config(max_child_routers: usize, max_clients: usize, reallocate: bool) -> TreeConfig {
    TreeConfig {
        heartbeat_interval: ms(200),
        root_heartbeat_interval: ms(100),
        child_timeout: ms(700),
        parent_timeout: ms(700),
        join_timeout: ms(400),
        join_backoff_max: ms(1600),
        interest_batch_delay: ms(10),
        rebalance_interval: ms(1000),
        orphan_grace: ms(2000),
        max_child_routers,
        max_clients,
        imbalance_bound: 2,
        upward_filters: true,
        reallocate,
        limits: Default::default(),
    }
}
