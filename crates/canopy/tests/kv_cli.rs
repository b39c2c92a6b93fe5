//! The key-value store as a user drives it: `canopy keys init`, four `canopy run` processes
//! (root, router, two clients), `canopy put` on one client and `canopy watch` on the other.
//! The router forwards the record but never holds the group key: neither its log nor its
//! status contain the key or the value.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use common::{canopy, free_port, issue, node_config, ok, Running};

const KEY: &str = "orders/kv-cli-7f3a";
const VALUE: &str = "value-e91c-only-clients-read";

fn client_extra(id: u64) -> String {
    format!(
        "subscribe = [\"orders/\"]\n[kv]\ngroup_keys = \"group.keys\"\ndata_dir = \"kv-{id}\"\n"
    )
}

/// Lines of a child's stream, as they come.
fn lines(stream: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for(rx: &mpsc::Receiver<String>, what: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(what);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!(
        "no line with {what:?} within {within:?}; saw:\n{}",
        seen.join("\n")
    );
}

/// Runs `canopy` with `args` until it succeeds (the node may still be joining) or time runs out.
fn eventually_ok(args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = canopy().args(args).output().unwrap();
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn put_on_one_client_is_watched_on_another_and_the_router_sees_neither_key_nor_value() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_arg = certs.to_str().unwrap();
    ok(canopy().args(["certs", "init", "--dir", certs_arg, "--cluster", "lab"]));
    for (id, role) in [
        (1, "root-candidate"),
        (100, "router"),
        (10_000, "client"),
        (10_001, "client"),
    ] {
        issue(certs_arg, id, role);
    }
    let keys = dir.path().join("group.keys");
    let keys_arg = keys.to_str().unwrap();
    ok(canopy().args(["keys", "init", "--file", keys_arg]));
    // A second init would make every sealed record unreadable: refused without --force.
    assert!(!canopy()
        .args(["keys", "init", "--file", keys_arg])
        .output()
        .unwrap()
        .status
        .success());

    let root_port = free_port();
    let root = node_config(dir.path(), 1, root_port, root_port, "");
    let router = node_config(dir.path(), 100, free_port(), root_port, "");
    let writer = node_config(
        dir.path(),
        10_000,
        free_port(),
        root_port,
        &client_extra(10_000),
    );
    let watcher = node_config(
        dir.path(),
        10_001,
        free_port(),
        root_port,
        &client_extra(10_001),
    );

    let spawn = |config: &Path| {
        let mut child = canopy()
            .args(["run", "--config", config.to_str().unwrap()])
            .env(
                "CANOPY_LOG",
                "debug,openraft=warn,quinn=warn,rustls=warn,h2=warn,tower=warn",
            )
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = lines(child.stderr.take().unwrap());
        (Running(child), log)
    };
    let (_root, _root_log) = spawn(&root);
    let (_router, router_log) = spawn(&router);
    wait_for(&router_log, "attached to parent", Duration::from_secs(30));
    let (_writer, _writer_log) = spawn(&writer);
    let (_watcher, _watcher_log) = spawn(&watcher);

    let watcher_arg = watcher.to_str().unwrap();
    let writer_arg = writer.to_str().unwrap();
    // Both clients serve their API once running.
    eventually_ok(&["scan", "--config", watcher_arg, "orders/"]);
    eventually_ok(&["scan", "--config", writer_arg, "orders/"]);
    let mut watch = canopy()
        .args(["watch", "--config", watcher_arg, "orders/"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let watch_out = lines(watch.stdout.take().unwrap());
    let _watch = Running(watch);
    // Give the watch a moment to subscribe, then write until it is seen (the writer may
    // still be joining the router when the first put is made; catch-up brings it anyway).
    std::thread::sleep(Duration::from_millis(500));
    let put = ok(canopy().args(["put", "--config", writer_arg, KEY, VALUE]));
    assert!(put.contains(KEY), "{put}");
    let seen = wait_for(&watch_out, VALUE, Duration::from_secs(30));
    let line = seen.last().unwrap();
    assert!(line.contains(KEY), "{line}");

    // The watcher's replica holds it; the router cannot answer for the store at all.
    let got = eventually_ok(&["get", "--config", watcher_arg, KEY]);
    assert!(got.contains(VALUE), "{got}");
    let router_arg = router.to_str().unwrap();
    let refused = canopy()
        .args(["get", "--config", router_arg, KEY])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("router"), "{why}");
    let long_key = format!("orders/{}", "k".repeat(2000));
    let too_large = canopy()
        .args(["put", "--config", writer_arg, &long_key, "v"])
        .output()
        .unwrap();
    assert!(!too_large.status.success());
    let why = String::from_utf8_lossy(&too_large.stderr);
    assert!(why.contains("key too large"), "{why}");
    let no_socket = canopy()
        .args([
            "get",
            "--socket",
            dir.path().join("nowhere.sock").to_str().unwrap(),
            KEY,
        ])
        .output()
        .unwrap();
    assert!(!no_socket.status.success());
    assert!(String::from_utf8_lossy(&no_socket.stderr).contains("no node API socket"));

    // The router forwarded the record (it is between the clients) but its debug log and
    // its status never show the key or the value.
    let status = ok(canopy().args(["status", "--config", router_arg]));
    let parsed: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(parsed["role"], "router", "{status}");
    assert!(
        parsed["counters"]["multicast_received"].as_u64().unwrap() > 0,
        "the router forwarded nothing, so it proves nothing: {status}"
    );
    assert!(!status.contains(KEY) && !status.contains(VALUE), "{status}");
    std::thread::sleep(Duration::from_millis(300));
    let router_lines: Vec<String> = router_log.try_iter().collect();
    for line in &router_lines {
        assert!(
            !line.contains(KEY) && !line.contains(VALUE),
            "router logged: {line}"
        );
        assert!(!line.contains("orders/"), "router logged: {line}");
    }
}
