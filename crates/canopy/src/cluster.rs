//! `canopy cluster`: the root group as an operator sees it (status, membership changes),
//! over mutual TLS with an admin certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use canopy_net::{Credentials, RevocationList};
use canopy_node::admin::{AdminClient, MembershipChange};
use canopy_node::NodeConfig;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Leader, term, members, commit index and a tree summary, from every candidate.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a root candidate to the Raft group (it must be running and reachable).
    AddCandidate {
        #[command(flatten)]
        admin: AdminArgs,
        /// The new candidate's node id (its certificate must be a root-candidate one).
        #[arg(long)]
        id: u64,
        /// Where the new candidate listens, host:port.
        #[arg(long)]
        address: SocketAddr,
    },
    /// Remove a root candidate from the Raft group.
    RemoveCandidate {
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long)]
        id: u64,
    },
    /// Commit a revocation list (DIR/crl.pem, written by `canopy certs revoke`) through the
    /// root group, which pushes it down the tree: every node enforces it, detached ones when
    /// they rejoin.
    Revoke {
        #[command(flatten)]
        admin: AdminArgs,
        /// The CRL file to push (PEM, one list per CA).
        #[arg(long)]
        crl: Option<PathBuf>,
    },
}

/// How to reach the root group.
#[derive(Args)]
pub struct AdminArgs {
    /// Directory holding ca.pem and the admin's node-ID.pem / node-ID.key.
    #[arg(long, default_value = "certs")]
    pub dir: PathBuf,
    /// Node id of the admin certificate (`canopy certs issue --role admin --id N`).
    #[arg(long)]
    admin_id: u64,
    /// A root candidate as ID=HOST:PORT (repeat for each).
    #[arg(long = "candidate", value_parser = parse_candidate)]
    candidates: Vec<(u64, SocketAddr)>,
    /// Take the candidate list from a node's configuration file instead.
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn parse_candidate(text: &str) -> Result<(u64, SocketAddr), String> {
    let (id, address) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected ID=HOST:PORT"))?;
    let id = id
        .parse()
        .map_err(|_| format!("{text:?}: {id:?} is not a node id"))?;
    let address = address
        .parse()
        .map_err(|_| format!("{text:?}: {address:?} is not HOST:PORT"))?;
    Ok((id, address))
}

impl AdminArgs {
    pub fn new(
        dir: PathBuf,
        admin_id: u64,
        candidates: Vec<(u64, SocketAddr)>,
        config: Option<PathBuf>,
    ) -> Self {
        AdminArgs {
            dir,
            admin_id,
            candidates,
            config,
        }
    }

    fn candidates(&self) -> anyhow::Result<Vec<(u64, SocketAddr)>> {
        let mut list = self.candidates.clone();
        if let Some(path) = &self.config {
            let config = NodeConfig::load(path)?;
            list.extend(config.root_candidates.iter().map(|r| (r.id, r.address)));
        }
        if list.is_empty() {
            bail!("name the root candidates with --candidate ID=HOST:PORT or --config FILE");
        }
        Ok(list)
    }

    /// Whatever can be checked without the network: the admin's files and a candidate list.
    pub fn check(&self) -> anyhow::Result<()> {
        self.candidates()?;
        self.credentials()?;
        Ok(())
    }

    fn credentials(&self) -> anyhow::Result<Credentials> {
        let cert = self.dir.join(format!("node-{}.pem", self.admin_id));
        let key = self.dir.join(format!("node-{}.key", self.admin_id));
        Ok(Credentials::load(&self.dir.join("ca.pem"), &cert, &key)?)
    }

    fn client(&self) -> anyhow::Result<AdminClient> {
        Ok(AdminClient::connect(self.credentials()?, None)?)
    }
}

pub async fn run(command: ClusterCommand) -> anyhow::Result<ExitCode> {
    match command {
        ClusterCommand::Status { admin, json } => status(&admin, json).await,
        ClusterCommand::AddCandidate { admin, id, address } => {
            change(&admin, MembershipChange::Add { id, address }).await
        }
        ClusterCommand::RemoveCandidate { admin, id } => {
            change(&admin, MembershipChange::Remove { id }).await
        }
        ClusterCommand::Revoke { admin, crl } => {
            let crl = crl.unwrap_or_else(|| admin.dir.join("crl.pem"));
            push_crl(&admin, &crl).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Commits the lists in `crl` through the root group and says what the leader reported.
pub async fn push_crl(admin: &AdminArgs, crl: &Path) -> anyhow::Result<()> {
    let creds = admin.credentials()?;
    let lists = read_lists(&creds, crl)?;
    let candidates = admin.candidates()?;
    let mut client = AdminClient::connect(creds, None)?;
    let result = client.revoke(&candidates, lists).await;
    client.close().await;
    let (leader, report) = result.context("pushing the revocation list failed")?;
    let what = if report["changed"] == false {
        "revocation already in force, nothing new committed"
    } else {
        "revocation committed"
    };
    println!(
        "{what} (leader {leader}): {} list(s) in force, sent to {} peer(s) of the leader; \
         the tree passes it down",
        report["lists"],
        report["sent_to"].as_array().map_or(0, Vec::len)
    );
    Ok(())
}

/// The DER lists of a CRL file, each checked against the admin's CA bundle, so a wrong file
/// is named here rather than refused by the leader.
fn read_lists(creds: &Credentials, crl: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let text =
        std::fs::read_to_string(crl).with_context(|| format!("reading {}", crl.display()))?;
    let lists = RevocationList::from_pem(&text).with_context(|| crl.display().to_string())?;
    if lists.is_empty() {
        bail!("{} holds no revocation list", crl.display());
    }
    for list in &lists {
        list.verify(creds.roots_der())
            .with_context(|| format!("{} against the admin's CA bundle", crl.display()))?;
    }
    Ok(lists.iter().map(|l| l.der().to_vec()).collect())
}

async fn change(admin: &AdminArgs, change: MembershipChange) -> anyhow::Result<ExitCode> {
    let candidates = admin.candidates()?;
    let mut client = admin.client()?;
    let result = client.change_membership(&candidates, change.clone()).await;
    client.close().await;
    let leader = result.context("membership change failed")?;
    match change {
        MembershipChange::Add { id, address } => {
            println!("candidate {id} ({address}) added; committed by leader {leader}")
        }
        MembershipChange::Remove { id } => {
            println!("candidate {id} removed; committed by leader {leader}")
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(admin: &AdminArgs, as_json: bool) -> anyhow::Result<ExitCode> {
    let candidates = admin.candidates()?;
    let mut client = admin.client()?;
    let mut rows = Vec::new();
    for &(id, address) in &candidates {
        let row = match client.status(id, address).await {
            Ok(status) => json!({ "id": id, "address": address.to_string(), "status": status }),
            Err(e) => json!({ "id": id, "address": address.to_string(), "error": e.to_string() }),
        };
        rows.push(row);
    }
    client.close().await;
    let leader_row = rows
        .iter()
        .find(|r| r["status"]["raft"]["state"] == "Leader");
    let summary = json!({
        "leader": leader_row.map(|r| r["id"].clone()),
        "term": leader_row.map(|r| r["status"]["raft"]["term"].clone()),
        "commit_index": leader_row.map(|r| r["status"]["raft"]["commit_index"].clone()),
        "members": leader_row.map(|r| r["status"]["raft"]["members"].clone()),
        "tree": leader_row.map(|r| r["status"]["tree"].clone()),
        "candidates": rows,
    });
    if as_json {
        println!("{summary}");
    } else {
        print_table(&summary);
    }
    let any_up = summary["candidates"]
        .as_array()
        .is_some_and(|rows| rows.iter().any(|r| r.get("status").is_some()));
    Ok(if any_up {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_table(summary: &Value) {
    let show = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!(
        "{:>6}  {:<21}  {:<9}  {:>5}  {:>6}  {:>7}  {:>7}  {:>8}",
        "id", "address", "state", "term", "leader", "commit", "applied", "snapshot"
    );
    for row in summary["candidates"].as_array().into_iter().flatten() {
        let raft = &row["status"]["raft"];
        if let Some(error) = row.get("error") {
            println!(
                "{:>6}  {:<21}  unreachable: {}",
                show(&row["id"]),
                show(&row["address"]),
                show(error)
            );
            continue;
        }
        println!(
            "{:>6}  {:<21}  {:<9}  {:>5}  {:>6}  {:>7}  {:>7}  {:>8}",
            show(&row["id"]),
            show(&row["address"]),
            show(&raft["state"]),
            show(&raft["term"]),
            show(&raft["leader"]),
            show(&raft["commit_index"]),
            show(&raft["applied_index"]),
            show(&raft["snapshot_index"]),
        );
    }
    println!("members: {}", show(&summary["members"]));
    let tree = &summary["tree"];
    if tree.is_object() {
        println!(
            "tree (leader's committed view): root {}, epoch {}, {} nodes ({} routers, {} clients), {} under the root, depth {}, {} detached",
            show(&tree["root"]),
            show(&tree["epoch"]),
            show(&tree["nodes"]),
            show(&tree["routers"]),
            show(&tree["clients"]),
            show(&tree["root_children"]),
            show(&tree["depth"]),
            show(&tree["detached"]),
        );
    } else {
        println!("tree: no leader answered");
    }
}
