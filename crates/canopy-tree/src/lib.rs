//! The Canopy tree protocol as a sans-IO state machine.
//!
//! A [`Node`] is driven by [`Node::handle`]: an [`Input`] (a message from a peer, a timer
//! firing, an application request) plus the current time go in, [`Output`]s (messages to
//! send, the next wake-up time, deliveries, events) come out. The node never reads a clock,
//! opens a socket or spawns a task, and its randomness comes from a seeded RNG, so the
//! simulator (`canopy-sim`) and the daemon (`canopy-node`) drive exactly this code and the
//! same inputs always give the same outputs.
//!
//! This crate must not depend on tokio, any networking crate, or a clock. It depends only on
//! the wire types of `canopy-proto`, `qfilter` for per-link interest sets, and `rand` for the
//! injected RNG.

mod config;
mod interest;
mod io;
mod node;
mod shape;
mod view;

pub use canopy_proto as proto;
pub use config::{ConfigError, ReignConfig, TreeConfig, TreeLimits};
pub use interest::{link_set_bytes, FilterKey, InterestTable};
pub use io::{DropReason, Input, Output, RemovalReason, StepDownReason, TreeEvent};
pub use node::{placement_grant, placement_grant_at_epoch, ChildInfo, Node, RootCandidate};
pub use shape::{check_structure, NodeSummary, TreeShape};
pub use view::{TreeView, ViewChange, ViewEntry, ViewRecord, ViewSnapshot};

/// A node's identity in the tree (derived from its certificate in the daemon).
pub type NodeId = u64;

/// An opaque keyed hash of an application key; [`BROADCAST_TAG`] means "every client".
pub type KeyTag = u64;

/// The key tag that every client wants.
pub const BROADCAST_TAG: KeyTag = 0;

/// Time as the driver sees it: a duration since an origin of the driver's choosing.
pub type Time = std::time::Duration;

/// What a node is in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Role {
    /// A root candidate; it serves as the root router while it leads the Raft group.
    Root,
    /// An interior router: forwards and filters, never delivers application data.
    Router,
    /// A leaf: publishes and receives multicasts.
    Client,
}

impl Role {
    /// The wire form of this role.
    pub fn to_proto(self) -> proto::v1::Role {
        match self {
            Role::Root => proto::v1::Role::Root,
            Role::Router => proto::v1::Role::Router,
            Role::Client => proto::v1::Role::Client,
        }
    }

    /// Reads a role off the wire; `None` for unspecified or unknown values.
    pub fn from_proto(raw: i32) -> Option<Role> {
        match proto::v1::Role::try_from(raw).ok()? {
            proto::v1::Role::Root => Some(Role::Root),
            proto::v1::Role::Router => Some(Role::Router),
            proto::v1::Role::Client => Some(Role::Client),
            proto::v1::Role::Unspecified => None,
        }
    }

    /// Whether this is the root role.
    pub fn is_root(self) -> bool {
        matches!(self, Role::Root)
    }

    /// Routers and the root forward; clients do not have children.
    pub fn is_router(self) -> bool {
        !matches!(self, Role::Client)
    }
}

/// The key tag of a node's own id: every node always wants it, so "send to node X" is a
/// multicast to `node_tag(X)`.
pub fn node_tag(id: NodeId) -> KeyTag {
    // splitmix64 finaliser: spreads ids over the tag space; never 0, which is the
    // broadcast tag.
    let mut z = id.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    if z == BROADCAST_TAG {
        1
    } else {
        z
    }
}
