//! Signing certificate revocation lists with the cluster CA, for `canopy certs revoke`.
//!
//! Parsing and checking CRLs on the nodes is not here (see `crl`): this is the CA's side.

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use time::OffsetDateTime;

use crate::certs::{CertError, CertificateAuthority};

/// Why a certificate was revoked (RFC 5280 §5.3.1), as far as Canopy operators need to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationReason {
    /// No reason given; the CRL entry then carries no reason code.
    Unspecified,
    /// The node's private key leaked or may have.
    KeyCompromise,
    /// The CA's private key leaked or may have.
    CaCompromise,
    /// The node's role, region or owner changed.
    AffiliationChanged,
    /// A newer certificate replaces it.
    Superseded,
    /// The node is gone for good.
    CessationOfOperation,
    /// The node may no longer act in its role.
    PrivilegeWithdrawn,
}

impl RevocationReason {
    fn to_rcgen(self) -> rcgen::RevocationReason {
        match self {
            RevocationReason::Unspecified => rcgen::RevocationReason::Unspecified,
            RevocationReason::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
            RevocationReason::CaCompromise => rcgen::RevocationReason::CaCompromise,
            RevocationReason::AffiliationChanged => rcgen::RevocationReason::AffiliationChanged,
            RevocationReason::Superseded => rcgen::RevocationReason::Superseded,
            RevocationReason::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
            RevocationReason::PrivilegeWithdrawn => rcgen::RevocationReason::PrivilegeWithdrawn,
        }
    }
}

/// One entry of a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedSerial {
    /// The revoked certificate's serial number, big-endian.
    pub serial: Vec<u8>,
    /// When the CA revoked it.
    pub revoked_at: OffsetDateTime,
    /// Why, if the operator said.
    pub reason: Option<RevocationReason>,
}

impl CertificateAuthority {
    /// Signs a CRL (PEM, one `X509 CRL` block) listing `revoked`, with CRL number `number`,
    /// issued now and valid until `next_update`.
    ///
    /// The CRL's issuer is this CA's subject DN and it names its key with an authority key
    /// identifier, so a verifier holding several CAs finds the right one. `number` must grow
    /// with every CRL this CA signs; the caller keeps the count.
    pub fn revocation_list(
        &self,
        number: u64,
        revoked: &[RevokedSerial],
        next_update: OffsetDateTime,
    ) -> Result<String, CertError> {
        let this_update = OffsetDateTime::now_utc();
        if next_update <= this_update {
            return Err(CertError::Validity(format!(
                "CRL next_update {next_update} is not after now ({this_update})"
            )));
        }
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|entry| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&entry.serial),
                    revocation_time: entry.revoked_at,
                    reason_code: entry.reason.map(RevocationReason::to_rcgen),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{default_validity, pem_certificates, CertRole, CertificateInfo, Identity};
    use x509_parser::prelude::{FromDer, X509Certificate};
    use x509_parser::revocation_list::CertificateRevocationList;

    fn crl_der(pem: &str) -> Vec<u8> {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
        assert_eq!(block.label, "X509 CRL");
        block.contents
    }

    #[test]
    fn crl_lists_the_serial_and_number_and_verifies_with_the_ca_key() {
        let ca = CertificateAuthority::generate_generation("lab", 3).expect("ca");
        let identity = Identity {
            cluster: "lab".into(),
            node_id: 42,
            role: CertRole::Client,
            region: "eu".into(),
        };
        let (not_before, not_after) = default_validity();
        let issued = ca.issue(&identity, not_before, not_after).expect("issue");
        let serial = CertificateInfo::from_pem(&issued.cert_pem).expect("info")[0]
            .serial
            .clone();
        let now = OffsetDateTime::now_utc();
        let pem = ca
            .revocation_list(
                7,
                &[RevokedSerial {
                    serial: serial.clone(),
                    revoked_at: now,
                    reason: Some(RevocationReason::KeyCompromise),
                }],
                now + time::Duration::days(30),
            )
            .expect("crl");

        let der = crl_der(&pem);
        let (rest, crl) = x509_parser::parse_x509_crl(&der).expect("parse");
        assert!(rest.is_empty());
        assert_eq!(crl.crl_number().map(|n| n.to_u64_digits()), Some(vec![7]));
        let listed: Vec<Vec<u8>> = crl
            .iter_revoked_certificates()
            .map(|r| r.user_certificate.to_bytes_be())
            .collect();
        assert_eq!(listed, vec![serial]);

        let ca_der = pem_certificates(&ca.cert_pem).expect("ca der").remove(0);
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).expect("ca cert");
        assert_eq!(crl.issuer(), ca_cert.subject());
        crl.verify_signature(ca_cert.public_key())
            .expect("signed by the CA");
    }

    #[test]
    fn empty_crl_has_no_entries_and_a_past_next_update_is_refused() {
        let ca = CertificateAuthority::generate("lab").expect("ca");
        let now = OffsetDateTime::now_utc();
        let pem = ca
            .revocation_list(1, &[], now + time::Duration::days(1))
            .expect("crl");
        let der = crl_der(&pem);
        let (_, crl) = CertificateRevocationList::from_der(&der).expect("parse");
        assert_eq!(crl.iter_revoked_certificates().count(), 0);
        assert!(ca.revocation_list(2, &[], now).is_err());
    }
}
