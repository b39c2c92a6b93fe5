//! A root candidate's side of the runtime: it relays the root group's news to the tree
//! node, carries out what the node asks of Raft (take over, commit, elect), relays the
//! answers back, and hands Raft and operator traffic to the group.
//!
//! Every decision (when to take over, when to step down, when to ask for an election) is
//! the tree core's (`canopy_tree`'s reigns); this module only moves news and answers. Every
//! answer carries the reign it belongs to, and the node ignores answers for another reign.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use canopy_net::Identity;
use canopy_proto::Body;
use canopy_raft::{Leadership, RootGroup};
use canopy_tree::{Input, TreeView, ViewChange};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::admin::answer_admin;
use crate::runtime::Runtime;

/// Largest number of changes committed as one Raft entry.
const MAX_BATCH: usize = 512;
/// Largest encoded size of the changes committed as one Raft entry: well under the group's
/// limit, which one entry must not exceed.
const BATCH_BYTES: usize = canopy_raft::MAX_BATCH_BYTES / 2;

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
}

pub(crate) enum CandidateEvent {
    /// Leadership may have changed, or it is time to relay the news again.
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
    /// The reign the node serves in (0: none). A proposer drops what its reign queued once
    /// that reign has ended, so an ended reign's changes never commit behind the next one.
    serving_reign: Arc<AtomicU64>,
    reports: mpsc::UnboundedSender<Report>,
    /// The proposer of the reign that proposed last.
    proposer: Option<(u64, mpsc::UnboundedSender<(u64, ViewChange)>)>,
    /// The version of the committed revocation lists last put in force here.
    revocations_seen: u64,
}

impl Candidate {
    pub(crate) fn new(group: RootGroup) -> (Candidate, CandidateChannels) {
        let config = group.raft().config();
        let heartbeat = Duration::from_millis(config.heartbeat_interval.max(1));
        let (reports_tx, reports) = mpsc::unbounded_channel();
        // News goes to the node every heartbeat: the leader's lease is renewed from it.
        let mut check = tokio::time::interval(heartbeat);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let channels = CandidateChannels {
            leadership: group.leadership(),
            leadership_open: true,
            reports,
            check,
        };
        let candidate = Candidate {
            group,
            serving_reign: Arc::new(AtomicU64::new(0)),
            reports: reports_tx,
            proposer: None,
            revocations_seen: 0,
        };
        (candidate, channels)
    }

    pub(crate) fn group(&self) -> &RootGroup {
        &self.group
    }

    pub(crate) fn on_link_closed(&self, peer: canopy_tree::NodeId) {
        self.group.on_link_closed(peer);
    }

    /// Records the reign the node serves in after each input (0 when it does not serve).
    pub(crate) fn set_serving_reign(&self, reign: u64) {
        self.serving_reign.store(reign, Ordering::SeqCst);
    }

    /// Queues a change of `reign` for commit; each reign's proposer commits in order, in
    /// batches. A new reign's first proposal retires the previous reign's proposer.
    pub(crate) fn propose(&mut self, reign: u64, seq: u64, change: ViewChange) {
        if self.proposer.as_ref().is_none_or(|(r, _)| *r != reign) {
            let (tx, rx) = mpsc::unbounded_channel();
            let (group, reports) = (self.group.clone(), self.reports.clone());
            let serving = self.serving_reign.clone();
            tokio::spawn(run_proposer(reign, serving, group, rx, reports));
            self.proposer = Some((reign, tx));
        }
        let queued = self
            .proposer
            .as_ref()
            .is_some_and(|(_, p)| p.send((seq, change)).is_ok());
        if !queued {
            let _ = self.reports.send(Report::Failed {
                reign,
                error: "the proposer stopped".into(),
            });
        }
    }

    /// Commits the takeover's `NewRoot` and reports the view it produced.
    pub(crate) fn take_over(&self, reign: u64, change: ViewChange) {
        let (group, reports) = (self.group.clone(), self.reports.clone());
        tokio::spawn(async move {
            let report = match group.propose(vec![change]).await {
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

    pub(crate) fn elect(&self) {
        self.group.elect();
    }
}

/// Serves the endpoint's Raft lane: checks every message against its sender's certificate
/// as the node's control path would (`authorize`: only root candidates speak Raft, sizes
/// bounded), refuses and bans a sender that may not (counted in `refused`), and hands the
/// rest to the group, which answers requests on tasks of its own and checks membership.
pub(crate) async fn serve_raft_lane(
    group: RootGroup,
    net: canopy_net::NetEndpoint,
    mut lane: mpsc::Receiver<canopy_net::NetEvent>,
    ban: Duration,
    refused: Arc<AtomicU64>,
) {
    while let Some(event) = lane.recv().await {
        let canopy_net::NetEvent::Message { from, msg } = event else {
            continue;
        };
        if let Err(refusal) = crate::authorize(&from, &msg, net.max_frame_len()) {
            refused.fetch_add(1, Ordering::Relaxed);
            warn!(peer = from.node_id, %refusal, "refusing peer");
            net.ban(from.node_id, ban, &refusal.to_string());
            continue;
        }
        if let Some(body) = msg.body {
            group.on_message(from.node_id, body);
        }
    }
}

/// Commits queued changes in order, as many per Raft entry as are waiting and fit one entry
/// (by count and by encoded size, so no batch is ever refused for its size).
async fn run_proposer(
    reign: u64,
    serving: Arc<AtomicU64>,
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
        if serving.load(Ordering::SeqCst) != reign {
            // The reign ended: what it decided and did not commit is dropped with it.
            return;
        }
        let report = match group.propose(batch).await {
            Ok(_) => Report::Committed { reign, up_to },
            Err(e) => Report::Failed {
                reign,
                error: e.to_string(),
            },
        };
        let lost = matches!(report, Report::Failed { .. });
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
                self.relay_leadership();
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
        self.enforce_committed_revocations();
    }

    /// Puts the revocation lists the group committed in force here, and passes them on if
    /// they changed anything.
    fn enforce_committed_revocations(&mut self) {
        let Some(candidate) = self.candidate.as_ref() else {
            return;
        };
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

    /// Relays the group's news, with this candidate's own evidence of it.
    pub(crate) fn relay_leadership(&mut self) {
        let Some(candidate) = self.candidate.as_ref() else {
            return;
        };
        let news = candidate.group.leadership_now();
        let contact = news.contact.map(|at| self.time_of(at.into()));
        self.handle(Input::Leadership {
            term: news.term,
            leader: news.leader,
            contact,
        });
    }

    fn on_report(&mut self, report: Report) {
        let id = self.node.id();
        match report {
            Report::Ready {
                reign,
                view: Some(view),
            } => {
                info!(
                    node = id,
                    reign,
                    epoch = view.epoch,
                    nodes = view.len(),
                    "NewRoot committed"
                );
                self.handle(Input::BecomeRoot { reign, view });
                if !self.node.is_serving_root() {
                    return;
                }
                // What the group committed is in force at its new root, even if this
                // candidate missed the old leader's push.
                self.enforce_committed_revocations();
            }
            Report::Ready { reign, view: None } => {
                warn!(node = id, reign, "no tree view after NewRoot committed");
                self.handle(Input::CommitFailed { reign });
            }
            Report::Failed { reign, error } => {
                if reign == self.node.reign() {
                    warn!(node = id, reign, %error, "a commit failed");
                } else {
                    debug!(node = id, reign, %error, "a commit of an ended reign failed");
                }
                self.handle(Input::CommitFailed { reign });
            }
            Report::Committed { reign, up_to } => {
                self.handle(Input::Committed { reign, up_to });
            }
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
