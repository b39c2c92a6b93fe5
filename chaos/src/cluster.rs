//! The cluster under test: certificates, group keys and one configuration per node in a
//! scratch directory, and the `canopy run` processes, each on an address of its own in
//! 127.0.0.0/8 (127.B.R.K: B picked per run, R the region, K the node). Every process is killed when the cluster is dropped, and dies with the
//! harness if the harness is killed (`PR_SET_PDEATHSIG`).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::Context;

use crate::scenario::Scenario;

const TREE_PORT: u16 = 7400;
const METRICS_PORT: u16 = 9400;
const CLUSTER: &str = "chaos";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Candidate,
    Router,
    Client,
}

impl Role {
    fn cert_role(self) -> &'static str {
        match self {
            Role::Candidate => "root-candidate",
            Role::Router => "router",
            Role::Client => "client",
        }
    }
}

pub struct Node {
    pub id: u64,
    pub role: Role,
    pub region: String,
    pub ip: Ipv4Addr,
    pub config: PathBuf,
    pub api_socket: PathBuf,
    pub log: PathBuf,
    process: Option<Child>,
    /// Whether the process is stopped (SIGSTOP) right now.
    pub paused: bool,
}

impl Node {
    pub fn tree_address(&self) -> SocketAddr {
        SocketAddr::from((self.ip, TREE_PORT))
    }

    pub fn metrics_address(&self) -> SocketAddr {
        SocketAddr::from((self.ip, METRICS_PORT))
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    fn pid(&self) -> Option<i32> {
        self.process
            .as_ref()
            .and_then(|p| i32::try_from(p.id()).ok())
    }
}

pub struct Cluster {
    /// The scratch directory (certificates, configs, logs, data).
    pub root: PathBuf,
    dir: Option<tempfile::TempDir>,
    pub nodes: Vec<Node>,
    canopy: PathBuf,
}

impl Cluster {
    /// Writes certificates, keys and configurations for `scenario`; starts nothing.
    pub fn prepare(scenario: &Scenario, canopy: PathBuf) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("canopy-chaos-").tempdir()?;
        let certs = dir.path().join("certs");
        run(Command::new(&canopy)
            .args(["certs", "init", "--dir"])
            .arg(&certs)
            .args(["--cluster", CLUSTER]))?;
        run(Command::new(&canopy)
            .args(["keys", "init", "--file"])
            .arg(dir.path().join("group.keys")))?;
        let mut nodes = Vec::new();
        let (mut candidate_id, mut router_id, mut client_id) = (1u64, 100u64, 1000u64);
        // A block of 127.0.0.0/8 of this run's own, so that two runs at once (two checkouts,
        // a CI job and a developer) do not fight over the same addresses.
        let block = 16 + (std::process::id() % 200) as u8;
        for (r, region) in scenario.regions.iter().enumerate() {
            let mut host = 1u8;
            let mut add = |role: Role, id: u64, nodes: &mut Vec<Node>| {
                let ip = Ipv4Addr::new(127, block, r as u8 + 1, host);
                host += 1;
                nodes.push(Node {
                    id,
                    role,
                    region: region.name.clone(),
                    ip,
                    config: dir.path().join(format!("node-{id}.toml")),
                    api_socket: dir.path().join(format!("node-{id}.sock")),
                    log: dir.path().join(format!("node-{id}.log")),
                    process: None,
                    paused: false,
                });
            };
            for _ in 0..region.candidates {
                add(Role::Candidate, candidate_id, &mut nodes);
                candidate_id += 1;
            }
            for _ in 0..region.routers {
                add(Role::Router, router_id, &mut nodes);
                router_id += 1;
            }
            for _ in 0..region.clients {
                add(Role::Client, client_id, &mut nodes);
                client_id += 1;
            }
        }
        for node in &nodes {
            run(Command::new(&canopy)
                .args(["certs", "issue", "--dir"])
                .arg(&certs)
                .args(["--cluster", CLUSTER, "--id", &node.id.to_string()])
                .args(["--role", node.role.cert_role(), "--region", &node.region]))?;
        }
        Ok(Cluster {
            root: dir.path().to_path_buf(),
            dir: Some(dir),
            nodes,
            canopy,
        })
    }

    /// Writes every node's configuration; `dial_via` lists, per node, the peers it reaches
    /// through a relay.
    pub fn write_configs(
        &self,
        scenario: &Scenario,
        dial_via: &crate::wan::DialVia,
    ) -> anyhow::Result<()> {
        let candidates: Vec<(u64, SocketAddr)> = self
            .nodes
            .iter()
            .filter(|n| n.role == Role::Candidate)
            .map(|n| (n.id, n.tree_address()))
            .collect();
        for node in &self.nodes {
            let mut text = config_text(scenario, node, &candidates);
            for (to, via) in dial_via.get(&node.id).into_iter().flatten() {
                let _ = write!(text, "\n[[dial_via]]\nto = \"{to}\"\nvia = \"{via}\"\n");
            }
            std::fs::write(&node.config, text)?;
        }
        Ok(())
    }

    pub fn node(&self, id: u64) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    fn node_mut(&mut self, id: u64) -> anyhow::Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .with_context(|| format!("no node {id}"))
    }

    pub fn ids(&self, role: Role) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.role == role)
            .map(|n| n.id)
            .collect()
    }

    /// Starts node `id`'s process (its log is appended to).
    pub fn start(&mut self, id: u64) -> anyhow::Result<()> {
        let canopy = self.canopy.clone();
        let node = self.node_mut(id)?;
        if node.process.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let mut command = Command::new(&canopy);
        command
            .args(["run", "--config"])
            .arg(&node.config)
            .env(
                "CANOPY_LOG",
                "info,openraft=warn,quinn=warn,rustls=warn,h2=warn,tower=warn",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill this child when
        // the harness's (single) thread that forked it dies.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        node.process = Some(
            command
                .spawn()
                .with_context(|| format!("starting node {id}"))?,
        );
        node.paused = false;
        Ok(())
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.node_mut(id)?;
        if let Some(mut child) = node.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        node.paused = false;
        Ok(())
    }

    /// SIGTERM (the node leaves the tree gracefully), then waits up to 10 s before SIGKILL.
    pub async fn terminate(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.node_mut(id)?;
        if let Some(pid) = node.pid() {
            // SAFETY: sending a signal to our own child.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        for _ in 0..100 {
            let node = self.node_mut(id)?;
            match node.process.as_mut().map(Child::try_wait) {
                Some(Ok(Some(_))) | None => {
                    node.process = None;
                    return Ok(());
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
        self.kill(id)
    }

    /// A new key and certificate for node `id` (`canopy certs rotate`); the node picks the
    /// files up within its reload interval.
    pub fn rotate_certificate(&self, id: u64) -> anyhow::Result<()> {
        run(Command::new(&self.canopy)
            .args(["certs", "rotate", "--dir"])
            .arg(self.root.join("certs"))
            .args(["--id", &id.to_string()]))
    }

    /// SIGSTOP (`stop`) or SIGCONT.
    pub fn pause(&mut self, id: u64, stop: bool) -> anyhow::Result<()> {
        let node = self.node_mut(id)?;
        if let Some(pid) = node.pid() {
            let signal = if stop { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: sending a signal to our own child.
            unsafe {
                libc::kill(pid, signal);
            }
            node.paused = stop;
        }
        Ok(())
    }

    /// Leaves the scratch directory behind after the cluster is dropped.
    pub fn keep(&mut self) -> PathBuf {
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
        self.root.clone()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.process.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn config_text(scenario: &Scenario, node: &Node, candidates: &[(u64, SocketAddr)]) -> String {
    let c = &scenario.cluster;
    let id = node.id;
    let mut text = format!(
        "listen = \"{}\"\nregion = \"{}\"\n",
        node.tree_address(),
        node.region
    );
    if node.role == Role::Client {
        text.push_str("subscribe = [\"w/\"]\n");
    }
    let _ = write!(
        text,
        "\n[api]\nsocket = \"node-{id}.sock\"\n\n[metrics]\nlisten = \"{}\"\n\n\
         [tls]\nca = \"certs/ca.pem\"\ncert = \"certs/node-{id}.pem\"\nkey = \"certs/node-{id}.key\"\n\n\
         [timers]\nheartbeat_ms = {}\nchild_timeout_ms = {}\nparent_timeout_ms = {}\njoin_timeout_ms = {}\n\n\
         [raft]\ndata_dir = \"raft-data\"\nprofile = \"{}\"\n",
        node.metrics_address(),
        c.heartbeat_ms,
        c.heartbeat_ms * c.timeout_heartbeats,
        c.heartbeat_ms * c.timeout_heartbeats,
        c.heartbeat_ms * 2,
        c.raft_profile,
    );
    if node.role == Role::Client {
        let _ = write!(
            text,
            "\n[kv]\ngroup_keys = \"group.keys\"\ndata_dir = \"kv-{id}\"\n"
        );
    }
    for (cid, address) in candidates {
        let _ = write!(
            text,
            "\n[[root_candidates]]\nid = {cid}\naddress = \"{address}\"\n"
        );
    }
    text
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The `canopy` binary beside this one, built first if it is not there (`cargo run -p
/// canopy-chaos` builds only this package).
pub fn canopy_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the harness's directory")?;
    let canopy = dir.join("canopy");
    if !canopy.exists() {
        let release = dir.file_name().is_some_and(|d| d == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        eprintln!(
            "building the canopy binary ({})",
            if release { "release" } else { "debug" }
        );
        let mut build = Command::new(cargo);
        build.args(["build", "-p", "canopy"]);
        if release {
            build.arg("--release");
        }
        let status = build.status().context("running cargo build -p canopy")?;
        anyhow::ensure!(status.success(), "cargo build -p canopy failed");
    }
    anyhow::ensure!(canopy.exists(), "{} not found", canopy.display());
    Ok(canopy)
}
