//! Canopy's wire format: the prost types generated from `proto/canopy.proto` and the
//! length-delimited framing every tree link uses.
//!
//! This crate is the bottom of the stack: it must not depend on any other Canopy crate, on
//! sockets or on an async runtime (the tokio-util codec is an opt-in feature for the IO layer).

mod frame;

pub use frame::{FrameCodec, FrameError, DEFAULT_MAX_FRAME_LEN, LENGTH_PREFIX_LEN};

/// Generated protocol types (package `canopy.v1`).
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/canopy.v1.rs"));
}

pub use prost;
pub use v1::control_message::Body;
pub use v1::ControlMessage;

impl ControlMessage {
    /// Wraps a message body.
    pub fn new(body: Body) -> Self {
        ControlMessage { body: Some(body) }
    }

    /// A short, stable name of the message type, for logs and counters.
    pub fn kind(&self) -> &'static str {
        match &self.body {
            None => "empty",
            Some(Body::JoinRequest(_)) => "join_request",
            Some(Body::NotLeader(_)) => "not_leader",
            Some(Body::AssignParent(_)) => "assign_parent",
            Some(Body::AdoptChild(_)) => "adopt_child",
            Some(Body::Reattach(_)) => "reattach",
            Some(Body::Heartbeat(_)) => "heartbeat",
            Some(Body::InterestSnapshot(_)) => "interest_snapshot",
            Some(Body::Cull(_)) => "cull",
            Some(Body::Disconnect(_)) => "disconnect",
            Some(Body::ChildRemoved(_)) => "child_removed",
            Some(Body::Multicast(_)) => "multicast",
            Some(Body::RaftRequest(_)) => "raft_request",
            Some(Body::RaftResponse(_)) => "raft_response",
            Some(Body::AdminRequest(_)) => "admin_request",
            Some(Body::AdminResponse(_)) => "admin_response",
            Some(Body::ReleaseChild(_)) => "release_child",
            Some(Body::Revocations(_)) => "revocations",
            Some(Body::LinkRefresh(_)) => "link_refresh",
            Some(Body::OutsideInterest(_)) => "outside_interest",
        }
    }
}
