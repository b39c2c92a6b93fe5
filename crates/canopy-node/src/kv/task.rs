//! The task that owns a client's replica: it feeds the node's deliveries, topology changes
//! and timer wake-ups into the sans-IO [`Replica`], publishes what it returns, keeps the
//! node subscribed to the replica's tags, and answers the application's calls.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use canopy_kv::{Change, Entry, KvError, Publish, Replica, ReplicaCounters};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::{Delivery, NodeHandle, Topology};

/// Changes a watcher may have unread before it is cut off (its stream ends).
pub const WATCH_QUEUE: usize = 1024;

/// Writes committed with one disk sync, at most.
pub const MAX_WRITE_GROUP: usize = 256;

/// The replica settings the task expects: it syncs the store itself, once per group of
/// writes, before acknowledging any of them.
pub fn replica_config() -> canopy_kv::ReplicaConfig {
    let mut config = canopy_kv::ReplicaConfig::new(canopy_tree::node_tag);
    config.flush_each_write = false;
    config
}

/// Value bytes a watch may have unread before it is cut off (its stream ends).
pub const WATCH_QUEUE_BYTES: usize = 4 << 20;

/// Watches one node serves at once.
pub const MAX_WATCHES: usize = 1024;

/// Where a watch's changes go.
pub enum WatchSink {
    /// Changes as the replica reports them (Rust callers, tests).
    Changes(mpsc::Sender<Change>),
    /// Changes for the application API.
    Api(mpsc::Sender<canopy_api::v1::Change>),
}

/// A write the replica made durable and published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub origin: u64,
    pub origin_seq: u64,
    pub hlc: u64,
}

/// Why a call to the replica task failed.
#[derive(Debug, thiserror::Error)]
pub enum KvCallError {
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("the node's replica has stopped")]
    Stopped,
    #[error("too many watches on this node (at most {max})")]
    TooManyWatches { max: usize },
}

type Reply<T> = oneshot::Sender<Result<T, KvError>>;

enum KvCommand {
    Put(String, Bytes, Reply<Written>),
    Delete(String, Reply<Written>),
    Get(String, Reply<Option<Entry>>),
    Scan(String, usize, Reply<Vec<(String, Entry)>>),
    Subscribe(String, Reply<u64>),
    Watch(String, WatchSink, oneshot::Sender<Result<(), KvCallError>>),
    Counters(oneshot::Sender<ReplicaCounters>),
    CatchUp,
}

/// Calls into a running client's replica.
#[derive(Clone)]
pub struct KvNode {
    node_id: u64,
    commands: mpsc::Sender<KvCommand>,
    task: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl KvNode {
    /// The node (and origin) id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> KvCommand) -> Result<T, KvCallError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| KvCallError::Stopped)?;
        Ok(rx.await.map_err(|_| KvCallError::Stopped)??)
    }

    /// Writes `value` under `key`: durable locally, then published.
    pub async fn put(&self, key: &str, value: Bytes) -> Result<Written, KvCallError> {
        self.call(|r| KvCommand::Put(key.to_owned(), value, r))
            .await
    }

    /// Deletes `key` (a tombstone write).
    pub async fn delete(&self, key: &str) -> Result<Written, KvCallError> {
        self.call(|r| KvCommand::Delete(key.to_owned(), r)).await
    }

    /// The local replica's value of `key` (`None` if absent or deleted).
    pub async fn get(&self, key: &str) -> Result<Option<Entry>, KvCallError> {
        self.call(|r| KvCommand::Get(key.to_owned(), r)).await
    }

    /// Entries whose key starts with `prefix`, in key order, at most `limit`.
    pub async fn scan(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Entry)>, KvCallError> {
        self.call(|r| KvCommand::Scan(prefix.to_owned(), limit, r))
            .await
    }

    /// Subscribes the replica to `pattern` (a key, or a prefix ending in `/`): it fetches
    /// the history and keeps the values from now on. Returns the tag routers see.
    pub async fn subscribe(&self, pattern: &str) -> Result<u64, KvCallError> {
        self.call(|r| KvCommand::Subscribe(pattern.to_owned(), r))
            .await
    }

    /// Subscribes the replica to `pattern` (a key, or a prefix ending in `/`) and sends
    /// every change applied to a matching key from now on to `sink`.
    pub async fn watch(&self, pattern: &str, sink: WatchSink) -> Result<(), KvCallError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(KvCommand::Watch(pattern.to_owned(), sink, tx))
            .await
            .map_err(|_| KvCallError::Stopped)?;
        rx.await.map_err(|_| KvCallError::Stopped)?
    }

    /// Follows `pattern` through a channel of replica changes.
    pub async fn changes(&self, pattern: &str) -> Result<mpsc::Receiver<Change>, KvCallError> {
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        self.watch(pattern, WatchSink::Changes(tx)).await?;
        Ok(rx)
    }

    /// The replica's counters (rejections by reason, catch-up), or `None` if it stopped.
    pub async fn counters(&self) -> Option<ReplicaCounters> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(KvCommand::Counters(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Asks the other replicas for what this one lacks, now (as after a reattach).
    pub async fn catch_up(&self) -> bool {
        self.commands.send(KvCommand::CatchUp).await.is_ok()
    }

    /// Resolves when the replica task has ended (stopped, or failed).
    pub async fn stopped(&self) {
        self.commands.closed().await
    }

    /// Stops the task (the node itself is stopped through its own handle).
    pub async fn stop(&self) {
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

/// Starts the task that drives `replica` for `node`, taking the node's deliveries.
pub fn spawn_kv(
    node: NodeHandle,
    deliveries: mpsc::Receiver<Delivery>,
    replica: Replica,
) -> KvNode {
    let (commands, command_rx) = mpsc::channel(256);
    let node_id = node.id();
    let tls_generation = node.tls_generation();
    let task = ReplicaTask {
        tls_generation,
        node,
        replica,
        subscribed: HashSet::new(),
        watchers: Vec::new(),
        transient: HashSet::new(),
        topology: Topology::default(),
    };
    let task = tokio::spawn(task.run(deliveries, command_rx));
    KvNode {
        node_id,
        commands,
        task: Arc::new(std::sync::Mutex::new(Some(task))),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Watcher {
    pattern: String,
    sink: WatchSink,
    /// It fell behind: it is dropped (its stream ends) at the next pass.
    ended: bool,
    /// Value sizes of the changes in its queue, oldest first, and their sum.
    sizes: std::collections::VecDeque<usize>,
    bytes: usize,
}

impl Watcher {
    fn matches(&self, key: &str) -> bool {
        if self.pattern.ends_with('/') {
            key.starts_with(&self.pattern)
        } else {
            key == self.pattern
        }
    }

    fn is_closed(&self) -> bool {
        match &self.sink {
            WatchSink::Changes(tx) => tx.is_closed(),
            WatchSink::Api(tx) => tx.is_closed(),
        }
    }

    /// Value bytes still in the watch's queue: the queue is FIFO, so what the reader took
    /// since the last send is the oldest entries (the channel's free capacity tells how many).
    fn queued_bytes(&mut self) -> usize {
        let (free, max) = match &self.sink {
            WatchSink::Changes(tx) => (tx.capacity(), tx.max_capacity()),
            WatchSink::Api(tx) => (tx.capacity(), tx.max_capacity()),
        };
        let queued = max.saturating_sub(free);
        while self.sizes.len() > queued {
            if let Some(size) = self.sizes.pop_front() {
                self.bytes = self.bytes.saturating_sub(size);
            }
        }
        self.bytes
    }

    /// Sends `change`; false when the watcher is gone or too slow and must be dropped: more
    /// than [`WATCH_QUEUE`] changes or [`WATCH_QUEUE_BYTES`] of values unread.
    fn send(&mut self, change: &Change) -> bool {
        let size = change.value.as_ref().map_or(0, |v| v.len());
        if self.queued_bytes().saturating_add(size) > WATCH_QUEUE_BYTES {
            warn!(pattern = %self.pattern, "ending a watch that does not keep up (bytes unread)");
            return false;
        }
        let sent = match &self.sink {
            WatchSink::Changes(tx) => tx.try_send(change.clone()).map_err(|e| e.to_string()),
            WatchSink::Api(tx) => tx
                .try_send(super::backend::api_change(change))
                .map_err(|e| e.to_string()),
        };
        match sent {
            Ok(()) => {
                self.sizes.push_back(size);
                self.bytes = self.bytes.saturating_add(size);
                true
            }
            Err(reason) => {
                warn!(pattern = %self.pattern, %reason, "ending a watch that does not keep up");
                false
            }
        }
    }
}

struct ReplicaTask {
    node: NodeHandle,
    replica: Replica,
    /// Tags the tree node was asked to subscribe to.
    subscribed: HashSet<u64>,
    watchers: Vec<Watcher>,
    /// Patterns subscribed only for the watches on them.
    transient: HashSet<String>,
    topology: Topology,
    /// The node's TLS generation the replica's credentials were taken at.
    tls_generation: u64,
}

impl ReplicaTask {
    /// After the node reloaded its certificate or trust, the replica signs and checks with
    /// the new material.
    fn follow_credentials(&mut self) {
        let generation = self.node.tls_generation();
        if generation != self.tls_generation {
            self.tls_generation = generation;
            self.replica
                .set_credentials(Arc::new(super::NodeCredentials::new(
                    self.node.authority(),
                    self.node.id(),
                )));
            debug!(
                node = self.node.id(),
                generation, "replica follows new credentials"
            );
        }
    }

    async fn run(
        mut self,
        mut deliveries: mpsc::Receiver<Delivery>,
        mut commands: mpsc::Receiver<KvCommand>,
    ) {
        let mut topology = self.node.topology();
        self.sync_subscriptions().await;
        loop {
            self.follow_credentials();
            let wake = self
                .replica
                .next_wake_ms()
                .map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
            let sleep = async move {
                match wake {
                    Some(after) => tokio::time::sleep(after).await,
                    None => std::future::pending().await,
                }
            };
            let publishes = tokio::select! {
                delivery = deliveries.recv() => match delivery {
                    Some(d) => self.replica.on_multicast(d.origin, d.key_tag, &d.payload, now_ms()),
                    None => break,
                },
                changed = topology.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let seen = *topology.borrow_and_update();
                    self.on_topology(seen)
                }
                command = commands.recv() => match command {
                    Some(command) => self.on_commands(command, &mut commands).await,
                    None => break,
                },
                () = sleep => self.replica.on_tick(now_ms()),
            };
            if !self.publish(publishes).await {
                break;
            }
            self.dispatch_changes();
            self.end_watches().await;
        }
        if let Err(error) = self.replica.flush() {
            warn!(node = self.node.id(), %error, "flushing the replica on stop failed");
        }
        debug!(node = self.node.id(), "replica task stopped");
    }

    /// A reattach or a new epoch from above (a root failover among them) may have cost
    /// multicasts in flight: once attached again, ask for what is missing.
    fn on_topology(&mut self, seen: Topology) -> Vec<Publish> {
        let previous = std::mem::replace(&mut self.topology, seen);
        if seen.parent.is_none() || previous == seen {
            return Vec::new();
        }
        debug!(node = self.node.id(), epoch = seen.epoch, parent = ?seen.parent, "topology changed; catching up");
        self.replica.on_epoch_change(now_ms())
    }

    /// Handles `first` and, if it is a write, every write already queued behind it (up to
    /// [`MAX_WRITE_GROUP`]) as one group: one disk sync for all of them, and none is
    /// acknowledged before it.
    async fn on_commands(
        &mut self,
        first: KvCommand,
        commands: &mut mpsc::Receiver<KvCommand>,
    ) -> Vec<Publish> {
        let mut publishes = Vec::new();
        let mut acks = Vec::new();
        let mut next = Some(first);
        let mut other = None;
        while let Some(command) = next.take() {
            let (reply, result) = match command {
                KvCommand::Put(key, value, reply) => (reply, self.write(&key, Some(value))),
                KvCommand::Delete(key, reply) => (reply, self.write(&key, None)),
                command => {
                    other = Some(command);
                    break;
                }
            };
            acks.push((
                reply,
                result.map(|(written, out)| {
                    publishes.extend(out);
                    written
                }),
            ));
            if acks.len() < MAX_WRITE_GROUP {
                next = commands.try_recv().ok();
            }
        }
        if !acks.is_empty() {
            let synced = self.replica.flush();
            // Subscribe before anyone hears a write acknowledged, so the tree routes the
            // written channels' records here from then on.
            self.sync_subscriptions().await;
            for (reply, result) in acks {
                let result = match (&synced, result) {
                    (Err(e), Ok(_)) => Err(KvError::Storage(format!("not made durable: {e}"))),
                    (_, result) => result,
                };
                let _ = reply.send(result);
            }
        }
        if let Some(command) = other {
            publishes.extend(self.on_command(command).await);
        }
        publishes
    }

    fn write(
        &mut self,
        key: &str,
        value: Option<Bytes>,
    ) -> Result<(Written, Vec<Publish>), KvError> {
        let now = now_ms();
        let outcome = match value {
            Some(value) => self.replica.put(key, value, now)?,
            None => self.replica.delete(key, now)?,
        };
        let written = Written {
            origin: self.node.id(),
            origin_seq: outcome.origin_seq,
            hlc: outcome.hlc,
        };
        Ok((written, outcome.publishes))
    }

    /// Everything but writes (see [`Self::on_commands`]).
    async fn on_command(&mut self, command: KvCommand) -> Vec<Publish> {
        let now = now_ms();
        let mut publishes = Vec::new();
        match command {
            KvCommand::Put(..) | KvCommand::Delete(..) => {
                unreachable!("on_commands groups every write")
            }
            KvCommand::Get(key, reply) => {
                let _ = reply.send(self.replica.get(&key));
            }
            KvCommand::Scan(prefix, limit, reply) => {
                let _ = reply.send(self.replica.scan(&prefix, limit));
            }
            KvCommand::Subscribe(pattern, reply) => {
                if self.transient.remove(&pattern) {
                    // Held for a watch until now: from now on it is kept (and persisted).
                    if let Err(e) = self.replica.unsubscribe(&pattern) {
                        warn!(%pattern, error = %e, "dropping a watch's subscription");
                    }
                }
                let result = self.replica.subscribe(&pattern, now).map(|s| {
                    publishes = s.publishes;
                    s.tag
                });
                self.sync_subscriptions().await;
                let _ = reply.send(result);
            }
            KvCommand::Watch(pattern, sink, reply) => {
                self.end_watches().await;
                let result = if self.watchers.len() >= MAX_WATCHES {
                    Err(KvCallError::TooManyWatches { max: MAX_WATCHES })
                } else {
                    // A watch subscribes only while it lasts, unless the pattern was
                    // subscribed already (configuration, `subscribe`).
                    if !self.replica.is_subscribed(&pattern) {
                        self.transient.insert(pattern.clone());
                    }
                    self.replica
                        .subscribe_transient(&pattern, now)
                        .map(|s| {
                            publishes = s.publishes;
                            self.watchers.push(Watcher {
                                pattern,
                                sink,
                                ended: false,
                                sizes: Default::default(),
                                bytes: 0,
                            });
                        })
                        .map_err(KvCallError::from)
                };
                self.sync_subscriptions().await;
                let _ = reply.send(result);
            }
            KvCommand::Counters(reply) => {
                let _ = reply.send(self.replica.counters());
            }
            KvCommand::CatchUp => publishes = self.replica.on_epoch_change(now),
        }
        publishes
    }

    async fn sync_subscriptions(&mut self) {
        for tag in self.replica.subscribed_tags() {
            if self.subscribed.insert(tag) {
                self.node.subscribe(tag).await;
            }
        }
    }

    /// Hands every publish to the node; false once the node has stopped.
    async fn publish(&mut self, publishes: Vec<Publish>) -> bool {
        for publish in publishes {
            if !self.node.publish(publish.key_tag, publish.payload).await {
                return false;
            }
        }
        true
    }

    fn dispatch_changes(&mut self) {
        let changes = self.replica.drain_changes();
        for change in &changes {
            for watcher in &mut self.watchers {
                if !watcher.ended && watcher.matches(&change.key) && !watcher.send(change) {
                    watcher.ended = true;
                }
            }
        }
    }

    /// Removes watches whose reader went away or fell behind; a pattern no watch (and no
    /// subscription of its own) needs any more is unsubscribed, from the replica and the tree.
    async fn end_watches(&mut self) {
        let mut ended = Vec::new();
        self.watchers.retain(|w| {
            let gone = w.ended || w.is_closed();
            if gone {
                ended.push(w.pattern.clone());
            }
            !gone
        });
        for pattern in ended {
            if self.watchers.iter().any(|w| w.pattern == pattern)
                || !self.transient.remove(&pattern)
            {
                continue;
            }
            match self.replica.unsubscribe(&pattern) {
                Ok(Some(tag)) => {
                    self.subscribed.remove(&tag);
                    self.node.unsubscribe(tag).await;
                }
                Ok(None) => {}
                Err(e) => warn!(%pattern, error = %e, "dropping a watch's subscription"),
            }
        }
    }
}
