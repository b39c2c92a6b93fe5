//! A node's TLS credentials and the mutual-TLS configurations built from them.
//!
//! Both directions use rustls with the ring provider, TLS 1.3 only, ALPN [`crate::ALPN`], and
//! the cluster CA as the only trust root. Servers require a client certificate. Session
//! resumption and 0-RTT are off, so every connection presents and verifies a full certificate
//! chain (a revoked or replaced certificate cannot ride on an old session).

use std::path::Path;
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, RootCertStore};

use crate::certs::{certs_from_pem, key_from_pem, parse_identity, CertError};
use crate::identity::Identity;
use crate::ALPN;

/// The crypto provider every Canopy TLS configuration uses (ring).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a node needs for mutual TLS: the CA roots, its own certificate chain and key, and the
/// identity its certificate names.
pub struct Credentials {
    roots: Arc<RootCertStore>,
    /// The bundle's certificates as read (to check revocation lists' signatures).
    roots_der: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    identity: Identity,
}

impl Clone for Credentials {
    fn clone(&self) -> Self {
        Credentials {
            roots: self.roots.clone(),
            roots_der: self.roots_der.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            identity: self.identity.clone(),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity)
            .field("roots", &self.roots.len())
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Builds credentials from PEM texts: the CA bundle (one or more certificates), the node's
    /// certificate chain (leaf first) and its private key.
    ///
    /// Checks that the key belongs to the leaf and that the leaf names a Canopy identity. It does
    /// not check the leaf against the CA or the clock; see [`Credentials::verify`].
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        Self::assemble(
            roots_from_pem(ca_pem),
            certs_from_pem(cert_pem),
            key_from_pem(key_pem),
        )
        .map_err(|(_, e)| e)
    }

    /// Reads [`Credentials::from_pem`]'s inputs from files; every error names its file.
    pub fn load(ca_path: &Path, cert_path: &Path, key_path: &Path) -> Result<Self, CertError> {
        let ca_pem = read(ca_path)?;
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let in_file = |path: &Path| {
            let path = path.to_path_buf();
            move |e: CertError| CertError::InFile {
                path,
                source: Box::new(e),
            }
        };
        Self::assemble(
            roots_from_pem(&ca_pem).map_err(in_file(ca_path)),
            certs_from_pem(&cert_pem).map_err(in_file(cert_path)),
            key_from_pem(&key_pem).map_err(in_file(key_path)),
        )
        .map_err(|(part, e)| match part {
            Part::Inputs => e,
            Part::Key => in_file(key_path)(e),
            Part::Cert => in_file(cert_path)(e),
        })
    }

    fn assemble(
        roots: Result<(RootCertStore, Vec<CertificateDer<'static>>), CertError>,
        chain: Result<Vec<CertificateDer<'static>>, CertError>,
        key: Result<PrivateKeyDer<'static>, CertError>,
    ) -> Result<Self, (Part, CertError)> {
        let (roots, roots_der) = roots.map_err(|e| (Part::Inputs, e))?;
        let chain = chain.map_err(|e| (Part::Inputs, e))?;
        let key = key.map_err(|e| (Part::Inputs, e))?;
        match CertifiedKey::from_der(chain.clone(), key.clone_key(), &crypto_provider()) {
            Ok(_) => {}
            Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                return Err((Part::Key, CertError::KeyMismatch))
            }
            Err(e) => return Err((Part::Key, CertError::Tls(e))),
        }
        let leaf = chain
            .first()
            .ok_or((Part::Cert, CertError::MissingPem("CERTIFICATE")))?;
        let identity = parse_identity(leaf).map_err(|e| (Part::Cert, e))?;
        Ok(Credentials {
            roots: Arc::new(roots),
            roots_der,
            chain,
            key,
            identity,
        })
    }

    /// The identity the own certificate names.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The own certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// Checks that the own certificate chains to the CA and is valid now, as a peer would.
    pub fn verify(&self) -> Result<(), CertError> {
        let verifier = self.client_verifier()?;
        let (leaf, intermediates) = self
            .chain
            .split_first()
            .ok_or(CertError::MissingPem("CERTIFICATE"))?;
        verifier.verify_client_cert(leaf, intermediates, UnixTime::now())?;
        Ok(())
    }

    /// The CA bundle's certificates.
    pub fn roots_der(&self) -> &[CertificateDer<'static>] {
        &self.roots_der
    }

    pub(crate) fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    /// The own private key.
    pub(crate) fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    pub(crate) fn client_verifier(
        &self,
    ) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, CertError> {
        WebPkiClientVerifier::builder_with_provider(self.roots.clone(), crypto_provider())
            .build()
            .map_err(|e| CertError::TrustStore(e.to_string()))
    }

    /// rustls server configuration: client certificate required and verified against the CA.
    pub fn rustls_server_config(&self) -> Result<rustls::ServerConfig, CertError> {
        let config = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(self.client_verifier()?)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        Ok(finish_server_config(config))
    }

    /// rustls client configuration: server verified against the CA (by DNS SAN), own
    /// certificate presented.
    pub fn rustls_client_config(&self) -> Result<rustls::ClientConfig, CertError> {
        let verifier =
            WebPkiServerVerifier::builder_with_provider(self.roots.clone(), crypto_provider())
                .build()
                .map_err(|e| CertError::TrustStore(e.to_string()))?;
        let config = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        Ok(finish_client_config(config))
    }

    /// quinn server configuration with the given transport parameters.
    pub fn quic_server_config(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ServerConfig, CertError> {
        let crypto = QuicServerConfig::try_from(self.rustls_server_config()?)
            .map_err(|e| CertError::Tls(rustls::Error::General(e.to_string())))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(transport);
        Ok(config)
    }

    /// quinn client configuration with the given transport parameters.
    pub fn quic_client_config(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ClientConfig, CertError> {
        let crypto = QuicClientConfig::try_from(self.rustls_client_config()?)
            .map_err(|e| CertError::Tls(rustls::Error::General(e.to_string())))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(transport);
        Ok(config)
    }
}

/// ALPN, and no session resumption or early data: every connection verifies a full chain.
pub(crate) fn finish_server_config(mut config: rustls::ServerConfig) -> rustls::ServerConfig {
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.max_early_data_size = 0;
    config
}

/// ALPN, and no session resumption or early data: every connection verifies a full chain.
pub(crate) fn finish_client_config(mut config: rustls::ClientConfig) -> rustls::ClientConfig {
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.resumption = Resumption::disabled();
    config.enable_early_data = false;
    config
}

/// Which input an assembly error belongs to (for naming the file in [`Credentials::load`]).
enum Part {
    /// Already attributed (each input parsed on its own).
    Inputs,
    Cert,
    Key,
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A trust store of every certificate in a CA bundle, and the certificates themselves.
pub(crate) fn roots_from_pem(
    ca_pem: &str,
) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), CertError> {
    let mut roots = RootCertStore::empty();
    let certs = certs_from_pem(ca_pem)?;
    for cert in &certs {
        roots
            .add(cert.clone())
            .map_err(|e| CertError::TrustStore(format!("unusable CA certificate: {e}")))?;
    }
    Ok((roots, certs))
}
