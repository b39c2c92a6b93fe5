//! The cluster CA and node certificates: issuing them with rcgen, reading identities back
//! out of them with x509-parser.
//!
//! A node certificate carries exactly one canopy URI SAN ([`Identity::uri`]) and DNS SANs
//! equal to [`Identity::server_name`] only; [`parse_identity`] refuses anything else, so a
//! certificate cannot name two nodes.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::identity::{validate_cluster, Identity};

/// How long a generated CA is valid.
const CA_VALIDITY: Duration = Duration::days(3650);
/// How far back certificates are dated, to tolerate clock skew between nodes.
const BACKDATE: Duration = Duration::hours(1);
/// Default lifetime of a node certificate.
const LEAF_VALIDITY: Duration = Duration::days(365);

/// Why a certificate, key or trust store could not be created, loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused to generate a key or certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// An identity that cannot be put in (or was not found in) a certificate.
    #[error("invalid identity: {0}")]
    InvalidIdentity(String),
    /// A certificate that does not parse or lacks what Canopy needs.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    /// Malformed PEM input.
    #[error("malformed PEM: {0}")]
    Pem(String),
    /// PEM input without the expected block.
    #[error("no {0} found in PEM input")]
    MissingPem(&'static str),
    /// The private key does not belong to the certificate.
    #[error("private key does not match the certificate")]
    KeyMismatch,
    /// `not_after` is not after `not_before`.
    #[error("invalid validity period: {0}")]
    Validity(String),
    /// rustls refused the credentials or configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The trust store could not be built.
    #[error("trust store: {0}")]
    TrustStore(String),
    /// A certificate revocation list that does not parse, is too large or is not signed by a
    /// trusted CA.
    #[error("revocation list: {0}")]
    InvalidCrl(String),
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file was read but its contents are unusable.
    #[error("{}: {source}", path.display())]
    InFile {
        path: PathBuf,
        source: Box<CertError>,
    },
}

/// The cluster certificate authority: signs node certificates.
pub struct CertificateAuthority {
    /// The CA certificate (the cluster trust root).
    pub cert_pem: String,
    /// The CA private key (PKCS#8). Keep it off the nodes.
    pub key_pem: String,
    pub(crate) issuer: Issuer<'static, KeyPair>,
    cluster: Option<String>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// A freshly issued node certificate and its private key.
#[derive(Clone)]
pub struct IssuedCert {
    /// The leaf certificate.
    pub cert_pem: String,
    /// The leaf's private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert").finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Generates a self-signed CA for `cluster` (CN `canopy <cluster> CA`, valid 10 years).
    pub fn generate(cluster: &str) -> Result<Self, CertError> {
        Self::generate_with_unit(cluster, None)
    }

    /// Generates a CA as [`CertificateAuthority::generate`] does, with the organizational unit
    /// `generation <generation>` in its subject.
    ///
    /// During a CA rollover nodes trust two CAs at once, and webpki matches a CRL to its CA by
    /// issuer DN alone: two CAs with one DN would make each one's CRL look forged to the other.
    /// The common name stays `canopy <cluster> CA`, so [`CertificateAuthority::cluster`] still
    /// finds the cluster.
    pub fn generate_generation(cluster: &str, generation: u32) -> Result<Self, CertError> {
        Self::generate_with_unit(cluster, Some(format!("generation {generation}")))
    }

    fn generate_with_unit(cluster: &str, unit: Option<String>) -> Result<Self, CertError> {
        validate_cluster(cluster).map_err(CertError::InvalidIdentity)?;
        let key = KeyPair::generate()?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, ca_common_name(cluster));
        dn.push(DnType::OrganizationName, "canopy");
        if let Some(unit) = unit {
            dn.push(DnType::OrganizationalUnitName, unit);
        }
        params.distinguished_name = dn;
        // Path length 0: the CA signs node certificates only, no intermediates.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
            cluster: Some(cluster.to_owned()),
        })
    }

    /// Loads a CA from its certificate and PKCS#8 key. The key must match the certificate and
    /// the certificate must be a CA.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let der = certs_from_pem(cert_pem)?
            .into_iter()
            .next()
            .ok_or(CertError::MissingPem("CERTIFICATE"))?;
        let key = KeyPair::from_pem(key_pem)?;
        let (cluster, matches) = {
            let cert = parse_der(&der)?;
            if !cert.is_ca() {
                return Err(CertError::InvalidCertificate(
                    "not a CA certificate (basicConstraints CA:false)".into(),
                ));
            }
            let matches = cert.public_key().subject_public_key.data.as_ref() == key.der_bytes();
            (cluster_of_ca(&cert), matches)
        };
        if !matches {
            return Err(CertError::KeyMismatch);
        }
        let issuer = Issuer::from_ca_cert_der(&der, key)?;
        Ok(CertificateAuthority {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
            cluster,
        })
    }

    /// The cluster this CA was generated for, when its common name says so.
    pub fn cluster(&self) -> Option<&str> {
        self.cluster.as_deref()
    }

    /// Issues a node certificate for `identity` with a fresh Ed25519 key: DNS SAN
    /// [`Identity::server_name`], URI SAN [`Identity::uri`], serverAuth + clientAuth.
    ///
    /// Certificates with ECDSA P-256 keys (issued before node keys were Ed25519) stay valid:
    /// TLS and [`crate::Authority`] accept both kinds.
    pub fn issue(
        &self,
        identity: &Identity,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<IssuedCert, CertError> {
        // Validate before generating a key, so a bad request costs nothing.
        self.check_request(identity, not_before, not_after)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        self.issue_with_key(identity, not_before, not_after, key)
    }

    /// Issues a node certificate as [`CertificateAuthority::issue`] does, for a given key (an
    /// ECDSA P-256 key, the kind issued before Ed25519, or a key generated elsewhere).
    pub fn issue_with_key(
        &self,
        identity: &Identity,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        key: KeyPair,
    ) -> Result<IssuedCert, CertError> {
        self.check_request(identity, not_before, not_after)?;
        let server_name = identity.server_name();
        let mut params = CertificateParams::default();
        params.not_before = not_before;
        params.not_after = not_after;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, server_name.clone());
        dn.push(DnType::OrganizationName, "canopy");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            SanType::DnsName(server_name.try_into()?),
            SanType::URI(identity.uri().try_into()?),
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Refuses an identity this CA cannot certify and an empty validity period.
    fn check_request(
        &self,
        identity: &Identity,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<(), CertError> {
        identity.validate().map_err(CertError::InvalidIdentity)?;
        if let Some(cluster) = &self.cluster {
            if *cluster != identity.cluster {
                return Err(CertError::InvalidIdentity(format!(
                    "this CA is for cluster {cluster:?}, not {:?}",
                    identity.cluster
                )));
            }
        }
        if not_after <= not_before {
            return Err(CertError::Validity(format!(
                "not_after {not_after} is not after not_before {not_before}"
            )));
        }
        Ok(())
    }
}

/// The validity of a new node certificate: from an hour ago (clock skew) to a year from now.
pub fn default_validity() -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - BACKDATE, now + LEAF_VALIDITY)
}

/// Reads the identity a node certificate names.
///
/// The certificate must carry exactly one `canopy://` URI SAN in canonical form and at least one
/// DNS SAN; every DNS SAN must equal the identity's server name. This does not verify the
/// certificate: callers pass only certificates that TLS already verified against the CA.
pub fn parse_identity(leaf_der: &[u8]) -> Result<Identity, CertError> {
    let cert = parse_der(leaf_der)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertError::InvalidCertificate(format!("subject alternative names: {e}")))?
        .ok_or_else(|| CertError::InvalidIdentity("no subject alternative names".into()))?;
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    for name in &san.value.general_names {
        match name {
            GeneralName::URI(uri) => uris.push(*uri),
            GeneralName::DNSName(name) => dns.push(*name),
            _ => {}
        }
    }
    let uri = match uris.as_slice() {
        [uri] => *uri,
        [] => return Err(CertError::InvalidIdentity("no canopy URI SAN".into())),
        _ => {
            return Err(CertError::InvalidIdentity(format!(
                "{} URI SANs, expected exactly one",
                uris.len()
            )))
        }
    };
    let identity = Identity::from_uri(uri).map_err(CertError::InvalidIdentity)?;
    let server_name = identity.server_name();
    if dns.is_empty() {
        return Err(CertError::InvalidIdentity(format!(
            "no DNS SAN (expected {server_name:?})"
        )));
    }
    if let Some(other) = dns.iter().find(|d| !d.eq_ignore_ascii_case(&server_name)) {
        return Err(CertError::InvalidIdentity(format!(
            "DNS SAN {other:?} disagrees with the URI SAN (expected {server_name:?})"
        )));
    }
    Ok(identity)
}

pub(crate) fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| CertError::InvalidCertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertError::InvalidCertificate(
            "trailing bytes after the certificate".into(),
        ));
    }
    Ok(cert)
}

fn ca_common_name(cluster: &str) -> String {
    format!("canopy {cluster} CA")
}

fn cluster_of_ca(cert: &X509Certificate<'_>) -> Option<String> {
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    let cluster = cn.strip_prefix("canopy ")?.strip_suffix(" CA")?;
    validate_cluster(cluster).ok()?;
    Some(cluster.to_owned())
}

/// All `CERTIFICATE` blocks of a PEM text, in order; at least one.
pub(crate) fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(CertError::MissingPem("CERTIFICATE"));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, SEC1 or PKCS#1) of a PEM text.
pub(crate) fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, CertError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| CertError::Pem(e.to_string()))?
        .ok_or(CertError::MissingPem("PRIVATE KEY"))
}
