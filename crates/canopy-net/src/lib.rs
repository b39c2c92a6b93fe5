//! Canopy's transport: QUIC links with mutual TLS against the cluster CA.
//!
//! Every tree link and every Raft RPC between Canopy nodes is a QUIC connection (quinn) whose
//! both ends present a certificate issued by the cluster CA (rustls, ring provider, TLS 1.3).
//! A node's identity (cluster, node id, role, region) comes only from its verified
//! certificate: the DNS SAN `<node-id>.<cluster>.canopy` is dialled as the TLS server name and
//! the URI SAN `canopy://<cluster>/<role>/<node-id>?region=<region>` carries role and region.
//!
//! - [`identity`]: [`Identity`], [`CertRole`], the SAN formats.
//! - [`certs`]: the cluster CA ([`CertificateAuthority`]), issuing node certificates,
//!   [`parse_identity`].
//! - [`tls`]: [`Credentials`] and the rustls / quinn configurations built from them.
//! - [`config`]: [`NetConfig`], [`NetEvent`] and the endpoint's errors.
//! - [`endpoint`]: [`NetEndpoint`], which accepts and dials links, sends
//!   [`canopy_proto::ControlMessage`]s and reports [`NetEvent`]s.
//! - `link`: one connection's writer and readers: a prioritised control stream and a data
//!   stream per direction, framed with [`canopy_proto::FrameCodec`].
//! - `fault`: the endpoint's UDP socket can be cut off or partitioned from chosen addresses
//!   ([`NetEndpoint::set_cut`], [`NetEndpoint::set_blocked`]) for crash and partition tests.
//!
//! Bad input from a peer (a refused certificate, a malformed, oversized or unknown frame, a
//! peer too slow to drain its queue) closes that one link with a logged reason and never
//! stops the endpoint.
//!
//! This crate depends on no Canopy crate but `canopy-proto`.

pub mod certs;
pub mod config;
pub mod endpoint;
mod fault;
pub mod identity;
mod link;
pub mod tls;

pub use certs::{default_validity, parse_identity, CertError, CertificateAuthority, IssuedCert};
pub use config::{NetConfig, NetError, NetEvent, SendError, EVENT_QUEUE};
pub use endpoint::NetEndpoint;
pub use identity::{server_name_for, CertRole, Identity, NodeId, UnknownRole};
pub use link::{CLOSE_IDENTITY, CLOSE_NORMAL, CLOSE_PROTOCOL, CLOSE_QUEUE_FULL, CONTROL_PRIORITY};
pub use tls::{crypto_provider, Credentials};

/// The ALPN protocol id of Canopy links.
pub const ALPN: &[u8] = b"canopy/1";
