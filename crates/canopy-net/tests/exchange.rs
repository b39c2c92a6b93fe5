//! Two real endpoints over UDP on 127.0.0.1 with real certificates.

mod common;

use std::time::Duration;

use canopy_net::{CertRole, NetConfig, SendError};
use canopy_proto::ControlMessage;
use common::*;

/// Collects messages from `from` until `want` have arrived (in any order across streams).
async fn collect(
    rx: &mut canopy_net::NetEvents,
    from: u64,
    want: usize,
) -> Vec<(canopy_net::Identity, ControlMessage)> {
    let mut got = Vec::new();
    while got.len() < want {
        got.push(message_from(rx, from, &[]).await);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_and_data_both_ways_with_identities() {
    init_tracing();
    let ca = ca();
    let (a, mut a_rx) = bind(creds(&ca, 1, CertRole::Router), NetConfig::default());
    let (b, mut b_rx) = bind(creds(&ca, 2, CertRole::Client), NetConfig::default());
    assert_eq!(a.identity(), &identity(1, CertRole::Router));

    // A dials B; messages queue while the dial runs.
    a.send(2, Some(b.local_addr()), heartbeat(1, 7))
        .expect("send");
    a.send(2, Some(b.local_addr()), multicast(1, 1, vec![1; 3000]))
        .expect("send");
    a.send(2, None, heartbeat(1, 8))
        .expect("send on the dialling link");

    let up = link_up(&mut b_rx, 1).await;
    assert_eq!(up, identity(1, CertRole::Router));
    let got = collect(&mut b_rx, 1, 3).await;
    for (from, _) in &got {
        assert_eq!(from, &identity(1, CertRole::Router));
    }
    let msgs: Vec<_> = got.into_iter().map(|(_, m)| m).collect();
    // Control frames keep their order; the data frame may overtake them.
    let controls: Vec<_> = msgs.iter().filter(|m| m.kind() == "heartbeat").collect();
    assert_eq!(controls, vec![&heartbeat(1, 7), &heartbeat(1, 8)]);
    assert!(msgs.contains(&multicast(1, 1, vec![1; 3000])));

    // B answers over the link A opened, without knowing A's address.
    b.send(1, None, heartbeat(2, 9)).expect("reply");
    b.send(1, None, multicast(2, 1, b"back".to_vec()))
        .expect("reply");
    let got = collect(&mut a_rx, 2, 2).await;
    for (from, _) in &got {
        assert_eq!(from, &identity(2, CertRole::Client));
    }
    let msgs: Vec<_> = got.into_iter().map(|(_, m)| m).collect();
    assert!(msgs.contains(&heartbeat(2, 9)));
    assert!(msgs.contains(&multicast(2, 1, b"back".to_vec())));
    assert_eq!(a.connected_peers(), vec![2]);
    assert_eq!(b.connected_peers(), vec![1]);

    // Many frames in both directions arrive complete and, per stream, in order.
    for seq in 0..500u64 {
        a.send(
            2,
            None,
            multicast(1, seq + 10, seq.to_be_bytes().repeat(50)),
        )
        .expect("burst");
    }
    let mut next = 10;
    while next < 510 {
        let (_, msg) = message_from(&mut b_rx, 1, &[]).await;
        assert_eq!(
            msg,
            multicast(1, next, (next - 10).to_be_bytes().repeat(50))
        );
        next += 1;
    }

    // Closing one side reports to both, with the reason.
    a.close_link(2, "test is over");
    assert_eq!(link_closed(&mut a_rx, 2).await, "test is over");
    let reason = link_closed(&mut b_rx, 1).await;
    assert!(reason.contains("test is over"), "{reason}");
    assert!(matches!(
        a.send(2, None, heartbeat(1, 1)),
        Err(SendError::NoAddress)
    ));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dials_are_tolerated() {
    init_tracing();
    let ca = ca();
    let (a, mut a_rx) = node(&ca, 1);
    let (b, mut b_rx) = node(&ca, 2);
    a.send(2, Some(b.local_addr()), heartbeat(1, 1))
        .expect("send");
    b.send(1, Some(a.local_addr()), heartbeat(2, 1))
        .expect("send");
    assert_eq!(message_from(&mut b_rx, 1, &[]).await.1, heartbeat(1, 1));
    assert_eq!(message_from(&mut a_rx, 2, &[]).await.1, heartbeat(2, 1));
    for epoch in 2..20 {
        a.send(2, None, heartbeat(1, epoch)).expect("send");
        b.send(1, None, heartbeat(2, epoch)).expect("send");
    }
    // Whatever connection each message took, all of them arrive.
    let mut seen_a: Vec<u64> = Vec::new();
    let mut seen_b: Vec<u64> = Vec::new();
    while seen_b.len() < 18 {
        if let Some(canopy_proto::Body::Heartbeat(hb)) =
            message_from(&mut b_rx, 1, &[]).await.1.body
        {
            seen_b.push(hb.topology_epoch);
        }
    }
    while seen_a.len() < 18 {
        if let Some(canopy_proto::Body::Heartbeat(hb)) =
            message_from(&mut a_rx, 2, &[]).await.1.body
        {
            seen_a.push(hb.topology_epoch);
        }
    }
    seen_a.sort_unstable();
    seen_b.sort_unstable();
    assert_eq!(seen_a, (2..20).collect::<Vec<_>>());
    assert_eq!(seen_b, (2..20).collect::<Vec<_>>());
    assert_eq!(a.connected_peers(), vec![2]);

    // close_link ends every connection to the peer: B sees its link to A close.
    a.close_link(2, "done");
    assert!(link_closed(&mut b_rx, 1).await.contains("done"));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialling_the_wrong_node_or_nobody_fails_cleanly() {
    init_tracing();
    let ca = ca();
    let config = NetConfig {
        keep_alive: Duration::from_millis(200),
        idle_timeout: Duration::from_secs(2),
        ..NetConfig::default()
    };
    let (a, mut a_rx) = bind(creds(&ca, 1, CertRole::Router), config);
    let (b, mut b_rx) = node(&ca, 2);

    // B's certificate does not name node 5: the dial fails and A reports it.
    a.send(5, Some(b.local_addr()), heartbeat(1, 1))
        .expect("queued");
    let reason = link_closed(&mut a_rx, 5).await;
    assert!(reason.starts_with("dial failed"), "{reason}");

    // Nobody listens at this address: the handshake times out.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    a.send(6, Some(silent.local_addr().expect("addr")), heartbeat(1, 1))
        .expect("queued");
    let reason = link_closed(&mut a_rx, 6).await;
    assert!(reason.starts_with("dial failed"), "{reason}");

    // A's endpoint still works.
    a.send(2, Some(b.local_addr()), heartbeat(1, 2))
        .expect("send");
    assert_eq!(message_from(&mut b_rx, 1, &[5, 6]).await.1, heartbeat(1, 2));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unframeable_messages_are_refused_locally() {
    init_tracing();
    let ca = ca();
    let config = NetConfig {
        max_frame_len: 100,
        ..NetConfig::default()
    };
    let (a, _a_rx) = bind(creds(&ca, 1, CertRole::Router), config);
    let addr = Some(a.local_addr());
    assert!(matches!(
        a.send(2, addr, ControlMessage { body: None }),
        Err(SendError::Frame(_))
    ));
    assert!(matches!(
        a.send(2, addr, multicast(1, 1, vec![0; 200])),
        Err(SendError::Frame(_))
    ));
    assert!(matches!(
        a.send(2, None, heartbeat(1, 1)),
        Err(SendError::NoAddress)
    ));
    a.shutdown().await;
    assert!(matches!(
        a.send(2, addr, heartbeat(1, 1)),
        Err(SendError::Shutdown)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecdsa_and_ed25519_nodes_link_both_ways() {
    // During a rollout some nodes still hold ECDSA P-256 certificates, others Ed25519 ones.
    init_tracing();
    let ca = ca();
    let (old, mut old_rx) = bind(ecdsa_creds(&ca, 1, CertRole::Router), NetConfig::default());
    let (new, mut new_rx) = bind(creds(&ca, 2, CertRole::Router), NetConfig::default());
    let (newer, mut newer_rx) = bind(creds(&ca, 3, CertRole::Client), NetConfig::default());

    // ECDSA client, Ed25519 server.
    old.send(2, Some(new.local_addr()), heartbeat(1, 1))
        .expect("send");
    assert_eq!(link_up(&mut new_rx, 1).await, identity(1, CertRole::Router));
    let (from, msg) = message_from(&mut new_rx, 1, &[]).await;
    assert_eq!(
        (from, msg),
        (identity(1, CertRole::Router), heartbeat(1, 1))
    );
    // Ed25519 client, ECDSA server.
    newer
        .send(1, Some(old.local_addr()), heartbeat(3, 2))
        .expect("send");
    assert_eq!(link_up(&mut old_rx, 3).await, identity(3, CertRole::Client));
    let (_, msg) = message_from(&mut old_rx, 3, &[]).await;
    assert_eq!(msg, heartbeat(3, 2));
    // Ed25519 on both ends.
    newer
        .send(2, Some(new.local_addr()), heartbeat(3, 3))
        .expect("send");
    assert_eq!(link_up(&mut new_rx, 3).await, identity(3, CertRole::Client));
    let (_, msg) = message_from(&mut new_rx, 3, &[]).await;
    assert_eq!(msg, heartbeat(3, 3));
    // And back over the links the others dialled.
    new.send(1, None, heartbeat(2, 4)).expect("reply");
    let (_, msg) = message_from(&mut old_rx, 2, &[]).await;
    assert_eq!(msg, heartbeat(2, 4));
    old.send(3, None, heartbeat(1, 5)).expect("reply");
    let (_, msg) = message_from(&mut newer_rx, 1, &[]).await;
    assert_eq!(msg, heartbeat(1, 5));

    for endpoint in [old, new, newer] {
        endpoint.shutdown().await;
    }
}
