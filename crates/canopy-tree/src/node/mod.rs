//! One tree node: its state, the input dispatcher and the timers.

mod budget;
mod children;
mod leadership;
mod membership;
mod outside;
mod placement;
mod reallocate;

pub use placement::{placement_grant, placement_grant_at_epoch};
mod root;
mod routing;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use canopy_proto::v1::SubtreeSize;
use canopy_proto::{Body, ControlMessage};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::interest::{FilterKey, InterestTable};
use crate::io::{DropReason, Input, Output, TreeEvent};
use crate::{
    node_tag, KeyTag, NodeId, ReignConfig, Role, Time, TreeConfig, TreeView, BROADCAST_TAG,
};

use children::ChildLink;
use root::RootState;

/// A root candidate a node can send join requests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootCandidate {
    pub id: NodeId,
    /// Where it accepts connections ("host:port"); empty in the simulator.
    pub address: String,
}

/// What a node knows of one child, for inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildInfo {
    pub id: NodeId,
    pub role: Role,
    /// The child has attached (sent its snapshot); only attached children get multicasts.
    pub attached: bool,
    pub assignment_id: u64,
    /// Subtree size the child last reported.
    pub subtree_clients: u64,
    pub subtree_routers: u64,
}

#[derive(Debug, Clone)]
struct ParentLink {
    id: NodeId,
    address: String,
    assignment_id: u64,
    last_heard: Time,
}

/// A client the root moved keeps its old parent beside the new one for a while, so that
/// nothing sent its way is lost while its interest travels through the new parent (make
/// before break). Copies that come both ways are delivered once.
#[derive(Debug, Clone)]
struct Handoff {
    old_parent: NodeId,
    /// When the client says goodbye to the old parent.
    leave_at: Time,
    said_goodbye: bool,
    /// When copies stop being checked against `seen` (late copies of the last multicasts
    /// may still be on their way along the other path).
    forget_at: Time,
    /// (origin, origin sequence, payload digest) of what was delivered during the handoff.
    seen: std::collections::HashSet<(NodeId, u64, u64)>,
}

/// Most multicasts a handoff remembers; past it, a copy arriving both ways may be delivered
/// twice (the application's records carry sequence numbers and tolerate that).
const HANDOFF_MAX_SEEN: usize = 1 << 16;
/// Deliveries a client that may be moved remembers, to seed its next handoff's `seen`.
const RECENT_DELIVERIES: usize = 256;

#[derive(Debug, Clone)]
struct JoinState {
    attempt: u32,
    retry_at: Time,
    /// A `NotLeader` redirect was followed during this attempt. Another one waits for the
    /// retry: two candidates that each believe the other leads would otherwise bounce the
    /// joiner between them with no pause.
    redirected: bool,
    /// Candidates asked during this join (and its retries): any of them may answer.
    asked: Vec<NodeId>,
    /// Refusals from a busy root in a row (each doubles the pause before asking again).
    busy: u32,
    /// The pending retry follows a refusal: it goes to the same candidate, as the same
    /// attempt.
    retry_busy: bool,
    /// Candidates whose connection came up during this join and has not closed since: they
    /// are alive, so a silence from one is load, not death. A retry stays with it, over the
    /// same connection, instead of moving on to a candidate that can only redirect back.
    reached: Vec<NodeId>,
    /// This attempt stayed with the candidate asked before, for being reached: the next
    /// silence moves on (a candidate up but silent, or one that knows no leader, must not
    /// hold a joiner for ever).
    stayed: bool,
}

/// A tree node as a sans-IO state machine. See the crate documentation.
#[derive(Debug)]
pub struct Node {
    id: NodeId,
    role: Role,
    region: String,
    address: String,
    config: Arc<TreeConfig>,
    roots: Arc<[RootCandidate]>,
    /// Index into `roots` of the candidate believed to lead.
    leader_index: usize,
    rng: SmallRng,
    started: bool,
    left: bool,
    parent: Option<ParentLink>,
    handoff: Option<Handoff>,
    recent_deliveries: std::collections::VecDeque<(NodeId, u64, u64)>,
    joining: Option<JoinState>,
    /// Highest assignment id obeyed: older `AssignParent`s are ignored.
    best_assignment: u64,
    epoch: u64,
    children: BTreeMap<NodeId, ChildLink>,
    interest: InterestTable,
    next_heartbeat: Time,
    interest_flush_at: Option<Time>,
    requested_wake: Option<Time>,
    origin_seq: u64,
    key_seqs: HashMap<KeyTag, u64, std::collections::hash_map::RandomState>,
    /// Present while this node serves as root.
    root: Option<Box<RootState>>,
    /// Present on a root candidate whose decisions go through Raft: it serves as root only
    /// within a reign (see `leadership`).
    reign: Option<Box<leadership::ReignState>>,
    /// The leader a replicated candidate last heard of (for redirecting joiners).
    known_leader: Option<NodeId>,
    /// Hashes peers' tags before they enter this node's filters.
    filter_key: FilterKey,
    /// Paces this node's own interest changes to what its parent allows.
    upward: budget::TagBudget,
    /// The interest work each child (by id, across its links) may still cause.
    interest_budgets: HashMap<NodeId, (Role, budget::TagBudget)>,
    /// Size of `interest_budgets` at which idle entries are next dropped.
    budgets_prune_at: usize,
}

impl Node {
    /// A node that has not started yet. `roots` lists the root candidates (the root itself
    /// is one of them); `seed` seeds the node's only source of randomness.
    pub fn new(
        id: NodeId,
        role: Role,
        region: impl Into<String>,
        address: impl Into<String>,
        config: Arc<TreeConfig>,
        roots: Arc<[RootCandidate]>,
        seed: u64,
    ) -> Node {
        Node {
            id,
            role,
            region: region.into(),
            address: address.into(),
            config,
            roots,
            leader_index: 0,
            rng: SmallRng::seed_from_u64(seed),
            started: false,
            left: false,
            parent: None,
            handoff: None,
            recent_deliveries: std::collections::VecDeque::new(),
            joining: None,
            best_assignment: 0,
            epoch: 0,
            children: BTreeMap::new(),
            interest: InterestTable::default(),
            next_heartbeat: Time::ZERO,
            interest_flush_at: None,
            requested_wake: None,
            origin_seq: 0,
            key_seqs: HashMap::default(),
            root: None,
            reign: None,
            known_leader: None,
            filter_key: FilterKey::from_seed(seed),
            upward: budget::TagBudget::full(
                budget::BudgetRate {
                    per_sec: 1.0,
                    burst: 0.0,
                },
                Time::ZERO,
            ),
            interest_budgets: HashMap::new(),
            budgets_prune_at: 0,
        }
    }

    /// Makes a root candidate replicated: it starts as a follower, serves as root only while
    /// the root group's news (`Input::Leadership`) shows it leads within its lease, and
    /// proposes every structural decision for commit before acting on it. Without this a root
    /// serves alone from the start and commits at once (a single, unreplicated root).
    #[must_use]
    pub fn replicated(mut self, reign: ReignConfig) -> Node {
        self.reign = Some(Box::new(leadership::ReignState::new(reign)));
        self
    }

    /// Feeds one input at time `now` and returns what the driver must do.
    pub fn handle(&mut self, input: Input, now: Time) -> Vec<Output> {
        let mut out = Vec::new();
        self.handle_into(input, now, &mut out);
        out
    }

    /// Like [`Node::handle`], appending to a caller-owned buffer (no allocation per call).
    pub fn handle_into(&mut self, input: Input, now: Time, out: &mut Vec<Output>) {
        if self.left {
            return;
        }
        // Before anything else: a root whose lease ran out (a paused leader waking up) must
        // not act on what it is handed. (News from the group is itself the lease's evidence.)
        if self.started && !matches!(input, Input::Leadership { .. }) {
            self.check_lease(now, out);
        }
        match input {
            Input::Start => self.start(now, out),
            Input::Subscribe(tag) => {
                if self.interest.subscribe(tag) {
                    self.schedule_interest_flush(now);
                }
            }
            Input::Unsubscribe(tag) => {
                // A node never stops wanting its own id tag.
                if tag != node_tag(self.id) && self.interest.unsubscribe(tag) {
                    self.schedule_interest_flush(now);
                }
            }
            _ if !self.started => {}
            Input::Message { from, msg } => self.on_message(from, msg, now, out),
            Input::Tick => self.on_tick(now, out),
            Input::Publish { key_tag, payload } => self.publish(key_tag, payload, out),
            Input::Leave => {
                self.leave(out);
                return;
            }
            Input::LinkUp { peer } => self.on_link_up(peer, now),
            Input::LinkClosed { peer } => self.on_link_closed(peer, now, out),
            Input::Busy { peer } => self.on_busy(peer, now),
            Input::Leadership {
                term,
                leader,
                contact,
            } => self.on_leadership(term, leader, contact, now, out),
            Input::BecomeRoot { reign, view } => self.become_root(reign, *view, now, out),
            Input::Committed { reign, up_to } => {
                if self.is_current_reign(reign) {
                    self.on_committed(up_to, now, out);
                }
            }
            Input::CommitFailed { reign } => self.on_commit_failed(reign, out),
        }
        self.request_wake(out);
    }

    fn start(&mut self, now: Time, out: &mut Vec<Output>) {
        if self.started {
            return;
        }
        self.started = true;
        self.upward = budget::TagBudget::full(self.upward_budget(), now);
        if self.upward_filters() {
            self.interest.track_outside();
        }
        if self.role == Role::Root {
            // A root has no parent: nothing is wanted above it.
            self.interest.above_is_nothing();
        }
        self.interest.subscribe(node_tag(self.id));
        let interval = self.config.heartbeat_interval;
        self.next_heartbeat = now + interval.mul_f64(self.rng.random::<f64>());
        if self.role == Role::Root {
            if self.reign.is_none() {
                let view = TreeView::new(self.id, &self.region, &self.address, &self.config);
                self.epoch = view.epoch;
                self.root = Some(Box::new(RootState::new(view, now, &self.config, None)));
            } else {
                self.start_reigns(now);
            }
        } else {
            self.begin_join(now, out);
        }
    }

    fn on_message(&mut self, from: NodeId, msg: ControlMessage, now: Time, out: &mut Vec<Output>) {
        let kind = msg.kind();
        let Some(body) = msg.body.filter(|_| from != self.id) else {
            self.dropped(from, kind, DropReason::Malformed, out);
            return;
        };
        self.refresh_neighbour(from, now);
        match body {
            Body::JoinRequest(req) => self.root_on_join(from, req, now, out),
            Body::NotLeader(redirect) => self.on_not_leader(from, redirect, now, out),
            Body::AdoptChild(adopt) => self.on_adopt(from, adopt, now, out),
            Body::AssignParent(assign) => self.on_assign(from, assign, now, out),
            Body::Reattach(reattach) => self.on_reattach(from, reattach, now, out),
            Body::Heartbeat(hb) => self.on_heartbeat(from, hb, now, out),
            Body::InterestSnapshot(snapshot) => self.on_snapshot(from, snapshot, now, out),
            Body::Cull(cull) => self.on_cull(from, cull.count, now, out),
            Body::Disconnect(disconnect) => self.on_disconnect(from, disconnect, now, out),
            Body::ChildRemoved(removed) => self.root_on_child_removed(from, removed, now, out),
            Body::ReleaseChild(release) => self.on_release(from, release, now, out),
            Body::Multicast(multicast) => self.on_multicast(from, multicast, out),
            Body::OutsideInterest(msg) => self.on_outside_interest(from, msg, now, out),
            // Raft, operator and revocation traffic belongs to the driver, never to the tree.
            Body::RaftRequest(_)
            | Body::RaftResponse(_)
            | Body::AdminRequest(_)
            | Body::AdminResponse(_)
            | Body::Revocations(_)
            | Body::LinkRefresh(_) => {
                self.dropped(from, kind, DropReason::UnexpectedMessage, out);
            }
        }
    }

    fn on_tick(&mut self, now: Time, out: &mut Vec<Output>) {
        self.requested_wake = None;
        if let Some(join) = &self.joining {
            if now >= join.retry_at {
                if join.retry_busy {
                    self.ask_again(now, out);
                } else {
                    self.resend_join(now, out);
                }
            }
        }
        self.handoff_on_tick(now, out);
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.config.heartbeat_interval;
            self.check_parent_timeout(now, out);
            self.evict_silent_children(now, out);
            self.interest_flush_at = None;
            self.send_heartbeats(now, out);
        }
        if self.interest_flush_at.is_some_and(|at| now >= at) {
            self.interest_flush_at = None;
            self.send_parent_heartbeat(now, out);
            self.send_outside(out);
        }
        if self.reign.is_some() {
            self.reign_on_tick(now, out);
        }
        if self.root.is_some() {
            self.root_on_tick(now, out);
        }
    }

    fn schedule_interest_flush(&mut self, now: Time) {
        if let Some(renumbered) = self.interest.compact_slots() {
            for link in self.children.values_mut() {
                link.interest.renumber(&renumbered);
            }
        }
        if self.interest_flush_at.is_none()
            && (self.interest.has_pending() || self.outside_work_pending())
        {
            self.interest_flush_at = Some(now + self.config.interest_batch_delay);
        }
    }

    fn request_wake(&mut self, out: &mut Vec<Output>) {
        if !self.started {
            return;
        }
        let mut next = self.next_heartbeat;
        if let Some(join) = &self.joining {
            next = next.min(join.retry_at);
        }
        if let Some(at) = self.interest_flush_at {
            next = next.min(at);
        }
        if let Some(h) = &self.handoff {
            next = next.min(if h.said_goodbye {
                h.forget_at
            } else {
                h.leave_at
            });
        }
        if let Some(root) = &self.root {
            next = next.min(root.next_rebalance).min(root.next_child_heartbeat);
            if let Some(at) = root.next_deferred_release() {
                next = next.min(at);
            }
            if let (Some(since), Some(reign)) = (root.oldest_uncommitted(), &self.reign) {
                next = next.min(since + reign.commit_timeout());
            }
        }
        if let Some(at) = self.reign.as_ref().and_then(|r| r.next_deadline()) {
            next = next.min(at);
        }
        if self.requested_wake.is_none_or(|requested| next < requested) {
            self.requested_wake = Some(next);
            out.push(Output::WakeAt(next));
        }
    }

    fn dropped(&self, from: NodeId, kind: &'static str, reason: DropReason, out: &mut Vec<Output>) {
        out.push(Output::Event(TreeEvent::Dropped { from, kind, reason }));
    }

    fn send(&self, to: NodeId, body: Body, out: &mut Vec<Output>) {
        out.push(Output::Send {
            to,
            msg: ControlMessage::new(body),
        });
    }

    /// A random tie-breaker for a placement.
    fn rng_salt(&mut self) -> u64 {
        self.rng.random::<u64>()
    }

    /// How long a moved client keeps its old parent beside the new one: long enough for its
    /// interest to reach the rest of the tree through the new one.
    fn handoff_grace(&self) -> Time {
        self.config.heartbeat_interval * 2
    }

    fn is_root_candidate(&self, id: NodeId) -> bool {
        self.roots.iter().any(|r| r.id == id)
    }

    fn leader(&self) -> Option<&RootCandidate> {
        self.roots.get(self.leader_index)
    }

    /// The size of this node's subtree, itself included.
    pub fn subtree(&self) -> SubtreeSize {
        let mut size = SubtreeSize {
            clients: u64::from(self.role == Role::Client),
            routers: u64::from(self.role.is_router()),
        };
        // Children report their own sizes: saturate rather than trust them to add up.
        for child in self.children.values().filter(|c| c.attached) {
            size.clients = size.clients.saturating_add(child.subtree.clients);
            size.routers = size.routers.saturating_add(child.subtree.routers);
        }
        size
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This node's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// This node's region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The topology epoch last seen from above.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The parent this node obeys, if any.
    pub fn parent(&self) -> Option<NodeId> {
        self.parent.as_ref().map(|p| p.id)
    }

    /// The assignment id of the link to the parent, if attached.
    pub fn parent_assignment(&self) -> Option<u64> {
        self.parent.as_ref().map(|p| p.assignment_id)
    }

    /// Whether a join request is outstanding.
    pub fn is_joining(&self) -> bool {
        self.joining.is_some()
    }

    /// Whether the node has left the tree for good.
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// The children this node currently keeps, in id order.
    pub fn children(&self) -> impl Iterator<Item = ChildInfo> + '_ {
        self.children.iter().map(|(&id, c)| c.info(id))
    }

    /// Number of children (attached or not).
    pub fn child_count(&self) -> usize {
        self.children.len()
    }

    /// Whether the link to `child` wants `tag` (the child advertised it, or it is the
    /// broadcast tag), or `None` if not a child.
    pub fn child_may_want(&self, child: NodeId, tag: KeyTag) -> Option<bool> {
        self.children
            .get(&child)
            .map(|c| c.interest.wants(tag, self.interest.slot_of(tag)))
    }

    /// What the node keeps of its child links' interest: the tags they hold, summed over
    /// links, and the bytes their sets take.
    pub fn child_interest_memory(&self) -> (usize, usize) {
        self.children.values().fold((0, 0), |(entries, bytes), c| {
            (
                entries + c.interest.len(),
                bytes + c.interest.memory_bytes(),
            )
        })
    }

    /// Whether `child` advertised `tag`, or `None` if not a child.
    pub fn child_advertised(&self, child: NodeId, tag: KeyTag) -> Option<bool> {
        self.children
            .get(&child)
            .map(|c| tag != BROADCAST_TAG && c.interest.wants(tag, self.interest.slot_of(tag)))
    }

    /// The node's aggregate interest (own subscriptions plus its children's).
    pub fn interest(&self) -> &InterestTable {
        &self.interest
    }

    /// Whether this node serves as root right now.
    pub fn is_serving_root(&self) -> bool {
        self.root.is_some()
    }

    /// Actions a replicated root holds until their decisions commit.
    pub fn held_actions(&self) -> usize {
        self.root.as_ref().map_or(0, |r| r.held_actions())
    }

    /// The leader a replicated candidate last heard of.
    pub fn known_leader(&self) -> Option<NodeId> {
        self.known_leader
    }

    /// The number of a replicated candidate's current (or last) reign; 0 before the first.
    pub fn reign(&self) -> u64 {
        self.reign.as_ref().map_or(0, |r| r.reign())
    }

    /// The root's replicated tree view (`None` on other nodes).
    pub fn view(&self) -> Option<&TreeView> {
        self.root.as_ref().map(|r| &r.view)
    }

    /// The root candidates this node knows.
    pub fn root_candidates(&self) -> &[RootCandidate] {
        &self.roots
    }

    /// Whether the connection to `peer` came up while this node has been joining and is
    /// still up: a join retry to it can go over that connection, with no fresh dial.
    pub fn join_link_is_fresh(&self, peer: NodeId) -> bool {
        self.joining
            .as_ref()
            .is_some_and(|join| join.reached.contains(&peer))
    }

    /// The address this node knows for a peer (parent, child, root candidate, or any node in
    /// the root's view), for the driver to dial.
    pub fn peer_address(&self, peer: NodeId) -> Option<&str> {
        if let Some(p) = self.parent.as_ref().filter(|p| p.id == peer) {
            return Some(&p.address);
        }
        if let Some(c) = self.children.get(&peer) {
            return Some(&c.address);
        }
        if let Some(r) = self.roots.iter().find(|r| r.id == peer) {
            return Some(&r.address);
        }
        self.view()
            .and_then(|v| v.get(peer))
            .map(|e| e.address.as_str())
    }
}
