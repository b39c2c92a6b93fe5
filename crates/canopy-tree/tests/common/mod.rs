//! Shared helpers for the state-transition tests: a test configuration, a hand-driven
//! "wire" between nodes, and matchers over outputs.
//!
//! The wire never delivers anything on its own: messages sent by a node wait in
//! [`Net::queue`] until a test delivers them (one by one, all of them, or after taking some
//! out to delay or lose them). Time moves only when a test moves it.

// Every test file compiles this module separately and uses a different part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use canopy_tree::proto::v1::{
    disconnect::Reason, AdoptChild, AssignParent, ChildRemoved, Cull, Disconnect, Heartbeat,
    JoinRequest, Multicast, Reattach,
};
use canopy_tree::proto::{Body, ControlMessage};
use canopy_tree::{
    Input, Node, NodeId, Output, ReignConfig, Role, RootCandidate, Time, TreeConfig, TreeEvent,
    TreeView, ViewChange,
};

/// The id of the root in every test.
pub const ROOT: NodeId = 1;
/// The region every node is in unless a test says otherwise.
pub const REGION: &str = "eu";

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Small timers so tests move time in milliseconds.
pub fn config() -> TreeConfig {
    let config = TreeConfig {
        heartbeat_interval: ms(100),
        root_heartbeat_interval: ms(50),
        child_timeout: ms(350),
        parent_timeout: ms(350),
        join_timeout: ms(200),
        join_backoff_max: ms(1600),
        interest_batch_delay: ms(10),
        rebalance_interval: ms(1000),
        orphan_grace: ms(2000),
        max_child_routers: 2,
        max_clients: 8,
        imbalance_bound: 2,
        upward_filters: true,
        reallocate: false,
        limits: Default::default(),
    };
    config.validate().expect("test config is valid");
    config
}

pub fn roots() -> Arc<[RootCandidate]> {
    Arc::from(vec![RootCandidate {
        id: ROOT,
        address: String::new(),
    }])
}

/// The address of root candidate `id` in tests with several candidates.
pub fn candidate_address(id: NodeId) -> String {
    format!("candidate-{id}")
}

/// A list of root candidates, in this order, with [`candidate_address`]es.
pub fn candidates(ids: &[NodeId]) -> Arc<[RootCandidate]> {
    ids.iter()
        .map(|&id| RootCandidate {
            id,
            address: candidate_address(id),
        })
        .collect()
}

/// A node of the test tree, not yet started.
pub fn node(id: NodeId, role: Role, config: &Arc<TreeConfig>, seed: u64) -> Node {
    Node::new(id, role, REGION, "", Arc::clone(config), roots(), seed)
}

/// One message on the wire.
#[derive(Debug, Clone)]
pub struct Sent {
    pub from: NodeId,
    pub to: NodeId,
    pub msg: ControlMessage,
}

impl Sent {
    pub fn body(&self) -> &Body {
        body(&self.msg)
    }
}

/// Nodes joined by a hand-driven wire.
pub struct Net {
    pub now: Time,
    pub config: Arc<TreeConfig>,
    pub nodes: BTreeMap<NodeId, Node>,
    /// Sent but not yet delivered, oldest first.
    pub queue: VecDeque<Sent>,
    /// Every message handed to its receiver, in delivery order.
    pub log: Vec<Sent>,
    /// Every message lost because its receiver was down or its link cut.
    pub lost: Vec<Sent>,
    /// Every event any node reported, with the reporting node.
    pub events: Vec<(NodeId, TreeEvent)>,
    /// Every multicast delivered to an application, with the receiving node.
    pub delivered: Vec<(NodeId, Multicast)>,
    /// Changes replicated roots proposed, with their sequence numbers.
    pub proposals: Vec<(NodeId, u64, ViewChange)>,
    /// Nodes that are dead: not ticked, and messages to them are lost.
    pub down: BTreeSet<NodeId>,
    /// Directed links (from, to) that lose every message.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// The root candidates every node added from now on is given.
    pub roots: Arc<[RootCandidate]>,
    /// Replicated candidates whose proposals commit as soon as they are made (a Raft group
    /// that always has a quorum): each `Propose` is appended to [`Net::raft_log`] and answered
    /// with `Committed` in the same step.
    pub auto_commit: BTreeSet<NodeId>,
    /// The committed log of the candidates' Raft group: `NewRoot` at every election (see
    /// [`Net::elect`]) and every auto-committed proposal.
    pub raft_log: Vec<ViewChange>,
    /// Links nodes asked to close because a peer went over a bound: (node, peer, reason).
    pub closed: Vec<(NodeId, NodeId, String)>,
    /// The Raft group as the harness plays it: the current term and leader. While the
    /// leader is up, `tick_all` relays fresh news to every live candidate (the leader's
    /// quorum acknowledges it, the followers hear from it).
    pub term: u64,
    pub leader: Option<NodeId>,
    /// Each candidate's last contact with the leader, as relayed.
    pub contact: BTreeMap<NodeId, Time>,
    /// Elections candidates asked for: (candidate, time).
    pub elections: Vec<(NodeId, Time)>,
}

impl Net {
    /// A network holding only a started root (seeded with `root_seed`).
    pub fn new(config: TreeConfig, root_seed: u64) -> Net {
        let mut net = Net {
            now: Time::ZERO,
            config: Arc::new(config),
            nodes: BTreeMap::new(),
            queue: VecDeque::new(),
            log: Vec::new(),
            lost: Vec::new(),
            events: Vec::new(),
            delivered: Vec::new(),
            proposals: Vec::new(),
            down: BTreeSet::new(),
            cut: BTreeSet::new(),
            roots: roots(),
            auto_commit: BTreeSet::new(),
            raft_log: Vec::new(),
            closed: Vec::new(),
            term: 0,
            leader: None,
            contact: BTreeMap::new(),
            elections: Vec::new(),
        };
        net.add(ROOT, Role::Root, root_seed);
        net.input(ROOT, Input::Start);
        net
    }

    /// A network of started, replicated root candidates (none leads yet: see
    /// [`Net::elect`]). Every node added later lists them as its root candidates, in this
    /// order, so joiners ask `ids[0]` first. With `auto_commit` every proposal commits at once.
    pub fn replicated(config: TreeConfig, ids: &[NodeId], auto_commit: bool) -> Net {
        let mut net = Net {
            now: Time::ZERO,
            config: Arc::new(config),
            nodes: BTreeMap::new(),
            queue: VecDeque::new(),
            log: Vec::new(),
            lost: Vec::new(),
            events: Vec::new(),
            delivered: Vec::new(),
            proposals: Vec::new(),
            down: BTreeSet::new(),
            cut: BTreeSet::new(),
            roots: candidates(ids),
            auto_commit: BTreeSet::new(),
            raft_log: Vec::new(),
            closed: Vec::new(),
            term: 0,
            leader: None,
            contact: BTreeMap::new(),
            elections: Vec::new(),
        };
        for &id in ids {
            let node = Node::new(
                id,
                Role::Root,
                REGION,
                candidate_address(id),
                Arc::clone(&net.config),
                Arc::clone(&net.roots),
                id,
            )
            .replicated(ReignConfig::default());
            net.nodes.insert(id, node);
            if auto_commit {
                net.auto_commit.insert(id);
            }
            net.input(id, Input::Start);
        }
        net
    }

    /// The view every candidate holds after applying the committed log to an empty replica.
    pub fn replayed_view(&self) -> Option<TreeView> {
        let mut view = None;
        for change in &self.raft_log {
            change.apply_to(&mut view, &self.config);
        }
        view
    }

    /// Candidate `id` wins an election: it hears that it leads, asks to take over, its
    /// `NewRoot` is committed, it serves with the replayed view, and every other live
    /// candidate learns who leads.
    pub fn elect(&mut self, id: NodeId) -> Vec<Output> {
        self.term += 1;
        self.leader = Some(id);
        let mut out = self.news(id);
        let reign = out
            .iter()
            .find_map(|o| match o {
                Output::TakeOver { reign, change } => Some((*reign, change.clone())),
                _ => None,
            })
            .expect("the new leader asks to take over");
        self.raft_log.push(reign.1);
        let view = self.replayed_view().expect("a NewRoot was committed");
        out.extend(self.input(
            id,
            Input::BecomeRoot {
                reign: reign.0,
                view: Box::new(view),
            },
        ));
        for other in self.live_candidates() {
            if other != id {
                self.news(other);
            }
        }
        out
    }

    /// Candidates 1, 2 and 3 with 1 serving a tree: routers 10..=13 (10 and 11 under the
    /// root), clients 100..=107 below; every proposal commits at once.
    pub fn serving_tree() -> Net {
        let mut net = Net::replicated(config(), &[1, 2, 3], true);
        net.elect(1);
        for id in 10..=13 {
            net.join(id, Role::Router);
        }
        for id in 100..=107 {
            net.join(id, Role::Client);
        }
        net.advance(ms(300));
        assert!(net.node(1).is_serving_root());
        assert_eq!(net.parent(10), Some(1));
        net
    }

    /// Live root candidates, in order.
    pub fn live_candidates(&self) -> Vec<NodeId> {
        self.roots
            .iter()
            .map(|r| r.id)
            .filter(|r| !self.down.contains(r) && self.nodes.contains_key(r))
            .collect()
    }

    /// Relays the group's news to candidate `id`: the current term and leader, with contact
    /// now if the leader is up (and reachable), else the last contact it had.
    pub fn news(&mut self, id: NodeId) -> Vec<Output> {
        let leader_up = self
            .leader
            .is_some_and(|l| !self.down.contains(&l) && (l == id || !self.cut.contains(&(l, id))));
        if leader_up {
            self.contact.insert(id, self.now);
        }
        let contact = self.contact.get(&id).copied();
        let (term, leader) = (self.term, self.leader);
        self.input(
            id,
            Input::Leadership {
                term,
                leader,
                contact,
            },
        )
    }

    /// The node dies: it is no longer ticked and everything sent to it is lost.
    pub fn crash(&mut self, id: NodeId) {
        self.down.insert(id);
    }

    /// Adds a node without starting it.
    pub fn add(&mut self, id: NodeId, role: Role, seed: u64) {
        self.add_in(id, role, REGION, seed);
    }

    /// Adds a node of `region` without starting it.
    pub fn add_in(&mut self, id: NodeId, role: Role, region: &str, seed: u64) {
        let node = Node::new(
            id,
            role,
            region,
            "",
            Arc::clone(&self.config),
            Arc::clone(&self.roots),
            seed,
        );
        assert!(
            self.nodes.insert(id, node).is_none(),
            "node {id} added twice"
        );
    }

    /// Adds and starts a node (its join request waits on the wire).
    pub fn start(&mut self, id: NodeId, role: Role) -> Vec<Output> {
        self.add(id, role, id);
        self.input(id, Input::Start)
    }

    /// Adds and starts a node of `region`, then delivers everything until the wire is quiet.
    pub fn join_in(&mut self, id: NodeId, role: Role, region: &str) {
        self.add_in(id, role, region, id);
        self.input(id, Input::Start);
        self.run();
        assert!(self.node(id).parent().is_some(), "node {id} did not attach");
    }

    /// Adds and starts a node, then delivers everything until the wire is quiet.
    pub fn join(&mut self, id: NodeId, role: Role) {
        self.start(id, role);
        self.run();
        assert!(self.node(id).parent().is_some(), "node {id} did not attach");
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[&id]
    }

    pub fn root(&self) -> &Node {
        self.node(ROOT)
    }

    pub fn parent(&self, id: NodeId) -> Option<NodeId> {
        self.node(id).parent()
    }

    /// Ids of a node's children, in id order.
    pub fn child_ids(&self, id: NodeId) -> Vec<NodeId> {
        self.node(id).children().map(|c| c.id).collect()
    }

    /// The parent the root's view records for `id`.
    pub fn view_parent(&self, id: NodeId) -> Option<NodeId> {
        self.root()
            .view()
            .expect("root has a view")
            .get(id)
            .and_then(|e| e.parent)
    }

    /// Direct clients the root's view records under `id`.
    pub fn view_clients(&self, id: NodeId) -> u32 {
        self.root()
            .view()
            .expect("root has a view")
            .get(id)
            .expect("node in view")
            .direct_clients
    }

    /// Feeds one input to one node at the current time and records what comes out. For an
    /// auto-committing candidate, the outputs of the `Committed` that answers its proposals
    /// are appended.
    pub fn input(&mut self, id: NodeId, input: Input) -> Vec<Output> {
        let now = self.now;
        let mut out = self
            .nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
            .handle(input, now);
        for o in &out {
            match o {
                Output::Send { to, msg } => self.queue.push_back(Sent {
                    from: id,
                    to: *to,
                    msg: msg.clone(),
                }),
                Output::Event(e) => self.events.push((id, e.clone())),
                Output::Deliver(m) => self.delivered.push((id, m.clone())),
                Output::WakeAt(_) => {}
                Output::Propose { seq, change, .. } => {
                    self.proposals.push((id, *seq, change.clone()));
                }
                Output::TakeOver { .. } => {}
                Output::Elect { .. } => self.elections.push((id, now)),
                Output::CloseLink { peer, reason } => {
                    self.closed.push((id, *peer, reason.clone()));
                }
            }
        }
        if self.auto_commit.contains(&id) {
            let mut up_to = None;
            for o in &out {
                if let Output::Propose { reign, seq, change } = o {
                    self.raft_log.push(change.clone());
                    up_to = Some((*reign, *seq));
                }
            }
            if let Some((reign, up_to)) = up_to {
                let more = self.input(id, Input::Committed { reign, up_to });
                out.extend(more);
            }
        }
        out
    }

    /// Hands a message to `to` as if `from` had sent it.
    pub fn inject(&mut self, from: NodeId, to: NodeId, body: Body) -> Vec<Output> {
        self.input(
            to,
            Input::Message {
                from,
                msg: ControlMessage::new(body),
            },
        )
    }

    /// Delivers the oldest message on the wire; returns it and what the receiver did
    /// (`None` outputs if it was lost).
    pub fn deliver_one(&mut self) -> Option<(Sent, Option<Vec<Output>>)> {
        let sent = self.queue.pop_front()?;
        Some(self.deliver(sent))
    }

    /// Delivers one message taken off the wire by a test.
    pub fn deliver(&mut self, sent: Sent) -> (Sent, Option<Vec<Output>>) {
        let lost = self.down.contains(&sent.to)
            || self.cut.contains(&(sent.from, sent.to))
            || !self.nodes.contains_key(&sent.to);
        if lost {
            self.lost.push(sent.clone());
            return (sent, None);
        }
        let out = self.input(
            sent.to,
            Input::Message {
                from: sent.from,
                msg: sent.msg.clone(),
            },
        );
        self.log.push(sent.clone());
        (sent, Some(out))
    }

    /// Delivers until the wire is quiet.
    pub fn run(&mut self) {
        let mut budget = 100_000;
        while self.deliver_one().is_some() {
            budget -= 1;
            assert!(budget > 0, "the wire never went quiet");
        }
    }

    /// Takes every queued message matching `pred` off the wire (to delay or lose it).
    pub fn take(&mut self, pred: impl Fn(&Sent) -> bool) -> Vec<Sent> {
        let mut taken = Vec::new();
        let mut kept = VecDeque::new();
        for s in self.queue.drain(..) {
            if pred(&s) {
                taken.push(s);
            } else {
                kept.push_back(s);
            }
        }
        self.queue = kept;
        taken
    }

    /// Ticks every live node at the current time.
    pub fn tick_all(&mut self) {
        if self.leader.is_some() {
            for id in self.live_candidates() {
                self.news(id);
            }
        }
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            if !self.down.contains(&id) {
                self.input(id, Input::Tick);
            }
        }
    }

    /// Moves time forward by `total` in 5 ms steps, ticking every live node and delivering
    /// everything at each step: a healthy network with small latency.
    pub fn advance(&mut self, total: Duration) {
        let end = self.now + total;
        while self.now < end {
            self.now = (self.now + ms(5)).min(end);
            self.tick_all();
            self.run();
        }
    }

    /// Cuts both directions of a link.
    pub fn partition(&mut self, a: NodeId, b: NodeId) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
    }

    pub fn heal(&mut self, a: NodeId, b: NodeId) {
        self.cut.remove(&(a, b));
        self.cut.remove(&(b, a));
    }

    /// Events reported by `id` so far.
    pub fn events_of(&self, id: NodeId) -> Vec<TreeEvent> {
        self.events
            .iter()
            .filter(|(n, _)| *n == id)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Messages delivered so far from `from` to `to` whose body `pick` accepts.
    pub fn delivered_between<T>(
        &self,
        from: NodeId,
        to: NodeId,
        pick: impl Fn(&Body) -> Option<T>,
    ) -> Vec<T> {
        self.log
            .iter()
            .filter(|s| s.from == from && s.to == to)
            .filter_map(|s| pick(s.body()))
            .collect()
    }
}

pub fn body(msg: &ControlMessage) -> &Body {
    msg.body.as_ref().expect("message has a body")
}

/// Every `Send` in `out` as (to, body).
pub fn sends(out: &[Output]) -> Vec<(NodeId, &Body)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { to, msg } => Some((*to, body(msg))),
            _ => None,
        })
        .collect()
}

/// Every `Send` in `out` whose body `pick` accepts, as (to, picked).
pub fn sent<'a, T>(out: &'a [Output], pick: impl Fn(&'a Body) -> Option<T>) -> Vec<(NodeId, T)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { to, msg } => pick(body(msg)).map(|t| (*to, t)),
            _ => None,
        })
        .collect()
}

pub fn events(out: &[Output]) -> Vec<TreeEvent> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

pub fn deliveries(out: &[Output]) -> Vec<Multicast> {
    out.iter()
        .filter_map(|o| match o {
            Output::Deliver(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

pub fn wakes(out: &[Output]) -> Vec<Time> {
    out.iter()
        .filter_map(|o| match o {
            Output::WakeAt(t) => Some(*t),
            _ => None,
        })
        .collect()
}

// Body pickers, for `sent` and `Net::delivered_between`.

pub fn join_request(b: &Body) -> Option<JoinRequest> {
    match b {
        Body::JoinRequest(m) => Some(m.clone()),
        _ => None,
    }
}

pub fn assign_parent(b: &Body) -> Option<AssignParent> {
    match b {
        Body::AssignParent(m) => Some(m.clone()),
        _ => None,
    }
}

pub fn adopt_child(b: &Body) -> Option<AdoptChild> {
    match b {
        Body::AdoptChild(m) => Some(m.clone()),
        _ => None,
    }
}

pub fn reattach(b: &Body) -> Option<Reattach> {
    match b {
        Body::Reattach(m) => Some(m.clone()),
        _ => None,
    }
}

pub fn heartbeat(b: &Body) -> Option<Heartbeat> {
    match b {
        Body::Heartbeat(m) => Some(m.clone()),
        _ => None,
    }
}

pub fn cull(b: &Body) -> Option<Cull> {
    match b {
        Body::Cull(m) => Some(*m),
        _ => None,
    }
}

pub fn disconnect(b: &Body) -> Option<Disconnect> {
    match b {
        Body::Disconnect(m) => Some(*m),
        _ => None,
    }
}

pub fn child_removed(b: &Body) -> Option<ChildRemoved> {
    match b {
        Body::ChildRemoved(m) => Some(*m),
        _ => None,
    }
}

pub fn multicast(b: &Body) -> Option<Multicast> {
    match b {
        Body::Multicast(m) => Some(m.clone()),
        _ => None,
    }
}

/// Whether `d` is a disconnect with this reason and rejoin flag.
pub fn is_disconnect(d: &Disconnect, reason: Reason, rejoin: bool) -> bool {
    d.reason == reason as i32 && d.rejoin == rejoin
}

pub fn not_leader(b: &Body) -> Option<canopy_tree::proto::v1::NotLeader> {
    match b {
        Body::NotLeader(m) => Some(m.clone()),
        _ => None,
    }
}

/// Every `Propose` in `out` as (seq, change).
pub fn proposals(out: &[Output]) -> Vec<(u64, ViewChange)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Propose { seq, change, .. } => Some((*seq, change.clone())),
            _ => None,
        })
        .collect()
}
