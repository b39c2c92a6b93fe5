//! Shared helpers: a test PKI, endpoints on 127.0.0.1, raw quinn clients, event waiting.
//!
//! Timeouts here only keep a broken test from hanging; no assertion depends on timing.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use canopy_net::{
    crypto_provider, default_validity, server_name_for, CertRole, CertificateAuthority,
    Credentials, Identity, NetConfig, NetEndpoint, NetEvent, NetEvents, NodeId, ALPN,
};
use canopy_proto::v1::{Heartbeat, Multicast};
use canopy_proto::{Body, ControlMessage};

pub const CLUSTER: &str = "test";
/// Generous bound on any single wait; only there so a bug fails instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub fn identity(node_id: NodeId, role: CertRole) -> Identity {
    Identity {
        cluster: CLUSTER.into(),
        node_id,
        role,
        region: "local".into(),
    }
}

pub fn ca() -> CertificateAuthority {
    CertificateAuthority::generate(CLUSTER).expect("generate CA")
}

pub fn creds(ca: &CertificateAuthority, node_id: NodeId, role: CertRole) -> Credentials {
    let (not_before, not_after) = default_validity();
    let cert = ca
        .issue(&identity(node_id, role), not_before, not_after)
        .expect("issue");
    Credentials::from_pem(&ca.cert_pem, &cert.cert_pem, &cert.key_pem).expect("credentials")
}

/// Credentials with an ECDSA P-256 key, as `CertificateAuthority::issue` gave nodes before
/// their keys were Ed25519: the same names and usages, signed by the cluster CA.
pub fn ecdsa_creds(ca: &CertificateAuthority, node_id: NodeId, role: CertRole) -> Credentials {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
    let (not_before, not_after) = default_validity();
    let cert = ca
        .issue_with_key(&identity(node_id, role), not_before, not_after, key)
        .expect("issue");
    Credentials::from_pem(&ca.cert_pem, &cert.cert_pem, &cert.key_pem).expect("credentials")
}

pub fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

pub fn bind(creds: Credentials, config: NetConfig) -> (NetEndpoint, NetEvents) {
    NetEndpoint::bind(localhost(), creds, config).expect("bind")
}

pub fn node(ca: &CertificateAuthority, node_id: NodeId) -> (NetEndpoint, NetEvents) {
    bind(creds(ca, node_id, CertRole::Router), NetConfig::default())
}

pub fn heartbeat(sender_id: NodeId, epoch: u64) -> ControlMessage {
    ControlMessage::new(Body::Heartbeat(Heartbeat {
        sender_id,
        topology_epoch: epoch,
        ..Default::default()
    }))
}

pub fn multicast(origin: NodeId, seq: u64, payload: Vec<u8>) -> ControlMessage {
    ControlMessage::new(Body::Multicast(Multicast {
        origin,
        origin_seq: seq,
        payload: Bytes::from(payload),
        ..Default::default()
    }))
}

pub async fn next_event(rx: &mut NetEvents) -> NetEvent {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("timed out waiting for an event")
        .expect("event channel closed")
}

/// Waits for the next message from `from`, skipping `LinkUp`s; panics on any event that
/// concerns one of `forbidden` or a `LinkClosed` of `from`.
pub async fn message_from(
    rx: &mut NetEvents,
    from: NodeId,
    forbidden: &[NodeId],
) -> (Identity, ControlMessage) {
    loop {
        match next_event(rx).await {
            NetEvent::Message { from: who, msg } if who.node_id == from => return (who, msg),
            NetEvent::Message { from: who, .. } | NetEvent::LinkUp { peer: who } => {
                assert!(
                    !forbidden.contains(&who.node_id),
                    "event from refused peer {who}"
                );
            }
            NetEvent::LinkClosed { peer, reason } => {
                assert!(
                    peer != from && !forbidden.contains(&peer),
                    "link to {peer} closed: {reason}"
                );
            }
            NetEvent::Busy { peer } => {
                assert!(peer != from, "{peer} refused us as busy");
            }
        }
    }
}

/// Waits for `LinkClosed` of `peer` and returns its reason; other peers' events are skipped.
pub async fn link_closed(rx: &mut NetEvents, peer: NodeId) -> String {
    loop {
        if let NetEvent::LinkClosed { peer: p, reason } = next_event(rx).await {
            if p == peer {
                return reason;
            }
        }
    }
}

/// Waits for `LinkUp` of `peer`.
pub async fn link_up(rx: &mut NetEvents, peer: NodeId) -> Identity {
    loop {
        match next_event(rx).await {
            NetEvent::LinkUp { peer: p } if p.node_id == peer => return p,
            NetEvent::LinkClosed { peer: p, reason } if p == peer => {
                panic!("link to {peer} closed before it came up: {reason}")
            }
            _ => {}
        }
    }
}

/// A fresh, well-behaved peer dials `server`, and messages go both ways. Any event on the
/// server about one of `refused` before that fails the test.
pub async fn good_peer_works(
    ca: &CertificateAuthority,
    server: &NetEndpoint,
    server_rx: &mut NetEvents,
    good_id: NodeId,
    refused: &[NodeId],
) {
    let server_id = server.identity().node_id;
    let (good, mut good_rx) = node(ca, good_id);
    good.send(server_id, Some(server.local_addr()), heartbeat(good_id, 1))
        .expect("send to server");
    let (who, msg) = message_from(server_rx, good_id, refused).await;
    assert_eq!(who, identity(good_id, CertRole::Router));
    assert_eq!(msg, heartbeat(good_id, 1));
    server
        .send(good_id, None, multicast(server_id, 1, b"welcome".to_vec()))
        .expect("reply");
    let (who, msg) = message_from(&mut good_rx, server_id, &[]).await;
    assert_eq!(who.node_id, server_id);
    assert_eq!(msg, multicast(server_id, 1, b"welcome".to_vec()));
    good.shutdown().await;
    // The server reports the good peer leaving; consume it so later checks start clean.
    link_closed(server_rx, good_id).await;
}

/// A quinn client endpoint on 127.0.0.1 with `config` as its default.
pub fn raw_client(config: quinn::ClientConfig) -> quinn::Endpoint {
    let mut endpoint = quinn::Endpoint::client(localhost()).expect("client endpoint");
    endpoint.set_default_client_config(config);
    endpoint
}

/// A raw quinn client endpoint presenting `creds`' certificate.
pub fn raw_client_with(creds: &Credentials) -> quinn::Endpoint {
    let transport = Arc::new(NetConfig::default().transport_config().expect("transport"));
    raw_client(creds.quic_client_config(transport).expect("client config"))
}

/// Connects a raw client to `server` and completes the handshake.
pub async fn raw_connect(client: &quinn::Endpoint, server: &NetEndpoint) -> quinn::Connection {
    tokio::time::timeout(
        PATIENCE,
        client
            .connect(
                server.local_addr(),
                &server_name_for(CLUSTER, server.identity().node_id),
            )
            .expect("connect"),
    )
    .await
    .expect("connect timed out")
    .expect("handshake")
}

/// A raw quinn connection to `server` presenting a valid certificate for `node_id`.
pub async fn raw_valid_connection(
    ca: &CertificateAuthority,
    server: &NetEndpoint,
    node_id: NodeId,
) -> (quinn::Endpoint, quinn::Connection) {
    let endpoint = raw_client_with(&creds(ca, node_id, CertRole::Client));
    let conn = raw_connect(&endpoint, server).await;
    (endpoint, conn)
}

/// `msg` framed as a peer writes it on a stream.
pub fn encode(msg: &ControlMessage) -> bytes::BytesMut {
    let mut frame = bytes::BytesMut::new();
    canopy_proto::FrameCodec::default()
        .encode_into(msg, &mut frame)
        .expect("encode");
    frame
}

/// Opens a new stream on a raw connection and writes `msg` on it; the stream stays open.
pub async fn send_on_new_stream(
    conn: &quinn::Connection,
    msg: &ControlMessage,
) -> quinn::SendStream {
    let mut stream = conn.open_uni().await.expect("open stream");
    stream.write_all(&encode(msg)).await.expect("write");
    stream
}

/// The first message the other side sends on its first stream of a raw connection.
pub async fn first_message(conn: &quinn::Connection) -> ControlMessage {
    use futures_util::StreamExt;
    let read = async {
        let stream = conn.accept_uni().await.expect("accept stream");
        let mut frames =
            tokio_util::codec::FramedRead::new(stream, canopy_proto::FrameCodec::default());
        frames.next().await.expect("a frame").expect("a message")
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("timed out waiting for a message")
}

/// A rustls client config that trusts `ca` but presents no client certificate.
pub fn no_client_cert_config(ca: &CertificateAuthority) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.cert_pem.as_bytes()) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    quinn::ClientConfig::new(Arc::new(crypto))
}

/// Waits for a raw connection to be closed and returns why.
pub async fn closed(conn: &quinn::Connection) -> quinn::ConnectionError {
    tokio::time::timeout(PATIENCE, conn.closed())
        .await
        .expect("connection was not closed")
}

/// Expects an application close with `code` from the server.
pub async fn closed_with_code(conn: &quinn::Connection, code: quinn::VarInt) -> String {
    match closed(conn).await {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, code, "close code");
            String::from_utf8_lossy(&close.reason).into_owned()
        }
        other => panic!("expected an application close, got {other}"),
    }
}

/// A CRL from `ca` revoking the leaves of `revoked`, numbered `number`.
pub fn crl(
    ca: &CertificateAuthority,
    number: u64,
    revoked: &[&Credentials],
) -> canopy_net::RevocationList {
    use rcgen::{CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevokedCertParams};
    let key = KeyPair::from_pem(&ca.key_pem).expect("CA key");
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, key).expect("issuer");
    let now = time::OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + time::Duration::days(30),
        crl_number: number.into(),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|creds| RevokedCertParams {
                serial_number: serial_of(creds).into(),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let list = params.signed_by(&issuer).expect("sign CRL");
    canopy_net::RevocationList::from_der(list.der()).expect("parse CRL")
}

/// The serial of a credential's leaf certificate, as encoded.
pub fn serial_of(creds: &Credentials) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(creds.chain()[0].as_ref()).expect("leaf");
    cert.raw_serial().to_vec()
}

/// A second CA for the same cluster, with its own distinguished name (as `rotate-ca` makes).
pub fn next_ca() -> CertificateAuthority {
    CertificateAuthority::generate_generation(CLUSTER, 2).expect("CA")
}

/// Router credentials for `id` from `ca`, trusting the CAs of `bundle`.
pub fn creds_in(
    bundle: &[&CertificateAuthority],
    ca: &CertificateAuthority,
    id: u64,
) -> Credentials {
    let (from, until) = canopy_net::default_validity();
    let issued = ca
        .issue(&identity(id, CertRole::Router), from, until)
        .expect("issue");
    let bundle: String = bundle.iter().map(|ca| ca.cert_pem.clone()).collect();
    Credentials::from_pem(&bundle, &issued.cert_pem, &issued.key_pem).expect("credentials")
}
