//! Loading the cluster's CAs from DIR, checked against what the registry records.

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use canopy_net::{CertificateAuthority, CertificateInfo};

use super::files::{certificate_blocks, read_text};
use super::registry::{no_ca, CaRecord, Registry};

/// The CAs whose CRLs nodes need: the current one and, during a rollover, the previous one.
pub struct Signers {
    pub current: CertificateAuthority,
    pub previous: Option<CertificateAuthority>,
}

impl Signers {
    pub fn load(dir: &Path, registry: &Registry) -> anyhow::Result<Self> {
        let current = load_current(dir, registry)?;
        let previous = match &registry.ca.previous {
            Some(record) => Some(load(dir, record, |path| {
                anyhow!(
                    "{} is missing, but {} records a CA rollover in progress",
                    path.display(),
                    super::registry::REGISTRY_FILE
                )
            })?),
            None => None,
        };
        Ok(Signers { current, previous })
    }
}

/// The CA that signs new certificates.
pub fn load_current(dir: &Path, registry: &Registry) -> anyhow::Result<CertificateAuthority> {
    load(dir, &registry.ca.current, |_| no_ca(dir))
}

fn load(
    dir: &Path,
    record: &CaRecord,
    missing: impl Fn(&Path) -> anyhow::Error,
) -> anyhow::Result<CertificateAuthority> {
    let (cert_path, key_path) = (dir.join(&record.cert), dir.join(&record.key));
    for path in [&cert_path, &key_path] {
        if !path.exists() {
            return Err(missing(path));
        }
    }
    let cert_pem = read_text(&cert_path)?;
    let key_pem = read_text(&key_path)?;
    // The bundle's other certificates are the previous CA's; the key signs for the first.
    let first = certificate_blocks(&cert_pem)
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("{} holds no certificate", cert_path.display()))?;
    let info = first_info(&first).with_context(|| format!("reading {}", cert_path.display()))?;
    if info.fingerprint_hex() != record.fingerprint {
        bail!(
            "{} is not the CA {} records (SHA-256 {} expected, {} found)",
            cert_path.display(),
            super::registry::REGISTRY_FILE,
            record.fingerprint,
            info.fingerprint_hex()
        );
    }
    CertificateAuthority::from_pem(&first, &key_pem).with_context(|| {
        format!(
            "loading the CA from {} and {}",
            cert_path.display(),
            key_path.display()
        )
    })
}

/// The registry's record of a CA whose files are `cert` and `key` in DIR.
pub fn record(
    ca: &CertificateAuthority,
    generation: u32,
    cert: &str,
    key: &str,
) -> anyhow::Result<CaRecord> {
    let info = first_info(&ca.cert_pem)?;
    Ok(CaRecord {
        generation,
        cert: cert.to_owned(),
        key: key.to_owned(),
        fingerprint: info.fingerprint_hex(),
        subject: info.subject,
        not_after: info.not_after,
        crl_number: 0,
    })
}

/// The first certificate of a PEM text.
pub fn first_info(pem: &str) -> anyhow::Result<CertificateInfo> {
    CertificateInfo::from_pem(pem)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no certificate in PEM input"))
}
