//! A cluster of real `canopy run` processes whose certificates the tests change with
//! `canopy certs`: three root candidates, two routers, three clients with KV replicas, and an
//! admin certificate. Every node watches its files (reload every 100 ms); its revocation list
//! is `deployed/crl.pem`, which changes only when a test deploys the operator's `crl.pem`, so
//! a revocation pushed through the tree is seen to arrive through the tree.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{canopy, free_port, ok, Running};

pub const CANDIDATES: [u64; 3] = [1, 2, 3];
pub const ROUTERS: [u64; 2] = [100, 101];
pub const CLIENTS: [u64; 3] = [1000, 1001, 1002];
pub const ADMIN: u64 = 900;

/// Every line a process wrote to stderr, with when the test read it.
pub type Log = Arc<Mutex<Vec<(Instant, String)>>>;

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub ports: BTreeMap<u64, u16>,
    pub heartbeat_ms: u64,
    processes: BTreeMap<u64, (Running, Log)>,
    /// Nodes whose certificate and key are read from `stale/` instead of `certs/`.
    stale: Vec<u64>,
}

pub fn nodes() -> impl Iterator<Item = u64> {
    CANDIDATES.into_iter().chain(ROUTERS).chain(CLIENTS)
}

fn role(id: u64) -> &'static str {
    if CANDIDATES.contains(&id) {
        "root-candidate"
    } else if ROUTERS.contains(&id) {
        "router"
    } else if CLIENTS.contains(&id) {
        "client"
    } else {
        "admin"
    }
}

impl Lab {
    /// A cluster's certificates and group keys, no process yet.
    pub fn new(heartbeat_ms: u64) -> Lab {
        let lab = Lab {
            dir: tempfile::tempdir().unwrap(),
            ports: nodes().map(|id| (id, free_port())).collect(),
            heartbeat_ms,
            processes: BTreeMap::new(),
            stale: Vec::new(),
        };
        lab.certs(&["init", "--cluster", "lab"]);
        for id in nodes().chain([ADMIN]) {
            let id_text = id.to_string();
            lab.certs(&[
                "issue",
                "--id",
                &id_text,
                "--role",
                role(id),
                "--region",
                "lab",
            ]);
        }
        lab.deploy_crl();
        let keys = lab.dir.path().join("group.keys");
        ok(canopy().args(["keys", "init", "--file", keys.to_str().unwrap()]));
        lab
    }

    /// Copies the operator's `crl.pem` to where the nodes read it (a rename: never half a file).
    pub fn deploy_crl(&self) {
        let deployed = self.dir.path().join("deployed");
        std::fs::create_dir_all(&deployed).unwrap();
        std::fs::copy(
            self.certs_dir().join("crl.pem"),
            deployed.join(".crl.pem.tmp"),
        )
        .unwrap();
        std::fs::rename(deployed.join(".crl.pem.tmp"), deployed.join("crl.pem")).unwrap();
    }

    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// `canopy certs SUB --dir DIR ARGS`, which must succeed.
    pub fn certs(&self, args: &[&str]) -> String {
        let mut cmd = canopy();
        cmd.args(["certs", args[0], "--dir"])
            .arg(self.certs_dir())
            .args(&args[1..]);
        ok(&mut cmd)
    }

    /// Makes node `id` read a copy of its current certificate and key that `canopy certs`
    /// never updates (an operator who forgot to deploy its new files).
    pub fn freeze_credentials(&mut self, id: u64) {
        let stale = self.dir.path().join("stale");
        std::fs::create_dir_all(&stale).unwrap();
        for ext in ["pem", "key"] {
            let name = format!("node-{id}.{ext}");
            std::fs::copy(self.certs_dir().join(&name), stale.join(&name)).unwrap();
        }
        self.stale.push(id);
    }

    /// Node `id`'s configuration. Rebalancing is off (culls would be link changes that have
    /// nothing to do with credentials, and the tests count every link change as a break).
    pub fn config(&self, id: u64) -> PathBuf {
        let path = self.dir.path().join(format!("node-{id}.toml"));
        let credentials = if self.stale.contains(&id) {
            "stale"
        } else {
            "certs"
        };
        let (subscribe, kv) = if CLIENTS.contains(&id) {
            (
                "subscribe = [\"orders/\"]\n",
                format!("\n[kv]\ngroup_keys = \"group.keys\"\ndata_dir = \"kv-{id}\"\n"),
            )
        } else {
            ("", String::new())
        };
        let heartbeat = self.heartbeat_ms;
        let mut text = format!(
            "listen = \"127.0.0.1:{port}\"\nregion = \"lab\"\n{subscribe}\n[tls]\n\
             ca = \"certs/ca.pem\"\ncert = \"{credentials}/node-{id}.pem\"\n\
             key = \"{credentials}/node-{id}.key\"\ncrl = \"deployed/crl.pem\"\nreload_ms = 100\n\n\
             [timers]\nheartbeat_ms = {heartbeat}\nchild_timeout_ms = {timeout}\n\
             parent_timeout_ms = {timeout}\njoin_timeout_ms = {join}\n\
             rebalance_ms = 3600000\n\n[raft]\nbootstrap = true\n\n\
             [api]\nsocket = \"node-{id}.sock\"\n{kv}",
            port = self.ports[&id],
            timeout = heartbeat * 5,
            join = heartbeat * 2,
        );
        for cid in CANDIDATES {
            text.push_str(&format!(
                "\n[[root_candidates]]\nid = {cid}\naddress = \"127.0.0.1:{}\"\n",
                self.ports[&cid]
            ));
        }
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn start(&mut self, id: u64) {
        let mut child = canopy()
            .args(["run", "--config", self.config(id).to_str().unwrap()])
            .env(
                "CANOPY_LOG",
                "info,openraft=warn,quinn=warn,rustls=warn,h2=warn,tower=warn",
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log: Log = Arc::default();
        let (stderr, sink) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push((Instant::now(), line));
            }
        });
        self.processes.insert(id, (Running(child), log));
    }

    /// Starts every node and waits until the leader's view holds them all, none detached.
    /// The routers are in the tree before the clients start, so that the clients are placed
    /// under routers rather than at the root (these tests revoke a router with children,
    /// and rebalancing is off).
    pub fn start_all(&mut self) -> Value {
        for id in CANDIDATES.into_iter().chain(ROUTERS) {
            self.start(id);
        }
        self.wait_tree("every router in the tree", |tree| {
            tree["routers"].as_u64() >= Some(ROUTERS.len() as u64)
        });
        for id in CLIENTS {
            self.start(id);
        }
        self.wait_tree("every node in the tree", |tree| {
            tree["clients"] == CLIENTS.len() && tree["routers"].as_u64() >= Some(2)
        })
    }

    fn candidate_args(&self) -> Vec<String> {
        CANDIDATES
            .iter()
            .flat_map(|id| {
                [
                    "--candidate".to_owned(),
                    format!("{id}=127.0.0.1:{}", self.ports[id]),
                ]
            })
            .collect()
    }

    /// `canopy certs revoke --push` with the admin certificate: commits crl.pem through the
    /// root group.
    pub fn revoke_and_push(&self, id: u64) -> String {
        let mut cmd = canopy();
        cmd.args(["certs", "revoke", "--dir"])
            .arg(self.certs_dir())
            .args([
                "--id",
                &id.to_string(),
                "--push",
                "--admin-id",
                &ADMIN.to_string(),
            ])
            .args(self.candidate_args());
        ok(&mut cmd)
    }

    /// The leader's summary of its committed view, through `canopy cluster status`.
    pub fn tree(&self) -> Value {
        let mut cmd = canopy();
        cmd.args(["cluster", "status", "--json", "--dir"])
            .arg(self.certs_dir())
            .args(["--admin-id", &ADMIN.to_string()])
            .args(self.candidate_args());
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let status: Value =
            serde_json::from_str(stdout.lines().last().unwrap_or("null")).unwrap_or(Value::Null);
        status["tree"].clone()
    }

    /// Polls the leader's view until `done` holds for a view with nobody detached.
    pub fn wait_tree(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let tree = self.tree();
            if tree["detached"] == 0 && done(&tree) {
                return tree;
            }
            assert!(Instant::now() < deadline, "{what}: last view {tree}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// A node's status through its API socket (`canopy status`).
    pub fn status(&self, id: u64) -> Option<Value> {
        let out = canopy()
            .args(["status", "--config", self.config_path(id).to_str().unwrap()])
            .output()
            .unwrap();
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn config_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.toml"))
    }

    /// Polls node statuses until `done` holds for all of `ids` at once; returns them.
    pub fn wait_statuses(
        &self,
        ids: &[u64],
        what: &str,
        done: impl Fn(&BTreeMap<u64, Value>) -> bool,
    ) -> BTreeMap<u64, Value> {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let statuses: BTreeMap<u64, Value> = ids
                .iter()
                .filter_map(|&id| Some((id, self.status(id)?)))
                .collect();
            if statuses.len() == ids.len() && done(&statuses) {
                return statuses;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: last statuses {statuses:#?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Each node's TLS generation now (it rises with every reload or new list).
    pub fn generations(&self, ids: &[u64]) -> BTreeMap<u64, u64> {
        self.wait_statuses(ids, "every node answering", |_| true)
            .into_iter()
            .map(|(id, s)| (id, s["tls"]["generation"].as_u64().unwrap_or_default()))
            .collect()
    }

    /// Waits until every node of `before` has changed its trust since, and returns when.
    pub fn wait_trust_changed(&self, before: &BTreeMap<u64, u64>, what: &str) -> Instant {
        let ids: Vec<u64> = before.keys().copied().collect();
        self.wait_statuses(&ids, what, |s| {
            s.iter()
                .all(|(id, status)| status["tls"]["generation"].as_u64() > Some(before[id]))
        });
        Instant::now()
    }

    /// Lines of node `id`'s log read at or after `since` that contain every one of `parts`.
    pub fn lines(&self, id: u64, since: Instant, parts: &[&str]) -> Vec<(Instant, String)> {
        let Some((_, log)) = self.processes.get(&id) else {
            return Vec::new();
        };
        log.lock()
            .unwrap()
            .iter()
            .filter(|(at, line)| *at >= since && parts.iter().all(|p| line.contains(p)))
            .cloned()
            .collect()
    }

    /// [`Lab::lines`] of every node, with the node's id.
    pub fn all_lines(&self, since: Instant, parts: &[&str]) -> Vec<(u64, String)> {
        self.processes
            .keys()
            .flat_map(|&id| {
                self.lines(id, since, parts)
                    .into_iter()
                    .map(move |(_, line)| (id, line))
            })
            .collect()
    }
}

/// The serial a node holds now, as its status reports it.
pub fn serial(status: &Value) -> String {
    status["tls"]["serial"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The peers a node has live links with.
pub fn peers(status: &Value) -> Vec<u64> {
    let mut peers: Vec<u64> = links(status)
        .iter()
        .filter_map(|l| l["peer"].as_u64())
        .collect();
    peers.dedup();
    peers
}

pub fn links(status: &Value) -> Vec<Value> {
    status["tls"]["links"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

impl Drop for Lab {
    /// A failed test leaves every node's log behind, since the failure is often in a line
    /// the assertion did not quote.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("canopy-lab-{}", std::process::id()));
        if std::fs::create_dir_all(&dir).is_err() {
            return;
        }
        for (id, (_, log)) in &self.processes {
            let Ok(lines) = log.lock() else { continue };
            let text: String = lines.iter().map(|(_, line)| format!("{line}\n")).collect();
            let _ = std::fs::write(dir.join(format!("{id}.log")), text);
        }
        eprintln!("node logs: {}", dir.display());
    }
}
