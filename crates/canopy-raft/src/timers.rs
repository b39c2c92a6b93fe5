//! Election and heartbeat timers of the root group.

use std::time::Duration;

/// Election/heartbeat timers. [`RaftTimers::lan`] (the default): heartbeat 50 ms, election
/// 150..300 ms (openraft's defaults). [`RaftTimers::wan`]: heartbeat 250 ms, election
/// 750..1000 ms, for candidates in different regions with round trips up to ~150 ms.
///
/// A follower refuses to vote for anyone else until it has heard nothing from the leader
/// for `election_max` (openraft's leader lease), so that is the least time a failover can
/// take; the candidates' own code asks for the election as soon as it has run out (see
/// [`RaftTimers::reign`]) instead of waiting openraft's election timeout on top of it.
///
/// The leader sends a heartbeat every `heartbeat`, and openraft gives each AppendEntries RPC
/// `heartbeat` to complete, so `heartbeat` must stay well above the round trip between
/// candidates. A follower that hears nothing from a leader for a random time in
/// `election_min..election_max` starts an election.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RaftTimers {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
}

impl RaftTimers {
    /// Timers for candidates in one data centre.
    pub fn lan() -> Self {
        RaftTimers {
            heartbeat: Duration::from_millis(50),
            election_min: Duration::from_millis(150),
            election_max: Duration::from_millis(300),
        }
    }

    /// Timers for candidates spread over regions, round trips up to ~150 ms: the heartbeat
    /// (which is also each AppendEntries' time to complete) 100 ms above the round trip, the
    /// vote lease four heartbeats, so two lost heartbeats never depose a leader.
    pub fn wan() -> Self {
        RaftTimers {
            heartbeat: Duration::from_millis(250),
            election_min: Duration::from_millis(750),
            election_max: Duration::from_millis(1000),
        }
    }

    /// How a candidate times its reigns with these timers
    /// ([`canopy_tree::ReignConfig::for_raft`]).
    pub fn reign(&self) -> canopy_tree::ReignConfig {
        canopy_tree::ReignConfig::for_raft(self.heartbeat, self.election_max)
    }

    /// Checks `0 < heartbeat < election_min < election_max`, at millisecond resolution (the
    /// resolution openraft works in).
    pub fn validate(&self) -> Result<(), String> {
        let (hb, min, max) = self.millis();
        if hb == 0 {
            return Err(format!(
                "heartbeat ({:?}) must be at least 1 ms",
                self.heartbeat
            ));
        }
        if hb >= min {
            return Err(format!(
                "heartbeat ({:?}) must be shorter than election_min ({:?})",
                self.heartbeat, self.election_min
            ));
        }
        if min >= max {
            return Err(format!(
                "election_min ({:?}) must be shorter than election_max ({:?})",
                self.election_min, self.election_max
            ));
        }
        Ok(())
    }

    /// (heartbeat, election_min, election_max) in whole milliseconds, saturating.
    pub(crate) fn millis(&self) -> (u64, u64, u64) {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        (
            ms(self.heartbeat),
            ms(self.election_min),
            ms(self.election_max),
        )
    }
}

impl Default for RaftTimers {
    fn default() -> Self {
        RaftTimers::lan()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        RaftTimers::lan().validate().expect("lan");
        RaftTimers::wan().validate().expect("wan");
        for timers in [RaftTimers::lan(), RaftTimers::wan()] {
            let reign = timers.reign();
            reign.validate().expect("reign");
            assert!(reign.lease < timers.election_max, "{reign:?}");
            assert!(reign.election_after > timers.election_max, "{reign:?}");
        }
        assert_eq!(RaftTimers::default(), RaftTimers::lan());
    }

    #[test]
    fn bad_orderings_are_refused() {
        let ms = Duration::from_millis;
        let t = |hb, min, max| RaftTimers {
            heartbeat: ms(hb),
            election_min: ms(min),
            election_max: ms(max),
        };
        assert!(t(0, 10, 20).validate().is_err());
        assert!(t(10, 10, 20).validate().is_err());
        assert!(t(10, 20, 20).validate().is_err());
        assert!(t(10, 30, 20).validate().is_err());
        // Sub-millisecond differences vanish at openraft's resolution.
        let sub = RaftTimers {
            heartbeat: Duration::from_micros(10_100),
            election_min: Duration::from_micros(10_900),
            election_max: ms(20),
        };
        assert!(sub.validate().is_err());
        assert!(t(1, 2, 3).validate().is_ok());
    }
}
