//! Certificate revocation lists as a node holds them: parsed, checked against the trust
//! bundle, and merged (the newest list per CA wins).
//!
//! Lists reach a node from its own `crl` file and from the tree (pushed by the root after the
//! root group committed them). Either way a list counts only once its signature verifies with
//! the key of a CA in the node's bundle: a peer can replay an old list (ignored, its number
//! is not higher) but cannot forge or widen one.

use crate::cert_info::{hex, normalize_serial};
use std::collections::BTreeMap;

use rustls::pki_types::CertificateDer;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::certs::CertError;

/// Largest revocation list a node accepts (DER bytes), from a file or a peer.
pub const MAX_CRL_LEN: usize = 256 * 1024;
/// Most lists a node holds at once: one per CA of the bundle, which holds two during a CA
/// rollover; a little room beyond that.
pub const MAX_CRLS: usize = 4;

/// One CA-signed revocation list.
#[derive(Clone, PartialEq, Eq)]
pub struct RevocationList {
    der: Vec<u8>,
    /// The issuer's distinguished name, DER.
    issuer: Vec<u8>,
    /// The CRL number, big-endian without leading zeros (absent: zero).
    number: Vec<u8>,
    /// Revoked serial numbers, big-endian without leading zeros.
    serials: Vec<Vec<u8>>,
}

impl std::fmt::Debug for RevocationList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationList")
            .field("number", &hex(&self.number))
            .field("revoked", &self.serials.len())
            .finish_non_exhaustive()
    }
}

impl RevocationList {
    /// Parses one DER CRL (its signature is not checked here; see [`RevocationList::verify`]).
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        if der.len() > MAX_CRL_LEN {
            return Err(CertError::InvalidCrl(format!(
                "{} bytes, more than the {MAX_CRL_LEN} accepted",
                der.len()
            )));
        }
        let (rest, crl) = CertificateRevocationList::from_der(der)
            .map_err(|e| CertError::InvalidCrl(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CertError::InvalidCrl(
                "trailing bytes after the list".into(),
            ));
        }
        let number = crl
            .crl_number()
            .map(|n| normalize_serial(&n.to_bytes_be()))
            .unwrap_or_default();
        let mut serials: Vec<Vec<u8>> = crl
            .iter_revoked_certificates()
            .map(|revoked| normalize_serial(revoked.raw_serial()))
            .collect();
        serials.sort_unstable();
        serials.dedup();
        Ok(RevocationList {
            der: der.to_vec(),
            issuer: crl.issuer().as_raw().to_vec(),
            number,
            serials,
        })
    }

    /// Every `X509 CRL` block of a PEM text, in order (an empty text gives none).
    pub fn from_pem(pem: &str) -> Result<Vec<Self>, CertError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateRevocationListDer;
        let lists = CertificateRevocationListDer::pem_slice_iter(pem.as_bytes())
            .map(|block| {
                let block = block.map_err(|e| CertError::Pem(e.to_string()))?;
                RevocationList::from_der(block.as_ref())
            })
            .collect::<Result<Vec<_>, _>>()?;
        if lists.len() > MAX_CRLS {
            return Err(CertError::InvalidCrl(format!(
                "{} lists, more than the {MAX_CRLS} accepted",
                lists.len()
            )));
        }
        Ok(lists)
    }

    /// Checks that a CA of `roots` with the list's issuer name signed it.
    pub fn verify(&self, roots: &[CertificateDer<'_>]) -> Result<(), CertError> {
        let (_, crl) = CertificateRevocationList::from_der(&self.der)
            .map_err(|e| CertError::InvalidCrl(e.to_string()))?;
        let mut issuer_known = false;
        for root in roots {
            let Ok((_, ca)) = x509_parser::parse_x509_certificate(root.as_ref()) else {
                continue;
            };
            if ca.subject().as_raw() != self.issuer.as_slice() {
                continue;
            }
            issuer_known = true;
            if crl.verify_signature(ca.public_key()).is_ok() {
                return Ok(());
            }
        }
        Err(CertError::InvalidCrl(if issuer_known {
            format!("list {} is not signed by its CA", hex(&self.number))
        } else {
            format!(
                "list {} comes from a CA this node does not trust",
                hex(&self.number)
            )
        }))
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The issuer's distinguished name (DER).
    pub fn issuer(&self) -> &[u8] {
        &self.issuer
    }

    /// How many serial numbers the list revokes.
    pub fn revoked_count(&self) -> usize {
        self.serials.len()
    }

    /// Whether the list (from `issuer`) revokes `serial` (as encoded in a certificate).
    pub fn revokes(&self, issuer: &[u8], serial: &[u8]) -> bool {
        self.issuer == issuer
            && self
                .serials
                .binary_search(&normalize_serial(serial))
                .is_ok()
    }

    /// Whether a CA of `roots` has the list's issuer name (whether or not it signed it).
    pub fn issuer_in(&self, roots: &[CertificateDer<'_>]) -> bool {
        roots.iter().any(|root| {
            x509_parser::parse_x509_certificate(root.as_ref())
                .is_ok_and(|(_, ca)| ca.subject().as_raw() == self.issuer.as_slice())
        })
    }

    /// The list's CRL number, big-endian without leading zero bytes.
    pub fn number(&self) -> &[u8] {
        &self.number
    }

    /// Whether this list supersedes `other` (same issuer, higher number).
    pub fn newer_than(&self, other: &RevocationList) -> bool {
        (self.number.len(), &self.number) > (other.number.len(), &other.number)
    }
}

/// The newest verified list of each CA.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationSet {
    lists: BTreeMap<Vec<u8>, RevocationList>,
}

impl RevocationSet {
    /// Keeps `list` if it is the first from its issuer or newer than the one held; returns
    /// whether it was kept. The caller has verified it.
    pub fn merge(&mut self, list: RevocationList) -> bool {
        match self.lists.get(&list.issuer) {
            Some(held) if !list.newer_than(held) => false,
            _ if self.lists.len() >= MAX_CRLS && !self.lists.contains_key(&list.issuer) => false,
            _ => {
                self.lists.insert(list.issuer.clone(), list);
                true
            }
        }
    }

    /// Merges every list of `other`; returns whether anything changed.
    pub fn merge_all(&mut self, other: &RevocationSet) -> bool {
        let mut changed = false;
        for list in other.lists.values() {
            changed |= self.merge(list.clone());
        }
        changed
    }

    /// Drops the lists no CA of `roots` signed (a CA that left the bundle takes its list
    /// along).
    pub fn retain_verified(&mut self, roots: &[CertificateDer<'_>]) {
        self.lists.retain(|_, list| list.verify(roots).is_ok());
    }

    /// The list held from `issuer` (a DER distinguished name), if any.
    pub fn from_issuer(&self, issuer: &[u8]) -> Option<&RevocationList> {
        self.lists.get(issuer)
    }

    /// The held lists, by issuer.
    pub fn lists(&self) -> impl Iterator<Item = &RevocationList> {
        self.lists.values()
    }

    /// The held lists' DER encodings.
    pub fn ders(&self) -> Vec<Vec<u8>> {
        self.lists.values().map(|l| l.der.clone()).collect()
    }

    /// Whether any held list revokes the certificate with this issuer and serial.
    pub fn revokes(&self, issuer: &[u8], serial: &[u8]) -> bool {
        self.lists
            .get(issuer)
            .is_some_and(|list| list.revokes(issuer, serial))
    }

    /// No lists held.
    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }
}
