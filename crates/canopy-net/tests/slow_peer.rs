//! A peer that never reads fills its link's queue (in frames or in bytes): the link is closed,
//! the sender goes on.

mod common;

use std::time::Duration;

use canopy_net::{CertRole, NetConfig, SendError, CLOSE_QUEUE_FULL};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_peer_is_disconnected_and_sender_keeps_working() {
    init_tracing();
    let ca = ca();
    let config = NetConfig {
        data_queue: 8,
        ..NetConfig::default()
    };
    let (server, mut rx) = bind(creds(&ca, 100, CertRole::Router), config);

    // A raw peer that connects and then never accepts or reads a stream: once its receive
    // window is full, QUIC flow control stops the server's writer and the queue fills.
    let (client, conn) = raw_valid_connection(&ca, &server, 30).await;
    link_up(&mut rx, 30).await;

    let payload = vec![7u8; 64 * 1024];
    let mut outcome = None;
    // Bounded: the window is a few MiB at most, so this ends long before the bound.
    for seq in 0..100_000u64 {
        match server.send(30, None, multicast(100, seq, payload.clone())) {
            Ok(()) => tokio::time::sleep(Duration::from_millis(1)).await,
            Err(e) => {
                outcome = Some(e);
                break;
            }
        }
    }
    assert!(
        matches!(outcome, Some(SendError::QueueFull)),
        "expected QueueFull, got {outcome:?}"
    );
    assert_eq!(link_closed(&mut rx, 30).await, "send queue full");
    let reason = closed_with_code(&conn, CLOSE_QUEUE_FULL).await;
    assert_eq!(reason, "send queue full");
    assert!(matches!(
        server.send(30, None, heartbeat(100, 1)),
        Err(SendError::NoAddress)
    ));
    assert!(server.connected_peers().is_empty());
    assert_eq!(server.stats().closed_queue_full, 1);
    client.close(0u32.into(), b"");

    good_peer_works(&ca, &server, &mut rx, 1, &[]).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_budget_disconnects_a_slow_peer_long_before_the_frame_bound() {
    init_tracing();
    let ca = ca();
    const BUDGET: usize = 1 << 20;
    const FRAMES: usize = 100_000;
    let config = NetConfig {
        max_frame_len: 128 * 1024,
        data_queue: FRAMES,
        max_queued_bytes_per_link: BUDGET,
        ..NetConfig::default()
    };
    let (server, mut rx) = bind(creds(&ca, 100, CertRole::Router), config);
    let (client, conn) = raw_valid_connection(&ca, &server, 31).await;
    link_up(&mut rx, 31).await;

    // 64 KiB frames: the frame bound (100,000) is far beyond the byte budget (16 frames) plus
    // what flow control lets through, so only the byte budget can stop these sends.
    let payload = vec![7u8; 64 * 1024];
    let mut sent = 0;
    let outcome = loop {
        if sent == FRAMES {
            break None;
        }
        match server.send(31, None, multicast(100, sent as u64, payload.clone())) {
            Ok(()) => {
                sent += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => break Some(e),
        }
    };
    assert!(
        matches!(outcome, Some(SendError::QueueFull)),
        "expected QueueFull, got {outcome:?} after {sent} frames"
    );
    assert!(sent < FRAMES / 10, "{sent} frames queued before the bound");
    let expected = format!("send queue over {BUDGET} bytes");
    assert_eq!(link_closed(&mut rx, 31).await, expected);
    assert_eq!(closed_with_code(&conn, CLOSE_QUEUE_FULL).await, expected);
    assert_eq!(server.stats().closed_queue_full, 1);
    assert!(server.connected_peers().is_empty());
    client.close(0u32.into(), b"");

    good_peer_works(&ca, &server, &mut rx, 1, &[]).await;
    server.shutdown().await;
}
