//! The task that owns one tree node: it feeds network events, timers and application
//! commands into the state machine and carries out what comes back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use canopy_net::{EncodedFrame, Identity, NetEndpoint, NetEvent, SendError};
use canopy_proto::v1::Multicast;
use canopy_proto::{Body, ControlMessage};
use canopy_tree::{
    ChildInfo, DropReason, Input, KeyTag, Node, NodeId, Output, RemovalReason, Role, RootCandidate,
    TreeConfig, TreeEvent,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::candidate::{Candidate, CandidateChannels};
use crate::grants;
use crate::limits::{PeerLimits, RateKind, RateLimiter};
use crate::revocations::RevocationRelay;
use crate::{authorize, tree_role};

/// How long a refused peer's in-flight messages are ignored if it does not come back.
const CLOSING_MEMORY: Duration = Duration::from_secs(60);

/// Deliveries waiting for the application before new ones are dropped (and counted).
const DELIVERY_QUEUE: usize = 1 << 16;

/// A multicast handed to the application.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub receiver: NodeId,
    pub origin: NodeId,
    pub origin_seq: u64,
    pub key_tag: KeyTag,
    pub payload: Bytes,
    pub received_at: Instant,
}

/// Messages and deliveries one node handled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeCounters {
    pub control_sent: u64,
    pub control_received: u64,
    pub multicast_sent: u64,
    pub multicast_received: u64,
    pub delivered: u64,
    /// Messages refused because the sender's certificate does not allow them, or because
    /// they break a size or field bound (the sender's link is closed).
    pub refused: u64,
    /// Links closed because the peer went over a rate bound.
    pub rate_limited: u64,
    /// Placements refused because their grant is missing, forged or not the root's.
    pub grants_refused: u64,
    /// Children dropped for going over a tree bound (tags, subtree size).
    pub over_limit: u64,
    /// Messages the tree ignored (from a non-neighbour, stale, unauthorized, malformed).
    pub dropped: u64,
    /// Links given up because a parent or child was not heard from in time.
    pub heartbeat_timeouts: u64,
    /// Deliveries dropped because the application did not keep up.
    pub deliveries_dropped: u64,
    /// Sends that failed (slow peer, no address).
    pub send_failures: u64,
    /// Structural decisions a replicated root proposed for commit.
    pub proposals: u64,
    /// Root actions carried out after their decisions committed.
    pub root_actions_released: u64,
    /// Elections this candidate asked for because the leader was silent.
    pub elections_asked: u64,
    /// Times this candidate began serving as root.
    pub became_root: u64,
    /// Times it stopped serving as root.
    pub stepped_down: u64,
    /// Join requests sent (first tries, retries and redirects).
    pub join_requests: u64,
}

/// A snapshot of a node's state.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub id: NodeId,
    pub role: Role,
    pub region: String,
    pub address: SocketAddr,
    pub parent: Option<NodeId>,
    pub joining: bool,
    pub epoch: u64,
    pub children: Vec<ChildInfo>,
    pub counters: NodeCounters,
    /// Nodes in the root's view (root only).
    pub view_size: Option<usize>,
    /// The deepest node's distance from the root in the root's view (root only).
    pub view_depth: Option<u32>,
    /// The node serves as root right now (a root candidate leading the Raft group).
    pub serving_root: bool,
    /// The leader a root candidate last heard of.
    pub known_leader: Option<NodeId>,
    /// Root actions waiting for their decisions to commit.
    pub held_actions: usize,
    /// Topology epoch of the root's view (root only).
    pub view_epoch: Option<u64>,
    /// The assignment id of the link to the parent (a new one means the link was rebuilt).
    pub parent_assignment: Option<u64>,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("certificate role {0} cannot run a tree node")]
    AdminCertificate(&'static str),
    #[error("invalid tree settings: {0}")]
    Config(#[from] canopy_tree::ConfigError),
    #[error("invalid limits: {key}: {message}")]
    Limits { key: &'static str, message: String },
    #[error("only a root-candidate certificate can run a root candidate (this one is {0})")]
    NotACandidate(&'static str),
}

/// Where a node sits in the tree; it changes when the node reattaches or a new topology
/// epoch comes down from the root (a root failover among them). The KV layer asks for what
/// it missed whenever it changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Topology {
    pub epoch: u64,
    pub parent: Option<NodeId>,
}

/// Fault injection for tests: sees every multicast this node is about to send to `to` and
/// returns what to send instead (nothing drops it; several send them in order). Used to
/// play a hostile router that flips bytes, replays, rewrites origins, drops or reorders.
pub type MulticastTamper = Box<dyn FnMut(NodeId, Multicast) -> Vec<Multicast> + Send>;

type SharedTamper = Arc<std::sync::Mutex<Option<MulticastTamper>>>;

enum Command {
    Subscribe(KeyTag),
    Unsubscribe(KeyTag),
    Publish(KeyTag, Bytes),
    Status(oneshot::Sender<NodeStatus>),
    Leave,
    Shutdown,
}

/// Controls a running node.
#[derive(Clone)]
pub struct NodeHandle {
    id: NodeId,
    commands: mpsc::Sender<Command>,
    net: NetEndpoint,
    task: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
    group: Option<canopy_raft::RootGroup>,
    topology: watch::Receiver<Topology>,
    tamper: SharedTamper,
}

impl NodeHandle {
    /// The node's id (from its certificate).
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Where the node accepts links.
    pub fn address(&self) -> SocketAddr {
        self.net.local_addr()
    }

    async fn command(&self, command: Command) -> bool {
        self.commands.send(command).await.is_ok()
    }

    /// Starts wanting multicasts with `tag`.
    pub async fn subscribe(&self, tag: KeyTag) -> bool {
        self.command(Command::Subscribe(tag)).await
    }

    /// Stops wanting `tag`.
    pub async fn unsubscribe(&self, tag: KeyTag) -> bool {
        self.command(Command::Unsubscribe(tag)).await
    }

    /// Publishes a (sealed) payload under `tag`.
    pub async fn publish(&self, tag: KeyTag, payload: Bytes) -> bool {
        self.command(Command::Publish(tag, payload)).await
    }

    /// The node's current state, or `None` if it has stopped.
    pub async fn status(&self) -> Option<NodeStatus> {
        let (tx, rx) = oneshot::channel();
        if !self.command(Command::Status(tx)).await {
            return None;
        }
        rx.await.ok()
    }

    /// Cuts the node off the network, or reconnects it (fault injection: see
    /// [`NetEndpoint::set_cut`]). The node keeps running and sees its peers go silent.
    pub fn set_cut(&self, cut: bool) {
        self.net.set_cut(cut);
    }

    /// Partitions the node from these addresses (empty heals); see
    /// [`NetEndpoint::set_blocked`].
    pub fn set_blocked(&self, addrs: Vec<SocketAddr>) {
        self.net.set_blocked(addrs);
    }

    /// Follows the node's place in the tree (epoch and parent).
    pub fn topology(&self) -> watch::Receiver<Topology> {
        self.topology.clone()
    }

    /// Installs (or with `None` removes) a [`MulticastTamper`]: fault injection only.
    pub fn set_multicast_tamper(&self, tamper: Option<MulticastTamper>) {
        if let Ok(mut slot) = self.tamper.lock() {
            *slot = tamper;
        }
    }

    /// Counts changes of the node's TLS material (reloads, revocation lists) since it started.
    pub fn tls_generation(&self) -> u64 {
        self.net.tls_generation()
    }

    /// Signs with the node's current certificate key and checks others' certificates under
    /// the current trust.
    pub fn authority(&self) -> canopy_net::Authority {
        self.net.authority()
    }

    /// The credentials in force (they change when the node reloads its files).
    pub fn credentials(&self) -> canopy_net::Credentials {
        self.net.credentials()
    }

    /// The revocation lists in force (DER), from the file and from the root group.
    pub fn revocations(&self) -> Vec<Vec<u8>> {
        self.net.revocations()
    }

    /// The certificates each live link was established with.
    pub fn link_certificates(&self) -> Vec<canopy_net::LinkCertificate> {
        self.net.link_certificates()
    }

    /// The transport's counters (refusals and closes by reason, live connections).
    pub fn net_stats(&self) -> canopy_net::NetStats {
        self.net.stats()
    }

    /// The Raft group of a root candidate.
    pub fn group(&self) -> Option<&canopy_raft::RootGroup> {
        self.group.as_ref()
    }

    /// Leaves the tree gracefully (parent and children are told), then stops.
    pub async fn leave(&self) {
        self.command(Command::Leave).await;
        self.join_task().await;
        self.stop_io().await;
    }

    /// Stops the node and closes its links without a goodbye.
    pub async fn shutdown(&self) {
        self.command(Command::Shutdown).await;
        self.join_task().await;
        self.stop_io().await;
    }

    /// Kills the node abruptly, like a crash: it drops off the network at once (no goodbye,
    /// no QUIC close reaches anyone), the task is aborted mid-flight and the endpoint closed.
    /// A root candidate's Raft state stays on disk.
    pub async fn kill(&self) {
        self.net.set_cut(true);
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        self.stop_io().await;
    }

    async fn stop_io(&self) {
        // Raft first: a leader whose endpoint is gone would keep retrying its peers.
        if let Some(group) = &self.group {
            group.shutdown().await;
        }
        self.net.shutdown().await;
    }

    async fn join_task(&self) {
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// Starts a node on an already bound endpoint. Its id, role and region come from the
/// endpoint's certificate; `subscribe` are the tags it wants from the start. A root
/// candidate started this way serves alone as root (no Raft); see [`spawn_candidate`].
pub fn spawn_node(
    net: NetEndpoint,
    events: canopy_net::NetEvents,
    tree: TreeConfig,
    roots: Vec<RootCandidate>,
    seed: u64,
    subscribe: Vec<KeyTag>,
    limits: PeerLimits,
) -> Result<(NodeHandle, mpsc::Receiver<Delivery>), SpawnError> {
    spawn(net, events, tree, roots, seed, subscribe, None, limits)
}

/// Starts a root candidate that serves as root while it leads `group`, committing every
/// structural decision through Raft before acting on it.
pub fn spawn_candidate(
    net: NetEndpoint,
    events: canopy_net::NetEvents,
    tree: TreeConfig,
    roots: Vec<RootCandidate>,
    seed: u64,
    group: canopy_raft::RootGroup,
    limits: PeerLimits,
) -> Result<(NodeHandle, mpsc::Receiver<Delivery>), SpawnError> {
    let role = net.identity().role;
    if role != canopy_net::CertRole::RootCandidate {
        return Err(SpawnError::NotACandidate(role.as_str()));
    }
    spawn(
        net,
        events,
        tree,
        roots,
        seed,
        Vec::new(),
        Some(group),
        limits,
    )
}

#[allow(clippy::too_many_arguments)]
fn spawn(
    net: NetEndpoint,
    events: canopy_net::NetEvents,
    tree: TreeConfig,
    roots: Vec<RootCandidate>,
    seed: u64,
    subscribe: Vec<KeyTag>,
    group: Option<canopy_raft::RootGroup>,
    limits: PeerLimits,
) -> Result<(NodeHandle, mpsc::Receiver<Delivery>), SpawnError> {
    tree.validate()?;
    limits
        .validate()
        .map_err(|(key, message)| SpawnError::Limits { key, message })?;
    let identity = net.identity().clone();
    let role =
        tree_role(identity.role).ok_or(SpawnError::AdminCertificate(identity.role.as_str()))?;
    if let Some(group) = &group {
        group.set_known_candidates(roots.iter().map(|r| r.id).collect());
    }
    let mut node = Node::new(
        identity.node_id,
        role,
        identity.region.clone(),
        net.local_addr().to_string(),
        Arc::new(tree),
        Arc::from(roots),
        seed,
    );
    if let Some(group) = &group {
        node = node.replicated(group.timers().reign());
    }
    let start = Instant::now();
    let mut outputs = Vec::new();
    for tag in subscribe {
        node.handle_into(Input::Subscribe(tag), Duration::ZERO, &mut outputs);
    }
    let (commands, command_rx) = mpsc::channel(1024);
    let (deliveries, delivery_rx) = mpsc::channel(DELIVERY_QUEUE);
    let (topology_tx, topology) = watch::channel(Topology::default());
    let tamper = SharedTamper::default();
    let (candidate, channels) = match &group {
        Some(group) => {
            let (candidate, channels) = Candidate::new(group.clone());
            (Some(candidate), Some(channels))
        }
        None => (None, None),
    };
    let runtime = Runtime {
        node,
        net: net.clone(),
        start,
        start_wall: wall_clock(),
        wake: None,
        counters: NodeCounters::default(),
        deliveries,
        outputs,
        candidate,
        limits,
        rates: RateLimiter::default(),
        closing: HashMap::new(),
        admin_permits: Arc::new(tokio::sync::Semaphore::new(
            crate::admin::MAX_ADMIN_IN_FLIGHT,
        )),
        topology: topology_tx,
        tamper: tamper.clone(),
        revocations: RevocationRelay::default(),
        raft_refused: Arc::default(),
        last_multicast: None,
    };
    let task = tokio::spawn(runtime.run(events, command_rx, channels));
    let handle = NodeHandle {
        id: identity.node_id,
        commands,
        net,
        task: Arc::new(std::sync::Mutex::new(Some(task))),
        group,
        topology,
        tamper,
    };
    Ok((handle, delivery_rx))
}

/// Time since the Unix epoch: every node's clock starts from the same origin, so times a
/// root recorded in the replicated view mean the same to the next leader.
fn wall_clock() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

pub(crate) struct Runtime {
    pub(crate) node: Node,
    pub(crate) net: NetEndpoint,
    start: Instant,
    start_wall: Duration,
    wake: Option<Instant>,
    pub(crate) counters: NodeCounters,
    deliveries: mpsc::Sender<Delivery>,
    outputs: Vec<Output>,
    pub(crate) candidate: Option<Candidate>,
    limits: PeerLimits,
    rates: RateLimiter,
    /// Peers whose session this node closed for a refusal (and when), until they open a new
    /// one; entries older than a minute are dropped, so the map stays small.
    closing: HashMap<NodeId, Instant>,
    /// Operator requests answered at once (each may wait on Raft).
    pub(crate) admin_permits: Arc<tokio::sync::Semaphore>,
    topology: watch::Sender<Topology>,
    tamper: SharedTamper,
    /// Which children have had the revocation lists in force.
    pub(crate) revocations: RevocationRelay,
    /// Refusals made on the Raft lane's own task (added into `refused`).
    raft_refused: Arc<std::sync::atomic::AtomicU64>,
    /// The multicast last encoded while handling one input, and its frame: every copy a
    /// node forwards is the same message, so it is encoded once, not once per link.
    last_multicast: Option<(Multicast, EncodedFrame)>,
}

impl Runtime {
    fn now(&self) -> Duration {
        self.start_wall + self.start.elapsed()
    }

    /// An instant of this process's monotonic clock as node time.
    pub(crate) fn time_of(&self, at: Instant) -> Duration {
        match at.checked_duration_since(self.start) {
            Some(after) => self.start_wall + after,
            None => self
                .start_wall
                .saturating_sub(self.start.saturating_duration_since(at)),
        }
    }

    pub(crate) fn handle(&mut self, input: Input) {
        let mut outputs = std::mem::take(&mut self.outputs);
        let now = self.now();
        self.node.handle_into(input, now, &mut outputs);
        if let Some(candidate) = &self.candidate {
            let serving = self.node.is_serving_root().then(|| self.node.reign());
            candidate.set_serving_reign(serving.unwrap_or(0));
        }
        for output in outputs.drain(..) {
            self.apply(output);
        }
        self.outputs = outputs;
        self.last_multicast = None;
        let topology = Topology {
            epoch: self.node.epoch(),
            parent: self.node.parent(),
        };
        self.topology.send_if_modified(|seen| {
            let changed = *seen != topology;
            *seen = topology;
            changed
        });
    }

    async fn run(
        mut self,
        mut events: canopy_net::NetEvents,
        mut commands: mpsc::Receiver<Command>,
        mut channels: Option<CandidateChannels>,
    ) {
        self.handle(Input::Start);
        // Raft has a lane and a task of its own, so a storm of joins or data on this node
        // never delays the root group's heartbeats. Dropping the set (the node stopped or
        // was aborted) stops that task too.
        let mut raft_lane = tokio::task::JoinSet::new();
        if let (Some(candidate), Some(lane)) = (&self.candidate, events.take_raft()) {
            raft_lane.spawn(crate::candidate::serve_raft_lane(
                candidate.group().clone(),
                self.net.clone(),
                lane,
                self.limits.ban(),
                self.raft_refused.clone(),
            ));
        }
        loop {
            let candidate_event = async {
                match channels.as_mut() {
                    Some(channels) => channels.next().await,
                    None => std::future::pending().await,
                }
            };
            let wake = self.wake;
            let sleep = async move {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.on_net(event),
                    None => break,
                },
                command = commands.recv() => match command {
                    Some(Command::Shutdown) | None => break,
                    Some(Command::Leave) => {
                        self.handle(Input::Leave);
                        // Give the goodbyes a moment to leave the send queues.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        break;
                    }
                    Some(command) => self.on_command(command),
                },
                () = sleep => {
                    self.wake = None;
                    // A candidate's timed decisions (an election, the lease) are taken on
                    // the freshest news of the group, not the last periodic relay's.
                    self.relay_leadership();
                    self.handle(Input::Tick);
                }
                event = candidate_event => self.on_candidate_event(event),
            }
        }
        raft_lane.abort_all();
        debug!(node = self.node.id(), "node task stopped");
    }

    fn on_net(&mut self, event: NetEvent) {
        match event {
            NetEvent::Message { from, msg } => {
                if matches!(msg.body, Some(Body::Multicast(_))) {
                    self.counters.multicast_received += 1;
                } else {
                    self.counters.control_received += 1;
                }
                if self.closing.contains_key(&from.node_id) {
                    // Already refused: what was in flight behind the refusal is not looked at.
                    return;
                }
                if let Err(refusal) = self.admit(&from, &msg) {
                    self.mark_closing(from.node_id);
                    warn!(node = self.node.id(), peer = from.node_id, %refusal, "refusing peer");
                    self.net.ban(from.node_id, self.limits.ban(), &refusal);
                    self.handle(Input::LinkClosed { peer: from.node_id });
                    return;
                }
                let msg = match msg.body {
                    Some(Body::Revocations(lists)) => {
                        self.on_revocations(from.node_id, lists);
                        return;
                    }
                    _ => msg,
                };
                let msg = match self.take_candidate_message(&from, msg) {
                    Some(msg) => msg,
                    None => return,
                };
                self.handle(Input::Message {
                    from: from.node_id,
                    msg,
                });
            }
            NetEvent::LinkUp { peer } => {
                // A new session: whatever the old one did, this one is looked at afresh.
                self.closing.remove(&peer.node_id);
                debug!(
                    node = self.node.id(),
                    peer = peer.node_id,
                    role = peer.role.as_str(),
                    "link up"
                );
                self.handle(Input::LinkUp { peer: peer.node_id });
            }
            NetEvent::LinkClosed { peer, reason } => {
                // `closing` is kept: what the old session still had in flight may arrive
                // after this; only a new session (LinkUp) is looked at afresh.
                debug!(node = self.node.id(), peer, %reason, "link closed");
                if let Some(candidate) = &self.candidate {
                    candidate.on_link_closed(peer);
                }
                self.revocations.forget(peer);
                self.push_lists_past(peer);
                self.handle(Input::LinkClosed { peer });
            }
            NetEvent::Busy { peer } => {
                debug!(node = self.node.id(), peer, "peer busy; asking again later");
                self.handle(Input::Busy { peer });
            }
        }
    }

    /// Checks a peer's message against its certificate and the bounds before the tree sees
    /// it; the error is the reason its link is closed.
    fn admit(&mut self, from: &Identity, msg: &ControlMessage) -> Result<(), String> {
        if let Err(refusal) = authorize(from, msg, self.net.max_frame_len()) {
            self.counters.refused += 1;
            return Err(refusal.to_string());
        }
        if let Some(kind) = RateKind::of(msg) {
            let admitted = self
                .rates
                .admit(&self.limits, from.node_id, kind, Instant::now());
            if let Err(reason) = admitted {
                self.counters.rate_limited += 1;
                return Err(reason);
            }
        }
        if let Err(reason) = self.check_join_address(from, msg) {
            self.counters.refused += 1;
            return Err(reason);
        }
        if let Err(reason) = grants::check(|| self.net.authority(), self.net.identity(), msg) {
            self.counters.grants_refused += 1;
            return Err(reason);
        }
        Ok(())
    }

    fn mark_closing(&mut self, peer: NodeId) {
        let now = Instant::now();
        self.closing
            .retain(|_, at| now.saturating_duration_since(*at) < CLOSING_MEMORY);
        self.closing.insert(peer, now);
    }

    /// A joiner's address must be on the host its connection comes from.
    fn check_join_address(&self, from: &Identity, msg: &ControlMessage) -> Result<(), String> {
        let Some(Body::JoinRequest(join)) = &msg.body else {
            return Ok(());
        };
        if !self.limits.check_join_address_ip {
            return Ok(());
        }
        let (Ok(claimed), Some(remote)) = (
            join.address.parse::<SocketAddr>(),
            self.net.remote_addr(from.node_id),
        ) else {
            return Ok(());
        };
        if claimed.ip() == remote.ip() {
            Ok(())
        } else {
            Err(format!(
                "join_request: address {claimed} is not on the host the request came from ({})",
                remote.ip()
            ))
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Subscribe(tag) => self.handle(Input::Subscribe(tag)),
            Command::Unsubscribe(tag) => self.handle(Input::Unsubscribe(tag)),
            Command::Publish(key_tag, payload) => self.handle(Input::Publish { key_tag, payload }),
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Leave | Command::Shutdown => {}
        }
    }

    fn status(&self) -> NodeStatus {
        NodeStatus {
            id: self.node.id(),
            role: self.node.role(),
            region: self.node.region().to_owned(),
            address: self.net.local_addr(),
            parent: self.node.parent(),
            joining: self.node.is_joining(),
            epoch: self.node.epoch(),
            children: self.node.children().collect(),
            counters: NodeCounters {
                refused: self.counters.refused
                    + self.raft_refused.load(std::sync::atomic::Ordering::Relaxed),
                ..self.counters
            },
            view_size: self.node.view().map(|v| v.len()),
            view_depth: self
                .node
                .view()
                .map(|v| v.iter().map(|(_, e)| e.depth).max().unwrap_or(0)),
            serving_root: self.node.is_serving_root(),
            known_leader: self.node.known_leader(),
            held_actions: self.node.held_actions(),
            parent_assignment: self.node.parent_assignment(),
            view_epoch: self.node.view().map(|v| v.epoch),
        }
    }

    fn apply(&mut self, output: Output) {
        match output {
            Output::Send { to, mut msg } => {
                if self.node.is_serving_root() {
                    grants::sign(|| self.net.authority(), &mut msg);
                }
                self.revocations_before_send(to);
                self.send(to, msg)
            }
            Output::CloseLink { peer, reason } => {
                warn!(node = self.node.id(), peer, %reason, "closing the link of a peer over a bound");
                self.counters.over_limit += 1;
                self.mark_closing(peer);
                self.net.ban(peer, self.limits.ban(), &reason);
            }
            Output::WakeAt(at) => {
                let at = self.start + at.saturating_sub(self.start_wall);
                if self.wake.is_none_or(|w| at < w) {
                    self.wake = Some(at);
                }
            }
            Output::Deliver(m) => {
                self.counters.delivered += 1;
                let delivery = Delivery {
                    receiver: self.node.id(),
                    origin: m.origin,
                    origin_seq: m.origin_seq,
                    key_tag: m.key_tag,
                    payload: m.payload,
                    received_at: Instant::now(),
                };
                if self.deliveries.try_send(delivery).is_err() {
                    self.counters.deliveries_dropped += 1;
                    warn!(
                        node = self.node.id(),
                        "application is not reading deliveries; dropped one"
                    );
                }
            }
            Output::Event(event) => {
                match event {
                    TreeEvent::ActionsReleased { count } => {
                        self.counters.root_actions_released += count as u64;
                    }
                    TreeEvent::Dropped { .. } => self.counters.dropped += 1,
                    TreeEvent::BecameRoot { .. } => self.counters.became_root += 1,
                    TreeEvent::ParentChanged { parent, .. } => self.close_join_links(parent),
                    TreeEvent::SteppedDown { .. } => self.counters.stepped_down += 1,
                    TreeEvent::ParentTimedOut { .. }
                    | TreeEvent::ChildRemoved {
                        reason: RemovalReason::Timeout,
                        ..
                    } => self.counters.heartbeat_timeouts += 1,
                    _ => {}
                }
                log_event(self.node.id(), &event);
            }
            Output::Propose { reign, seq, change } => match self.candidate.as_mut() {
                Some(candidate) => {
                    self.counters.proposals += 1;
                    candidate.propose(reign, seq, change);
                }
                None => warn!(
                    node = self.node.id(),
                    "a root without Raft proposed a change"
                ),
            },
            Output::TakeOver { reign, change } => match &self.candidate {
                Some(candidate) => {
                    info!(
                        node = self.node.id(),
                        reign, "leading the root group; taking over as root"
                    );
                    candidate.take_over(reign, change);
                }
                None => warn!(
                    node = self.node.id(),
                    "a root without Raft asked to take over"
                ),
            },
            Output::Elect { term } => {
                if let Some(candidate) = &self.candidate {
                    info!(
                        node = self.node.id(),
                        term, "the leader is silent; asking for an election"
                    );
                    self.counters.elections_asked += 1;
                    candidate.elect();
                }
            }
        }
    }

    /// A node placed under a router closes the links it opened to ask root candidates for a
    /// place: the root would otherwise hold one idle connection (and its keep-alives) per
    /// node of the tree. Root candidates keep theirs (Raft runs over them).
    fn close_join_links(&mut self, parent: NodeId) {
        if self.candidate.is_some() || self.node.role().is_root() {
            return;
        }
        let asked: Vec<NodeId> = self
            .node
            .root_candidates()
            .iter()
            .map(|r| r.id)
            .filter(|&id| id != parent)
            .collect();
        for candidate in asked {
            self.net.close_link_if_open(candidate, "attached elsewhere");
        }
    }

    pub(crate) fn send(&mut self, to: NodeId, msg: ControlMessage) {
        if let Some(Body::Multicast(multicast)) = &msg.body {
            let tampered = match self.tamper.lock() {
                Ok(mut slot) => slot.as_mut().map(|tamper| tamper(to, multicast.clone())),
                Err(_) => None,
            };
            if let Some(replacements) = tampered {
                for multicast in replacements {
                    self.send_untampered(
                        to,
                        ControlMessage {
                            body: Some(Body::Multicast(multicast)),
                        },
                    );
                }
                return;
            }
        }
        self.send_untampered(to, msg);
    }

    fn send_untampered(&mut self, to: NodeId, msg: ControlMessage) {
        if matches!(msg.body, Some(Body::Multicast(_))) {
            self.counters.multicast_sent += 1;
        } else {
            self.counters.control_sent += 1;
        }
        if let Some(Body::JoinRequest(join)) = &msg.body {
            self.counters.join_requests += 1;
            // A retry means the candidate did not answer: our connection to it may outlive
            // it (a candidate that crashed and restarted on the same address does not know
            // the old connection, and QUIC only notices at its idle timeout). Dial afresh,
            // unless that connection came up during this join (the candidate is alive, only
            // slow: a new handshake would add to its load).
            if join.attempt > 0 && !self.net.is_dialling(to) && !self.node.join_link_is_fresh(to) {
                self.net.close_link(to, "join retry");
            }
        }
        let addr = self.node.peer_address(to).and_then(|a| a.parse().ok());
        let sent = self
            .encoded(msg)
            .and_then(|f| self.net.send_encoded(to, addr, &f));
        if let Err(error) = sent {
            self.counters.send_failures += 1;
            warn!(node = self.node.id(), peer = to, %error, "send failed");
            if matches!(error, SendError::QueueFull) {
                self.handle(Input::LinkClosed { peer: to });
            }
        }
    }
}

impl Runtime {
    /// `msg` as a frame, reusing the last multicast's encoding when `msg` is that multicast.
    fn encoded(&mut self, msg: ControlMessage) -> Result<EncodedFrame, SendError> {
        let Some(Body::Multicast(multicast)) = msg.body else {
            return self.net.encode(&msg);
        };
        if let Some((last, frame)) = &self.last_multicast {
            if *last == multicast {
                return Ok(frame.clone());
            }
        }
        let msg = ControlMessage::new(Body::Multicast(multicast));
        let frame = self.net.encode(&msg)?;
        if let Some(Body::Multicast(multicast)) = msg.body {
            self.last_multicast = Some((multicast, frame.clone()));
        }
        Ok(frame)
    }
}

fn log_event(node: NodeId, event: &TreeEvent) {
    match event {
        TreeEvent::ParentChanged { parent, previous } => {
            info!(node, parent, ?previous, "attached to parent")
        }
        TreeEvent::Orphaned { previous } => info!(node, previous, "parent lost; rejoining"),
        TreeEvent::BecameRoot { epoch, reassigned } => {
            info!(node, epoch, reassigned, "serving as root")
        }
        TreeEvent::SteppedDown { leader, reason } => {
            info!(node, ?leader, ?reason, "stepped down as root")
        }
        TreeEvent::ChildRemoved { child, reason } => info!(node, child, ?reason, "child removed"),
        TreeEvent::Dropped {
            from,
            kind,
            reason: reason @ DropReason::Unauthorized,
        } => warn!(node, from, kind, ?reason, "unauthorized order ignored"),
        TreeEvent::Dropped { from, kind, reason } => {
            debug!(node, from, kind, ?reason, "message ignored")
        }
        other => debug!(node, event = ?other, "tree event"),
    }
}
