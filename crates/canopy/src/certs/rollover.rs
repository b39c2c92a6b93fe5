//! `rotate-ca` and `finish-ca-rotation`: replacing the cluster CA without a flag day.
//!
//! During a rollover `ca.pem` is a bundle (new CA first, old second), so nodes trust
//! certificates from either while they are re-issued one by one from the new CA; `crl.pem`
//! carries a CRL from each. Finishing drops the old CA from both.

use anyhow::{anyhow, bail, Context};
use canopy_net::CertificateAuthority;

use super::authority::{load_current, record, Signers};
use super::files::{certificate_blocks, lock_dir, write_private, write_public};
use super::registry::{
    now, Registry, CA_CERT, CA_KEY, CRL_FILE, OLD_DIR, PREVIOUS_CERT, PREVIOUS_KEY,
};
use super::revoke::publish_crl;
use super::Target;

pub fn rotate_ca(target: &Target) -> anyhow::Result<()> {
    let dir = &target.dir;
    let _lock = lock_dir(dir)?;
    let mut registry = Registry::load(dir, target.cluster.as_deref())?;
    if let Some(previous) = &registry.ca.previous {
        bail!(
            "a CA rollover is already in progress (generation {} -> {}): finish it with \
             `canopy certs finish-ca-rotation --dir {}` first",
            previous.generation,
            registry.ca.current.generation,
            dir.display()
        );
    }
    let old = load_current(dir, &registry)?;
    let old_pem = single_certificate(&old)?;
    let generation = registry.next_generation();
    let new = CertificateAuthority::generate_generation(&registry.cluster, generation)?;
    let new_record = record(&new, generation, CA_CERT, CA_KEY)?;

    // The old CA's copies first, so stopping half-way never loses it.
    write_private(&dir.join(PREVIOUS_KEY), &old.key_pem)?;
    write_public(&dir.join(PREVIOUS_CERT), &old_pem)?;
    write_private(&dir.join(CA_KEY), &new.key_pem)?;
    write_public(
        &dir.join(CA_CERT),
        &format!("{}{old_pem}", with_newline(&new.cert_pem)),
    )?;

    let mut previous = registry.ca.current.clone();
    previous.cert = PREVIOUS_CERT.to_owned();
    previous.key = PREVIOUS_KEY.to_owned();
    let old_generation = previous.generation;
    registry.ca.previous = Some(previous);
    registry.ca.current = new_record;
    let signers = Signers {
        current: new,
        previous: Some(old),
    };
    publish_crl(dir, &mut registry, &signers)?;
    registry.save(dir)?;
    println!(
        "CA rollover started: generation {generation} signs from now on; {CA_CERT} trusts \
         generations {generation} and {old_generation}. Distribute {CA_CERT} and {CRL_FILE}, \
         rotate every node (`canopy certs rotate --id ID`), then run `canopy certs \
         finish-ca-rotation`."
    );
    Ok(())
}

pub fn finish(target: &Target) -> anyhow::Result<()> {
    let dir = &target.dir;
    let _lock = lock_dir(dir)?;
    let mut registry = Registry::load(dir, target.cluster.as_deref())?;
    let Some(previous) = registry.ca.previous.clone() else {
        bail!(
            "no CA rollover in progress in {}: nothing to finish (start one with `canopy certs \
             rotate-ca`)",
            dir.display()
        );
    };
    let now = now();
    let stuck: Vec<String> = registry
        .all_held()
        .into_iter()
        .filter(|cert| {
            cert.issuer == previous.fingerprint
                && cert.not_after > now
                && registry.revocation(cert).is_none()
        })
        .map(|cert| cert.id.to_string())
        .collect();
    if !stuck.is_empty() {
        bail!(
            "node(s) {} still hold a certificate from the previous CA (generation {}): rotate \
             them (`canopy certs rotate --id ID`) or revoke them first",
            stuck.join(", "),
            previous.generation
        );
    }
    let current = load_current(dir, &registry)?;
    let current_pem = single_certificate(&current)?;
    write_public(&dir.join(CA_CERT), &current_pem)?;
    registry.ca.previous = None;
    let signers = Signers {
        current,
        previous: None,
    };
    publish_crl(dir, &mut registry, &signers)?;

    // Kept rather than deleted: a key is gone for good once removed; the operator decides.
    let old_dir = dir.join(OLD_DIR);
    std::fs::create_dir_all(&old_dir).with_context(|| format!("creating {}", old_dir.display()))?;
    let mut retired = previous;
    let generation = retired.generation;
    for (file, name, extension) in [
        (&mut retired.cert, PREVIOUS_CERT, "pem"),
        (&mut retired.key, PREVIOUS_KEY, "key"),
    ] {
        let moved = format!("{OLD_DIR}/ca-gen{generation}.{extension}");
        std::fs::rename(dir.join(name), dir.join(&moved))
            .with_context(|| format!("moving {name} to {moved}"))?;
        *file = moved;
    }
    registry.ca.retired.push(retired);
    registry.save(dir)?;
    println!(
        "CA rollover finished: {CA_CERT} trusts generation {} only; generation {generation} \
         moved to {}",
        registry.ca.current.generation,
        old_dir.display()
    );
    Ok(())
}

/// The CA's own certificate as one PEM block (its `cert_pem` may be the whole bundle).
fn single_certificate(ca: &CertificateAuthority) -> anyhow::Result<String> {
    certificate_blocks(&ca.cert_pem)
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("the CA certificate is not PEM"))
}

fn with_newline(pem: &str) -> String {
    if pem.ends_with('\n') {
        pem.to_owned()
    } else {
        format!("{pem}\n")
    }
}
