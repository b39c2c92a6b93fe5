//! The `canopy` binary as a user runs it: certificates from the CLI, two real `canopy run`
//! processes on loopback, and configuration errors that name their file and key.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

mod common;

use common::{canopy, free_port, issue, node_config, ok, Running};

fn write_config(dir: &Path, id: u64, port: u16, root_port: u16) -> std::path::PathBuf {
    node_config(dir, id, port, root_port, "")
}

#[test]
fn certs_and_two_processes_form_a_tree() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_arg = certs.to_str().unwrap();
    ok(canopy().args(["certs", "init", "--dir", certs_arg, "--cluster", "lab"]));
    // A second init would orphan every issued certificate: refused without --force.
    let again = canopy()
        .args(["certs", "init", "--dir", certs_arg, "--cluster", "lab"])
        .output()
        .unwrap();
    assert!(!again.status.success());
    for (id, role) in [(1, "root-candidate"), (10_000, "client")] {
        let out = issue(certs_arg, id, role);
        assert!(
            out.contains(&format!("canopy://lab/{role}/{id}?region=lab")),
            "{out}"
        );
    }
    let root_port = free_port();
    let root_config = write_config(dir.path(), 1, root_port, root_port);
    let client_config = write_config(dir.path(), 10_000, free_port(), root_port);
    let _root = Running(
        canopy()
            .args(["run", "--config", root_config.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut client = canopy()
        .args(["run", "--config", client_config.to_str().unwrap()])
        .env("CANOPY_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = client.stderr.take().unwrap();
    let _client = Running(client);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let attached = loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.contains("attached to parent") => break line,
            Ok(_) => continue,
            Err(e) => panic!("the client never attached: {e}"),
        }
    };
    assert!(attached.contains("parent=1"), "{attached}");
}

/// Runs `canopy run --config path`, which must fail, and returns its stderr.
fn run_fails(path: &Path) -> String {
    let out = canopy()
        .args(["run", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "canopy run should refuse {}",
        path.display()
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_config_is_reported_with_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), 5, 1, 2);
    let text = std::fs::read_to_string(&path).unwrap() + "rebalance_ms = 0\n";
    std::fs::write(&path, text).unwrap();
    let err = run_fails(&path);
    assert!(
        err.contains("node-5.toml") && err.contains("timers.rebalance_ms"),
        "{err}"
    );

    std::fs::write(&path, "listen = \"127.0.0.1:1\"\nlisten_typo = 3\n").unwrap();
    let err = run_fails(&path);
    assert!(
        err.contains("node-5.toml") && err.contains("listen_typo"),
        "{err}"
    );
}

#[test]
fn missing_certificate_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), 6, free_port(), 2);
    let err = run_fails(&path);
    assert!(err.contains("ca.pem"), "{err}");
}
