//! Reading a certificate back for the operator tooling: its serial, validity, names and the
//! SHA-256 fingerprint the cluster registry names CAs by. Nothing here verifies anything.

use time::OffsetDateTime;

use crate::certs::{certs_from_pem, parse_der, CertError};

/// What `canopy certs` records and shows about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The serial number, big-endian, without leading zero bytes (at least one byte).
    pub serial: Vec<u8>,
    /// Start of the validity period.
    pub not_before: OffsetDateTime,
    /// End of the validity period.
    pub not_after: OffsetDateTime,
    /// The subject DN, RFC 4514 style.
    pub subject: String,
    /// The issuer DN, RFC 4514 style.
    pub issuer: String,
    /// Whether basicConstraints says CA.
    pub is_ca: bool,
    /// SHA-256 of the DER certificate.
    pub fingerprint: [u8; 32],
}

impl CertificateInfo {
    /// Reads one DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let cert = parse_der(der)?;
        let validity = cert.validity();
        Ok(CertificateInfo {
            serial: normalize_serial(cert.raw_serial()),
            not_before: validity.not_before.to_datetime(),
            not_after: validity.not_after.to_datetime(),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            is_ca: cert.is_ca(),
            fingerprint: fingerprint(der),
        })
    }

    /// Reads every certificate of a PEM text, in order (at least one).
    pub fn from_pem(pem: &str) -> Result<Vec<Self>, CertError> {
        pem_certificates(pem)?
            .iter()
            .map(|der| Self::from_der(der))
            .collect()
    }

    /// [`CertificateInfo::serial`] as lowercase hex.
    pub fn serial_hex(&self) -> String {
        hex(&self.serial)
    }

    /// [`CertificateInfo::fingerprint`] as lowercase hex.
    pub fn fingerprint_hex(&self) -> String {
        hex(&self.fingerprint)
    }
}

/// SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The DER bytes of every `CERTIFICATE` block of a PEM text, in order; at least one.
pub fn pem_certificates(pem: &str) -> Result<Vec<Vec<u8>>, CertError> {
    Ok(certs_from_pem(pem)?
        .into_iter()
        .map(|der| der.as_ref().to_vec())
        .collect())
}

/// Lowercase hex, no separators.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Parses a serial number as people paste it: hex, any case, optionally with a `0x` prefix or
/// `:` separators (as openssl prints serials). Returns [`CertificateInfo::serial`]'s form.
pub fn parse_serial(text: &str) -> Result<Vec<u8>, CertError> {
    let invalid = || CertError::InvalidCertificate(format!("{text:?} is not a hex serial number"));
    let trimmed = text.trim();
    let digits: String = trimmed
        .strip_prefix("0x")
        .or_else(|| trimmed.strip_prefix("0X"))
        .unwrap_or(trimmed)
        .chars()
        .filter(|c| *c != ':')
        .collect();
    // 20 bytes is RFC 5280's limit; a longer input is a paste error, not a serial.
    if digits.is_empty() || digits.len() > 42 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(invalid());
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    let bytes = (0..padded.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&padded[i..i + 2], 16).map_err(|_| invalid()))
        .collect::<Result<Vec<u8>, _>>()?;
    Ok(normalize_serial(&bytes))
}

/// Drops the leading zero bytes DER adds to keep a serial positive, so one serial has one
/// spelling whichever way it was read.
/// A big-endian integer without its leading zero bytes (DER adds one to keep a serial with
/// its high bit set positive; CRL writers and certificate writers may disagree on it).
pub(crate) fn normalize_serial(raw: &[u8]) -> Vec<u8> {
    match raw.iter().position(|b| *b != 0) {
        Some(first) => raw[first..].to_vec(),
        None => vec![0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{default_validity, CertRole, CertificateAuthority, Identity};

    #[test]
    fn reads_serial_validity_and_fingerprint_of_an_issued_certificate() {
        let ca = CertificateAuthority::generate("lab").expect("ca");
        let identity = Identity {
            cluster: "lab".into(),
            node_id: 7,
            role: CertRole::Router,
            region: "eu".into(),
        };
        let (not_before, not_after) = default_validity();
        let issued = ca.issue(&identity, not_before, not_after).expect("issue");
        let info = CertificateInfo::from_pem(&issued.cert_pem).expect("info");
        let [leaf] = info.as_slice() else {
            panic!("one certificate expected, got {}", info.len())
        };
        assert_eq!(leaf.not_after.unix_timestamp(), not_after.unix_timestamp());
        assert!(!leaf.is_ca);
        assert!(leaf.subject.contains("7.lab.canopy"), "{}", leaf.subject);
        assert_eq!(parse_serial(&leaf.serial_hex()).expect("hex"), leaf.serial);
        let ca_info = CertificateInfo::from_pem(&ca.cert_pem).expect("ca info");
        assert!(ca_info[0].is_ca);
        assert_eq!(leaf.issuer, ca_info[0].subject);
        assert_eq!(leaf.fingerprint_hex().len(), 64);
        assert_ne!(leaf.fingerprint, ca_info[0].fingerprint);
    }

    #[test]
    fn serials_parse_in_the_usual_spellings() {
        for text in ["0a:1B", "0x0a1b", "A1B", "000a1b"] {
            assert_eq!(parse_serial(text).expect(text), vec![0x0a, 0x1b], "{text}");
        }
        assert_eq!(parse_serial("00").expect("zero"), vec![0]);
        for bad in ["", "xyz", "0x", "12 34"] {
            assert!(parse_serial(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn generations_have_distinct_subjects_and_the_same_cluster() {
        let one = CertificateAuthority::generate_generation("lab", 1).expect("gen 1");
        let two = CertificateAuthority::generate_generation("lab", 2).expect("gen 2");
        let subject = |ca: &CertificateAuthority| {
            CertificateInfo::from_pem(&ca.cert_pem).expect("info")[0]
                .subject
                .clone()
        };
        assert_ne!(subject(&one), subject(&two));
        assert!(subject(&two).contains("generation 2"), "{}", subject(&two));
        let reloaded = CertificateAuthority::from_pem(&two.cert_pem, &two.key_pem).expect("load");
        assert_eq!(reloaded.cluster(), Some("lab"));
    }
}
