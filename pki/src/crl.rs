//! Reading and checking the federation's certificate revocation list.

use std::collections::HashSet;
use std::path::Path;

use rustls_pki_types::CertificateRevocationListDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::PkiError;

/// A CRL read from disk, whose signature has been checked against the CA.
#[derive(Debug, Clone)]
pub(crate) struct LoadedCrl {
    /// The CRL, for the rustls verifier.
    pub(crate) der: CertificateRevocationListDer<'static>,
    /// Serial numbers listed, with leading zero bytes removed.
    pub(crate) revoked: HashSet<Vec<u8>>,
}

impl LoadedCrl {
    /// Whether `serial` (big-endian, leading zeros ignored) is listed.
    pub(crate) fn contains(&self, serial: &[u8]) -> bool {
        self.revoked.contains(normalise_serial(serial))
    }
}

/// Strips leading zero bytes, so that `00 7f` and `7f` compare equal.
pub(crate) fn normalise_serial(serial: &[u8]) -> &[u8] {
    let start = serial
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(serial.len().saturating_sub(1));
    &serial[start..]
}

/// Parses a PEM CRL, checks it was issued and signed by the CA whose
/// certificate is `ca_der`, and collects the revoked serial numbers.
pub(crate) fn parse_crl(pem: &[u8], path: &Path, ca_der: &[u8]) -> Result<LoadedCrl, PkiError> {
    const WHAT: &str = "PEM certificate revocation list (X509 CRL) signed by the federation CA";
    let der = CertificateRevocationListDer::from_pem_slice(pem)
        .map_err(|e| PkiError::parse(path, WHAT, e))?;
    let (_, ca) = X509Certificate::from_der(ca_der).map_err(|e| {
        PkiError::parse(path, WHAT, format!("cannot parse the CA certificate: {e}"))
    })?;
    let (rest, crl) =
        CertificateRevocationList::from_der(&der).map_err(|e| PkiError::parse(path, WHAT, e))?;
    if !rest.is_empty() {
        return Err(PkiError::parse(path, WHAT, "trailing bytes after the CRL"));
    }
    if crl.issuer().as_raw() != ca.subject().as_raw() {
        return Err(PkiError::parse(
            path,
            WHAT,
            "the CRL was issued by another CA",
        ));
    }
    crl.verify_signature(ca.public_key())
        .map_err(|e| PkiError::parse(path, WHAT, format!("bad CRL signature: {e}")))?;
    let revoked = crl
        .iter_revoked_certificates()
        .map(|r| normalise_serial(r.raw_serial()).to_vec())
        .collect();
    Ok(LoadedCrl { der, revoked })
}

#[cfg(test)]
mod tests {
    use super::normalise_serial;

    #[test]
    fn serial_normalisation() {
        assert_eq!(normalise_serial(&[0, 0, 0x7f, 0]), &[0x7f, 0]);
        assert_eq!(normalise_serial(&[0x40, 1]), &[0x40, 1]);
        assert_eq!(normalise_serial(&[0, 0]), &[0]);
        assert_eq!(normalise_serial(&[]), &[] as &[u8]);
    }
}
