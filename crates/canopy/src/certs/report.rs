//! `list` and `inspect`: who holds which certificate, and what is about to expire.

use std::process::ExitCode;

use anyhow::{bail, Context};
use canopy_net::{parse_identity, parse_serial, pem_certificates, CertificateInfo};
use serde::Serialize;
use time::{Duration, OffsetDateTime};

use super::files::read_text;
use super::registry::{now, rfc3339, Issued, Registry};
use super::{InspectWhich, Target};

/// `list --check`'s status when a held certificate is expired or expiring.
const EXIT_EXPIRING: u8 = 2;

/// One certificate as `list` shows it.
#[derive(Serialize)]
struct Row {
    id: u64,
    role: String,
    region: String,
    serial: String,
    ca: &'static str,
    ca_generation: Option<u32>,
    not_after: String,
    /// Whether this is the node's current certificate.
    held: bool,
    /// valid, expiring, expired, revoked or superseded.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

fn row(registry: &Registry, cert: &Issued, now: OffsetDateTime, warn: Duration) -> Row {
    let revocation = registry.revocation(cert);
    let held = registry.is_held(cert);
    let status = if revocation.is_some() {
        "revoked"
    } else if !held {
        "superseded"
    } else if cert.not_after <= now {
        "expired"
    } else if cert.not_after <= now + warn {
        "expiring"
    } else {
        "valid"
    };
    let ca = registry.ca_of(&cert.issuer);
    Row {
        id: cert.id,
        role: cert.role.to_string(),
        region: cert.region.clone(),
        serial: cert.serial.clone(),
        ca: registry.standing(&cert.issuer).as_str(),
        ca_generation: ca.map(|(ca, _)| ca.generation),
        not_after: rfc3339(cert.not_after),
        held,
        status,
        revoked_at: revocation.map(|r| rfc3339(r.revoked_at)),
        reason: revocation.and_then(|r| r.reason).map(|r| r.to_string()),
    }
}

/// Prints a warning for a held, unrevoked certificate that is expired or expiring; returns
/// whether it did.
fn warn_expiry(cert: &Issued, status: &str, now: OffsetDateTime) -> bool {
    match status {
        "expired" => eprintln!(
            "warning: node {} ({}) certificate {} expired {}",
            cert.id,
            cert.role,
            cert.serial,
            rfc3339(cert.not_after)
        ),
        "expiring" => eprintln!(
            "warning: node {} ({}) certificate {} expires {} (in {} days)",
            cert.id,
            cert.role,
            cert.serial,
            rfc3339(cert.not_after),
            (cert.not_after - now).whole_days()
        ),
        _ => return false,
    }
    true
}

pub fn list(
    target: &Target,
    json: bool,
    all: bool,
    check: bool,
    warn_days: u32,
) -> anyhow::Result<ExitCode> {
    let registry = Registry::load(&target.dir, target.cluster.as_deref())?;
    let now = now();
    let warn = Duration::days(i64::from(warn_days));
    let certs: Vec<&Issued> = if all {
        registry.certificates.iter().collect()
    } else {
        registry.all_held()
    };
    let rows: Vec<Row> = certs
        .iter()
        .map(|cert| row(&registry, cert, now, warn))
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:>8}  {:<14}  {:<12}  {:<40}  {:<11}  {:<20}  STATUS",
            "ID", "ROLE", "REGION", "SERIAL", "CA", "NOT AFTER"
        );
        for row in &rows {
            let ca = match row.ca_generation {
                Some(generation) => format!("{} ({generation})", row.ca),
                None => row.ca.to_owned(),
            };
            println!(
                "{:>8}  {:<14}  {:<12}  {:<40}  {:<11}  {:<20}  {}",
                row.id, row.role, row.region, row.serial, ca, row.not_after, row.status
            );
        }
    }
    let mut expiring = false;
    for (cert, row) in certs.iter().zip(&rows) {
        expiring |= warn_expiry(cert, row.status, now);
    }
    Ok(if check && expiring {
        ExitCode::from(EXIT_EXPIRING)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn inspect(target: &Target, which: &InspectWhich, warn_days: u32) -> anyhow::Result<()> {
    let now = now();
    let warn = Duration::days(i64::from(warn_days));
    if let Some(path) = &which.file {
        // Any file can be inspected; the registry only adds what it knows, when there is one.
        let registry = Registry::load(&target.dir, target.cluster.as_deref()).ok();
        let pem = read_text(path)?;
        let ders = pem_certificates(&pem).with_context(|| format!("reading {}", path.display()))?;
        println!("file:        {}", path.display());
        for (index, der) in ders.iter().enumerate() {
            let info = CertificateInfo::from_der(der)
                .with_context(|| format!("reading {}", path.display()))?;
            if ders.len() > 1 {
                println!("certificate {} of {}:", index + 1, ders.len());
            }
            print_file_certificate(registry.as_ref(), der, &info, now, warn);
        }
        return Ok(());
    }
    let registry = Registry::load(&target.dir, target.cluster.as_deref())?;
    let cert = match (which.id, &which.serial) {
        (Some(id), _) => registry.held(id).with_context(|| {
            format!(
                "no certificate was issued to node {id} in {}",
                target.dir.display()
            )
        })?,
        (None, Some(text)) => {
            let serial = canopy_net::hex(&parse_serial(text)?);
            registry.by_serial(&serial).with_context(|| {
                format!(
                    "no certificate with serial {serial} in {}",
                    target.dir.display()
                )
            })?
        }
        (None, None) => bail!("pass --id, --serial or --file"),
    };
    let shown = row(&registry, cert, now, warn);
    println!("node:        {}", cert.id);
    println!("role:        {}", cert.role);
    println!("region:      {:?}", cert.region);
    println!("serial:      {}", cert.serial);
    let ca = match registry.ca_of(&cert.issuer) {
        Some((ca, standing)) => format!("generation {} ({})", ca.generation, standing.as_str()),
        None => "unknown".to_owned(),
    };
    println!("issuer CA:   {ca}, SHA-256 {}", cert.issuer);
    println!("issued at:   {}", rfc3339(cert.issued_at));
    println!("not before:  {}", rfc3339(cert.not_before));
    println!("not after:   {}", rfc3339(cert.not_after));
    let status = match (&shown.revoked_at, &shown.reason) {
        (Some(at), Some(reason)) => format!("revoked {at} ({reason})"),
        (Some(at), None) => format!("revoked {at}"),
        _ => shown.status.to_owned(),
    };
    println!("status:      {status}");
    println!("files:       {}, {}", cert.cert, cert.key);
    let earlier: Vec<Row> = registry
        .certificates
        .iter()
        .filter(|c| c.id == cert.id && c.serial != cert.serial)
        .map(|c| row(&registry, c, now, warn))
        .collect();
    for other in &earlier {
        println!(
            "other:       serial {} until {} ({})",
            other.serial, other.not_after, other.status
        );
    }
    warn_expiry(cert, shown.status, now);
    Ok(())
}

fn print_file_certificate(
    registry: Option<&Registry>,
    der: &[u8],
    info: &CertificateInfo,
    now: OffsetDateTime,
    warn: Duration,
) {
    println!("subject:     {}", info.subject);
    println!("issuer:      {}", info.issuer);
    println!("serial:      {}", info.serial_hex());
    println!("SHA-256:     {}", info.fingerprint_hex());
    println!("not before:  {}", rfc3339(info.not_before));
    println!("not after:   {}", rfc3339(info.not_after));
    if info.is_ca {
        println!("kind:        CA");
    } else {
        match parse_identity(der) {
            Ok(identity) => println!("identity:    {}", identity.uri()),
            Err(e) => println!("identity:    none ({e})"),
        }
    }
    let Some(registry) = registry else {
        return;
    };
    let known = if info.is_ca {
        registry
            .ca_of(&info.fingerprint_hex())
            .map(|(ca, standing)| {
                format!("CA generation {} ({})", ca.generation, standing.as_str())
            })
    } else {
        registry.by_serial(&info.serial_hex()).map(|cert| {
            let row = row(registry, cert, now, warn);
            format!("node {}'s certificate, {}", cert.id, row.status)
        })
    };
    match known {
        Some(text) => println!("registry:    {text}"),
        None => println!("registry:    not in {}'s registry", registry.cluster),
    }
    if !info.is_ca && info.not_after <= now + warn {
        eprintln!(
            "warning: certificate {} expires {}",
            info.serial_hex(),
            rfc3339(info.not_after)
        );
    }
}
