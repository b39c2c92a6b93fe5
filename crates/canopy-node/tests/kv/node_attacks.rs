//! Second adversarial review, node side: the replica task, the API backend and the API
//! socket. Each test asserts what a sound node must do.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use canopy_api::KvBackend;
use canopy_node::kv::NodeApi;
use canopy_node::local::{LocalCluster, LocalClusterSpec};

use crate::support::{serial, KvTree, SETTLE};

/// A watch subscribes the replica to the pattern's channel, persistently, and nothing ever
/// unsubscribes it when the watch ends. An application that watches many channels over time
/// (one at a time, say one per user it serves) keeps adding tags to what the node advertises
/// until its parent evicts it for advertising too many (`max_tags_per_client_link`) — and the
/// interests are on disk, so it is evicted again after every restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_watches_do_not_accumulate_until_the_parent_evicts_the_node() {
    let _serial = serial().await;
    let mut spec = LocalClusterSpec {
        candidates: 1,
        ..LocalClusterSpec::default()
    };
    spec.tree.limits.max_tags_per_client_link = 32;
    let mut cluster = LocalCluster::start(spec).await.expect("cluster");
    let client = cluster.add_kv_client(&[]).await.expect("client");
    cluster
        .wait_for_tree(2, SETTLE, |_, _| {})
        .await
        .expect("tree");
    // 40 watches, never more than one open at a time.
    for i in 0..40 {
        let rx = client
            .kv
            .changes(&format!("user{i}/"))
            .await
            .expect("watch");
        drop(rx);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let root = cluster.nodes()[0].handle.clone();
    let over_limit = root.status().await.expect("root").counters.over_limit;
    let parent = client.node.handle.status().await.expect("client").parent;
    let before = client
        .kv
        .counters()
        .await
        .expect("replica")
        .catchup_requests_sent;
    client.kv.catch_up().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = client
        .kv
        .counters()
        .await
        .expect("replica")
        .catchup_requests_sent
        - before;
    eprintln!(
        "after 40 ended watches: root over_limit {over_limit}, client parent {parent:?}, \
         a catch-up now asks on {sent} tags"
    );
    assert_eq!(
        over_limit, 0,
        "the root evicted the client for the tags its ended watches left behind"
    );
    assert!(
        sent <= 4,
        "ended watches left {sent} channels subscribed (each asked on every catch-up)"
    );
    cluster.shutdown().await;
}

/// Watches that are never read: every change is copied into each API watch's queue
/// (`WATCH_QUEUE` = 1024 changes, values up to 64 KiB), so one local application can pin
/// `MAX_WATCHES` × 1024 × 64 KiB = 64 GiB of node memory. The queue must be bounded in bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_api_watches_are_bounded_in_bytes() {
    let _serial = serial().await;
    let tree = KvTree::start(1, 0, 1).await;
    let client = tree.client(0).clone();
    let api = NodeApi::new(
        client.node.handle.clone(),
        "client",
        Some(client.kv.clone()),
    );
    let mut watches = Vec::new();
    for _ in 0..16 {
        watches.push(api.watch("big/".into()).await.expect("watch"));
    }
    let value = vec![7u8; 64 * 1024];
    // Twice what one watch may hold unread.
    let values = 2 * canopy_node::kv::WATCH_QUEUE_BYTES / value.len();
    for i in 0..values {
        api.put(format!("big/{i}"), value.clone())
            .await
            .expect("put");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut held = 0usize;
    for rx in &mut watches {
        while let Ok(change) = rx.try_recv() {
            held += change.value.len();
        }
    }
    let written = values * value.len();
    eprintln!(
        "{} MiB written, {} MiB queued for 16 unread watches",
        written >> 20,
        held >> 20
    );
    assert!(
        held <= 16 * canopy_node::kv::WATCH_QUEUE_BYTES,
        "{} MiB queued for unread watches after {} MiB written",
        held >> 20,
        written >> 20
    );
}

/// The replica task stops (a panic, a storage failure, `stop`): the node goes on as a client
/// that is attached and subscribed, and its status must say the replica is gone rather
/// than look like a node that holds none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_shows_in_status() {
    let _serial = serial().await;
    let tree = KvTree::start(1, 0, 1).await;
    let client = tree.client(0).clone();
    let api = NodeApi::new(
        client.node.handle.clone(),
        "client",
        Some(client.kv.clone()),
    );
    let before = api.status().await.expect("status");
    client.kv.stop().await;
    let put = api.put("t/x".into(), b"v".to_vec()).await;
    eprintln!("put after stop: {put:?}");
    let after = api.status().await;
    eprintln!("status before: {}", before.status_json);
    eprintln!("status after: {after:?}");
    let node = client.node.handle.status().await;
    eprintln!(
        "node still attached: parent {:?}",
        node.as_ref().map(|s| s.parent)
    );
    match after {
        Err(_) => {}
        Ok(s) => {
            let doc: serde_json::Value = serde_json::from_str(&s.status_json).expect("json");
            assert!(
                !doc["replica"].is_null() || s.status_json.contains("stopped"),
                "status of a client whose replica stopped: {}",
                s.status_json
            );
        }
    }
}

/// Peer-credential check: a connection from another (non-root) user is dropped even when
/// the file mode would let it in (the window before the chmod, or a loosened mode).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_cannot_use_the_socket() {
    let _serial = serial().await;
    if !std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
    {
        eprintln!("not root: cannot play another user");
        return;
    }
    let have = |tool: &str, arg: &str| {
        std::process::Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("setpriv", "--version") || !have("/usr/bin/python3", "--version") {
        eprintln!("no setpriv or python3: cannot play another user");
        return;
    }
    let tree = KvTree::start(1, 0, 1).await;
    let client = tree.client(0).clone();
    let api = Arc::new(NodeApi::new(
        client.node.handle.clone(),
        "client",
        Some(client.kv.clone()),
    ));
    let dir = tempfile::tempdir().expect("tmp");
    let socket = dir.path().join("api.sock");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let socket = socket.clone();
        tokio::spawn(async move {
            canopy_api::serve(&socket, api, async {
                let _ = stop_rx.await;
            })
            .await
        })
    };
    for _ in 0..50 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(15)
s.connect(sys.argv[1])
try:
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    d = s.recv(64)
    print("ACCEPTED" if d else "CLOSED")
except (ConnectionResetError, BrokenPipeError):
    # The server hung up first: refused.
    print("CLOSED")
except socket.timeout:
    print("TIMEOUT")
"#;
    let run = move |as_nobody: bool| {
        let mut cmd = if as_nobody {
            let mut c = std::process::Command::new("setpriv");
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "/usr/bin/python3",
            ]);
            c
        } else {
            std::process::Command::new("/usr/bin/python3")
        };
        let out = cmd
            .arg("-c")
            .arg(script)
            .arg(&socket)
            .output()
            .expect("python");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    };
    let owner = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run(false)
    })
    .await
    .expect("join");
    let other = tokio::task::spawn_blocking(move || run(true))
        .await
        .expect("join");
    eprintln!("owner: {owner}; other user: {other}");
    let _ = stop_tx.send(());
    let _ = server.await;
    assert_eq!(owner, "ACCEPTED", "control: the owner must be served");
    assert_eq!(other, "CLOSED", "another user was served");
}

/// A write flood from the application must not starve the node's deliveries: writes are
/// handled 256 to a loop turn (with a disk sync), deliveries one to a turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_write_flood_does_not_make_the_node_drop_deliveries() {
    let _serial = serial().await;
    let tree = KvTree::start(1, 0, 2).await;
    let (victim, peer) = (tree.client(0).clone(), tree.client(1).clone());
    let flood = {
        let kv = victim.kv.clone();
        tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for w in 0..64 {
                let kv = kv.clone();
                tasks.spawn(async move {
                    for i in 0..150 {
                        let _ = kv
                            .put(&format!("flood/{w}-{i}"), Bytes::from_static(b"x"))
                            .await;
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        })
    };
    let started = std::time::Instant::now();
    let mut peer_writes = 0;
    while !flood.is_finished() && started.elapsed() < Duration::from_secs(60) {
        let _ = peer
            .kv
            .put(&format!("t/p-{peer_writes}"), Bytes::from_static(b"y"))
            .await;
        peer_writes += 1;
    }
    let _ = flood.await;
    let dropped = victim
        .node
        .handle
        .status()
        .await
        .expect("victim")
        .counters
        .deliveries_dropped;
    eprintln!(
        "flood took {:?}; peer wrote {peer_writes}; victim dropped {dropped} deliveries",
        started.elapsed()
    );
    assert_eq!(dropped, 0);
}
