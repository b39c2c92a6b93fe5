//! Signing and checking statements with node certificates, outside TLS.
//!
//! A root candidate signs its placement decisions with the key of its own certificate; any
//! node can check such a statement offline: the certificate must chain to the cluster CA,
//! be valid now, name the claimed signer and role, and the signature must verify with its
//! public key. This is what lets a placed node tell the serving root's decision from a
//! peer's say-so.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::{Signer, SigningKey};
use rustls::SignatureScheme;

use crate::certs::{parse_identity, CertError};
use crate::identity::Identity;
use crate::tls::Credentials;

/// Signature algorithms a Canopy certificate key may use (rcgen issues ECDSA P-256).
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
        self.verifier
            .verify_client_cert(&cert, &[], UnixTime::now())
            .map_err(|e| SignatureError::Untrusted(e.to_string()))?;
        let identity =
            parse_identity(certificate).map_err(|e| SignatureError::Untrusted(e.to_string()))?;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CertRole, CertificateAuthority};

    fn creds(ca: &CertificateAuthority, id: u64, role: CertRole) -> Credentials {
        let identity = Identity {
            cluster: "test".into(),
            node_id: id,
            role,
            region: "r1".into(),
        };
        let (from, until) = crate::default_validity();
        let issued = ca.issue(&identity, from, until).expect("issue");
        Credentials::from_pem(&ca.cert_pem, &issued.cert_pem, &issued.key_pem).expect("creds")
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
}
