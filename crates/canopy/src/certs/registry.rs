//! `DIR/cluster.toml`: the cluster's name, its CAs and every certificate issued and revoked.
//!
//! The registry is what makes a directory a cluster's: without it (or when it does not parse,
//! or names another cluster) every subcommand but `init` refuses the directory. Certificates are
//! never removed from it, so a rotated-away certificate can still be revoked by serial; a
//! node's current certificate is its id's last entry.

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use canopy_net::{CertRole, RevocationReason};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::files::write_public;

pub const REGISTRY_FILE: &str = "cluster.toml";
/// The registry format this build reads and writes.
pub const FORMAT: u32 = 1;
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const PREVIOUS_CERT: &str = "ca-previous.pem";
pub const PREVIOUS_KEY: &str = "ca-previous.key";
pub const CRL_FILE: &str = "crl.pem";
/// Where `finish-ca-rotation` moves the retired CA's files.
pub const OLD_DIR: &str = "old";

#[derive(Debug, Serialize, Deserialize)]
pub struct Registry {
    pub format: u32,
    pub cluster: String,
    pub ca: Cas,
    #[serde(default, rename = "certificate")]
    pub certificates: Vec<Issued>,
    #[serde(default, rename = "revocation")]
    pub revocations: Vec<Revocation>,
}

/// The CA signing now, the one it replaces while a rollover is in progress, and the retired.
#[derive(Debug, Serialize, Deserialize)]
pub struct Cas {
    pub current: CaRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<CaRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<CaRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaRecord {
    /// 1 for the CA `init` made, one more for each `rotate-ca`; in the subject's OU.
    pub generation: u32,
    /// Certificate file, relative to DIR (the current CA's `ca.pem` may be a bundle: its
    /// first certificate).
    pub cert: String,
    /// Private key file, relative to DIR.
    pub key: String,
    /// SHA-256 of the DER certificate, lowercase hex.
    pub fingerprint: String,
    pub subject: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// The number of the last CRL this CA signed (0: none yet).
    pub crl_number: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Issued {
    pub id: u64,
    pub role: Role,
    pub region: String,
    /// Lowercase hex, no leading zero bytes.
    pub serial: String,
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Fingerprint of the CA that signed it.
    pub issuer: String,
    /// Certificate and key files, relative to DIR (a later certificate of the id overwrites
    /// them).
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revocation {
    pub serial: String,
    /// Fingerprint of the CA that signed the certificate: the CA whose CRL lists it.
    pub issuer: String,
    pub id: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub revoked_at: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

/// A certificate role, as `--role` and the registry spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    RootCandidate,
    Router,
    Client,
    Admin,
}

impl From<Role> for CertRole {
    fn from(role: Role) -> CertRole {
        match role {
            Role::RootCandidate => CertRole::RootCandidate,
            Role::Router => CertRole::Router,
            Role::Client => CertRole::Client,
            Role::Admin => CertRole::Admin,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(CertRole::from(*self).as_str())
    }
}

/// A revocation reason, as `--reason` and the registry spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
}

impl From<Reason> for RevocationReason {
    fn from(reason: Reason) -> RevocationReason {
        match reason {
            Reason::Unspecified => RevocationReason::Unspecified,
            Reason::KeyCompromise => RevocationReason::KeyCompromise,
            Reason::CaCompromise => RevocationReason::CaCompromise,
            Reason::AffiliationChanged => RevocationReason::AffiliationChanged,
            Reason::Superseded => RevocationReason::Superseded,
            Reason::CessationOfOperation => RevocationReason::CessationOfOperation,
            Reason::PrivilegeWithdrawn => RevocationReason::PrivilegeWithdrawn,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use clap::ValueEnum;
        match self.to_possible_value() {
            Some(value) => f.write_str(value.get_name()),
            None => write!(f, "{self:?}"),
        }
    }
}

/// How a certificate's CA stands in the trust bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaStanding {
    Current,
    Previous,
    Retired,
    Unknown,
}

impl CaStanding {
    pub fn as_str(self) -> &'static str {
        match self {
            CaStanding::Current => "current",
            CaStanding::Previous => "previous",
            CaStanding::Retired => "retired",
            CaStanding::Unknown => "unknown",
        }
    }
}

/// The error for a directory without a CA.
pub fn no_ca(dir: &Path) -> anyhow::Error {
    anyhow!(
        "no CA in {0}: run `canopy certs init --dir {0}`",
        dir.display()
    )
}

fn not_a_cluster(dir: &Path, why: impl std::fmt::Display) -> anyhow::Error {
    anyhow!(
        "{} is not a canopy cluster's certificate directory: {why}",
        dir.display()
    )
}

impl Registry {
    pub fn new(cluster: &str, ca: CaRecord) -> Self {
        Registry {
            format: FORMAT,
            cluster: cluster.to_owned(),
            ca: Cas {
                current: ca,
                previous: None,
                retired: Vec::new(),
            },
            certificates: Vec::new(),
            revocations: Vec::new(),
        }
    }

    /// Reads DIR's registry; `cluster`, when given, must be the one it names.
    pub fn load(dir: &Path, cluster: Option<&str>) -> anyhow::Result<Self> {
        let path = dir.join(REGISTRY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if dir.join(CA_CERT).exists() {
                    return Err(not_a_cluster(dir, format!("it has no {REGISTRY_FILE}")));
                }
                return Err(no_ca(dir));
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        // The format first, so a newer file is named as such rather than as garbage.
        #[derive(Deserialize)]
        struct Header {
            format: Option<u32>,
        }
        let header: Header = toml::from_str(&text)
            .map_err(|e| not_a_cluster(dir, format!("{REGISTRY_FILE}: {}", e.message())))?;
        match header.format {
            Some(FORMAT) => {}
            Some(other) => bail!(
                "{} has registry format {other}; this canopy reads format {FORMAT}",
                path.display()
            ),
            None => return Err(not_a_cluster(dir, format!("{REGISTRY_FILE} has no format"))),
        }
        let registry: Registry = toml::from_str(&text)
            .map_err(|e| not_a_cluster(dir, format!("{REGISTRY_FILE}: {}", e.message())))?;
        if let Some(expected) = cluster {
            if expected != registry.cluster {
                bail!(
                    "{} belongs to cluster {:?}, not {expected:?}",
                    dir.display(),
                    registry.cluster
                );
            }
        }
        Ok(registry)
    }

    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let text = toml::to_string(self).context("encoding the registry")?;
        write_public(&dir.join(REGISTRY_FILE), &text)
    }

    /// The certificate node `id` holds now: its last one, revoked or not.
    pub fn held(&self, id: u64) -> Option<&Issued> {
        self.certificates.iter().rev().find(|c| c.id == id)
    }

    /// Every node's current certificate, by id.
    pub fn all_held(&self) -> Vec<&Issued> {
        let mut held: Vec<&Issued> = Vec::new();
        for cert in &self.certificates {
            match held.iter_mut().find(|h| h.id == cert.id) {
                Some(slot) => *slot = cert,
                None => held.push(cert),
            }
        }
        held.sort_by_key(|c| c.id);
        held
    }

    pub fn is_held(&self, cert: &Issued) -> bool {
        self.held(cert.id).is_some_and(|h| h.serial == cert.serial)
    }

    pub fn by_serial(&self, serial: &str) -> Option<&Issued> {
        self.certificates.iter().rev().find(|c| c.serial == serial)
    }

    pub fn revocation(&self, cert: &Issued) -> Option<&Revocation> {
        self.revocations
            .iter()
            .find(|r| r.serial == cert.serial && r.issuer == cert.issuer)
    }

    /// Every CA the registry knows, with its standing.
    pub fn cas(&self) -> impl Iterator<Item = (&CaRecord, CaStanding)> {
        std::iter::once((&self.ca.current, CaStanding::Current))
            .chain(self.ca.previous.iter().map(|ca| (ca, CaStanding::Previous)))
            .chain(self.ca.retired.iter().map(|ca| (ca, CaStanding::Retired)))
    }

    pub fn ca_of(&self, fingerprint: &str) -> Option<(&CaRecord, CaStanding)> {
        self.cas().find(|(ca, _)| ca.fingerprint == fingerprint)
    }

    pub fn standing(&self, fingerprint: &str) -> CaStanding {
        self.ca_of(fingerprint)
            .map_or(CaStanding::Unknown, |(_, standing)| standing)
    }

    /// The generation the next CA gets.
    pub fn next_generation(&self) -> u32 {
        self.cas()
            .map(|(ca, _)| ca.generation)
            .max()
            .unwrap_or(0)
            .saturating_add(1)
    }
}

/// A time as the registry and the output spell it: RFC 3339, whole seconds, UTC.
pub fn rfc3339(time: OffsetDateTime) -> String {
    use time::format_description::well_known::Rfc3339;
    let time = time.to_offset(time::UtcOffset::UTC);
    let time = time.replace_nanosecond(0).unwrap_or(time);
    time.format(&Rfc3339)
        .unwrap_or_else(|_| format!("@{}", time.unix_timestamp()))
}

/// Now, to the second: what the registry records for events (issue, revocation).
pub fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}
