//! The `canopy` binary as a user runs it: certificates from the CLI, two real `canopy run`
//! processes on loopback, and configuration errors that name their file and key.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

mod common;

use common::{canopy, free_port, issue, node_config, ok, root_and_client, Running};

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
    let (_root, client, rx) = root_and_client(&root_config, &client_config);
    let _client = Running(client);
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

/// Waits for a line containing `what` on `rx`; panics with what came instead.
fn wait_line(rx: &mpsc::Receiver<String>, what: &str) -> String {
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.contains(what) => return line,
            Ok(line) => seen.push(line),
            Err(e) => panic!("no {what:?} ({e}); saw:\n{}", seen.join("\n")),
        }
    }
}

#[test]
fn sighup_reloads_at_once_and_a_broken_certificate_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_arg = certs.to_str().unwrap();
    ok(canopy().args(["certs", "init", "--dir", certs_arg, "--cluster", "lab"]));
    issue(certs_arg, 1, "root-candidate");
    let port = free_port();
    let config = node_config(dir.path(), 1, port, port, "");
    // Polling practically off: only SIGHUP reloads.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "key = \"certs/node-1.key\"\n",
        "key = \"certs/node-1.key\"\nreload_ms = 3600000\n",
    );
    std::fs::write(&config, text).unwrap();
    let mut node = canopy()
        .args(["run", "--config", config.to_str().unwrap()])
        .env("CANOPY_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = node.stderr.take().unwrap();
    let pid = node.id().to_string();
    let _node = Running(node);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    wait_line(&rx, "serving as root");
    let hup = || ok(std::process::Command::new("kill").args(["-HUP", &pid]));
    let serial = || {
        let status = ok(canopy().args(["status", "--config", config.to_str().unwrap()]));
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        status["tls"]["serial"].as_str().unwrap().to_owned()
    };
    let original = serial();

    // A truncated certificate: the node says why and keeps serving with the old one.
    let cert = certs.join("node-1.pem");
    let pem = std::fs::read_to_string(&cert).unwrap();
    std::fs::write(&cert, &pem[..pem.len() / 2]).unwrap();
    hup();
    let kept = wait_line(&rx, "keeping the credentials in force");
    assert!(kept.contains("node-1.pem"), "{kept}");
    assert_eq!(serial(), original);

    // A rotation is in force as soon as SIGHUP says so.
    std::fs::write(&cert, &pem).unwrap();
    ok(canopy().args(["certs", "rotate", "--dir", certs_arg, "--id", "1"]));
    hup();
    wait_line(&rx, "reloaded certificate");
    let renewed = serial();
    assert_ne!(renewed, original);
    let listed = ok(canopy().args(["certs", "list", "--dir", certs_arg, "--json"]));
    assert!(listed.contains(&renewed), "{listed}");
}
