//! What goes into a node and what comes out of it.

use bytes::Bytes;
use canopy_proto::v1::Multicast;
use canopy_proto::ControlMessage;

use crate::{KeyTag, NodeId, Time, TreeView, ViewChange};

/// Something that happened to a node.
#[derive(Debug, Clone)]
pub enum Input {
    /// Begin: the root starts serving, every other node asks the root for a parent.
    Start,
    /// A message arrived from `from` (authenticated by the transport).
    Message { from: NodeId, msg: ControlMessage },
    /// A wake-up the node asked for with [`Output::WakeAt`] is due.
    Tick,
    /// The application wants multicasts with this key tag.
    Subscribe(KeyTag),
    /// The application no longer wants this key tag.
    Unsubscribe(KeyTag),
    /// The application publishes a sealed payload under a key tag.
    Publish { key_tag: KeyTag, payload: Bytes },
    /// Leave the tree gracefully: tell the parent and the children.
    Leave,
    /// The transport's connection to a peer is up (its handshake completed). A joiner learns
    /// from it that the candidate it asked is alive: the wait for the answer starts now.
    LinkUp { peer: NodeId },
    /// The transport lost its connection to a peer (the node treats the link as dead).
    LinkClosed { peer: NodeId },
    /// `peer` refused a connection because it is at capacity (a root in a join storm): a
    /// joiner waits a jittered while and asks the same candidate again, instead of taking
    /// the refusal for a dead root and trying the others.
    Busy { peer: NodeId },
    /// News from the root group (a replicated candidate only): `leader` leads in `term`.
    /// `contact` is when this candidate last had proof of it: as the leader, when it sent the
    /// last heartbeat a quorum acknowledged; as a follower, when it last accepted the
    /// leader's entries or granted a vote (`None`: never). The node decides from this alone
    /// whether to take over, step down or ask for an election.
    Leadership {
        term: u64,
        leader: Option<NodeId>,
        contact: Option<Time>,
    },
    /// The takeover this node asked for with [`Output::TakeOver`] committed: serve as root
    /// of `reign` with this view (its `NewRoot` applied).
    BecomeRoot { reign: u64, view: Box<TreeView> },
    /// Every proposal of `reign` up to and including sequence number `up_to` is committed.
    Committed { reign: u64, up_to: u64 },
    /// A proposal (or the takeover) of `reign` could not commit.
    CommitFailed { reign: u64 },
}

/// Something the driver must do for the node.
#[derive(Debug, Clone)]
pub enum Output {
    /// Send a message to a peer (the driver resolves the address, see
    /// [`crate::Node::peer_address`]).
    Send { to: NodeId, msg: ControlMessage },
    /// Call `handle(Input::Tick, ..)` at (or after) this time. A later request supersedes an
    /// earlier one only if it is sooner; spurious ticks are harmless.
    WakeAt(Time),
    /// A multicast this node wants, for the application. Never the node's own publish.
    Deliver(Multicast),
    /// A state change worth logging or counting.
    Event(TreeEvent),
    /// A replicated candidate begins reign `reign`: the driver commits `change` (a
    /// `NewRoot` naming this node) through Raft and answers with [`Input::BecomeRoot`] and
    /// the committed view, or [`Input::CommitFailed`].
    TakeOver { reign: u64, change: ViewChange },
    /// A replicated root must commit this change (through Raft) and then answer with
    /// [`Input::Committed`]; the actions that depend on it are held until then. Sequence
    /// numbers rise by one per proposal within a reign and must be committed in order.
    Propose {
        reign: u64,
        seq: u64,
        change: ViewChange,
    },
    /// The leader has been silent for longer than any follower's vote lease: the driver asks
    /// the root group for an election now (in `term`, as this node last heard of it).
    Elect { term: u64 },
    /// The peer went over a bound (see [`crate::TreeLimits`]): the node has already forgotten
    /// it and told it why; the driver closes the link and counts the reason.
    CloseLink { peer: NodeId, reason: String },
}

/// Why a child stopped being a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovalReason {
    /// No heartbeat within the child timeout.
    Timeout,
    /// The child said it is leaving (or moved to another parent).
    Left,
    /// This node culled it to rebalance the tree.
    Culled,
    /// The transport closed the link.
    LinkClosed,
    /// The root adopted it elsewhere.
    Reassigned,
    /// It went over a bound (see [`crate::TreeLimits`]); its link is closed.
    OverLimit,
}

/// Why a replicated root stopped serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepDownReason {
    /// The root group names another leader (or none).
    NotLeader,
    /// No quorum acknowledged this leader within the lease (it may have been paused, or cut
    /// off): another candidate may already lead.
    LeaseExpired,
    /// A proposal or the takeover did not commit in time, or failed.
    CommitFailed,
}

/// Why a message was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The sender is neither the parent nor a child.
    NotANeighbour,
    /// The message is not one this role accepts (e.g. a join request at a router).
    UnexpectedMessage,
    /// A required field is missing or invalid.
    Malformed,
    /// An assignment older than one already obeyed.
    StaleAssignment,
    /// A placement without a matching, fresh grant from a root candidate, or a structural
    /// order from a node that may not give it.
    Unauthorized,
}

/// State changes, for logs, metrics and tests.
#[derive(Debug, Clone, PartialEq)]
pub enum TreeEvent {
    /// A join request went to the root (attempt counts from 0).
    JoinSent { root: NodeId, attempt: u32 },
    /// The node obeyed an assignment and attached to a parent.
    ParentChanged {
        parent: NodeId,
        previous: Option<NodeId>,
    },
    /// The parent went silent or left; the node rejoins through the root.
    Orphaned { previous: NodeId },
    /// The parent was not heard from within the parent timeout (an `Orphaned` follows).
    ParentTimedOut { previous: NodeId },
    /// A child was adopted on the root's instruction.
    ChildAdopted { child: NodeId },
    /// A child is gone.
    ChildRemoved {
        child: NodeId,
        reason: RemovalReason,
    },
    /// A message was ignored.
    Dropped {
        from: NodeId,
        kind: &'static str,
        reason: DropReason,
    },
    /// The topology epoch seen from above changed (catch-up should run).
    EpochChanged { epoch: u64 },
    /// The root ignored a join request: the node's placement is still waiting for its
    /// commit, and the answer goes out once it is committed.
    JoinAlreadyPlacing { node: NodeId },
    /// The root placed a joiner under a parent.
    Placed {
        node: NodeId,
        parent: NodeId,
        assignment_id: u64,
    },
    /// A cull was sent (to a child router) or carried out (on own clients).
    Culled { count: u64 },
    /// The root moved a client to a router where its keys cost the tree less.
    Reallocated {
        client: NodeId,
        from: NodeId,
        to: NodeId,
    },
    /// A publish could not go up because the node has no parent right now.
    PublishedWhileDetached,
    /// This candidate started serving as root, at this topology epoch; `reassigned` children
    /// of the old root were placed under it at once.
    BecameRoot { epoch: u64, reassigned: usize },
    /// This candidate stopped serving as root; its children rejoin through the leader.
    SteppedDown {
        leader: Option<NodeId>,
        reason: StepDownReason,
    },
    /// Held root actions were released after their changes committed.
    ActionsReleased { count: usize },
}
