//! Watching a node's certificate, key, CA bundle and revocation list files, and reloading
//! them into the running endpoint when they change (or on demand, for `SIGHUP`).
//!
//! Files are polled: a digest of their contents is compared every interval, which needs no
//! platform notification API and sees a file replaced by rename like one rewritten in place.
//! A set of files that does not load (a half-finished rotation that wrote the key but not
//! yet the certificate, a truncated bundle, a list that is not the CA's) keeps the material
//! in force and logs why once; it is tried again when any file changes.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use canopy_net::{CertError, Credentials, NetEndpoint, RevocationList, TrustUpdate};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// The files a node's TLS material comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA-signed revocation lists (`canopy certs revoke` writes them), if any.
    pub crl: Option<PathBuf>,
}

/// Why the files could not be put in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Load(#[from] CertError),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Crl { path: PathBuf, source: CertError },
}

impl CredentialFiles {
    /// Reads every file and builds the credentials and revocation lists they hold.
    pub fn load(&self) -> Result<(Credentials, Vec<RevocationList>), ReloadError> {
        let creds = Credentials::load(&self.ca, &self.cert, &self.key)?;
        let lists = match &self.crl {
            None => Vec::new(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ReloadError::Read {
                    path: path.clone(),
                    source,
                })?;
                let lists = RevocationList::from_pem(&text).map_err(|source| ReloadError::Crl {
                    path: path.clone(),
                    source,
                })?;
                // `canopy certs` always writes at least one (signed, maybe empty) list: a file
                // without any is truncated or half-copied, not "revoke nothing".
                if lists.is_empty() {
                    return Err(ReloadError::Crl {
                        path: path.clone(),
                        source: CertError::InvalidCrl("the file holds no revocation list".into()),
                    });
                }
                lists
            }
        };
        Ok((creds, lists))
    }

    /// Loads the files and puts them in force in `net`.
    pub fn apply(&self, net: &NetEndpoint) -> Result<TrustUpdate, ReloadError> {
        let (creds, lists) = self.load()?;
        let update = net.reload(creds, lists).map_err(|source| match source {
            CertError::InvalidCrl(_) => ReloadError::Crl {
                path: self.crl.clone().unwrap_or_default(),
                source,
            },
            other => ReloadError::Load(other),
        })?;
        Ok(update)
    }

    /// A digest of every file's contents (a missing file counts as its error), to notice
    /// changes cheaply.
    fn digest(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        for path in [&self.ca, &self.cert, &self.key]
            .into_iter()
            .chain(self.crl.as_ref())
        {
            match std::fs::read(path) {
                Ok(bytes) => bytes.hash(&mut hasher),
                Err(e) => e.kind().hash(&mut hasher),
            }
        }
        hasher.finish()
    }
}

/// Polls `files` every `interval` and reloads `net` when they change, or at once when
/// `force` is notified. Runs until aborted.
pub fn spawn_watcher(
    net: NetEndpoint,
    files: CredentialFiles,
    interval: Duration,
    force: Arc<Notify>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let node = net.identity().node_id;
        let mut seen = files.digest();
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = ticks.tick() => false,
                () = force.notified() => true,
            };
            let digest = files.digest();
            if digest == seen && !forced {
                continue;
            }
            seen = digest;
            match files.apply(&net) {
                Ok(update) if update.changed => info!(
                    node,
                    generation = update.generation,
                    closed = ?update.closed,
                    "reloaded certificate, CA bundle and revocation list"
                ),
                Ok(_) if forced => info!(node, "reload requested: nothing changed"),
                Ok(_) => {}
                Err(error) => warn!(
                    node,
                    %error,
                    "keeping the credentials in force: the files on disk do not load"
                ),
            }
        }
    })
}
