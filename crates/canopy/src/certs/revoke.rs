//! `revoke`, and signing `crl.pem`: one CRL per CA in the trust bundle.

use std::path::Path;

use anyhow::{bail, Context};
use canopy_net::{parse_serial, CertificateAuthority, RevokedSerial};
use time::{Duration, OffsetDateTime};

use super::authority::Signers;
use super::files::{lock_dir, write_public};
use super::registry::{
    now, rfc3339, CaRecord, CaStanding, Issued, Reason, Registry, Revocation, CRL_FILE,
    REGISTRY_FILE,
};
use super::{Target, Which};
use crate::cluster::AdminArgs;

/// How long a CRL is valid: every subcommand that writes crl.pem signs fresh ones.
const CRL_VALIDITY: Duration = Duration::days(30);

/// Revokes a certificate in DIR; with `push`, then commits the new crl.pem through the root
/// group.
pub async fn revoke(
    target: &Target,
    which: &Which,
    reason: Option<Reason>,
    push: Option<&AdminArgs>,
) -> anyhow::Result<()> {
    // Before anything changes: a push that cannot even start (no admin certificate, no
    // candidates) is refused while nothing is revoked yet.
    if let Some(admin) = push {
        admin.check()?;
    }
    let dir = &target.dir;
    let lock = lock_dir(dir)?;
    let mut registry = Registry::load(dir, target.cluster.as_deref())?;
    let cert = find(&registry, dir, which)?.clone();
    if let Some(done) = registry.revocation(&cert) {
        bail!(
            "certificate {} of node {} is already revoked (since {}); {CRL_FILE} lists it",
            cert.serial,
            cert.id,
            rfc3339(done.revoked_at)
        );
    }
    match registry.standing(&cert.issuer) {
        CaStanding::Current | CaStanding::Previous => {}
        CaStanding::Retired => bail!(
            "certificate {} of node {} is from a retired CA that no node trusts any more: \
             nothing to revoke",
            cert.serial,
            cert.id
        ),
        CaStanding::Unknown => bail!(
            "{REGISTRY_FILE}: certificate {} of node {} names a CA it does not record",
            cert.serial,
            cert.id
        ),
    }
    let signers = Signers::load(dir, &registry)?;
    registry.revocations.push(Revocation {
        serial: cert.serial.clone(),
        issuer: cert.issuer.clone(),
        id: cert.id,
        revoked_at: now(),
        reason,
    });
    // The CRL before the registry: if this stops in between, the revocation is published and
    // only its record is missing, never the other way round.
    publish_crl(dir, &mut registry, &signers)?;
    registry.save(dir)?;
    let held = if registry.is_held(&cert) {
        "its current certificate"
    } else {
        "an earlier certificate"
    };
    println!(
        "revoked certificate {} of node {} ({held}); {} lists it",
        cert.serial,
        cert.id,
        dir.join(CRL_FILE).display()
    );
    drop(lock);
    if let Some(admin) = push {
        // The revocation is recorded whatever happens next; a failed push can be retried.
        crate::cluster::push_crl(admin, &dir.join(CRL_FILE))
            .await
            .with_context(|| {
                format!(
                    "the revocation is in {} but did not reach the cluster; retry with \
                     `canopy cluster revoke --dir {}`",
                    dir.join(CRL_FILE).display(),
                    dir.display()
                )
            })?;
    }
    Ok(())
}

fn find<'r>(registry: &'r Registry, dir: &Path, which: &Which) -> anyhow::Result<&'r Issued> {
    match (which.id, &which.serial) {
        (Some(id), _) => registry.held(id).with_context(|| {
            format!(
                "no certificate was issued to node {id} in {}",
                dir.display()
            )
        }),
        (None, Some(text)) => {
            let serial = canopy_net::hex(&parse_serial(text)?);
            registry.by_serial(&serial).with_context(|| {
                format!("no certificate with serial {serial} in {}", dir.display())
            })
        }
        (None, None) => bail!("pass --id or --serial"),
    }
}

/// Signs a new CRL for each CA in the trust bundle (current first) listing every certificate
/// of that CA the registry has revoked, and writes them to `crl.pem`. Bumps each CA's CRL
/// number in `registry`; the caller saves it.
pub fn publish_crl(dir: &Path, registry: &mut Registry, signers: &Signers) -> anyhow::Result<()> {
    let next_update = OffsetDateTime::now_utc() + CRL_VALIDITY;
    let revocations = &registry.revocations;
    let mut pem = sign(
        &signers.current,
        &mut registry.ca.current,
        revocations,
        next_update,
    )?;
    match (&signers.previous, registry.ca.previous.as_mut()) {
        (Some(ca), Some(record)) => pem.push_str(&sign(ca, record, revocations, next_update)?),
        (None, None) => {}
        _ => bail!("internal error: the loaded CAs do not match {REGISTRY_FILE}"),
    }
    write_public(&dir.join(CRL_FILE), &pem)
}

fn sign(
    ca: &CertificateAuthority,
    record: &mut CaRecord,
    revocations: &[Revocation],
    next_update: OffsetDateTime,
) -> anyhow::Result<String> {
    let revoked = revocations
        .iter()
        .filter(|r| r.issuer == record.fingerprint)
        .map(|r| {
            let serial = parse_serial(&r.serial)
                .with_context(|| format!("{REGISTRY_FILE}: revocation of node {}", r.id))?;
            Ok(RevokedSerial {
                serial,
                revoked_at: r.revoked_at,
                reason: r.reason.map(Into::into),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    record.crl_number += 1;
    let mut pem = ca.revocation_list(record.crl_number, &revoked, next_update)?;
    if !pem.ends_with('\n') {
        pem.push('\n');
    }
    Ok(pem)
}
