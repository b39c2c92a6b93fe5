//! TLS material that can change while the endpoint runs: the own certificate and key, the
//! CA bundle and the revocation lists.
//!
//! quinn's configurations are built once, around a certificate resolver and verifiers that
//! read the current [`TlsState`] on every handshake, so a reload takes effect at the next
//! handshake without touching the endpoint. Live connections keep what they negotiated; the
//! endpoint re-checks them after a reload (see `NetEndpoint::reload`).

use std::sync::{Arc, Mutex, RwLock};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::authority::Authority;
use crate::certs::CertError;
use crate::crl::RevocationSet;
use crate::tls::{self, crypto_provider, Credentials};

/// Everything a handshake needs, as of one load.
pub(crate) struct TlsState {
    pub(crate) creds: Credentials,
    /// Lists from the node's own file, as last loaded.
    pub(crate) file_lists: RevocationSet,
    /// Lists that came through the tree.
    pub(crate) pushed: RevocationSet,
    /// What the verifiers enforce: the newest of both, per CA.
    pub(crate) effective: RevocationSet,
    certified: Arc<CertifiedKey>,
    pub(crate) client_verifier: Arc<dyn ClientCertVerifier>,
    server_verifier: Arc<dyn ServerCertVerifier>,
    /// Signs with the own key and checks others' certificates like the verifiers do.
    pub(crate) authority: Authority,
    /// Counts reloads (and pushed lists) since the endpoint was bound.
    pub(crate) generation: u64,
}

impl TlsState {
    /// SHA-256 of the certificate this node presents under this state.
    pub(crate) fn own_digest(&self) -> Option<[u8; 32]> {
        self.creds
            .chain()
            .first()
            .map(|leaf| crate::refresh::digest(leaf))
    }

    /// Builds the verifiers for `creds` and the lists (each already verified against
    /// `creds`' bundle).
    pub(crate) fn build(
        creds: Credentials,
        mut file_lists: RevocationSet,
        mut pushed: RevocationSet,
    ) -> Result<TlsState, CertError> {
        // A CA that left the bundle takes its lists along.
        file_lists.retain_verified(creds.roots_der());
        pushed.retain_verified(creds.roots_der());
        let mut effective = file_lists.clone();
        effective.merge_all(&pushed);
        let crls: Vec<CertificateRevocationListDer<'static>> = effective
            .ders()
            .into_iter()
            .map(CertificateRevocationListDer::from)
            .collect();
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(creds.roots(), crypto_provider())
                .with_crls(crls.clone())
                .only_check_end_entity_revocation()
                .allow_unknown_revocation_status()
                .build()
                .map_err(|e| CertError::TrustStore(e.to_string()))?;
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(creds.roots(), crypto_provider())
                .with_crls(crls)
                .only_check_end_entity_revocation()
                .allow_unknown_revocation_status()
                .build()
                .map_err(|e| CertError::TrustStore(e.to_string()))?;
        let authority = Authority::with_verifier(&creds, client_verifier.clone())?;
        let certified = Arc::new(CertifiedKey::from_der(
            creds.chain().to_vec(),
            creds.key().clone_key(),
            &crypto_provider(),
        )?);
        Ok(TlsState {
            creds,
            file_lists,
            pushed,
            effective,
            certified,
            client_verifier,
            server_verifier,
            authority,
            generation: 0,
        })
    }

    /// Checks a peer's leaf certificate as a new handshake would (chain, validity, revocation).
    pub(crate) fn check_peer(&self, leaf: &[u8], now: UnixTime) -> Result<(), rustls::Error> {
        self.client_verifier
            .verify_client_cert(&CertificateDer::from(leaf), &[], now)
            .map(|_| ())
    }
}

/// The current [`TlsState`], swapped whole on reload.
pub(crate) struct LiveTls {
    state: RwLock<Arc<TlsState>>,
    /// Held across read-modify-replace, so concurrent reloads and pushes do not lose one
    /// another's changes.
    pub(crate) update: Mutex<()>,
    /// The provider's handshake signature algorithms: checking a handshake signature does not
    /// depend on the trust in force, only on these.
    algorithms: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for LiveTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveTls").finish_non_exhaustive()
    }
}

impl LiveTls {
    pub(crate) fn new(state: TlsState) -> Arc<LiveTls> {
        Arc::new(LiveTls {
            state: RwLock::new(Arc::new(state)),
            update: Mutex::new(()),
            algorithms: crypto_provider().signature_verification_algorithms,
        })
    }

    pub(crate) fn current(&self) -> Arc<TlsState> {
        // Swapping is one assignment: a panic elsewhere cannot leave the state half made.
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Installs `state` as the next generation.
    pub(crate) fn replace(&self, mut state: TlsState) {
        let mut current = self
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.generation = current.generation + 1;
        *current = Arc::new(state);
    }

    /// quinn server configuration whose certificate and client verification follow reloads.
    pub(crate) fn quic_server_config(
        self: &Arc<Self>,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ServerConfig, CertError> {
        let config = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(LiveClientVerifier(self.clone())))
            .with_cert_resolver(Arc::new(LiveResolver(self.clone())));
        let crypto = QuicServerConfig::try_from(tls::finish_server_config(config))
            .map_err(|e| CertError::Tls(rustls::Error::General(e.to_string())))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(transport);
        Ok(config)
    }

    /// quinn client configuration whose certificate and server verification follow reloads.
    pub(crate) fn quic_client_config(
        self: &Arc<Self>,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ClientConfig, CertError> {
        let config = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LiveServerVerifier(self.clone())))
            .with_client_cert_resolver(Arc::new(LiveResolver(self.clone())));
        let crypto = QuicClientConfig::try_from(tls::finish_client_config(config))
            .map_err(|e| CertError::Tls(rustls::Error::General(e.to_string())))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(transport);
        Ok(config)
    }
}

/// Presents the current own certificate, as server and as client.
#[derive(Debug)]
struct LiveResolver(Arc<LiveTls>);

impl ResolvesServerCert for LiveResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified.clone())
    }
}

impl ResolvesClientCert for LiveResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies clients with the current bundle and lists.
#[derive(Debug)]
struct LiveClientVerifier(Arc<LiveTls>);

impl ClientCertVerifier for LiveClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would borrow from a state that may be swapped; our clients have one
        // certificate and present it regardless.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .current()
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.algorithms.supported_schemes()
    }
}

/// Verifies servers with the current bundle and lists.
#[derive(Debug)]
struct LiveServerVerifier(Arc<LiveTls>);

impl ServerCertVerifier for LiveServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.current().server_verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.algorithms.supported_schemes()
    }
}
