//! `init`, `issue` and `rotate`: a new cluster, and node certificates from its current CA.

use std::path::Path;

use anyhow::{bail, Context};
use canopy_net::{CertificateAuthority, Identity};
use time::Duration;

use super::authority::{first_info, load_current, record, Signers};
use super::files::{ensure_gitignore, lock_dir, lock_new_dir, write_private, write_public};
use super::registry::{
    now, rfc3339, Issued, Registry, Role, CA_CERT, CA_KEY, CRL_FILE, REGISTRY_FILE,
};
use super::revoke::publish_crl;
use super::Target;

/// How far back certificates are dated, to tolerate clock skew between nodes.
const BACKDATE: Duration = Duration::hours(1);

pub fn init(dir: &Path, cluster: &str, force: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let _lock = lock_new_dir(dir)?;
    let present: Vec<&str> = [CA_CERT, CA_KEY, REGISTRY_FILE]
        .into_iter()
        .filter(|name| dir.join(name).exists())
        .collect();
    if !force && !present.is_empty() {
        bail!(
            "{} already holds a CA ({}); pass --force to replace it (every node certificate \
             it signed stops being trusted)",
            dir.display(),
            present.join(", ")
        );
    }
    // A replaced cluster's CA keeps counting generations, so the new CA's DN differs from the
    // old one's, whose CRLs some node may still hold.
    let generation = Registry::load(dir, None)
        .map(|old| old.next_generation())
        .unwrap_or(1);
    // The .gitignore first: the key must never sit un-ignored in a work tree.
    ensure_gitignore(dir)?;
    let ca = CertificateAuthority::generate_generation(cluster, generation)?;
    let mut registry = Registry::new(cluster, record(&ca, generation, CA_CERT, CA_KEY)?);
    write_private(&dir.join(CA_KEY), &ca.key_pem)?;
    write_public(&dir.join(CA_CERT), &ca.cert_pem)?;
    let signers = Signers {
        current: ca,
        previous: None,
    };
    publish_crl(dir, &mut registry, &signers)?;
    registry.save(dir)?;
    println!(
        "created CA for cluster {cluster:?} in {}: {CA_CERT}, {CA_KEY}, {CRL_FILE}, {REGISTRY_FILE}",
        dir.display()
    );
    Ok(())
}

pub fn issue(
    target: &Target,
    id: u64,
    role: Role,
    region: String,
    days: u32,
    replace: bool,
) -> anyhow::Result<()> {
    check_days(days)?;
    check_id(id)?;
    let dir = &target.dir;
    let _lock = lock_dir(dir)?;
    let mut registry = Registry::load(dir, target.cluster.as_deref())?;
    let previous = registry
        .held(id)
        .filter(|held| registry.revocation(held).is_none())
        .cloned();
    if let Some(held) = &previous {
        if !replace {
            if held.role == role && held.region == region {
                bail!(
                    "node {id} already holds a {role} certificate for region {region:?} (serial \
                     {}); use `canopy certs rotate --id {id}` for a new key, or pass --replace",
                    held.serial
                );
            }
            bail!(
                "node {id} is already issued as {} in region {:?}, not {role} in {region:?}; \
                 pass --replace to re-issue it",
                held.role,
                held.region
            );
        }
    }
    let identity = Identity {
        cluster: registry.cluster.clone(),
        node_id: id,
        role: role.into(),
        region,
    };
    let issued = issue_files(dir, &registry, &identity, role, days)?;
    println!(
        "issued {} for {} (serial {}, expires {})",
        dir.join(&issued.cert).display(),
        identity.uri(),
        issued.serial,
        rfc3339(issued.not_after)
    );
    registry.certificates.push(issued);
    registry.save(dir)?;
    if let Some(old) = previous {
        eprintln!(
            "note: node {id}'s previous certificate (serial {}) stays valid until {} unless \
             revoked: canopy certs revoke --dir {} --serial {}",
            old.serial,
            rfc3339(old.not_after),
            dir.display(),
            old.serial
        );
    }
    Ok(())
}

pub fn rotate(target: &Target, id: u64, days: u32) -> anyhow::Result<()> {
    check_days(days)?;
    let dir = &target.dir;
    let _lock = lock_dir(dir)?;
    let mut registry = Registry::load(dir, target.cluster.as_deref())?;
    let Some(old) = registry.held(id).cloned() else {
        bail!(
            "no certificate was issued to node {id} in {} (issue one with `canopy certs issue`)",
            dir.display()
        );
    };
    let identity = Identity {
        cluster: registry.cluster.clone(),
        node_id: id,
        role: old.role.into(),
        region: old.region.clone(),
    };
    let issued = issue_files(dir, &registry, &identity, old.role, days)?;
    println!(
        "rotated node {id} ({}): serial {} -> {} (CA generation {}, expires {}); the old \
         certificate stays valid until {} unless revoked",
        identity.uri(),
        old.serial,
        issued.serial,
        registry.ca.current.generation,
        rfc3339(issued.not_after),
        rfc3339(old.not_after)
    );
    registry.certificates.push(issued);
    registry.save(dir)
}

/// Signs a certificate for `identity` with the current CA and writes `node-ID.key`, then
/// `node-ID.pem`; returns the registry entry, not yet recorded.
fn issue_files(
    dir: &Path,
    registry: &Registry,
    identity: &Identity,
    role: Role,
    days: u32,
) -> anyhow::Result<Issued> {
    let ca = load_current(dir, registry)?;
    let now = now();
    let ca_expires = registry.ca.current.not_after;
    let not_after = now
        .checked_add(Duration::days(i64::from(days)))
        .filter(|t| *t <= ca_expires);
    let Some(not_after) = not_after else {
        bail!(
            "--days {days} would outlive the CA, which expires {} ({} days from now)",
            rfc3339(ca_expires),
            (ca_expires - now).whole_days()
        );
    };
    let issued = ca.issue(identity, now - BACKDATE, not_after)?;
    let info = first_info(&issued.cert_pem)?;
    let id = identity.node_id;
    let (cert, key) = (format!("node-{id}.pem"), format!("node-{id}.key"));
    // The key first: a node that reloads in between sees a key its certificate does not match,
    // refuses the pair and retries, rather than a certificate naming a key not yet written.
    write_private(&dir.join(&key), &issued.key_pem)?;
    write_public(&dir.join(&cert), &issued.cert_pem)?;
    Ok(Issued {
        id,
        role,
        region: identity.region.clone(),
        serial: info.serial_hex(),
        issued_at: now,
        not_before: info.not_before,
        not_after: info.not_after,
        issuer: registry.ca.current.fingerprint.clone(),
        cert,
        key,
    })
}

fn check_days(days: u32) -> anyhow::Result<()> {
    if days == 0 {
        bail!("--days must be at least 1");
    }
    Ok(())
}

/// TOML integers are signed 64-bit: larger ids cannot be recorded.
fn check_id(id: u64) -> anyhow::Result<()> {
    if i64::try_from(id).is_err() {
        bail!(
            "--id {id} is too large: node ids up to {} are supported",
            i64::MAX
        );
    }
    Ok(())
}
