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
//! - [`crl_issue`]: the CA signing revocation lists ([`CertificateAuthority::revocation_list`]).
//! - [`cert_info`]: [`CertificateInfo`], a certificate's serial, validity and fingerprint, for
//!   the operator tooling.
//! - [`authority`]: signing statements with the own certificate key and verifying others'
//!   against the CA (the root's placement grants); [`CheckedCertificate`] and [`verify_with`]
//!   check a certificate once and its holder's signatures cheaply many times.
//! - [`tls`]: [`Credentials`] and the rustls / quinn configurations built from them.
//! - [`crl`]: [`RevocationList`] and [`RevocationSet`]: CA-signed revocation lists, checked
//!   against the bundle, newest per CA.
//! - `live`: the TLS material a running endpoint can swap (certificate resolver and
//!   verifiers that read the current state on every handshake).
//! - `refresh`: [`NetEndpoint::refresh_links`] moves live links to a renewed certificate
//!   without ending their sessions.
//! - [`reload`]: [`NetEndpoint::reload`] and [`NetEndpoint::add_revocations`] change it and
//!   close the live links it no longer accepts ([`TrustUpdate`]).
//! - [`config`]: [`NetConfig`], [`NetEvent`] and the endpoint's errors.
//! - [`events`]: [`NetEvents`], the three receive lanes (Raft, then control, then data).
//! - [`stats`]: [`NetStats`], the endpoint's refusal and close counters.
//! - [`sweep`]: [`PeerCert`]; live links are re-checked (expired certificates are closed).
//! - [`endpoint`]: [`NetEndpoint`], which accepts and dials links, sends
//!   [`canopy_proto::ControlMessage`]s and reports [`NetEvent`]s.
//! - `link`: one connection's writer and readers: a prioritised control stream and a data
//!   stream per direction, framed with [`canopy_proto::FrameCodec`].
//! - `limits`: the per-link receive rates and send byte budget.
//! - `session`: accepting and dialling connections, identity checks, one inbound session per
//!   node, running a connection as a link.
//! - `fault`: the endpoint's UDP socket can be cut off or partitioned from chosen addresses
//!   ([`NetEndpoint::set_cut`], [`NetEndpoint::set_blocked`]) for crash and partition tests.
//!
//! Bad input from a peer (a refused certificate, a malformed, oversized or unknown frame, a
//! peer too slow to drain its queue) closes that one link with a logged reason and never
//! stops the endpoint.
//!
//! Every quantity a peer controls is bounded (see [`NetConfig`]): connections, one inbound
//! session per node, streams per connection, control and multicast frame rates, bytes queued
//! for it, and its certificate's lifetime. A peer over a bound costs only its own link (closed
//! with a logged reason and counted in [`NetStats`]); a peer over the multicast rate is read
//! more slowly instead. Control traffic never queues behind multicast data on receipt.
//!
//! This crate depends on no Canopy crate but `canopy-proto`.

pub mod authority;
pub mod cert_info;
pub mod certs;
pub mod config;
pub mod crl;
pub mod crl_issue;
pub mod endpoint;
pub mod events;
mod fault;
pub mod identity;
mod limits;
mod link;
mod live;
mod refresh;
pub mod reload;
mod session;
pub mod stats;
pub mod sweep;
pub mod tls;

pub use authority::{verify_with, Authority, CheckedCertificate, KeyAlgorithm, SignatureError};
pub use cert_info::{fingerprint, hex, parse_serial, pem_certificates, CertificateInfo};
pub use certs::{default_validity, parse_identity, CertError, CertificateAuthority, IssuedCert};
pub use config::{
    NetConfig, NetError, NetEvent, SendError, DATA_EVENT_QUEUE, EVENT_QUEUE, RAFT_EVENT_QUEUE,
};
pub use crl::{RevocationList, RevocationSet};
pub use crl_issue::{RevocationReason, RevokedSerial};
pub use endpoint::{EncodedFrame, NetEndpoint, SIMULTANEOUS_DIAL_WINDOW};
pub use events::NetEvents;
pub use identity::{server_name_for, CertRole, Identity, NodeId, UnknownRole};
pub use link::{
    CLOSE_BUSY, CLOSE_IDENTITY, CLOSE_NORMAL, CLOSE_PROTOCOL, CLOSE_QUEUE_FULL, CONTROL_PRIORITY,
    MAX_STREAMS_PER_LINK,
};
pub use refresh::ANNOUNCEMENT_WAIT;
pub use reload::{LinkCertificate, TrustUpdate};
pub use stats::NetStats;
pub use sweep::PeerCert;
pub use tls::{crypto_provider, Credentials};

/// The ALPN protocol id of Canopy links.
pub const ALPN: &[u8] = b"canopy/1";
