//! Sessions over time: one inbound session per certificate identity, live links re-checked
//! against their certificates, and what the endpoint tells about a live link.

mod common;

use std::sync::Mutex;
use std::time::{Duration as StdDuration, SystemTime};

use canopy_net::{CertRole, Credentials, NetConfig, NetEvent, CLOSE_IDENTITY};
use canopy_proto::v1::LinkRefresh;
use canopy_proto::{Body, ControlMessage};
use common::*;
use time::{Duration, OffsetDateTime};

const SERVER: u64 = 100;
const REPLACED: &str = "replaced by a newer connection from the same certificate";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_with_the_same_certificate_replaces_the_first() {
    init_tracing();
    let ca = ca();
    let (server, mut rx) = bind(creds(&ca, SERVER, CertRole::Router), NetConfig::default());
    let client = raw_client_with(&creds(&ca, 50, CertRole::Client));
    let old = raw_connect(&client, &server).await;
    link_up(&mut rx, 50).await;
    let _old_stream = send_on_new_stream(&old, &heartbeat(50, 1)).await;
    assert_eq!(message_from(&mut rx, 50, &[]).await.1, heartbeat(50, 1));

    // Same certificate, second connection: the old session ends, then the new one begins.
    let new = raw_connect(&client, &server).await;
    match next_event(&mut rx).await {
        NetEvent::LinkClosed { peer: 50, reason } => assert_eq!(reason, REPLACED),
        other => panic!("expected the old session's LinkClosed, got {other:?}"),
    }
    match next_event(&mut rx).await {
        NetEvent::LinkUp { peer } => assert_eq!(peer.node_id, 50),
        other => panic!("expected the new session's LinkUp, got {other:?}"),
    }
    assert_eq!(closed_with_code(&old, CLOSE_IDENTITY).await, REPLACED);
    let stats = server.stats();
    assert_eq!((stats.sessions_replaced, stats.connections), (1, 1));
    assert_eq!(server.connected_peers(), vec![50]);

    // The new session works both ways.
    let _new_stream = send_on_new_stream(&new, &heartbeat(50, 2)).await;
    assert_eq!(message_from(&mut rx, 50, &[]).await.1, heartbeat(50, 2));
    server
        .send(50, None, heartbeat(SERVER, 3))
        .expect("send on the new session");
    assert_eq!(first_message(&new).await, heartbeat(SERVER, 3));
    assert!(new.close_reason().is_none());
    client.close(0u32.into(), b"");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_link_is_closed_when_the_peer_certificate_expires() {
    init_tracing();
    let ca = ca();
    let config = NetConfig {
        recheck_interval: StdDuration::from_millis(200),
        ..NetConfig::default()
    };
    let (server, mut rx) = bind(creds(&ca, SERVER, CertRole::Router), config);

    // Valid for a few more seconds: long enough to connect, short enough to expire live.
    let now = OffsetDateTime::now_utc();
    let not_after = now + Duration::seconds(4);
    let cert = ca
        .issue(
            &identity(60, CertRole::Router),
            now - Duration::hours(1),
            not_after,
        )
        .expect("issue");
    let creds = Credentials::from_pem(&ca.cert_pem, &cert.cert_pem, &cert.key_pem).expect("creds");
    let (peer, mut peer_rx) = bind(creds, NetConfig::default());
    peer.send(SERVER, Some(server.local_addr()), heartbeat(60, 1))
        .expect("send");
    assert_eq!(message_from(&mut rx, 60, &[]).await.1, heartbeat(60, 1));
    assert_eq!(server.connected_peers(), vec![60]);

    let reason = link_closed(&mut rx, 60).await;
    let closed_at = OffsetDateTime::from(SystemTime::now());
    assert!(
        reason.starts_with("peer certificate expired at "),
        "{reason}"
    );
    assert!(
        closed_at > not_after,
        "closed at {closed_at}, before expiry at {not_after}"
    );
    let peer_reason = link_closed(&mut peer_rx, SERVER).await;
    assert!(
        peer_reason.contains("code 2") && peer_reason.contains("expired"),
        "{peer_reason}"
    );
    assert_eq!(server.stats().closed_expired, 1);
    assert!(server.connected_peers().is_empty());
    peer.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_can_be_closed_by_certificate_and_report_their_remote_address() {
    init_tracing();
    let ca = ca();
    let (server, mut rx) = bind(creds(&ca, SERVER, CertRole::Router), NetConfig::default());
    let (a, mut a_rx) = node(&ca, 1);
    let (b, mut b_rx) = node(&ca, 2);
    for (peer, id) in [(&a, 1), (&b, 2)] {
        peer.send(SERVER, Some(server.local_addr()), heartbeat(id, 1))
            .expect("send");
        message_from(&mut rx, id, &[]).await;
    }
    assert_eq!(server.remote_addr(1), Some(a.local_addr()));
    assert_eq!(server.remote_addr(2), Some(b.local_addr()));
    assert_eq!(server.remote_addr(3), None);

    // Close by certificate properties; record what the predicate saw.
    let seen = Mutex::new(Vec::new());
    let closed = server.close_peers_where("certificate revoked", |cert| {
        if let Ok(mut seen) = seen.lock() {
            seen.push(cert.clone());
        }
        cert.node_id == 2
    });
    assert_eq!(closed, vec![2]);
    let seen = seen.into_inner().expect("seen");
    assert_eq!(seen.len(), 2);
    for cert in &seen {
        assert!(!cert.serial.is_empty());
        assert!(cert.issuer.contains("canopy test CA"), "{}", cert.issuer);
        assert!(!cert.issuer_der.is_empty());
        assert!(cert.not_after > OffsetDateTime::now_utc().unix_timestamp());
    }
    assert_ne!(seen[0].serial, seen[1].serial);

    assert_eq!(link_closed(&mut rx, 2).await, "certificate revoked");
    let b_reason = link_closed(&mut b_rx, SERVER).await;
    assert!(b_reason.contains("certificate revoked"), "{b_reason}");
    assert_eq!(server.remote_addr(2), None);
    assert_eq!(server.connected_peers(), vec![1]);

    // A is unaffected.
    server.send(1, None, heartbeat(SERVER, 2)).expect("send");
    assert_eq!(
        message_from(&mut a_rx, SERVER, &[]).await.1,
        heartbeat(SERVER, 2)
    );
    a.shutdown().await;
    b.shutdown().await;
    server.shutdown().await;
}

/// A renewing node announces its new certificate on its live link and then dials, but the two
/// travel on different connections: the dial can win. The acceptor waits a moment for the
/// announcement instead of taking the renewed connection for a new session (which would end
/// the live one and break the tree in the middle of a certificate rotation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_connection_that_overtakes_its_announcement_still_moves_the_link() {
    init_tracing();
    let ca = ca();
    let (server, mut rx) = bind(creds(&ca, SERVER, CertRole::Router), NetConfig::default());
    let old_client = raw_client_with(&creds(&ca, 50, CertRole::Client));
    let old = raw_connect(&old_client, &server).await;
    link_up(&mut rx, 50).await;
    let _old_stream = send_on_new_stream(&old, &heartbeat(50, 1)).await;
    assert_eq!(message_from(&mut rx, 50, &[]).await.1, heartbeat(50, 1));

    let renewed = creds(&ca, 50, CertRole::Client);
    let digest = ring::digest::digest(&ring::digest::SHA256, renewed.chain()[0].as_ref());
    let new_client = raw_client_with(&renewed);
    let new = raw_connect(&new_client, &server).await;
    tokio::time::sleep(StdDuration::from_millis(100)).await;
    let announce = ControlMessage::new(Body::LinkRefresh(LinkRefresh {
        certificate_sha256: bytes::Bytes::copy_from_slice(digest.as_ref()),
    }));
    let _announce_stream = send_on_new_stream(&old, &announce).await;

    let _new_stream = send_on_new_stream(&new, &heartbeat(50, 2)).await;
    assert_eq!(message_from(&mut rx, 50, &[]).await.1, heartbeat(50, 2));
    let stats = server.stats();
    assert_eq!(
        (stats.links_moved, stats.sessions_replaced),
        (1, 0),
        "the renewed connection was taken for a new session: {stats:?}"
    );
    old_client.close(0u32.into(), b"");
    new_client.close(0u32.into(), b"");
    server.shutdown().await;
}
