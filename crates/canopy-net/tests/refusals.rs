//! Every way a peer can be refused, each followed by a good peer using the same server.
//!
//! With TLS 1.3 the client finishes the handshake before the server checks its certificate,
//! so a refused client's `connect` succeeds: each test does I/O and waits for the close.

mod common;

use canopy_net::{
    CertRole, CertificateAuthority, Credentials, NetConfig, NetEndpoint, NetEvents, CLOSE_PROTOCOL,
};
use common::*;
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, SanType};
use time::{Duration, OffsetDateTime};

const SERVER: u64 = 100;

fn server() -> (CertificateAuthority, NetEndpoint, NetEvents) {
    init_tracing();
    let ca = ca();
    let (server, rx) = bind(creds(&ca, SERVER, CertRole::Router), NetConfig::default());
    (ca, server, rx)
}

/// A peer endpoint with the given (bad) certificate that trusts the real CA, so only the
/// server's check can refuse it. It dials the server and must see the link closed by it.
async fn refused_dialer(
    ca: &CertificateAuthority,
    server: &NetEndpoint,
    cert_pem: &str,
    key_pem: &str,
) {
    let creds = Credentials::from_pem(&ca.cert_pem, cert_pem, key_pem).expect("credentials");
    let bad_id = creds.identity().node_id;
    let (bad, mut bad_rx) = bind(creds, NetConfig::default());
    bad.send(SERVER, Some(server.local_addr()), heartbeat(bad_id, 1))
        .expect("queued");
    let reason = link_closed(&mut bad_rx, SERVER).await;
    assert!(reason.contains("closed by peer"), "{reason}");
    assert!(!reason.contains("timeout"), "{reason}");
    bad.shutdown().await;
}

/// Dials `server` with a raw client whose certificate TLS accepts but whose identity the
/// server must refuse; returns the close reason.
async fn identity_refusal(config: quinn::ClientConfig, server: &NetEndpoint) -> String {
    let client = raw_client(config);
    let conn = client
        .connect(
            server.local_addr(),
            &canopy_net::server_name_for(CLUSTER, SERVER),
        )
        .expect("connect")
        .await
        .expect("TLS accepts the chain");
    let reason = closed_with_code(&conn, canopy_net::CLOSE_IDENTITY).await;
    assert_eq!(server.stats().refused_identity, 1);
    client.close(0u32.into(), b"");
    reason
}

fn leaf_params(node_id: u64) -> CertificateParams {
    let id = identity(node_id, CertRole::Router);
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        SanType::DnsName(id.server_name().try_into().expect("dns")),
        SanType::URI(id.uri().try_into().expect("uri")),
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_certificate_is_refused() {
    let (ca, server, mut rx) = server();
    let key = KeyPair::generate().expect("key");
    let cert = leaf_params(11).self_signed(&key).expect("self-signed");
    refused_dialer(&ca, &server, &cert.pem(), &key.serialize_pem()).await;
    good_peer_works(&ca, &server, &mut rx, 1, &[11]).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_is_refused() {
    let (ca, server, mut rx) = server();
    let other = CertificateAuthority::generate(CLUSTER).expect("other CA");
    let (not_before, not_after) = canopy_net::default_validity();
    let cert = other
        .issue(&identity(12, CertRole::Router), not_before, not_after)
        .expect("issue");
    refused_dialer(&ca, &server, &cert.cert_pem, &cert.key_pem).await;
    good_peer_works(&ca, &server, &mut rx, 1, &[12]).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_is_refused() {
    let (ca, server, mut rx) = server();
    let now = OffsetDateTime::now_utc();
    let cert = ca
        .issue(
            &identity(13, CertRole::Router),
            now - Duration::days(30),
            now - Duration::days(1),
        )
        .expect("issue");
    refused_dialer(&ca, &server, &cert.cert_pem, &cert.key_pem).await;
    good_peer_works(&ca, &server, &mut rx, 1, &[13]).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_client_certificate_is_refused() {
    let (ca, server, mut rx) = server();
    let client = raw_client(no_client_cert_config(&ca));
    let connecting = client
        .connect(
            server.local_addr(),
            &canopy_net::server_name_for(CLUSTER, SERVER),
        )
        .expect("connect");
    // The handshake may already fail here, or only once we use the connection.
    if let Ok(conn) = connecting.await {
        if let Ok(mut stream) = conn.open_uni().await {
            let _ = stream.write_all(&[0, 0, 0, 0]).await;
        }
        let err = closed(&conn).await;
        assert!(
            matches!(err, quinn::ConnectionError::ConnectionClosed(_)),
            "expected a TLS refusal, got {err}"
        );
    }
    client.close(0u32.into(), b"");
    good_peer_works(&ca, &server, &mut rx, 1, &[]).await;
    server.shutdown().await;
}

/// A raw client with a valid certificate sends `bytes` on a stream; the server must close
/// exactly that link as a protocol error whose reason contains `expect`.
async fn bad_bytes_close_the_link(
    ca: &CertificateAuthority,
    server: &NetEndpoint,
    rx: &mut NetEvents,
    node_id: u64,
    bytes: &[u8],
    expect: &str,
) {
    let closed_before = server.stats().closed_protocol;
    let (client, conn) = raw_valid_connection(ca, server, node_id).await;
    link_up(rx, node_id).await;
    let mut stream = conn.open_uni().await.expect("open");
    stream.write_all(bytes).await.expect("write");
    let reason = link_closed(rx, node_id).await;
    assert!(reason.contains(expect), "{reason}");
    let peer_reason = closed_with_code(&conn, CLOSE_PROTOCOL).await;
    assert!(peer_reason.contains(expect), "{peer_reason}");
    assert_eq!(server.stats().closed_protocol, closed_before + 1);
    client.close(0u32.into(), b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frame_closes_only_that_link() {
    let (ca, server, mut rx) = server();
    // A bystander with a live link, to show it is unaffected.
    let (bystander, mut bystander_rx) = node(&ca, 2);
    bystander
        .send(SERVER, Some(server.local_addr()), heartbeat(2, 1))
        .expect("send");
    message_from(&mut rx, 2, &[]).await;

    // 0xff bytes are never a valid protobuf (an overlong varint tag).
    let mut frame = vec![0, 0, 0, 16];
    frame.extend([0xff; 16]);
    bad_bytes_close_the_link(&ca, &server, &mut rx, 21, &frame, "undecodable").await;

    server
        .send(2, None, heartbeat(SERVER, 2))
        .expect("bystander link");
    assert_eq!(
        message_from(&mut bystander_rx, SERVER, &[]).await.1,
        heartbeat(SERVER, 2)
    );
    good_peer_works(&ca, &server, &mut rx, 1, &[]).await;
    bystander.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_the_link() {
    init_tracing();
    let ca = ca();
    let config = NetConfig {
        max_frame_len: 1024,
        ..NetConfig::default()
    };
    let (server, mut rx) = bind(creds(&ca, SERVER, CertRole::Router), config);
    // Announce 4096 bytes: refused from the prefix alone, before the body arrives.
    let mut frame = 4096u32.to_be_bytes().to_vec();
    frame.extend([0u8; 100]);
    bad_bytes_close_the_link(&ca, &server, &mut rx, 22, &frame, "exceeds").await;
    good_peer_works(&ca, &server, &mut rx, 1, &[]).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_types_close_the_link() {
    let (ca, server, mut rx) = server();
    // Field 99 (varint 1): valid protobuf, but no body this node knows.
    let unknown_field = [0, 0, 0, 3, 0x98, 0x06, 0x01];
    bad_bytes_close_the_link(&ca, &server, &mut rx, 23, &unknown_field, "unknown").await;
    // An empty body.
    bad_bytes_close_the_link(&ca, &server, &mut rx, 24, &[0, 0, 0, 0], "unknown").await;
    good_peer_works(&ca, &server, &mut rx, 1, &[]).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_from_another_cluster_is_refused() {
    init_tracing();
    // A CA whose name does not tie it to one cluster, so it will sign for any cluster.
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let root = params.self_signed(&key).expect("root");
    let ca = CertificateAuthority::from_pem(&root.pem(), &key.serialize_pem()).expect("load CA");
    assert_eq!(ca.cluster(), None);
    let (server, mut rx) = bind(creds(&ca, SERVER, CertRole::Router), NetConfig::default());

    let (not_before, not_after) = canopy_net::default_validity();
    let foreign = canopy_net::Identity {
        cluster: "other".into(),
        ..identity(25, CertRole::Router)
    };
    let cert = ca.issue(&foreign, not_before, not_after).expect("issue");
    let creds = Credentials::from_pem(&ca.cert_pem, &cert.cert_pem, &cert.key_pem).expect("creds");
    let transport =
        std::sync::Arc::new(NetConfig::default().transport_config().expect("transport"));
    let config = creds.quic_client_config(transport).expect("client config");
    let reason = identity_refusal(config, &server).await;
    assert!(reason.contains("other"), "{reason}");
    good_peer_works(&ca, &server, &mut rx, 1, &[25]).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_without_identity_is_refused() {
    let (ca, server, mut rx) = server();
    // Signed by the cluster CA, so TLS accepts it, but it names no canopy identity.
    let ca_key = KeyPair::from_pem(&ca.key_pem).expect("CA key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).expect("issuer");
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["26.test.canopy".to_string()]).expect("params");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).expect("sign");

    let mut roots = rustls::RootCertStore::empty();
    for der in rustls_pemfile::certs(&mut ca.cert_pem.as_bytes()) {
        roots.add(der.expect("pem")).expect("root");
    }
    let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
    let mut tls = rustls::ClientConfig::builder_with_provider(canopy_net::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert.der().clone()], key_der)
        .expect("client cert");
    tls.alpn_protocols = vec![canopy_net::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let config = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
    let reason = identity_refusal(config, &server).await;
    assert!(reason.contains("URI SAN"), "{reason}");
    good_peer_works(&ca, &server, &mut rx, 1, &[26]).await;
    server.shutdown().await;
}
