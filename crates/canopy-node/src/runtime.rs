//! The task that owns one tree node: it feeds network events, timers and application
//! commands into the state machine and carries out what comes back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use canopy_net::{NetEndpoint, NetEvent, SendError};
use canopy_proto::{Body, ControlMessage};
use canopy_tree::{
    ChildInfo, Input, KeyTag, Node, NodeId, Output, Role, RootCandidate, TreeConfig, TreeEvent,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::{authorize, tree_role};

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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeCounters {
    pub control_sent: u64,
    pub control_received: u64,
    pub multicast_sent: u64,
    pub multicast_received: u64,
    pub delivered: u64,
    /// Messages refused because the sender's certificate does not allow them.
    pub refused: u64,
    /// Deliveries dropped because the application did not keep up.
    pub deliveries_dropped: u64,
    /// Sends that failed (slow peer, no address).
    pub send_failures: u64,
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
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("certificate role {0} cannot run a tree node")]
    AdminCertificate(&'static str),
    #[error("invalid tree settings: {0}")]
    Config(#[from] canopy_tree::ConfigError),
}

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

    /// Leaves the tree gracefully (parent and children are told), then stops.
    pub async fn leave(&self) {
        self.command(Command::Leave).await;
        self.join_task().await;
        self.net.shutdown().await;
    }

    /// Stops the node and closes its links without a goodbye.
    pub async fn shutdown(&self) {
        self.command(Command::Shutdown).await;
        self.join_task().await;
        self.net.shutdown().await;
    }

    /// Kills the node abruptly: the task is aborted mid-flight and the endpoint closed.
    pub async fn kill(&self) {
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
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
/// endpoint's certificate; `subscribe` are the tags it wants from the start.
pub fn spawn_node(
    net: NetEndpoint,
    events: mpsc::Receiver<NetEvent>,
    tree: TreeConfig,
    roots: Vec<RootCandidate>,
    seed: u64,
    subscribe: Vec<KeyTag>,
) -> Result<(NodeHandle, mpsc::Receiver<Delivery>), SpawnError> {
    tree.validate()?;
    let identity = net.identity().clone();
    let role =
        tree_role(identity.role).ok_or(SpawnError::AdminCertificate(identity.role.as_str()))?;
    let mut node = Node::new(
        identity.node_id,
        role,
        identity.region.clone(),
        net.local_addr().to_string(),
        Arc::new(tree),
        Arc::from(roots),
        seed,
    );
    let start = Instant::now();
    let mut outputs = Vec::new();
    for tag in subscribe {
        node.handle_into(Input::Subscribe(tag), Duration::ZERO, &mut outputs);
    }
    let (commands, command_rx) = mpsc::channel(1024);
    let (deliveries, delivery_rx) = mpsc::channel(DELIVERY_QUEUE);
    let runtime = Runtime {
        node,
        net: net.clone(),
        start,
        wake: None,
        counters: NodeCounters::default(),
        deliveries,
        outputs,
    };
    let task = tokio::spawn(runtime.run(events, command_rx));
    let handle = NodeHandle {
        id: identity.node_id,
        commands,
        net,
        task: Arc::new(std::sync::Mutex::new(Some(task))),
    };
    Ok((handle, delivery_rx))
}

struct Runtime {
    node: Node,
    net: NetEndpoint,
    start: Instant,
    wake: Option<Instant>,
    counters: NodeCounters,
    deliveries: mpsc::Sender<Delivery>,
    outputs: Vec<Output>,
}

impl Runtime {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn handle(&mut self, input: Input) {
        let mut outputs = std::mem::take(&mut self.outputs);
        let now = self.now();
        self.node.handle_into(input, now, &mut outputs);
        for output in outputs.drain(..) {
            self.apply(output);
        }
        self.outputs = outputs;
    }

    async fn run(
        mut self,
        mut events: mpsc::Receiver<NetEvent>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        self.handle(Input::Start);
        loop {
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
                    self.handle(Input::Tick);
                }
            }
        }
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
                if let Err(refusal) = authorize(&from, &msg) {
                    warn!(node = self.node.id(), peer = from.node_id, %refusal, "refusing peer");
                    self.counters.refused += 1;
                    self.net.close_link(from.node_id, &refusal.to_string());
                    self.handle(Input::LinkClosed { peer: from.node_id });
                    return;
                }
                self.handle(Input::Message {
                    from: from.node_id,
                    msg,
                });
            }
            NetEvent::LinkUp { peer } => {
                debug!(
                    node = self.node.id(),
                    peer = peer.node_id,
                    role = peer.role.as_str(),
                    "link up"
                );
            }
            NetEvent::LinkClosed { peer, reason } => {
                debug!(node = self.node.id(), peer, %reason, "link closed");
                self.handle(Input::LinkClosed { peer });
            }
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
            counters: self.counters,
            view_size: self.node.view().map(|v| v.len()),
        }
    }

    fn apply(&mut self, output: Output) {
        match output {
            Output::Send { to, msg } => self.send(to, msg),
            Output::WakeAt(at) => {
                let at = self.start + at;
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
            Output::Event(event) => log_event(self.node.id(), &event),
            Output::Propose { .. } => {}
        }
    }

    fn send(&mut self, to: NodeId, msg: ControlMessage) {
        if matches!(msg.body, Some(Body::Multicast(_))) {
            self.counters.multicast_sent += 1;
        } else {
            self.counters.control_sent += 1;
        }
        let addr = self.node.peer_address(to).and_then(|a| a.parse().ok());
        if let Err(error) = self.net.send(to, addr, msg) {
            self.counters.send_failures += 1;
            warn!(node = self.node.id(), peer = to, %error, "send failed");
            if matches!(error, SendError::QueueFull) {
                self.handle(Input::LinkClosed { peer: to });
            }
        }
    }
}

fn log_event(node: NodeId, event: &TreeEvent) {
    match event {
        TreeEvent::ParentChanged { parent, previous } => {
            info!(node, parent, ?previous, "attached to parent")
        }
        TreeEvent::Orphaned { previous } => info!(node, previous, "parent lost; rejoining"),
        TreeEvent::ChildRemoved { child, reason } => info!(node, child, ?reason, "child removed"),
        TreeEvent::Dropped { from, kind, reason } => {
            debug!(node, from, kind, ?reason, "message ignored")
        }
        other => debug!(node, event = ?other, "tree event"),
    }
}
