//! A root candidate's side of the runtime: it follows Raft leadership, serves as root while
//! it leads, commits the tree's structural decisions through Raft, and hands Raft and
//! operator traffic to the group.
//!
//! Each stretch of leadership is a *reign*. Everything a reign starts (catching up, the
//! proposer task) reports back tagged with its reign, and reports from an ended reign are
//! ignored, so a deposed leader never releases an action for a commit it did not see.

use std::time::Duration;

use canopy_net::Identity;
use canopy_proto::Body;
use canopy_raft::{Leadership, RootGroup};
use canopy_tree::{Input, NodeId, TreeView, ViewChange};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::admin::answer_admin;
use crate::runtime::Runtime;

/// Largest number of changes committed as one Raft entry.
const MAX_BATCH: usize = 512;
/// Largest encoded size of the changes committed as one Raft entry: well under the group's
/// limit, which one entry must not exceed.
const BATCH_BYTES: usize = canopy_raft::MAX_BATCH_BYTES / 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reign {
    /// Not leading (or not yet serving).
    Idle,
    /// Leading; catching up and committing `NewRoot` before serving.
    Becoming,
    /// Serving as root.
    Serving,
}

/// What the candidate's background tasks report to the runtime.
#[derive(Debug)]
pub(crate) enum Report {
    Ready {
        reign: u64,
        view: Option<Box<TreeView>>,
    },
    Failed {
        reign: u64,
        error: String,
    },
    Committed {
        reign: u64,
        up_to: u64,
    },
    Lost {
        reign: u64,
        leader: Option<NodeId>,
        error: String,
    },
}

pub(crate) enum CandidateEvent {
    /// Leadership may have changed, or it is time to look again.
    Check,
    Report(Report),
}

/// The receiving ends the runtime's loop waits on.
pub(crate) struct CandidateChannels {
    leadership: watch::Receiver<Leadership>,
    leadership_open: bool,
    reports: mpsc::UnboundedReceiver<Report>,
    check: tokio::time::Interval,
}

impl CandidateChannels {
    pub(crate) async fn next(&mut self) -> CandidateEvent {
        let leadership_open = self.leadership_open;
        tokio::select! {
            changed = self.leadership.changed(), if leadership_open => {
                if changed.is_err() {
                    self.leadership_open = false;
                }
                CandidateEvent::Check
            }
            Some(report) = self.reports.recv() => CandidateEvent::Report(report),
            _ = self.check.tick() => CandidateEvent::Check,
        }
    }
}

pub(crate) struct Candidate {
    group: RootGroup,
    leadership: watch::Receiver<Leadership>,
    reports: mpsc::UnboundedSender<Report>,
    reign_id: u64,
    reign: Reign,
    proposer: Option<mpsc::UnboundedSender<(u64, ViewChange)>>,
    /// A leader that no quorum acknowledged for this long stops serving: the others may
    /// already have elected a new leader.
    lease: Duration,
    /// The version of the committed revocation lists last put in force here.
    revocations_seen: u64,
}

impl Candidate {
    pub(crate) fn new(group: RootGroup) -> (Candidate, CandidateChannels) {
        let config = group.raft().config();
        let heartbeat = Duration::from_millis(config.heartbeat_interval.max(1));
        let election_max = Duration::from_millis(config.election_timeout_max);
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let mut check = tokio::time::interval(heartbeat);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let channels = CandidateChannels {
            leadership: group.leadership(),
            leadership_open: true,
            reports,
            check,
        };
        let candidate = Candidate {
            leadership: group.leadership(),
            group,
            reports: reports_tx,
            reign_id: 0,
            reign: Reign::Idle,
            proposer: None,
            lease: election_max,
            revocations_seen: 0,
        };
        (candidate, channels)
    }

    pub(crate) fn on_link_closed(&self, peer: NodeId) {
        self.group.on_link_closed(peer);
    }

    /// Queues a change for commit; the proposer commits in order, in batches.
    pub(crate) fn propose(&self, seq: u64, change: ViewChange) {
        let queued = self
            .proposer
            .as_ref()
            .is_some_and(|p| p.send((seq, change)).is_ok());
        if !queued {
            warn!("a change was proposed outside a reign; it will not be acted on");
        }
    }

    fn leads(&self) -> (bool, Option<NodeId>) {
        let l = self.leadership.borrow();
        let fresh = l.since_quorum_ack.is_none_or(|age| age <= self.lease);
        (l.is_leader && fresh, l.leader)
    }

    fn begin_reign(&mut self, id: NodeId, region: String, address: String) {
        self.reign_id += 1;
        self.reign = Reign::Becoming;
        let (reign, group, reports) = (self.reign_id, self.group.clone(), self.reports.clone());
        tokio::spawn(async move {
            let new_root = ViewChange::NewRoot {
                root: id,
                region,
                address,
            };
            let result = async {
                group.catch_up().await?;
                group.propose(vec![new_root]).await
            }
            .await;
            let report = match result {
                Ok(_) => Report::Ready {
                    reign,
                    view: group.view().map(Box::new),
                },
                Err(e) => Report::Failed {
                    reign,
                    error: e.to_string(),
                },
            };
            let _ = reports.send(report);
        });
    }

    fn serve(&mut self) {
        self.reign = Reign::Serving;
        let (tx, rx) = mpsc::unbounded_channel();
        self.proposer = Some(tx);
        let (reign, group, reports) = (self.reign_id, self.group.clone(), self.reports.clone());
        tokio::spawn(run_proposer(reign, group, rx, reports));
    }

    fn end_reign(&mut self) {
        self.reign_id += 1;
        self.reign = Reign::Idle;
        self.proposer = None;
    }
}

/// Commits queued changes in order, as many per Raft entry as are waiting and fit one entry
/// (by count and by encoded size, so no batch is ever refused for its size).
async fn run_proposer(
    reign: u64,
    group: RootGroup,
    mut queue: mpsc::UnboundedReceiver<(u64, ViewChange)>,
    reports: mpsc::UnboundedSender<Report>,
) {
    let mut carried: Option<(u64, ViewChange)> = None;
    loop {
        let (first_seq, first) = match carried.take() {
            Some(next) => next,
            None => match queue.recv().await {
                Some(next) => next,
                None => return,
            },
        };
        let mut up_to = first_seq;
        let mut bytes = encoded_len(&first);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok((seq, change)) => {
                    let len = encoded_len(&change);
                    if bytes + len > BATCH_BYTES {
                        carried = Some((seq, change));
                        break;
                    }
                    bytes += len;
                    up_to = seq;
                    batch.push(change);
                }
                Err(_) => break,
            }
        }
        let report = match group.propose(batch).await {
            Ok(_) => Report::Committed { reign, up_to },
            Err(e) => Report::Lost {
                reign,
                leader: group.leadership().borrow().leader,
                error: e.to_string(),
            },
        };
        let lost = matches!(report, Report::Lost { .. });
        if reports.send(report).is_err() || lost {
            return;
        }
    }
}

/// A change's size in a Raft entry (plus a separator).
fn encoded_len(change: &ViewChange) -> usize {
    serde_json::to_vec(change).map_or(usize::MAX / 2, |v| v.len() + 1)
}

impl Runtime {
    pub(crate) fn on_candidate_event(&mut self, event: CandidateEvent) {
        match event {
            CandidateEvent::Check => {
                self.follow_committed_revocations();
                self.check_leadership();
            }
            CandidateEvent::Report(report) => self.on_report(report),
        }
    }

    /// Puts the revocation lists the group committed in force here as soon as this candidate
    /// applies them (a follower that restarted or missed the leader's push included).
    fn follow_committed_revocations(&mut self) {
        let Some(candidate) = self.candidate.as_mut() else {
            return;
        };
        let version = candidate.group.revocations_version();
        if version == candidate.revocations_seen {
            return;
        }
        candidate.revocations_seen = version;
        let wire: Vec<bytes::Bytes> = candidate
            .group
            .revocations()
            .into_iter()
            .map(bytes::Bytes::from)
            .collect();
        let (lists, _) = crate::revocations::parse_lists(&wire);
        if crate::revocations::adopt(&self.net, lists, "root group") {
            self.flood_revocations(None);
        }
    }

    fn check_leadership(&mut self) {
        let id = self.node.id();
        let region = self.node.region().to_owned();
        let address = self.net.local_addr().to_string();
        let Some(candidate) = self.candidate.as_mut() else {
            return;
        };
        let (leads, leader) = candidate.leads();
        let leader = leader.filter(|&l| l != id || leads);
        match (leads, candidate.reign) {
            (true, Reign::Idle) => {
                info!(node = id, "leading the root group; taking over as root");
                candidate.begin_reign(id, region, address);
                // Until it serves, it must not send joiners back to the old leader (which
                // may already name it): it names no one and joiners retry shortly.
                self.handle(Input::StepDown { leader: Some(id) });
            }
            (true, _) => {}
            (false, Reign::Idle) => {
                if leader != self.node.known_leader() {
                    self.handle(Input::StepDown { leader });
                }
            }
            (false, _) => {
                info!(
                    node = id,
                    ?leader,
                    "no longer leading; stepping down as root"
                );
                candidate.end_reign();
                self.handle(Input::StepDown { leader });
            }
        }
    }

    fn on_report(&mut self, report: Report) {
        let id = self.node.id();
        let Some(candidate) = self.candidate.as_mut() else {
            return;
        };
        match report {
            Report::Ready { reign, view } if reign == candidate.reign_id => match view {
                Some(view) => {
                    info!(
                        node = id,
                        epoch = view.epoch,
                        nodes = view.len(),
                        "serving as root"
                    );
                    candidate.serve();
                    let committed = candidate.group.revocations();
                    self.handle(Input::BecomeRoot { view });
                    // What the group committed is in force at its new root, even if this
                    // candidate missed the old leader's push.
                    let wire: Vec<bytes::Bytes> =
                        committed.into_iter().map(bytes::Bytes::from).collect();
                    let (lists, _) = crate::revocations::parse_lists(&wire);
                    if crate::revocations::adopt(&self.net, lists, "root group") {
                        self.flood_revocations(None);
                    }
                }
                None => {
                    warn!(node = id, "no tree view after NewRoot committed");
                    candidate.end_reign();
                }
            },
            Report::Failed { reign, error } if reign == candidate.reign_id => {
                warn!(node = id, %error, "could not take over as root; will retry");
                candidate.end_reign();
            }
            Report::Committed { reign, up_to } if reign == candidate.reign_id => {
                self.handle(Input::Committed { up_to });
            }
            Report::Lost {
                reign,
                leader,
                error,
            } if reign == candidate.reign_id => {
                warn!(node = id, %error, "commit failed; stepping down as root");
                candidate.end_reign();
                self.handle(Input::StepDown { leader });
            }
            // A report from an ended reign: whatever it says is no longer ours to act on.
            _ => {}
        }
    }

    /// Takes Raft and operator traffic out of the message stream; returns the message if it
    /// is tree traffic.
    pub(crate) fn take_candidate_message(
        &mut self,
        from: &Identity,
        msg: canopy_proto::ControlMessage,
    ) -> Option<canopy_proto::ControlMessage> {
        match msg.body {
            Some(Body::RaftRequest(_) | Body::RaftResponse(_)) => {
                if let (Some(candidate), Some(body)) = (&self.candidate, msg.body) {
                    candidate.group.on_message(from.node_id, body);
                }
                None
            }
            Some(Body::AdminRequest(request)) => {
                let group = self.candidate.as_ref().map(|c| c.group.clone());
                let net = self.net.clone();
                let permit = self.admin_permits.clone().try_acquire_owned().ok();
                tokio::spawn(answer_admin(group, net, from.node_id, request, permit));
                None
            }
            Some(Body::AdminResponse(_)) => None,
            _ => Some(msg),
        }
    }
}
