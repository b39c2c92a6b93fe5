//! Evidence of leadership measured by this candidate's own clock, not read from openraft's
//! metrics (which are only as fresh as their last update: after a pause they still show the
//! acknowledgement from before it).
//!
//! - As leader: for each peer, when this candidate *sent* the latest AppendEntries (or vote
//!   request) the peer accepted in the current term. The quorum's contact is the time by
//!   which a majority (this candidate included) had accepted it: a follower that accepted a
//!   request sent at `t` refuses other candidates' votes until `t` + its vote lease at the
//!   earliest.
//! - As follower: when it last accepted a leader's entries or granted a vote.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::CandidateId;

#[derive(Default)]
pub(crate) struct Contacts {
    /// Per peer: (term, send time) of the latest request it accepted from us.
    acks: Mutex<HashMap<CandidateId, (u64, Instant)>>,
    /// When this candidate last accepted a leader's entries or granted a vote.
    heard: Mutex<Option<Instant>>,
}

impl Contacts {
    pub(crate) fn acked(&self, peer: CandidateId, term: u64, sent: Instant) {
        if let Ok(mut acks) = self.acks.lock() {
            let entry = acks.entry(peer).or_insert((term, sent));
            if (term, sent) > *entry {
                *entry = (term, sent);
            }
        }
    }

    pub(crate) fn heard(&self, at: Instant) {
        if let Ok(mut heard) = self.heard.lock() {
            if heard.is_none_or(|h| h < at) {
                *heard = Some(at);
            }
        }
    }

    pub(crate) fn last_heard(&self) -> Option<Instant> {
        self.heard.lock().ok().and_then(|h| *h)
    }

    /// When a majority of `voters` (this candidate, `me`, counting as `now`) had accepted
    /// this leader in `term`; `None` if no majority has yet.
    pub(crate) fn quorum_acked(
        &self,
        me: CandidateId,
        term: u64,
        voters: &[CandidateId],
        now: Instant,
    ) -> Option<Instant> {
        let acks = self.acks.lock().ok()?;
        let mut times: Vec<Instant> = voters
            .iter()
            .filter_map(|&v| {
                if v == me {
                    Some(now)
                } else {
                    acks.get(&v).filter(|(t, _)| *t == term).map(|&(_, at)| at)
                }
            })
            .collect();
        let majority = voters.len() / 2 + 1;
        if times.len() < majority {
            return None;
        }
        times.sort_unstable_by(|a, b| b.cmp(a));
        times.get(majority - 1).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_quorum_contact_is_the_majoritys_oldest_acknowledgement_in_the_term() {
        let contacts = Contacts::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let voters = [1, 2, 3, 4, 5];
        assert_eq!(contacts.quorum_acked(1, 7, &voters, at(100)), None);
        contacts.acked(2, 7, at(10));
        assert_eq!(contacts.quorum_acked(1, 7, &voters, at(100)), None);
        contacts.acked(3, 7, at(30));
        assert_eq!(contacts.quorum_acked(1, 7, &voters, at(100)), Some(at(10)));
        contacts.acked(4, 7, at(50));
        assert_eq!(contacts.quorum_acked(1, 7, &voters, at(100)), Some(at(30)));
        // An older acknowledgement never replaces a newer one; another term's never counts.
        contacts.acked(4, 7, at(5));
        assert_eq!(contacts.quorum_acked(1, 7, &voters, at(100)), Some(at(30)));
        assert_eq!(contacts.quorum_acked(1, 8, &voters, at(100)), None);
        // Alone in a group of one, the leader is its own quorum.
        assert_eq!(contacts.quorum_acked(1, 8, &[1], at(100)), Some(at(100)));
    }

    #[test]
    fn heard_keeps_the_latest() {
        let contacts = Contacts::default();
        let t0 = Instant::now();
        assert_eq!(contacts.last_heard(), None);
        contacts.heard(t0 + Duration::from_millis(5));
        contacts.heard(t0);
        assert_eq!(contacts.last_heard(), Some(t0 + Duration::from_millis(5)));
    }
}
