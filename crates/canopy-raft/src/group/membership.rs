//! Membership changes of the root group (leader only).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use tracing::{debug, info};

use super::{RootGroup, WriteError};
use crate::{CandidateId, ProposeError, LEARNER_CATCH_UP_TIMEOUT};

/// How long a membership change waits for an earlier one (or the leader's first entry) to
/// commit before it gives up.
const IN_PROGRESS_PATIENCE: Duration = Duration::from_secs(10);

fn in_progress(e: &WriteError) -> bool {
    matches!(
        e,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(_)
        ))
    )
}

impl RootGroup {
    /// Adds a candidate (leader only): as a learner first, waiting until it has caught up
    /// (at most [`LEARNER_CATCH_UP_TIMEOUT`]), then as a voter. A member already recorded at
    /// another address gets the new one. Adding a voter again is a no-op.
    pub async fn add_candidate(
        &self,
        id: CandidateId,
        address: String,
    ) -> Result<(), ProposeError> {
        self.require_leader()?;
        let (voter, recorded) = {
            let m = self.inner.raft.metrics().borrow().membership_config.clone();
            let voter = m.membership().voter_ids().any(|v| v == id);
            (voter, m.membership().get_node(&id).map(|n| n.addr.clone()))
        };
        if recorded.as_ref().is_some_and(|a| *a != address) {
            let nodes = BTreeMap::from([(id, BasicNode::new(&address))]);
            self.change_membership(ChangeMembers::SetNodes(nodes), true)
                .await?;
        }
        if voter {
            return Ok(());
        }
        let learner = self.add_learner(id, &address);
        match tokio::time::timeout(LEARNER_CATCH_UP_TIMEOUT, learner).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(ProposeError::Other(format!(
                    "candidate {id} was added as a learner but did not catch up within \
                     {LEARNER_CATCH_UP_TIMEOUT:?}"
                )))
            }
        }
        self.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await?;
        info!(id, %address, "candidate added to the root group");
        Ok(())
    }

    /// Removes a candidate (leader only); refuses to remove the last voter. Removing a
    /// candidate that is not a member is a no-op.
    pub async fn remove_candidate(&self, id: CandidateId) -> Result<(), ProposeError> {
        self.require_leader()?;
        let (voters, known) = {
            let m = self.inner.raft.metrics().borrow().membership_config.clone();
            let voters: BTreeSet<CandidateId> = m.membership().voter_ids().collect();
            (voters, m.membership().get_node(&id).is_some())
        };
        let change = if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(ProposeError::Other(format!(
                    "refusing to remove candidate {id}, the last voter"
                )));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if known {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Ok(());
        };
        self.change_membership(change, false).await?;
        info!(id, "candidate removed from the root group");
        Ok(())
    }

    /// The address of a member as the membership records it.
    pub fn member_address(&self, id: CandidateId) -> Option<String> {
        self.inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }

    pub(super) fn require_leader(&self) -> Result<(), ProposeError> {
        let (state, leader) = {
            let m = self.inner.raft.metrics();
            let m = m.borrow();
            (m.state, m.current_leader)
        };
        if state == ServerState::Leader {
            return Ok(());
        }
        Err(ProposeError::NotLeader {
            leader,
            address: leader.and_then(|l| self.member_address(l)),
        })
    }

    /// `add_learner`, blocking until the learner has caught up; retried while another
    /// membership change is in progress.
    async fn add_learner(&self, id: CandidateId, address: &str) -> Result<(), ProposeError> {
        let deadline = tokio::time::Instant::now() + IN_PROGRESS_PATIENCE;
        loop {
            let node = BasicNode::new(address);
            match self.inner.raft.add_learner(id, node, true).await {
                Ok(_) => return Ok(()),
                Err(e) if in_progress(&e) && tokio::time::Instant::now() < deadline => {
                    debug!(id, "membership change in progress, retrying add_learner");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(self.write_error(e)),
            }
        }
    }

    /// `change_membership`, retried while another membership change is in progress.
    async fn change_membership(
        &self,
        change: ChangeMembers<CandidateId, BasicNode>,
        retain: bool,
    ) -> Result<(), ProposeError> {
        let deadline = tokio::time::Instant::now() + IN_PROGRESS_PATIENCE;
        loop {
            match self
                .inner
                .raft
                .change_membership(change.clone(), retain)
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if in_progress(&e) && tokio::time::Instant::now() < deadline => {
                    debug!(?change, "membership change in progress, retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(self.write_error(e)),
            }
        }
    }
}
