//! Durability: "Writes are durable locally before they are acknowledged."
//! The replica task turns off the replica's own per-write flush (`flush_each_write = false`)
//! and promises to sync once per group of writes before acknowledging; this checks that an
//! acknowledged value is on disk (in the sled files) at the moment `put` returns.
//!
//! If it is not, a crash right after the acknowledgement loses a record that was already
//! published; the restarted origin reuses the chain position for a different record
//! (equivocation) and every replica that applied the first refuses all its later records on
//! that tag as chain breaks.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use canopy_node::local::{LocalCluster, LocalClusterSpec};

use crate::support::{serial, SETTLE};

fn files_contain(dir: &Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    return true;
                }
            }
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_put_is_on_disk() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("tmp");
    let spec = LocalClusterSpec {
        candidates: 1,
        data_dir: Some(dir.path().to_path_buf()),
        ..LocalClusterSpec::default()
    };
    let mut cluster = LocalCluster::start(spec).await.expect("cluster");
    let client = cluster.add_kv_client(&[]).await.expect("client");
    cluster
        .wait_for_tree(2, SETTLE, |_, _| {})
        .await
        .expect("tree");
    let replica_dir = dir.path().join(format!("replica-{}", client.id()));
    let mut missing = Vec::new();
    for i in 0..10 {
        let marker = format!("durability-marker-{i:04}-{}", "x".repeat(40));
        client
            .kv
            .put(&format!("d/{i}"), Bytes::from(marker.clone()))
            .await
            .expect("put acknowledged");
        if !files_contain(&replica_dir, marker.as_bytes()) {
            missing.push(i);
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert!(
        missing.is_empty(),
        "acknowledged puts {missing:?} were not on disk when put returned"
    );
}
