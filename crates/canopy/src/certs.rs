//! `canopy certs`: the cluster CA and node certificates, as PEM files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use canopy_net::{CertRole, CertificateAuthority, Identity};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Create a new cluster CA (ca.pem, ca.key) in DIR.
    Init {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, default_value = "canopy")]
        cluster: String,
        /// Overwrite an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Issue a node certificate (node-ID.pem, node-ID.key) signed by the CA in DIR.
    Issue {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, default_value = "canopy")]
        cluster: String,
        #[arg(long)]
        id: u64,
        /// root-candidate, router, client or admin.
        #[arg(long)]
        role: String,
        #[arg(long, default_value = "")]
        region: String,
        /// Validity in days from now.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn write_public(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

pub fn run(command: CertsCommand) -> anyhow::Result<ExitCode> {
    match command {
        CertsCommand::Init {
            dir,
            cluster,
            force,
        } => {
            let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
            if !force && (cert.exists() || key.exists()) {
                bail!(
                    "{} already holds a CA; pass --force to replace it (every node certificate \
                     it signed stops being trusted)",
                    dir.display()
                );
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let ca = CertificateAuthority::generate(&cluster)?;
            write_public(&cert, &ca.cert_pem)?;
            write_private(&key, &ca.key_pem)?;
            println!("created CA for cluster {cluster:?}: {}", cert.display());
        }
        CertsCommand::Issue {
            dir,
            cluster,
            id,
            role,
            region,
            days,
        } => {
            let role: CertRole = role.parse().map_err(|_| {
                anyhow::anyhow!(
                    "--role must be root-candidate, router, client or admin, not {role:?}"
                )
            })?;
            if days <= 0 {
                bail!("--days must be at least 1");
            }
            let read = |name: &str| {
                let path = dir.join(name);
                std::fs::read_to_string(&path).with_context(|| {
                    format!("reading {} (run `canopy certs init` first)", path.display())
                })
            };
            let ca = CertificateAuthority::from_pem(&read("ca.pem")?, &read("ca.key")?)?;
            let identity = Identity {
                cluster,
                node_id: id,
                role,
                region,
            };
            let now = time::OffsetDateTime::now_utc();
            let issued = ca.issue(
                &identity,
                now - time::Duration::hours(1),
                now + time::Duration::days(days),
            )?;
            let (cert, key) = (
                dir.join(format!("node-{id}.pem")),
                dir.join(format!("node-{id}.key")),
            );
            write_public(&cert, &issued.cert_pem)?;
            write_private(&key, &issued.key_pem)?;
            println!("issued {} for {}", cert.display(), identity.uri());
        }
    }
    Ok(ExitCode::SUCCESS)
}
