//! Receive-side bounds: control and data rates, streams per connection, connections per
//! endpoint. Each peer over a bound costs only its own link (or is read more slowly); the
//! others keep working.

mod common;

use canopy_net::{CertRole, NetConfig, NetEvent, CLOSE_PROTOCOL, MAX_STREAMS_PER_LINK};
use canopy_proto::Body;
use common::*;

const SERVER: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_flood_closes_only_the_flooders_link() {
    init_tracing();
    let ca = ca();
    let config = NetConfig {
        control_rate_per_link: 50,
        ..NetConfig::default()
    };
    let (server, mut rx) = bind(creds(&ca, SERVER, CertRole::Router), config);
    let (bystander, mut bystander_rx) = node(&ca, 2);
    bystander
        .send(SERVER, Some(server.local_addr()), heartbeat(2, 0))
        .expect("send");
    message_from(&mut rx, 2, &[]).await;

    // 1,000 heartbeats at once against a burst of 100.
    let (flooder, mut flooder_rx) = node(&ca, 3);
    for epoch in 0..1000 {
        flooder
            .send(SERVER, Some(server.local_addr()), heartbeat(3, epoch))
            .expect("queued");
    }
    // Meanwhile the bystander keeps exchanging with the server, both ways.
    let mut flooder_closed = None;
    for round in 1..=20 {
        bystander
            .send(SERVER, None, heartbeat(2, round))
            .expect("bystander send");
        loop {
            match next_event(&mut rx).await {
                NetEvent::Message { from, msg } if from.node_id == 2 => {
                    assert_eq!(msg, heartbeat(2, round));
                    break;
                }
                NetEvent::LinkClosed { peer: 3, reason } => flooder_closed = Some(reason),
                NetEvent::LinkClosed { peer, reason } => panic!("link to {peer} closed: {reason}"),
                _ => {}
            }
        }
        server
            .send(2, None, heartbeat(SERVER, round))
            .expect("server send");
        assert_eq!(
            message_from(&mut bystander_rx, SERVER, &[]).await.1,
            heartbeat(SERVER, round)
        );
    }
    let reason = match flooder_closed {
        Some(reason) => reason,
        None => link_closed(&mut rx, 3).await,
    };
    assert_eq!(reason, "control message rate over 50/s");
    let flooder_reason = link_closed(&mut flooder_rx, SERVER).await;
    assert!(
        flooder_reason.contains("code 1") && flooder_reason.contains("control message rate"),
        "{flooder_reason}"
    );
    assert_eq!(server.stats().closed_control_rate, 1);
    assert_eq!(server.connected_peers(), vec![2]);
    flooder.shutdown().await;
    bystander.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_flood_is_throttled_not_closed_and_control_overtakes_it() {
    init_tracing();
    let ca = ca();
    const FLOOD: u64 = 10_000;
    let config = NetConfig {
        data_rate_per_link: 2_000,
        ..NetConfig::default()
    };
    let (server, mut rx) = bind(creds(&ca, SERVER, CertRole::Router), config);
    let sender_config = NetConfig {
        data_queue: 2 * FLOOD as usize,
        ..NetConfig::default()
    };
    let (sender, mut sender_rx) = bind(creds(&ca, 1, CertRole::Router), sender_config);
    sender
        .send(SERVER, Some(server.local_addr()), heartbeat(1, 0))
        .expect("send");
    message_from(&mut rx, 1, &[]).await;

    for seq in 0..FLOOD {
        sender
            .send(SERVER, None, multicast(1, seq, vec![1; 64]))
            .expect("queued");
    }
    sender
        .send(SERVER, None, heartbeat(1, 1))
        .expect("queued after the flood");

    // The heartbeat, sent after every multicast, arrives while most are still held back.
    let mut before = 0u64;
    loop {
        let (_, msg) = message_from(&mut rx, 1, &[]).await;
        match msg.body {
            Some(Body::Multicast(_)) => before += 1,
            _ => {
                assert_eq!(msg, heartbeat(1, 1));
                break;
            }
        }
    }
    assert!(
        before < FLOOD,
        "the control message waited for all {FLOOD} multicasts"
    );
    // Then every multicast arrives, in order: throttled, not dropped, not closed.
    let mut next = before;
    while next < FLOOD {
        let (_, msg) = message_from(&mut rx, 1, &[]).await;
        assert_eq!(msg, multicast(1, next, vec![1; 64]));
        next += 1;
    }
    let stats = server.stats();
    assert!(stats.data_throttled > 0, "{stats:?}");
    assert_eq!(stats.closed_control_rate + stats.closed_protocol, 0);
    assert_eq!(server.connected_peers(), vec![1]);
    while let Some(event) = sender_rx.try_recv() {
        assert!(
            !matches!(event, NetEvent::LinkClosed { .. }),
            "sender saw {event:?}"
        );
    }
    sender.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_stream_closes_the_link() {
    init_tracing();
    let ca = ca();
    let (server, mut rx) = bind(creds(&ca, SERVER, CertRole::Router), NetConfig::default());
    let (client, conn) = raw_valid_connection(&ca, &server, 31).await;
    link_up(&mut rx, 31).await;

    // Two streams are what a peer needs: both are read.
    let mut streams = Vec::new();
    for epoch in 0..MAX_STREAMS_PER_LINK as u64 {
        streams.push(send_on_new_stream(&conn, &heartbeat(31, epoch)).await);
        assert_eq!(message_from(&mut rx, 31, &[]).await.1, heartbeat(31, epoch));
    }
    // One more is a protocol violation.
    streams.push(send_on_new_stream(&conn, &heartbeat(31, 9)).await);
    assert_eq!(link_closed(&mut rx, 31).await, "too many streams");
    assert_eq!(
        closed_with_code(&conn, CLOSE_PROTOCOL).await,
        "too many streams"
    );
    let stats = server.stats();
    assert_eq!((stats.closed_streams, stats.closed_protocol), (1, 1));
    client.close(0u32.into(), b"");

    good_peer_works(&ca, &server, &mut rx, 1, &[]).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_bound_are_refused() {
    init_tracing();
    let ca = ca();
    let config = NetConfig {
        max_connections: 2,
        ..NetConfig::default()
    };
    let (server, mut rx) = bind(creds(&ca, SERVER, CertRole::Router), config);
    let (first, first_conn) = raw_valid_connection(&ca, &server, 41).await;
    link_up(&mut rx, 41).await;
    let (_second, _second_conn) = raw_valid_connection(&ca, &server, 42).await;
    link_up(&mut rx, 42).await;
    assert_eq!(server.stats().connections, 2);

    // The third is refused before its handshake completes.
    let third = raw_client_with(&creds(&ca, 43, CertRole::Client));
    let attempt = tokio::time::timeout(
        PATIENCE,
        third
            .connect(
                server.local_addr(),
                &canopy_net::server_name_for(CLUSTER, SERVER),
            )
            .expect("connect"),
    )
    .await
    .expect("refusal timed out");
    match attempt {
        Err(quinn::ConnectionError::ConnectionClosed(close)) => assert_eq!(
            close.error_code,
            quinn::TransportErrorCode::CONNECTION_REFUSED
        ),
        Err(other) => panic!("expected CONNECTION_REFUSED, got {other}"),
        Ok(_) => panic!("the third connection was accepted"),
    }
    let stats = server.stats();
    assert_eq!((stats.refused_over_limit, stats.connections), (1, 2));
    assert_eq!(server.connected_peers(), vec![41, 42]);

    // A freed slot is usable again.
    first_conn.close(0u32.into(), b"leaving");
    first.close(0u32.into(), b"");
    link_closed(&mut rx, 41).await;
    good_peer_works(&ca, &server, &mut rx, 1, &[43]).await;
    assert_eq!(server.stats().refused_over_limit, 1);
    server.shutdown().await;
}

/// A storm of dials against an endpoint that runs one handshake at a time and queues none:
/// each dialler either gets its link or is told at once that the endpoint is busy (no
/// handshake timeout, no silent loss), and a busy one that dials again later gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_dials_is_refused_as_busy_beyond_the_handshake_bound() {
    init_tracing();
    let ca = ca();
    let config = NetConfig {
        max_handshakes: 1,
        handshake_queue: 0,
        ..NetConfig::default()
    };
    let (server, mut server_rx) = bind(creds(&ca, SERVER, CertRole::Router), config);
    let mut diallers = dial_storm(&ca, &server, 12);
    let (mut up, mut busy) = (Vec::new(), Vec::new());
    for (id, (_, rx)) in &mut diallers {
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                match next_event(rx).await {
                    NetEvent::LinkUp { .. } => return true,
                    NetEvent::Busy { peer: SERVER } => return false,
                    _ => {}
                }
            }
        })
        .await
        .expect("every dial ends in a link or a busy refusal");
        if outcome {
            up.push(*id);
        } else {
            busy.push(*id);
        }
    }
    assert!(!up.is_empty(), "someone got in");
    assert!(
        !busy.is_empty(),
        "a bound of one handshake refused some of 12"
    );
    let stats = server.stats();
    assert_eq!(stats.refused_busy, busy.len() as u64, "{stats:?}");
    assert_eq!(stats.handshakes_failed, 0, "{stats:?}");
    for (id, (dialler, _)) in &diallers {
        if busy.contains(id) {
            assert_eq!(dialler.stats().dials_refused_busy, 1);
        }
    }
    // The ones that got in delivered what they had queued.
    for _ in &up {
        match next_event(&mut server_rx).await {
            NetEvent::Message { .. } | NetEvent::LinkUp { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // A refused dialler that comes back one at a time gets in.
    let retry = busy[0];
    let (dialler, rx) = &mut diallers
        .iter_mut()
        .find(|(id, _)| *id == retry)
        .expect("dialler")
        .1;
    dialler
        .send(SERVER, Some(server.local_addr()), heartbeat(retry, 1))
        .expect("queued");
    link_up(rx, SERVER).await;
}

/// With room in the handshake queue, the same storm waits its turn: everyone gets in, one
/// handshake at a time, and nobody is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_dials_within_the_queue_waits_its_turn() {
    init_tracing();
    let ca = ca();
    let config = NetConfig {
        max_handshakes: 1,
        handshake_queue: 16,
        // Twelve handshakes in a row, in a debug build on a shared machine.
        handshake_timeout: std::time::Duration::from_secs(60),
        ..NetConfig::default()
    };
    let (server, _server_rx) = bind(creds(&ca, SERVER, CertRole::Router), config);
    let mut diallers = dial_storm(&ca, &server, 12);
    for (_, (_, rx)) in &mut diallers {
        link_up(rx, SERVER).await;
    }
    // The server registers each connection just after its dialler sees it up.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let stats = loop {
        let stats = server.stats();
        if stats.connections == 12 || tokio::time::Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(stats.refused_busy, 0, "{stats:?}");
    assert_eq!(stats.connections, 12, "{stats:?}");
    assert_eq!(
        (stats.handshakes, stats.handshakes_waiting),
        (0, 0),
        "{stats:?}"
    );
}

/// `handshake_timeout` bounds the wait for a turn: with a bound nobody can meet, a storm
/// of dials behaves as if there were no queue (those that find the one handshake slot taken
/// are refused as busy at once), and the handshakes under way still complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_past_the_handshake_timeout_is_refused_as_busy() {
    init_tracing();
    let ca = ca();
    let config = NetConfig {
        max_handshakes: 1,
        handshake_queue: 16,
        handshake_timeout: std::time::Duration::from_micros(1),
        ..NetConfig::default()
    };
    let (server, _server_rx) = bind(creds(&ca, SERVER, CertRole::Router), config);
    let mut diallers = dial_storm(&ca, &server, 12);
    let mut up = 0u64;
    for (_, (_, rx)) in &mut diallers {
        loop {
            match next_event(rx).await {
                NetEvent::LinkUp { .. } => up += 1,
                NetEvent::Busy { peer: SERVER } => break,
                _ => continue,
            }
            break;
        }
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let stats = loop {
        let stats = server.stats();
        if stats.connections == up || tokio::time::Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert!(up >= 1, "the first dial got the free slot");
    assert!(stats.refused_busy >= 1, "{stats:?}");
    assert_eq!(stats.refused_busy + up, 12, "{stats:?}");
    assert_eq!(
        (stats.connections, stats.handshakes_waiting),
        (up, 0),
        "{stats:?}"
    );
}

/// Nodes 1..=n, each dialling `server` at once with a heartbeat queued on its dial.
fn dial_storm(
    ca: &canopy_net::CertificateAuthority,
    server: &canopy_net::NetEndpoint,
    n: u64,
) -> Vec<(u64, (canopy_net::NetEndpoint, canopy_net::NetEvents))> {
    let diallers: Vec<_> = (1..=n).map(|id| (id, node(ca, id))).collect();
    for (id, (dialler, _)) in &diallers {
        dialler
            .send(SERVER, Some(server.local_addr()), heartbeat(*id, 0))
            .expect("queued on the dial");
    }
    diallers
}
