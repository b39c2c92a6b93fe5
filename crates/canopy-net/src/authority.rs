//! Signing and checking statements with node certificates, outside TLS.
//!
//! A root candidate signs its placement decisions with the key of its own certificate; any
//! node can check such a statement offline: the certificate must chain to the cluster CA,
//! be valid now, name the claimed signer and role, and the signature must verify with its
//! public key. This is what lets a placed node tell the serving root's decision from a
//! peer's say-so.
//!
//! A node that checks many signatures of the same signers checks each certificate once
//! ([`Authority::check_certificate`]) and then each signature with [`verify_with`] against the
//! [`CheckedCertificate`] it kept.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::{Signer, SigningKey};
use rustls::SignatureScheme;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519};
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::certs::{parse_identity, CertError};
use crate::identity::Identity;
use crate::tls::Credentials;

/// Signature algorithms a Canopy certificate key may use: node keys are Ed25519 (ECDSA P-256
/// before that, and such certificates stay valid).
const SCHEMES: [SignatureScheme; 3] = [
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ED25519,
    SignatureScheme::ECDSA_NISTP384_SHA384,
];

/// Why a signed statement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The statement carries no signer certificate or no signature.
    #[error("the statement is not signed")]
    Unsigned,
    /// The signer's certificate does not chain to the cluster CA or is not valid now.
    #[error("signer certificate refused: {0}")]
    Untrusted(String),
    /// The signature does not verify with the signer certificate's key.
    #[error("bad signature")]
    BadSignature,
}

/// The key algorithms of a [`CheckedCertificate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// Ed25519 (what [`crate::CertificateAuthority::issue`] gives nodes).
    Ed25519,
    /// ECDSA on P-256 with SHA-256, signatures ASN.1 DER encoded (what nodes had before
    /// Ed25519).
    EcdsaP256,
}

/// A certificate that chains to the cluster CA and is valid now: who it names and its public key.
///
/// Made by [`Authority::check_certificate`]; [`verify_with`] then checks that node's signatures
/// without checking the certificate again. The certificate was valid when checked: a holder
/// keeping one for long should check the certificate again (it may have expired since).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedCertificate {
    /// The identity the certificate names.
    pub identity: Identity,
    /// The algorithm of its key.
    pub algorithm: KeyAlgorithm,
    /// The raw subject public key bits of its SPKI: 32 bytes for Ed25519, the 65-byte
    /// uncompressed point for P-256 (what `ring::signature::UnparsedPublicKey` takes).
    pub public_key: Vec<u8>,
}

/// Whether `signature` over `message` verifies with the key of `checked` (a signature made by
/// [`Authority::sign`] with that certificate's key).
pub fn verify_with(checked: &CheckedCertificate, message: &[u8], signature: &[u8]) -> bool {
    // webpki's ring algorithms take the raw subject public key bits and call
    // `ring::signature::UnparsedPublicKey::new(alg, key).verify(message, signature)`.
    let algorithm = match checked.algorithm {
        KeyAlgorithm::Ed25519 => webpki::ring::ED25519,
        KeyAlgorithm::EcdsaP256 => webpki::ring::ECDSA_P256_SHA256,
    };
    algorithm
        .verify_signature(&checked.public_key, message, signature)
        .is_ok()
}

/// The algorithm and raw key of a subject public key info; `None` for anything but Ed25519 and
/// ECDSA P-256 keys of the right form.
fn key_of(spki: &SubjectPublicKeyInfo<'_>) -> Option<(KeyAlgorithm, Vec<u8>)> {
    let bits = &spki.subject_public_key;
    if bits.unused_bits != 0 {
        return None;
    }
    let key = bits.data.as_ref();
    let algorithm = &spki.algorithm;
    if algorithm.algorithm == OID_SIG_ED25519 {
        // RFC 8410: the parameters are absent.
        (algorithm.parameters.is_none() && key.len() == 32)
            .then(|| (KeyAlgorithm::Ed25519, key.to_vec()))
    } else if algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        // RFC 5480: the named curve, and an uncompressed point (what ring accepts).
        let curve = algorithm
            .parameters
            .as_ref()
            .and_then(|p| x509_parser::der_parser::Oid::try_from(p).ok())?;
        (curve == OID_EC_P256 && key.len() == 65 && key[0] == 0x04)
            .then(|| (KeyAlgorithm::EcdsaP256, key.to_vec()))
    } else {
        None
    }
}

/// Signs with the own certificate's key and verifies others' signatures against the CA.
#[derive(Clone)]
pub struct Authority {
    signer: Arc<dyn SigningKey>,
    certificate: CertificateDer<'static>,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    /// The authority of these credentials.
    pub fn new(creds: &Credentials) -> Result<Authority, CertError> {
        let signer = rustls::crypto::ring::sign::any_supported_type(creds.key())?;
        let certificate = creds
            .chain()
            .first()
            .cloned()
            .ok_or(CertError::MissingPem("CERTIFICATE"))?;
        Ok(Authority {
            signer,
            certificate,
            verifier: creds.client_verifier()?,
        })
    }

    /// The authority of these credentials, checking certificates with `verifier` (one that
    /// also consults revocation lists).
    pub(crate) fn with_verifier(
        creds: &Credentials,
        verifier: Arc<dyn ClientCertVerifier>,
    ) -> Result<Authority, CertError> {
        let mut authority = Authority::new(creds)?;
        authority.verifier = verifier;
        Ok(authority)
    }

    /// The own certificate (DER), to send beside a signature.
    pub fn certificate(&self) -> &[u8] {
        &self.certificate
    }

    /// Signs `message` with the own certificate's key.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CertError> {
        let signer: Box<dyn Signer> = self
            .signer
            .choose_scheme(&SCHEMES)
            .ok_or_else(|| CertError::Tls(rustls::Error::General("unsupported key".into())))?;
        Ok(signer.sign(message)?)
    }

    /// Checks that `certificate` chains to the CA and is valid now, and that `signature` over
    /// `message` verifies with its key; returns the identity the certificate names.
    pub fn verify(
        &self,
        certificate: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<Identity, SignatureError> {
        if certificate.is_empty() || signature.is_empty() {
            return Err(SignatureError::Unsigned);
        }
        let cert = CertificateDer::from(certificate);
        let identity = self.check_chain(&cert)?;
        let end_entity = webpki::EndEntityCert::try_from(&cert)
            .map_err(|e| SignatureError::Untrusted(e.to_string()))?;
        let algorithms: [&dyn rustls::pki_types::SignatureVerificationAlgorithm; 3] = [
            webpki::ring::ECDSA_P256_SHA256,
            webpki::ring::ED25519,
            webpki::ring::ECDSA_P384_SHA384,
        ];
        let verified = algorithms.iter().any(|alg| {
            end_entity
                .verify_signature(*alg, message, signature)
                .is_ok()
        });
        if verified {
            Ok(identity)
        } else {
            Err(SignatureError::BadSignature)
        }
    }

    /// Checks once that `certificate` (DER) chains to the CA, is valid now and names a Canopy
    /// identity, and returns that identity with the certificate's key, so that the node's
    /// signatures can be checked with [`verify_with`] without checking the certificate again.
    ///
    /// Refuses an empty certificate as [`SignatureError::Unsigned`], and as
    /// [`SignatureError::Untrusted`] one that does not chain or has a key other than Ed25519 or
    /// ECDSA P-256 (`"unsupported key algorithm"`).
    pub fn check_certificate(
        &self,
        certificate: &[u8],
    ) -> Result<CheckedCertificate, SignatureError> {
        if certificate.is_empty() {
            return Err(SignatureError::Unsigned);
        }
        let identity = self.check_chain(&CertificateDer::from(certificate))?;
        let (_, cert) = x509_parser::parse_x509_certificate(certificate)
            .map_err(|e| SignatureError::Untrusted(e.to_string()))?;
        let (algorithm, public_key) = key_of(cert.public_key())
            .ok_or_else(|| SignatureError::Untrusted("unsupported key algorithm".into()))?;
        Ok(CheckedCertificate {
            identity,
            algorithm,
            public_key,
        })
    }

    /// Checks that `cert` chains to the CA and is valid now; returns the identity it names.
    fn check_chain(&self, cert: &CertificateDer<'_>) -> Result<Identity, SignatureError> {
        self.verifier
            .verify_client_cert(cert, &[], UnixTime::now())
            .map_err(|e| SignatureError::Untrusted(e.to_string()))?;
        parse_identity(cert).map_err(|e| SignatureError::Untrusted(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CertRole, CertificateAuthority};

    fn identity(id: u64, role: CertRole) -> Identity {
        Identity {
            cluster: "test".into(),
            node_id: id,
            role,
            region: "r1".into(),
        }
    }

    fn creds(ca: &CertificateAuthority, id: u64, role: CertRole) -> Credentials {
        let (from, until) = crate::default_validity();
        let issued = ca.issue(&identity(id, role), from, until).expect("issue");
        Credentials::from_pem(&ca.cert_pem, &issued.cert_pem, &issued.key_pem).expect("creds")
    }

    /// Credentials with a key of `alg` (e.g. the ECDSA P-256 keys nodes had before Ed25519),
    /// and that key's raw public key.
    fn creds_with(
        ca: &CertificateAuthority,
        id: u64,
        role: CertRole,
        alg: &'static rcgen::SignatureAlgorithm,
    ) -> (Credentials, Vec<u8>) {
        let (from, until) = crate::default_validity();
        let key = rcgen::KeyPair::generate_for(alg).expect("key");
        let public_key = key.public_key_raw().to_vec();
        let issued = ca
            .issue_with_key(&identity(id, role), from, until, key)
            .expect("issue");
        let creds =
            Credentials::from_pem(&ca.cert_pem, &issued.cert_pem, &issued.key_pem).expect("creds");
        (creds, public_key)
    }

    #[test]
    fn signatures_verify_only_for_the_signed_message_and_a_trusted_signer() {
        let ca = CertificateAuthority::generate("test").expect("ca");
        let root = Authority::new(&creds(&ca, 1, CertRole::RootCandidate)).expect("authority");
        let client = Authority::new(&creds(&ca, 2, CertRole::Client)).expect("authority");
        let sig = root.sign(b"place 7 under 3").expect("sign");
        let who = client
            .verify(root.certificate(), b"place 7 under 3", &sig)
            .expect("verifies");
        assert_eq!((who.node_id, who.role), (1, CertRole::RootCandidate));
        assert_eq!(
            client.verify(root.certificate(), b"place 7 under 4", &sig),
            Err(SignatureError::BadSignature)
        );
        assert_eq!(
            client.verify(client.certificate(), b"place 7 under 3", &sig),
            Err(SignatureError::BadSignature)
        );
        assert_eq!(
            client.verify(&[], b"x", &sig),
            Err(SignatureError::Unsigned)
        );
        let other_ca = CertificateAuthority::generate("test").expect("ca");
        let stranger = Authority::new(&creds(&other_ca, 1, CertRole::RootCandidate)).expect("a");
        let forged = stranger.sign(b"place 7 under 3").expect("sign");
        assert!(matches!(
            client.verify(stranger.certificate(), b"place 7 under 3", &forged),
            Err(SignatureError::Untrusted(_))
        ));
    }

    #[test]
    fn checked_ed25519_certificates_verify_signatures_without_the_chain() {
        let ca = CertificateAuthority::generate("test").expect("ca");
        let root = Authority::new(&creds(&ca, 1, CertRole::RootCandidate)).expect("authority");
        let client = Authority::new(&creds(&ca, 2, CertRole::Client)).expect("authority");
        let checked = client
            .check_certificate(root.certificate())
            .expect("chains to the CA");
        assert_eq!(checked.identity, identity(1, CertRole::RootCandidate));
        assert_eq!(checked.algorithm, KeyAlgorithm::Ed25519);
        assert_eq!(checked.public_key.len(), 32);

        let sig = root.sign(b"place 7 under 3").expect("sign");
        assert_eq!(sig.len(), 64, "an Ed25519 signature");
        assert!(verify_with(&checked, b"place 7 under 3", &sig));
        assert!(!verify_with(&checked, b"place 7 under 4", &sig));
        assert!(!verify_with(&checked, b"place 7 under 3", &sig[..63]));
        assert!(!verify_with(&checked, b"place 7 under 3", &[]));
        // Another node's certificate, even one of the same CA, does not verify it.
        let other = client
            .check_certificate(client.certificate())
            .expect("chains");
        assert_eq!(other.identity, identity(2, CertRole::Client));
        assert!(!verify_with(&other, b"place 7 under 3", &sig));
        // The full check agrees.
        assert_eq!(
            client.verify(root.certificate(), b"place 7 under 3", &sig),
            Ok(identity(1, CertRole::RootCandidate))
        );

        assert_eq!(client.check_certificate(&[]), Err(SignatureError::Unsigned));
        assert!(matches!(
            client.check_certificate(b"not a certificate"),
            Err(SignatureError::Untrusted(_))
        ));
        let other_ca = CertificateAuthority::generate("test").expect("ca");
        let stranger = Authority::new(&creds(&other_ca, 1, CertRole::RootCandidate)).expect("a");
        assert!(matches!(
            client.check_certificate(stranger.certificate()),
            Err(SignatureError::Untrusted(_))
        ));
    }

    #[test]
    fn the_checked_key_is_the_raw_subject_public_key() {
        let ca = CertificateAuthority::generate("test").expect("ca");
        let verifier = Authority::new(&creds(&ca, 9, CertRole::Client)).expect("authority");
        for (alg, want) in [
            (&rcgen::PKCS_ED25519, KeyAlgorithm::Ed25519),
            (&rcgen::PKCS_ECDSA_P256_SHA256, KeyAlgorithm::EcdsaP256),
        ] {
            let (creds, public_key) = creds_with(&ca, 1, CertRole::Router, alg);
            let signer = Authority::new(&creds).expect("authority");
            let checked = verifier
                .check_certificate(signer.certificate())
                .expect("chains");
            assert_eq!(checked.algorithm, want);
            assert_eq!(checked.public_key, public_key);
        }
    }

    #[test]
    fn ecdsa_p256_certificates_still_sign_and_verify_both_ways() {
        let ca = CertificateAuthority::generate("test").expect("ca");
        let (old_creds, _) = creds_with(
            &ca,
            1,
            CertRole::RootCandidate,
            &rcgen::PKCS_ECDSA_P256_SHA256,
        );
        old_creds.verify().expect("chains to the CA");
        let old = Authority::new(&old_creds).expect("authority");
        let new = Authority::new(&creds(&ca, 2, CertRole::Client)).expect("authority");

        // An ECDSA node's signature, checked by an Ed25519 node, both ways.
        let sig = old.sign(b"place 7 under 3").expect("sign");
        assert_eq!(
            new.verify(old.certificate(), b"place 7 under 3", &sig),
            Ok(identity(1, CertRole::RootCandidate))
        );
        assert_eq!(
            new.verify(old.certificate(), b"place 7 under 4", &sig),
            Err(SignatureError::BadSignature)
        );
        let checked = new.check_certificate(old.certificate()).expect("chains");
        assert_eq!(checked.algorithm, KeyAlgorithm::EcdsaP256);
        assert_eq!(checked.public_key.len(), 65);
        assert!(verify_with(&checked, b"place 7 under 3", &sig));
        assert!(!verify_with(&checked, b"place 7 under 4", &sig));

        // An Ed25519 node's signature, checked by an ECDSA node.
        let sig = new.sign(b"grant").expect("sign");
        assert_eq!(
            old.verify(new.certificate(), b"grant", &sig),
            Ok(identity(2, CertRole::Client))
        );
        let checked = old.check_certificate(new.certificate()).expect("chains");
        assert!(verify_with(&checked, b"grant", &sig));
        // A signature made with one algorithm does not pass as the other's.
        let ecdsa = old.check_certificate(old.certificate()).expect("chains");
        assert!(!verify_with(&ecdsa, b"grant", &sig));
    }

    #[test]
    fn other_key_algorithms_are_refused_by_check_certificate_only() {
        let ca = CertificateAuthority::generate("test").expect("ca");
        let verifier = Authority::new(&creds(&ca, 9, CertRole::Client)).expect("authority");
        let (p384, _) = creds_with(&ca, 1, CertRole::Router, &rcgen::PKCS_ECDSA_P384_SHA384);
        let signer = Authority::new(&p384).expect("authority");
        assert_eq!(
            verifier.check_certificate(signer.certificate()),
            Err(SignatureError::Untrusted(
                "unsupported key algorithm".into()
            ))
        );
        // The full check still takes it, as before.
        let sig = signer.sign(b"m").expect("sign");
        assert_eq!(
            verifier.verify(signer.certificate(), b"m", &sig),
            Ok(identity(1, CertRole::Router))
        );
    }
}
