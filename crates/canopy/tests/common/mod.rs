//! Helpers shared by the CLI tests: the binary, processes that die with the test, free ports.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

pub fn canopy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_canopy"))
}

/// Kills the process when the test ends, pass or fail.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd`, fails the test with its output unless it succeeds, returns its stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn free_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

/// Issues a certificate for node `id` of cluster "lab", region "lab", with the CA in `dir`;
/// returns what `canopy certs issue` printed.
pub fn issue(dir: &str, id: u64, role: &str) -> String {
    ok(canopy().args([
        "certs",
        "issue",
        "--dir",
        dir,
        "--cluster",
        "lab",
        "--id",
        &id.to_string(),
        "--role",
        role,
        "--region",
        "lab",
    ]))
}

/// Writes `node-ID.toml` in `dir` for a node of cluster "lab" (certificates under
/// `dir/certs`, API socket `node-ID.sock`) whose root candidate 1 listens on `root_port`;
/// `extra` goes after `region` (top-level keys first, then tables). The file ends with the
/// `[timers]` table, so a test can append timer keys.
pub fn node_config(dir: &Path, id: u64, port: u16, root_port: u16, extra: &str) -> PathBuf {
    let path = dir.join(format!("node-{id}.toml"));
    let text = format!(
        r#"listen = "127.0.0.1:{port}"
region = "lab"
{extra}
[api]
socket = "node-{id}.sock"

[tls]
ca = "certs/ca.pem"
cert = "certs/node-{id}.pem"
key = "certs/node-{id}.key"

[[root_candidates]]
id = 1
address = "127.0.0.1:{root_port}"

[timers]
heartbeat_ms = 200
child_timeout_ms = 1000
parent_timeout_ms = 1000
join_timeout_ms = 400
"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A root candidate and a client as `canopy run` processes: the root's output is dropped,
/// the client's stderr (CANOPY_LOG=info) arrives line by line on the receiver.
pub fn root_and_client(
    root_config: &Path,
    client_config: &Path,
) -> (
    Running,
    std::process::Child,
    std::sync::mpsc::Receiver<String>,
) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let root = Running(
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
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (root, client, rx)
}
