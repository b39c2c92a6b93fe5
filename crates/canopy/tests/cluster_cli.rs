//! The root group as an operator runs it: three real `canopy run` candidate processes and a
//! client, `canopy cluster status`, adding and removing a fourth candidate through Raft, and
//! killing the leader process (SIGKILL) while the client stays in the tree.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::{canopy, free_port, issue, ok, Running};

struct Lab {
    dir: tempfile::TempDir,
    ports: Vec<(u64, u16)>,
}

impl Lab {
    fn certs(&self) -> String {
        self.dir.path().join("certs").to_str().unwrap().to_owned()
    }

    fn issue(&self, id: u64, role: &str) {
        issue(&self.certs(), id, role);
    }

    fn config(&self, id: u64, port: u16, candidates: &[(u64, u16)], bootstrap: bool) -> PathBuf {
        let path = self.dir.path().join(format!("node-{id}.toml"));
        let mut text = format!(
            "listen = \"127.0.0.1:{port}\"\nregion = \"lab\"\n\n[tls]\nca = \"certs/ca.pem\"\n\
             cert = \"certs/node-{id}.pem\"\nkey = \"certs/node-{id}.key\"\n\n[timers]\n\
             heartbeat_ms = 200\nchild_timeout_ms = 1000\nparent_timeout_ms = 1000\n\
             join_timeout_ms = 400\n\n[raft]\nbootstrap = {bootstrap}\n\n\
             [api]\nsocket = \"node-{id}.sock\"\n"
        );
        for (cid, cport) in candidates {
            text.push_str(&format!(
                "\n[[root_candidates]]\nid = {cid}\naddress = \"127.0.0.1:{cport}\"\n"
            ));
        }
        std::fs::write(&path, text).unwrap();
        path
    }

    fn spawn(&self, config: &Path) -> Running {
        Running(
            canopy()
                .args(["run", "--config", config.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    fn status(&self, extra: &[(u64, u16)]) -> Value {
        let mut cmd = canopy();
        cmd.args([
            "cluster",
            "status",
            "--json",
            "--dir",
            &self.certs(),
            "--admin-id",
            "900",
        ]);
        for (id, port) in self.ports.iter().chain(extra) {
            cmd.args(["--candidate", &format!("{id}=127.0.0.1:{port}")]);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.lines().last().unwrap_or("null")).unwrap_or(Value::Null)
    }

    /// Polls the status until `done` holds.
    fn wait(&self, extra: &[(u64, u16)], what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let status = self.status(extra);
            if done(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "{what}: last status {status}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn membership(&self, change: &str, id: u64, address: Option<u16>) -> String {
        let mut cmd = canopy();
        cmd.args([
            "cluster",
            change,
            "--dir",
            &self.certs(),
            "--admin-id",
            "900",
        ]);
        cmd.args(["--id", &id.to_string()]);
        if let Some(port) = address {
            cmd.args(["--address", &format!("127.0.0.1:{port}")]);
        }
        for (cid, port) in &self.ports {
            cmd.args(["--candidate", &format!("{cid}=127.0.0.1:{port}")]);
        }
        ok(&mut cmd)
    }
}

fn voters(status: &Value) -> Vec<u64> {
    let leader = &status["leader"];
    status["candidates"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| &c["id"] == leader)
        .and_then(|c| c["status"]["raft"]["voters"].as_array())
        .map(|v| v.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

#[test]
fn cluster_status_membership_changes_and_a_killed_leader_process() {
    let lab = Lab {
        dir: tempfile::tempdir().unwrap(),
        ports: (1..=3).map(|id| (id, free_port())).collect(),
    };
    ok(canopy().args(["certs", "init", "--dir", &lab.certs(), "--cluster", "lab"]));
    for id in 1..=4 {
        lab.issue(id, "root-candidate");
    }
    lab.issue(10_000, "client");
    lab.issue(900, "admin");

    let mut processes: Vec<(u64, Running)> = lab
        .ports
        .iter()
        .map(|&(id, port)| (id, lab.spawn(&lab.config(id, port, &lab.ports, true))))
        .collect();
    let _client = lab.spawn(&lab.config(10_000, free_port(), &lab.ports, true));

    let status = lab.wait(&[], "a leader and the client in its view", |s| {
        s["leader"].is_u64() && s["tree"]["clients"] == 1
    });
    assert_eq!(voters(&status), vec![1, 2, 3]);
    assert!(status["term"].as_u64().unwrap() >= 1);
    assert!(status["commit_index"].as_u64().unwrap() >= 1);
    assert_eq!(status["tree"]["root"], status["leader"]);
    // The table form names every candidate.
    let mut table = canopy();
    table.args([
        "cluster",
        "status",
        "--dir",
        &lab.certs(),
        "--admin-id",
        "900",
    ]);
    table.args([
        "--config",
        lab.dir.path().join("node-1.toml").to_str().unwrap(),
    ]);
    let table = ok(&mut table);
    assert!(
        table.contains("Leader") && table.contains("members"),
        "{table}"
    );

    // A fourth candidate joins through Raft, then leaves.
    let fourth = (4, free_port());
    let all: Vec<(u64, u16)> = lab.ports.iter().copied().chain([fourth]).collect();
    let _fourth = lab.spawn(&lab.config(4, fourth.1, &all, false));
    lab.membership("add-candidate", 4, Some(fourth.1));
    lab.wait(&[fourth], "candidate 4 a voter", |s| {
        voters(s) == vec![1, 2, 3, 4]
    });
    lab.membership("remove-candidate", 4, None);
    lab.wait(&[fourth], "candidate 4 removed", |s| {
        voters(s) == vec![1, 2, 3]
    });

    // SIGKILL the leader's process: another candidate takes over the root with the view in
    // hand and the client is still in the tree.
    let leader = status["leader"].as_u64().unwrap();
    processes.retain(|(id, _)| *id != leader);
    let after = lab.wait(&[], "a new leader serving the client", |s| {
        s["leader"].as_u64().is_some_and(|l| l != leader)
            && s["tree"]["clients"] == 1
            && s["tree"]["root"] == s["leader"]
    });
    assert!(after["tree"]["epoch"].as_u64() > status["tree"]["epoch"].as_u64());
    drop(processes);
}
