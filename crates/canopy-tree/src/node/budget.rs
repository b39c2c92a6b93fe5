//! Interest work budgets: how many tags a link may add, remove or snapshot per second.
//!
//! Every tag a child advertises or withdraws costs its parent filter and count updates, and
//! climbs further up. A parent charges each child link for that work (a snapshot costs the
//! set it replaces as well as the new one, since both are processed) and drops a child over
//! its budget. A node paces its own upward changes below what its parent allows, keeping
//! what does not fit pending (where an add and a remove of the same tag cancel out).

use super::Node;
use crate::{Role, Time};

/// A token bucket of tags, refilled at the link's rate up to its burst.
#[derive(Debug, Clone, Copy)]
pub(super) struct TagBudget {
    tokens: f64,
    at: Time,
}

/// Rate and burst of one side of a budget.
#[derive(Debug, Clone, Copy)]
pub(super) struct BudgetRate {
    pub(super) per_sec: f64,
    pub(super) burst: f64,
}

impl TagBudget {
    /// A full bucket.
    pub(super) fn full(rate: BudgetRate, now: Time) -> TagBudget {
        TagBudget {
            tokens: rate.burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: BudgetRate, now: Time) {
        let elapsed = now.saturating_sub(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_sec).min(rate.burst);
        self.at = self.at.max(now);
    }

    /// Takes `cost` tokens if there are that many.
    pub(super) fn try_charge(&mut self, cost: usize, rate: BudgetRate, now: Time) -> bool {
        self.refill(rate, now);
        let cost = cost as f64;
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// Whether the bucket has refilled completely.
    pub(super) fn is_full(&mut self, rate: BudgetRate, now: Time) -> bool {
        self.refill(rate, now);
        self.tokens >= rate.burst
    }

    /// Whole tokens available now.
    pub(super) fn available(&mut self, rate: BudgetRate, now: Time) -> usize {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens as usize
        } else {
            0
        }
    }

    /// Takes `cost` tokens, going into debt if there are fewer (a snapshot cannot be split).
    pub(super) fn charge(&mut self, cost: usize, rate: BudgetRate, now: Time) {
        self.refill(rate, now);
        self.tokens -= cost as f64;
    }
}

impl Node {
    /// What a parent allows one child link of `role`: the configured rate, and a burst of
    /// twice the link's tag bound (a full snapshot replacing a full set).
    pub(super) fn child_budget(&self, role: Role) -> BudgetRate {
        let l = &self.config.limits;
        let (per_sec, max_tags) = if role == Role::Client {
            (l.client_interest_tags_per_sec, l.max_tags_per_client_link)
        } else {
            (l.router_interest_tags_per_sec, l.max_tags_per_router_link)
        };
        BudgetRate {
            per_sec,
            burst: 2.0 * max_tags as f64,
        }
    }

    /// What this node lets itself send up: a little under what its parent allows it, with
    /// half the burst, so jitter on the way never pushes it over.
    pub(super) fn upward_budget(&self) -> BudgetRate {
        let parent_side = self.child_budget(self.role);
        BudgetRate {
            per_sec: 0.9 * parent_side.per_sec,
            burst: parent_side.burst / 2.0,
        }
    }
}
