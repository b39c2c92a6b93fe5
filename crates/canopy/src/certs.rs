//! `canopy certs`: the cluster CA, node certificates and their revocation, as files in one
//! directory with a registry (`cluster.toml`) of everything issued.
//!
//! - `registry`: `cluster.toml`, the roles and reasons as the CLI and the file spell them.
//! - `files`: atomic writes (running nodes hot-reload these files) and the `.gitignore`.
//! - `authority`: loading the CA (and the previous one during a rollover) from DIR.
//! - `issue`: `init`, `issue`, `rotate`.
//! - `revoke`: `revoke` and signing `crl.pem`.
//! - `rollover`: `rotate-ca`, `finish-ca-rotation`.
//! - `report`: `list`, `inspect`.

mod authority;
mod files;
mod issue;
mod registry;
mod report;
mod revoke;
mod rollover;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use registry::{Reason, Role};

/// Where the cluster's files are, and optionally which cluster they must belong to.
#[derive(Args)]
pub struct Target {
    /// The cluster's certificate directory.
    #[arg(long, default_value = "certs")]
    dir: PathBuf,
    /// Refuse unless DIR belongs to this cluster.
    #[arg(long)]
    cluster: Option<String>,
}

/// One certificate of the registry: a node's current one, or any one by serial.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct Which {
    /// The node's current certificate.
    #[arg(long)]
    id: Option<u64>,
    /// The certificate with this serial (hex, `:` separators allowed), current or not.
    #[arg(long)]
    serial: Option<String>,
}

/// What `inspect` shows: a registry certificate, or any certificate file.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct InspectWhich {
    /// The node's current certificate and its earlier ones.
    #[arg(long)]
    id: Option<u64>,
    /// The certificate with this serial (hex, `:` separators allowed).
    #[arg(long)]
    serial: Option<String>,
    /// Any PEM certificate file (a node certificate, ca.pem); DIR's registry is consulted
    /// when there is one.
    #[arg(long)]
    file: Option<PathBuf>,
}

/// `revoke --push`: commit the new CRL through the root group, which pushes it down the tree.
#[derive(Args)]
pub struct Push {
    /// Also commit the new crl.pem through the running cluster's root group (as
    /// `canopy cluster revoke` does), with the admin certificate node-ADMIN_ID.pem in DIR.
    #[arg(long, requires = "admin_id")]
    push: bool,
    /// Node id of the admin certificate used for --push.
    #[arg(long, requires = "push")]
    admin_id: Option<u64>,
    /// A root candidate as ID=HOST:PORT (repeat for each), for --push.
    #[arg(long = "candidate", value_parser = crate::cluster::parse_candidate, requires = "push")]
    candidates: Vec<(u64, std::net::SocketAddr)>,
    /// Take the candidate list from a node's configuration file instead, for --push.
    #[arg(long, requires = "push")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Create a new cluster: CA (ca.pem, ca.key), registry (cluster.toml), empty CRL (crl.pem)
    /// and a .gitignore for the keys, in DIR.
    Init {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, default_value = "canopy")]
        cluster: String,
        /// Replace an existing CA and registry (every node certificate it signed stops being
        /// trusted).
        #[arg(long)]
        force: bool,
    },
    /// Issue a node certificate (node-ID.pem, node-ID.key) signed by the current CA.
    ///
    /// An id whose current certificate is not revoked is refused, whatever the role and region:
    /// use `rotate` for a new key with the same identity, or --replace.
    Issue {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        id: u64,
        #[arg(long, value_enum)]
        role: Role,
        /// Deployment region (may be empty: --region "").
        #[arg(long)]
        region: String,
        /// Validity in days from now (at most the CA's remaining lifetime).
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Issue even though the id already holds a certificate (its old certificate stays
        /// valid until it expires or is revoked).
        #[arg(long)]
        replace: bool,
    },
    /// Give a node a new key and certificate with the same identity, signed by the current CA.
    ///
    /// The old certificate stays valid until it expires or is revoked (`revoke --serial`), so a
    /// running node can pick up the new files first.
    Rotate {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        id: u64,
        /// Validity in days from now (at most the CA's remaining lifetime).
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Revoke a certificate and rewrite crl.pem (one CRL per trusted CA).
    ///
    /// Revoking an already revoked certificate is an error (exit 1) and changes nothing.
    Revoke {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        which: Which,
        #[arg(long, value_enum)]
        reason: Option<Reason>,
        #[command(flatten)]
        push: Push,
    },
    /// Start a CA rollover: a new CA signs from now on, ca.pem trusts both (new first), the old
    /// CA is kept as ca-previous.pem / ca-previous.key.
    RotateCa {
        #[command(flatten)]
        target: Target,
    },
    /// End a CA rollover: ca.pem trusts only the new CA; the old CA moves to old/.
    ///
    /// Refused while a node's current, unrevoked, unexpired certificate is from the old CA.
    FinishCaRotation {
        #[command(flatten)]
        target: Target,
    },
    /// Who holds which certificate: id, role, region, serial, CA, expiry, revocation.
    ///
    /// Exit status: 0, or 2 with --check when a node's current unrevoked certificate is expired
    /// or expires within --warn-days (each is printed on stderr), or 1 on an error.
    List {
        #[command(flatten)]
        target: Target,
        /// JSON on stdout instead of a table.
        #[arg(long)]
        json: bool,
        /// Also list earlier (rotated or replaced) certificates.
        #[arg(long)]
        all: bool,
        /// Exit with status 2 when a certificate is expired or expiring (see --warn-days).
        #[arg(long)]
        check: bool,
        /// Warn about certificates expiring within this many days.
        #[arg(long, default_value_t = 30)]
        warn_days: u32,
    },
    /// Details of one certificate: from the registry by node id or serial, or any PEM file.
    Inspect {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        which: InspectWhich,
        /// Warn when the certificate expires within this many days.
        #[arg(long, default_value_t = 30)]
        warn_days: u32,
    },
}

pub async fn run(command: CertsCommand) -> anyhow::Result<ExitCode> {
    // Every mistake must read as one line; toml and x509 errors can span several.
    dispatch(command)
        .await
        .map_err(|e| anyhow::anyhow!(one_line(&format!("{e:#}"))))
}

async fn dispatch(command: CertsCommand) -> anyhow::Result<ExitCode> {
    match command {
        CertsCommand::Init {
            dir,
            cluster,
            force,
        } => issue::init(&dir, &cluster, force)?,
        CertsCommand::Issue {
            target,
            id,
            role,
            region,
            days,
            replace,
        } => issue::issue(&target, id, role, region, days, replace)?,
        CertsCommand::Rotate { target, id, days } => issue::rotate(&target, id, days)?,
        CertsCommand::Revoke {
            target,
            which,
            reason,
            push,
        } => {
            let admin = push.push.then(|| {
                crate::cluster::AdminArgs::new(
                    target.dir.clone(),
                    push.admin_id.unwrap_or_default(),
                    push.candidates,
                    push.config,
                )
            });
            revoke::revoke(&target, &which, reason, admin.as_ref()).await?
        }
        CertsCommand::RotateCa { target } => rollover::rotate_ca(&target)?,
        CertsCommand::FinishCaRotation { target } => rollover::finish(&target)?,
        CertsCommand::List {
            target,
            json,
            all,
            check,
            warn_days,
        } => return report::list(&target, json, all, check, warn_days),
        CertsCommand::Inspect {
            target,
            which,
            warn_days,
        } => report::inspect(&target, &which, warn_days)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
