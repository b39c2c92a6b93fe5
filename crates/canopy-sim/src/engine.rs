//! The event loop: a priority queue of message arrivals, wake-ups and injected inputs.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use canopy_proto::{Body, ControlMessage};
use canopy_tree::{
    Input, KeyTag, Node, NodeId, Output, Role, RootCandidate, Time, TreeConfig, TreeEvent,
};

use crate::group::{Commit, GroupActions, GroupEvent, GroupModel, GroupSpec};

/// Latency of a link: `base` plus a per-link constant in `[0, jitter)` drawn from the seed.
/// Constant per link, so messages on one link arrive in order (as on a QUIC stream).
#[derive(Debug, Clone, Copy)]
pub struct LatencyModel {
    pub base: Duration,
    pub jitter: Duration,
}

impl Default for LatencyModel {
    fn default() -> Self {
        LatencyModel {
            base: Duration::from_millis(2),
            jitter: Duration::from_millis(8),
        }
    }
}

/// Messages one node sent and received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeCounters {
    pub multicast_sent: u64,
    pub multicast_received: u64,
    pub control_sent: u64,
    pub control_received: u64,
}

impl NodeCounters {
    /// Multicast messages sent plus received.
    pub fn multicast_total(&self) -> u64 {
        self.multicast_sent + self.multicast_received
    }
}

/// A multicast handed to a node's application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimDelivery {
    pub receiver: NodeId,
    pub origin: NodeId,
    pub origin_seq: u64,
    pub key_tag: KeyTag,
}

/// One multicast copy on one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MulticastHop {
    pub from: NodeId,
    pub to: NodeId,
    pub origin: NodeId,
    pub origin_seq: u64,
    pub key_tag: KeyTag,
}

enum Event {
    Message {
        from: NodeId,
        to: NodeId,
        msg: ControlMessage,
    },
    Wake(NodeId),
    Input(NodeId, Input),
    Group(GroupEvent),
}

/// Simulated time advances in steps of this many nanoseconds (0.1 ms). Events due in the
/// same step run in the order they were scheduled, which keeps every link FIFO, and the
/// queue holds a few thousand buckets instead of millions of heap entries.
const TICK_NANOS: u64 = 100_000;

/// The simulator. Node ids are dense, starting at 1 (the first node added).
pub struct Sim {
    now: Time,
    seed: u64,
    config: Arc<TreeConfig>,
    roots: Arc<[RootCandidate]>,
    latency: LatencyModel,
    nodes: Vec<Option<Node>>,
    counters: Vec<NodeCounters>,
    /// Pending events by due tick, each bucket in scheduling order.
    queue: BTreeMap<u64, VecDeque<Event>>,
    outputs: Vec<Output>,
    deliveries: Vec<SimDelivery>,
    /// Every multicast copy sent, when recording is on.
    multicast_hops: Option<Vec<MulticastHop>>,
    messages_lost: u64,
    events_processed: u64,
    /// The replicated root's group model (`None`: a single root that commits as it decides).
    group: Option<GroupModel>,
    /// Events held for paused nodes, in arrival order (index id - 1).
    paused: Vec<Option<Vec<Event>>>,
    /// Root actions (proposals, placements, culls) taken by a candidate the group did not
    /// consider its leader at that moment: must stay 0.
    stale_root_actions: u64,
    /// Clients the root moved (cache-aware reallocation).
    reallocations: u64,
}

fn nanos(t: Time) -> u64 {
    u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Sim {
    /// An empty network. The first node added must be the root.
    pub fn new(config: TreeConfig, latency: LatencyModel, seed: u64) -> Sim {
        Sim {
            now: Time::ZERO,
            seed,
            config: Arc::new(config),
            roots: Arc::from(vec![RootCandidate {
                id: 1,
                address: String::new(),
            }]),
            latency,
            nodes: Vec::new(),
            counters: Vec::new(),
            queue: BTreeMap::new(),
            outputs: Vec::new(),
            deliveries: Vec::new(),
            multicast_hops: None,
            messages_lost: 0,
            events_processed: 0,
            group: None,
            paused: Vec::new(),
            stale_root_actions: 0,
            reallocations: 0,
        }
    }

    /// An empty network whose root is replicated: nodes 1..=`spec.candidates` must be added
    /// first, as root candidates; candidate 1 leads the first term.
    pub fn replicated(
        config: TreeConfig,
        latency: LatencyModel,
        seed: u64,
        spec: GroupSpec,
    ) -> Sim {
        let mut sim = Sim::new(config, latency, seed);
        sim.roots = (1..=spec.candidates as NodeId)
            .map(|id| RootCandidate {
                id,
                address: String::new(),
            })
            .collect();
        sim.group = Some(GroupModel::new(spec));
        sim.schedule(Time::ZERO, Event::Group(GroupEvent::Heartbeat));
        sim
    }

    /// Clients the root moved so far (cache-aware reallocation).
    pub fn reallocations(&self) -> u64 {
        self.reallocations
    }

    /// Root actions taken by a candidate that did not lead at the time (must be 0).
    pub fn stale_root_actions(&self) -> u64 {
        self.stale_root_actions
    }

    /// The candidate the group's model says leads, and its term.
    pub fn group_leader(&self) -> Option<(NodeId, u64)> {
        let group = self.group.as_ref()?;
        group.leader.map(|l| (l, group.term))
    }

    /// Elections won so far.
    pub fn elections(&self) -> u64 {
        self.group.as_ref().map_or(0, |g| g.elections)
    }

    /// Candidates that serve as root right now and are not paused.
    pub fn acting_roots(&self) -> Vec<NodeId> {
        let candidates = self.roots.len() as NodeId;
        (1..=candidates)
            .filter(|&id| !self.is_paused(id))
            .filter(|&id| self.node(id).is_some_and(|n| n.is_serving_root()))
            .collect()
    }

    /// Stops a node as SIGSTOP would: it handles nothing until [`Sim::resume`], and what
    /// arrives meanwhile waits for it.
    pub fn pause(&mut self, node: NodeId) {
        if let Some(slot) = self.paused.get_mut((node - 1) as usize) {
            slot.get_or_insert_with(Vec::new);
        }
    }

    /// Wakes a paused node: everything that arrived meanwhile is handed to it now, in order.
    pub fn resume(&mut self, node: NodeId) {
        let held = self
            .paused
            .get_mut((node - 1) as usize)
            .and_then(Option::take)
            .unwrap_or_default();
        let now = self.now;
        for event in held {
            self.schedule(now, event);
        }
    }

    pub fn is_paused(&self, node: NodeId) -> bool {
        node >= 1
            && self
                .paused
                .get((node - 1) as usize)
                .is_some_and(Option::is_some)
    }

    /// Starts a crashed root candidate again, as a fresh process (its group state is the
    /// model's).
    pub fn restart(&mut self, node: NodeId) {
        let Some(reign) = self.group.as_ref().map(|g| g.spec.reign()) else {
            return;
        };
        let fresh = Node::new(
            node,
            Role::Root,
            "",
            "",
            Arc::clone(&self.config),
            Arc::clone(&self.roots),
            mix(self.seed ^ mix(node) ^ mix(self.events_processed)),
        )
        .replicated(reign);
        if let Some(slot) = self.slot(node) {
            *slot = Some(fresh);
        }
        self.schedule(self.now, Event::Input(node, Input::Start));
    }

    /// Records every multicast copy sent (for tests; costs memory).
    pub fn record_multicast_hops(&mut self) {
        self.multicast_hops = Some(Vec::new());
    }

    /// The tree settings every node uses.
    pub fn config(&self) -> &TreeConfig {
        &self.config
    }

    /// Current simulated time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// Adds a node that starts at `start_at`; returns its id. The first node must be the
    /// root (id 1).
    pub fn add_node(&mut self, role: Role, region: &str, start_at: Time) -> NodeId {
        let id = self.nodes.len() as NodeId + 1;
        let candidates = self.roots.len() as NodeId;
        assert!(
            (id <= candidates) == (role == Role::Root),
            "the first nodes, and only they, are the root candidates"
        );
        let mut node = Node::new(
            id,
            role,
            region,
            "",
            Arc::clone(&self.config),
            Arc::clone(&self.roots),
            mix(self.seed ^ mix(id)),
        );
        if let (Some(group), Role::Root) = (&self.group, role) {
            node = node.replicated(group.spec.reign());
        }
        self.nodes.push(Some(node));
        self.paused.push(None);
        self.counters.push(NodeCounters::default());
        self.schedule(start_at.max(self.now), Event::Input(id, Input::Start));
        id
    }

    /// Injects an application input (subscribe, publish, leave, …) at time `at`.
    pub fn input_at(&mut self, node: NodeId, input: Input, at: Time) {
        self.schedule(at.max(self.now), Event::Input(node, input));
    }

    /// Kills a node abruptly: it sends nothing more and every message to it is lost.
    pub fn crash(&mut self, node: NodeId) {
        if let Some(slot) = self.slot(node) {
            *slot = None;
        }
    }

    /// Whether the node exists, has not crashed and has not left.
    pub fn is_alive(&self, node: NodeId) -> bool {
        self.node(node).is_some_and(|n| !n.has_left())
    }

    /// A node's state, if it has not crashed.
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        let index = usize::try_from(id.checked_sub(1)?).ok()?;
        self.nodes.get(index)?.as_ref()
    }

    fn slot(&mut self, id: NodeId) -> Option<&mut Option<Node>> {
        let index = usize::try_from(id.checked_sub(1)?).ok()?;
        self.nodes.get_mut(index)
    }

    /// Every node ever added, alive or not.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> {
        1..=self.nodes.len() as NodeId
    }

    /// Live nodes.
    pub fn live_nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().flatten().filter(|n| !n.has_left())
    }

    /// Per-node message counters.
    pub fn counters(&self, id: NodeId) -> NodeCounters {
        let index = id.saturating_sub(1) as usize;
        self.counters.get(index).copied().unwrap_or_default()
    }

    /// Zeroes every counter.
    pub fn reset_counters(&mut self) {
        self.counters.fill(NodeCounters::default());
        if let Some(hops) = &mut self.multicast_hops {
            hops.clear();
        }
    }

    /// Takes the deliveries made since the last call.
    pub fn take_deliveries(&mut self) -> Vec<SimDelivery> {
        std::mem::take(&mut self.deliveries)
    }

    /// Every multicast copy sent since the counters were last reset, if recording.
    pub fn multicast_hops(&self) -> Option<&[MulticastHop]> {
        self.multicast_hops.as_deref()
    }

    /// Messages addressed to crashed or departed nodes.
    pub fn messages_lost(&self) -> u64 {
        self.messages_lost
    }

    /// Events handled so far.
    pub fn events_processed(&self) -> u64 {
        self.events_processed
    }

    /// Runs every event due up to and including `until`, then sets the clock to `until`.
    pub fn run_until(&mut self, until: Time) {
        let last_tick = nanos(until) / TICK_NANOS;
        while let Some(mut bucket) = self.queue.first_entry() {
            let tick = *bucket.key();
            if tick > last_tick {
                break;
            }
            let Some(event) = bucket.get_mut().pop_front() else {
                bucket.remove();
                continue;
            };
            if bucket.get().is_empty() {
                bucket.remove();
            }
            self.now = Time::from_nanos(tick * TICK_NANOS);
            self.events_processed += 1;
            self.dispatch(event);
        }
        self.now = self.now.max(until);
    }

    /// Runs for `span` of simulated time.
    pub fn run_for(&mut self, span: Duration) {
        self.run_until(self.now + span);
    }

    /// Queues `event` for the first tick at or after `at` (never before: a wake-up must
    /// not arrive before the deadline it was asked for).
    fn schedule(&mut self, at: Time, event: Event) {
        let tick = nanos(at).div_ceil(TICK_NANOS);
        self.queue.entry(tick).or_default().push_back(event);
    }

    fn link_latency(&self, a: NodeId, b: NodeId) -> Duration {
        let jitter = self.latency.jitter.as_nanos() as u64;
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let extra = if jitter == 0 {
            0
        } else {
            mix(self.seed ^ mix(lo) ^ mix(hi).rotate_left(17)) % jitter
        };
        self.latency.base + Duration::from_nanos(extra)
    }

    fn dispatch(&mut self, event: Event) {
        let target = match &event {
            Event::Message { to, .. } => Some(*to),
            Event::Wake(id) | Event::Input(id, _) => Some(*id),
            Event::Group(_) => None,
        };
        if let Some(held) = target
            .and_then(|id| self.paused.get_mut((id - 1) as usize))
            .and_then(Option::as_mut)
        {
            held.push(event);
            return;
        }
        let (id, input) = match event {
            Event::Group(group_event) => {
                self.on_group_event(group_event);
                return;
            }
            Event::Message { from, to, msg } => {
                if !self.is_alive(to) {
                    self.messages_lost += 1;
                    return;
                }
                let index = (to - 1) as usize;
                if matches!(msg.body, Some(Body::Multicast(_))) {
                    self.counters[index].multicast_received += 1;
                } else {
                    self.counters[index].control_received += 1;
                }
                (to, Input::Message { from, msg })
            }
            Event::Wake(id) => (id, Input::Tick),
            Event::Input(id, input) => (id, input),
        };
        let mut outputs = std::mem::take(&mut self.outputs);
        let now = self.now;
        match self.slot(id) {
            Some(Some(node)) => node.handle_into(input, now, &mut outputs),
            _ => return,
        }
        for output in outputs.drain(..) {
            self.apply(id, output);
        }
        self.outputs = outputs;
    }

    fn on_group_event(&mut self, event: GroupEvent) {
        let Some(mut group) = self.group.take() else {
            return;
        };
        let up = |id: NodeId| self.is_alive(id) && !self.is_paused(id);
        let now = self.now;
        let actions = match event {
            GroupEvent::Heartbeat => group.heartbeat(now, &up),
            GroupEvent::Vote { candidate, term } => group.vote(candidate, term, now, &up),
            GroupEvent::Commit {
                node,
                term,
                reign,
                what,
            } => group.commit(node, term, reign, what, &self.config, &up),
        };
        self.group = Some(group);
        self.carry_out(actions);
    }

    fn carry_out(&mut self, actions: GroupActions) {
        let now = self.now;
        for (node, input) in actions.inputs {
            self.schedule(now, Event::Input(node, input));
        }
        for (after, event) in actions.later {
            self.schedule(now + after, Event::Group(event));
        }
    }

    /// Counts a root action by a candidate the group does not consider its leader.
    fn check_root_action(&mut self, from: NodeId, output: &Output) {
        let Some(group) = &self.group else {
            return;
        };
        let root_action = match output {
            Output::Propose { .. } => true,
            Output::Send { msg, .. } => matches!(
                msg.body,
                Some(
                    Body::AdoptChild(_)
                        | Body::AssignParent(_)
                        | Body::Cull(_)
                        | Body::ReleaseChild(_)
                )
            ),
            _ => false,
        };
        if root_action && group.is_candidate(from) && group.leader != Some(from) {
            self.stale_root_actions += 1;
        }
    }

    fn apply(&mut self, from: NodeId, output: Output) {
        let index = (from - 1) as usize;
        self.check_root_action(from, &output);
        match output {
            Output::Send { to, msg } => {
                if let Some(Body::Multicast(m)) = &msg.body {
                    self.counters[index].multicast_sent += 1;
                    if let Some(hops) = &mut self.multicast_hops {
                        hops.push(MulticastHop {
                            from,
                            to,
                            origin: m.origin,
                            origin_seq: m.origin_seq,
                            key_tag: m.key_tag,
                        });
                    }
                } else {
                    self.counters[index].control_sent += 1;
                }
                let at = self.now + self.link_latency(from, to);
                self.schedule(at, Event::Message { from, to, msg });
            }
            Output::WakeAt(at) => self.schedule(at.max(self.now), Event::Wake(from)),
            Output::Deliver(m) => self.deliveries.push(SimDelivery {
                receiver: from,
                origin: m.origin,
                origin_seq: m.origin_seq,
                key_tag: m.key_tag,
            }),
            // Tree events are for logs; the simulator measures through counters.
            Output::Event(TreeEvent::Reallocated { .. }) => self.reallocations += 1,
            Output::Event(_) => {}
            Output::Propose { reign, seq, change } => {
                if let Some(group) = &self.group {
                    let actions = group.propose(from, reign, Commit::Change { seq, change });
                    self.carry_out(actions);
                }
            }
            Output::TakeOver { reign, change } => {
                if let Some(group) = &self.group {
                    let actions = group.propose(from, reign, Commit::TakeOver(change));
                    self.carry_out(actions);
                }
            }
            Output::Elect { .. } => {
                if let Some(group) = &self.group {
                    let actions = group.on_elect(from);
                    self.carry_out(actions);
                }
            }
            // The node already forgot the peer and sent it a Disconnect; a simulated link has
            // nothing more to close, the peer sees the link end.
            Output::CloseLink { peer, .. } => {
                let at = self.now + self.link_latency(from, peer);
                self.schedule(at, Event::Input(peer, Input::LinkClosed { peer: from }));
            }
        }
    }
}
