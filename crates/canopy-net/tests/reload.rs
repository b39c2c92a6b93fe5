//! Hot reload of a running endpoint: a rotated certificate is presented at the next
//! handshake, a revocation list closes the revoked peer's live link and refuses its next
//! one, a CA rollover moves trust from the old CA to the new, and broken material is refused
//! with the old kept.

mod common;

use std::sync::Mutex;

use canopy_net::{CertRole, CertificateAuthority, Credentials, NetConfig, NetEndpoint};
use common::*;

const SERVER: u64 = 1;

/// The serial of the certificate `server` holds for its live link to `peer`.
fn peer_serial(server: &NetEndpoint, peer: u64) -> Option<Vec<u8>> {
    let seen = Mutex::new(None);
    server.close_peers_where("never", |cert| {
        if cert.node_id == peer {
            *seen.lock().expect("lock") = Some(cert.serial.clone());
        }
        false
    });
    seen.into_inner().expect("lock")
}

fn trim(serial: &[u8]) -> &[u8] {
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    &serial[start..]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_peer_is_closed_and_cannot_come_back() {
    init_tracing();
    let ca = ca();
    let (server, mut rx) = bind(creds(&ca, SERVER, CertRole::Router), NetConfig::default());
    let bad_creds = creds(&ca, 7, CertRole::Router);
    let (bad, mut bad_rx) = bind(bad_creds.clone(), NetConfig::default());
    bad.send(SERVER, Some(server.local_addr()), heartbeat(7, 1))
        .expect("send");
    message_from(&mut rx, 7, &[]).await;

    let update = server
        .add_revocations(vec![crl(&ca, 1, &[&bad_creds])])
        .expect("a list signed by the CA");
    assert!(update.changed);
    assert_eq!(update.closed, vec![7]);
    assert!(update.own_refused.is_none());
    let reason = link_closed(&mut rx, 7).await;
    assert!(reason.contains("no longer accepted"), "{reason}");
    assert!(reason.to_lowercase().contains("revoked"), "{reason}");
    link_closed(&mut bad_rx, SERVER).await;
    assert_eq!(server.stats().closed_untrusted, 1);

    // It dials again: the handshake is refused, nothing reaches the server.
    bad.send(SERVER, Some(server.local_addr()), heartbeat(7, 2))
        .expect("queued on a new dial");
    let reason = link_closed(&mut bad_rx, SERVER).await;
    assert!(!reason.is_empty());
    // Everyone else is still served, and the same list again changes nothing.
    good_peer_works(&ca, &server, &mut rx, 8, &[7]).await;
    let again = server
        .add_revocations(vec![crl(&ca, 1, &[&bad_creds])])
        .expect("same list");
    assert!(!again.changed);
    assert_eq!(server.revocations().len(), 1);
    bad.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_stale_lists_change_nothing() {
    init_tracing();
    let ca = ca();
    let stranger_ca = ca_with_same_name();
    let (server, mut rx) = bind(creds(&ca, SERVER, CertRole::Router), NetConfig::default());
    let victim = creds(&ca, 7, CertRole::Router);

    // Same issuer name, other key: not the cluster CA's list.
    let forged = crl(&stranger_ca, 9, &[&victim]);
    let error = server.add_revocations(vec![forged]).expect_err("forged");
    assert!(error.to_string().contains("not signed"), "{error}");
    assert!(server.revocations().is_empty());

    // A newer list replaces an older one; the older one coming back is ignored.
    let other = creds(&ca, 9, CertRole::Router);
    assert!(
        server
            .add_revocations(vec![crl(&ca, 5, &[&other])])
            .expect("5")
            .changed
    );
    assert!(
        !server
            .add_revocations(vec![crl(&ca, 4, &[&victim])])
            .expect("4")
            .changed
    );
    let (victim_node, _victim_rx) = bind(victim, NetConfig::default());
    victim_node
        .send(SERVER, Some(server.local_addr()), heartbeat(7, 1))
        .expect("send");
    message_from(&mut rx, 7, &[]).await;
    victim_node.shutdown().await;
    server.shutdown().await;
}

fn ca_with_same_name() -> CertificateAuthority {
    CertificateAuthority::generate(CLUSTER).expect("CA")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_presented_at_the_next_handshake() {
    init_tracing();
    let ca = ca();
    let (server, mut rx) = bind(creds(&ca, SERVER, CertRole::Router), NetConfig::default());
    let (peer, mut peer_rx) = node(&ca, 2);
    peer.send(SERVER, Some(server.local_addr()), heartbeat(2, 1))
        .expect("send");
    message_from(&mut rx, 2, &[]).await;
    let before = peer_serial(&peer, SERVER).expect("link to the server");

    let rotated = creds(&ca, SERVER, CertRole::Router);
    let update = server.reload(rotated.clone(), Vec::new()).expect("reload");
    assert!(update.changed && update.closed.is_empty(), "{update:?}");
    // The live link moves to the new certificate without going down at either end.
    let moved = async {
        while peer_serial(&peer, SERVER).is_none_or(|s| trim(&s) != trim(&serial_of(&rotated))) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PATIENCE, moved)
        .await
        .expect("link moved");
    assert_eq!(peer.stats().links_moved, 1);
    // Messages flow both ways on it, and nobody saw the link close.
    peer.send(SERVER, None, heartbeat(2, 2)).expect("send");
    assert_eq!(message_from(&mut rx, 2, &[]).await.1, heartbeat(2, 2));
    server.send(2, None, heartbeat(SERVER, 2)).expect("send");
    assert_eq!(
        message_from(&mut peer_rx, SERVER, &[]).await.1,
        heartbeat(SERVER, 2)
    );
    // After the old connection's grace it is closed; still no link down at either end.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    peer.send(SERVER, None, heartbeat(2, 3)).expect("send");
    assert_eq!(message_from(&mut rx, 2, &[]).await.1, heartbeat(2, 3));
    server.send(2, None, heartbeat(SERVER, 3)).expect("send");
    assert_eq!(
        message_from(&mut peer_rx, SERVER, &[]).await.1,
        heartbeat(SERVER, 3)
    );
    assert_eq!(server.connected_peers(), vec![2]);
    let (fresh, mut fresh_rx) = node(&ca, 3);
    fresh
        .send(SERVER, Some(server.local_addr()), heartbeat(3, 1))
        .expect("send");
    message_from(&mut rx, 3, &[]).await;
    server
        .send(3, None, heartbeat(SERVER, 1))
        .expect("reply on the link");
    message_from(&mut fresh_rx, SERVER, &[]).await;
    let after = peer_serial(&fresh, SERVER).expect("link");
    assert_eq!(trim(&after), trim(&serial_of(&rotated)));
    assert_ne!(after, before);
    // The same material again is no change.
    assert!(!server.reload(rotated, Vec::new()).expect("same").changed);

    // Another identity, or a key that is not the certificate's, is refused; the old stays.
    let other = creds(&ca, 99, CertRole::Router);
    let error = server
        .reload(other, Vec::new())
        .expect_err("other identity");
    assert!(error.to_string().contains("keeps its identity"), "{error}");
    // A certificate from a CA outside the bundle (with the bundle it would be read with).
    let generation = server.tls_generation();
    let (from, until) = canopy_net::default_validity();
    let outside = ca_with_same_name()
        .issue(&identity(SERVER, CertRole::Router), from, until)
        .expect("issue");
    let stranger =
        Credentials::from_pem(&ca.cert_pem, &outside.cert_pem, &outside.key_pem).expect("parses");
    let error = server
        .reload(stranger, Vec::new())
        .expect_err("certificate of another CA");
    assert!(!error.to_string().is_empty());
    assert_eq!(server.tls_generation(), generation);
    good_peer_works(&ca, &server, &mut rx, 4, &[]).await;
    peer.shutdown().await;
    fresh.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rollover_moves_trust_without_dropping_the_tree() {
    init_tracing();
    let old = ca();
    let new = next_ca();
    let (server, mut rx) = bind(creds_in(&[&old], &old, SERVER), NetConfig::default());
    let (stays_old, mut old_rx) = bind(creds_in(&[&old], &old, 2), NetConfig::default());
    stays_old
        .send(SERVER, Some(server.local_addr()), heartbeat(2, 1))
        .expect("send");
    message_from(&mut rx, 2, &[]).await;

    // Rollover starts: the bundle carries both; the server's own certificate is reissued.
    let both = creds_in(&[&new, &old], &new, SERVER);
    let update = server.reload(both, Vec::new()).expect("bundle of two");
    assert!(update.closed.is_empty(), "{update:?}");
    stays_old
        .send(SERVER, None, heartbeat(2, 2))
        .expect("old link still up");
    message_from(&mut rx, 2, &[]).await;
    let (moved, mut moved_rx) = bind(creds_in(&[&new, &old], &new, 3), NetConfig::default());
    moved
        .send(SERVER, Some(server.local_addr()), heartbeat(3, 1))
        .expect("send");
    message_from(&mut rx, 3, &[]).await;

    // Finished: only the new CA. The node still on an old-CA certificate is closed.
    let update = server
        .reload(creds_in(&[&new], &new, SERVER), Vec::new())
        .expect("new CA only");
    assert_eq!(update.closed, vec![2], "{update:?}");
    link_closed(&mut old_rx, SERVER).await;
    moved
        .send(SERVER, None, heartbeat(3, 2))
        .expect("new link stays");
    message_from(&mut rx, 3, &[]).await;
    drop(moved_rx.recv());
    stays_old.shutdown().await;
    moved.shutdown().await;
    server.shutdown().await;
}
