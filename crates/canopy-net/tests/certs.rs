//! Certificates: issuing, reading identities back, loading credentials.

mod common;

use canopy_net::{
    default_validity, parse_identity, verify_with, Authority, CertError, CertRole,
    CertificateAuthority, Credentials, Identity, KeyAlgorithm,
};
use common::{ca, creds, ecdsa_creds, identity, CLUSTER};
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, SanType};
use rustls::pki_types::CertificateDer;

fn der(pem: &str) -> CertificateDer<'static> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("valid pem")
}

#[test]
fn parse_identity_round_trips_every_role() {
    let ca = ca();
    let (not_before, not_after) = default_validity();
    for (n, role) in CertRole::ALL.into_iter().enumerate() {
        let id = Identity {
            cluster: CLUSTER.into(),
            node_id: u64::MAX - n as u64,
            role,
            region: "eu-west-1".into(),
        };
        let cert = ca.issue(&id, not_before, not_after).expect("issue");
        assert_eq!(parse_identity(&der(&cert.cert_pem)).expect("parse"), id);
        let creds = Credentials::from_pem(&ca.cert_pem, &cert.cert_pem, &cert.key_pem)
            .expect("credentials");
        assert_eq!(creds.identity(), &id);
        creds.verify().expect("chains to the CA");
    }
}

fn self_signed(sans: Vec<SanType>) -> CertificateDer<'static> {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.self_signed(&key).expect("cert").der().clone()
}

#[test]
fn parse_identity_rejects_missing_or_disagreeing_sans() {
    let id = identity(9, CertRole::Client);
    let dns = || SanType::DnsName(id.server_name().try_into().expect("dns"));
    let uri = |s: String| SanType::URI(s.try_into().expect("uri"));

    let no_uri = self_signed(vec![dns()]);
    assert!(matches!(
        parse_identity(&no_uri),
        Err(CertError::InvalidIdentity(_))
    ));

    let no_dns = self_signed(vec![uri(id.uri())]);
    assert!(parse_identity(&no_dns).is_err());

    let other_dns = self_signed(vec![
        SanType::DnsName("10.test.canopy".try_into().expect("dns")),
        uri(id.uri()),
    ]);
    assert!(parse_identity(&other_dns).is_err());

    let extra_dns = self_signed(vec![
        dns(),
        SanType::DnsName("10.test.canopy".try_into().expect("dns")),
        uri(id.uri()),
    ]);
    assert!(parse_identity(&extra_dns).is_err());

    let two_uris = self_signed(vec![
        dns(),
        uri(id.uri()),
        uri(identity(10, CertRole::Admin).uri()),
    ]);
    assert!(parse_identity(&two_uris).is_err());

    let bad_role = self_signed(vec![dns(), uri("canopy://test/boss/9?region=local".into())]);
    assert!(parse_identity(&bad_role).is_err());

    assert!(parse_identity(b"not a certificate").is_err());
    assert_eq!(
        parse_identity(&self_signed(vec![dns(), uri(id.uri())])).expect("parse"),
        id
    );
}

#[test]
fn ca_reloads_and_issues_for_its_cluster_only() {
    let ca = ca();
    assert!(ca.cert_pem.contains("BEGIN CERTIFICATE"));
    let reloaded = CertificateAuthority::from_pem(&ca.cert_pem, &ca.key_pem).expect("reload");
    assert_eq!(reloaded.cluster(), Some(CLUSTER));
    let (not_before, not_after) = default_validity();
    let cert = reloaded
        .issue(&identity(3, CertRole::Router), not_before, not_after)
        .expect("issue");
    // Issued by the reloaded CA, trusted through the original certificate.
    let creds = Credentials::from_pem(&ca.cert_pem, &cert.cert_pem, &cert.key_pem).expect("creds");
    creds.verify().expect("chains");

    let other = Identity {
        cluster: "elsewhere".into(),
        ..identity(3, CertRole::Router)
    };
    assert!(ca.issue(&other, not_before, not_after).is_err());
    assert!(ca
        .issue(&identity(3, CertRole::Router), not_after, not_before)
        .is_err());
    let bad_region = Identity {
        region: "a/b".into(),
        ..identity(3, CertRole::Router)
    };
    assert!(ca.issue(&bad_region, not_before, not_after).is_err());

    let stranger = CertificateAuthority::generate(CLUSTER).expect("CA");
    assert!(matches!(
        CertificateAuthority::from_pem(&ca.cert_pem, &stranger.key_pem),
        Err(CertError::KeyMismatch)
    ));
    // A leaf is not a CA.
    assert!(CertificateAuthority::from_pem(&cert.cert_pem, &cert.key_pem).is_err());
    assert!(CertificateAuthority::generate("Not A Label").is_err());
}

#[test]
fn credentials_check_key_and_chain() {
    let ca = ca();
    let (not_before, not_after) = default_validity();
    let a = ca
        .issue(&identity(1, CertRole::Router), not_before, not_after)
        .expect("a");
    let b = ca
        .issue(&identity(2, CertRole::Router), not_before, not_after)
        .expect("b");
    assert!(matches!(
        Credentials::from_pem(&ca.cert_pem, &a.cert_pem, &b.key_pem),
        Err(CertError::KeyMismatch)
    ));
    assert!(Credentials::from_pem("", &a.cert_pem, &a.key_pem).is_err());
    assert!(Credentials::from_pem(&ca.cert_pem, &a.cert_pem, "").is_err());

    // Another CA's certificate loads (the peer would refuse it) but does not verify.
    let other = CertificateAuthority::generate(CLUSTER).expect("CA");
    let c = other
        .issue(&identity(3, CertRole::Router), not_before, not_after)
        .expect("c");
    let creds = Credentials::from_pem(&ca.cert_pem, &c.cert_pem, &c.key_pem).expect("creds");
    assert!(creds.verify().is_err());
}

#[test]
fn load_names_the_failing_file() {
    let ca = ca();
    let (not_before, not_after) = default_validity();
    let cert = ca
        .issue(&identity(1, CertRole::Client), not_before, not_after)
        .expect("issue");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = dir.path().join("ca.pem");
    let cert_path = dir.path().join("node.pem");
    let key_path = dir.path().join("node.key");
    std::fs::write(&ca_path, &ca.cert_pem).expect("write");
    std::fs::write(&cert_path, &cert.cert_pem).expect("write");
    std::fs::write(&key_path, &cert.key_pem).expect("write");
    let creds = Credentials::load(&ca_path, &cert_path, &key_path).expect("load");
    assert_eq!(creds.identity(), &identity(1, CertRole::Client));

    let missing = dir.path().join("missing.pem");
    let err = Credentials::load(&ca_path, &missing, &key_path).expect_err("missing file");
    assert!(err.to_string().contains("missing.pem"), "{err}");

    std::fs::write(&key_path, "garbage").expect("write");
    let err = Credentials::load(&ca_path, &cert_path, &key_path).expect_err("bad key");
    assert!(err.to_string().contains("node.key"), "{err}");

    let other = ca
        .issue(&identity(2, CertRole::Client), not_before, not_after)
        .expect("issue");
    std::fs::write(&key_path, &other.key_pem).expect("write");
    let err = Credentials::load(&ca_path, &cert_path, &key_path).expect_err("mismatch");
    assert!(err.to_string().contains("node.key"), "{err}");

    std::fs::write(&ca_path, "no pem here").expect("write");
    let err = Credentials::load(&ca_path, &cert_path, &key_path).expect_err("bad CA");
    assert!(err.to_string().contains("ca.pem"), "{err}");
}

#[test]
fn node_id_zero_is_reserved() {
    let ca = ca();
    let mut zero = identity(5, CertRole::Client);
    zero.node_id = 0;
    let (not_before, not_after) = default_validity();
    assert!(ca.issue(&zero, not_before, not_after).is_err());
}

/// The OID of a certificate's public key algorithm.
fn key_oid(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("parse");
    cert.public_key().algorithm.algorithm.to_id_string()
}

#[test]
fn node_keys_are_ed25519_and_the_ca_key_is_unchanged() {
    let ca = ca();
    let (not_before, not_after) = default_validity();
    let cert = ca
        .issue(&identity(1, CertRole::Router), not_before, not_after)
        .expect("issue");
    // id-Ed25519 (RFC 8410) for the node, id-ecPublicKey for the CA.
    assert_eq!(key_oid(&der(&cert.cert_pem)), "1.3.101.112");
    assert_eq!(key_oid(&der(&ca.cert_pem)), "1.2.840.10045.2.1");
    assert!(cert.key_pem.contains("BEGIN PRIVATE KEY"));
    // A CA reloaded from disk issues Ed25519 keys too.
    let reloaded = CertificateAuthority::from_pem(&ca.cert_pem, &ca.key_pem).expect("reload");
    let cert = reloaded
        .issue(&identity(2, CertRole::Router), not_before, not_after)
        .expect("issue");
    assert_eq!(key_oid(&der(&cert.cert_pem)), "1.3.101.112");
}

#[test]
fn ed25519_and_ecdsa_nodes_check_each_others_signatures() {
    let ca = ca();
    let old_creds = ecdsa_creds(&ca, 1, CertRole::RootCandidate);
    old_creds
        .verify()
        .expect("an ECDSA P-256 leaf chains to the CA");
    assert_eq!(key_oid(&old_creds.chain()[0]), "1.2.840.10045.2.1");
    let old = Authority::new(&old_creds).expect("authority");
    let new = Authority::new(&creds(&ca, 2, CertRole::RootCandidate)).expect("authority");
    for (signer, verifier, algorithm) in [
        (&old, &new, KeyAlgorithm::EcdsaP256),
        (&new, &old, KeyAlgorithm::Ed25519),
        (&new, &new, KeyAlgorithm::Ed25519),
    ] {
        let sig = signer.sign(b"place 7 under 3").expect("sign");
        let who = verifier
            .verify(signer.certificate(), b"place 7 under 3", &sig)
            .expect("verifies");
        let checked = verifier
            .check_certificate(signer.certificate())
            .expect("chains");
        assert_eq!(checked.identity, who);
        assert_eq!(checked.algorithm, algorithm);
        assert!(verify_with(&checked, b"place 7 under 3", &sig));
        assert!(!verify_with(&checked, b"place 7 under 4", &sig));
    }
}
