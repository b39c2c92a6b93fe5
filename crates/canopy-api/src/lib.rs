//! The local application API of a Canopy client node: gRPC (tonic) over a Unix socket.
//!
//! A client node holds a replica of the key-value store. Applications on the same machine,
//! and the `canopy put/get/del/scan/watch` commands, reach that replica through the `Kv`
//! service defined in `proto/canopy_api.proto` (package `canopy.api.v1`), served on a Unix
//! socket that only the node's user may open (mode 0600). It is never served on the network.
//!
//! This crate is only the API's plumbing:
//! - [`v1`]: the generated wire types, server and client,
//! - [`KvBackend`]: the trait the node implements to answer the API, and [`ApiError`],
//!   whose message reaches the client verbatim as the gRPC status message,
//! - [`serve`]: serves a backend on a Unix socket until a shutdown future completes,
//! - [`connect`]: a client over the socket, with plain errors when no node is there.
//!
//! It must not depend on the tree, net or kv crates (`canopy-tree`, `canopy-net`,
//! `canopy-kv`, `canopy-node`): the node depends on it and implements [`KvBackend`], not
//! the other way round, so an application can talk to a node without linking the node.

mod client;
mod error;
mod server;

/// Generated from `proto/canopy_api.proto` (package `canopy.api.v1`): the messages,
/// [`v1::kv_server`] and [`v1::kv_client`].
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("canopy.api.v1");
}

pub use client::{connect, Channel, ConnectError, KvClient};
pub use error::ApiError;
pub use server::{serve, KvBackend, ServeError};

/// The tonic version this crate is built with, so dependents name the same `Status`,
/// `Code` and `Streaming` types without a dependency of their own.
pub use tonic;
/// The attribute for implementing [`KvBackend`]: `#[canopy_api::async_trait]`.
pub use tonic::async_trait;
