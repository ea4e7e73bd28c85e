//! Who is on the other end of an accepted connection.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::crl::normalise_serial;

/// The authenticated partner behind a connection: the common name and
/// serial number of the client certificate it presented.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// The certificate's common name, i.e. the partner name.
    pub name: String,
    /// The certificate's serial number, big-endian, without leading zeros.
    pub serial: Vec<u8>,
}

impl PeerIdentity {
    /// Reads the identity from a DER certificate. Returns a reason when the
    /// certificate cannot be parsed or has no single UTF-8 common name.
    pub fn from_certificate(cert: &CertificateDer<'_>) -> Result<PeerIdentity, String> {
        let (_, x509) = X509Certificate::from_der(cert)
            .map_err(|e| format!("cannot parse the client certificate: {e}"))?;
        let mut names = x509.subject().iter_common_name();
        let name = names
            .next()
            .ok_or("the client certificate has no common name")?
            .as_str()
            .map_err(|_| "the client certificate's common name is not a string")?
            .to_owned();
        if names.next().is_some() {
            return Err("the client certificate has several common names".into());
        }
        Ok(PeerIdentity {
            name,
            serial: normalise_serial(x509.raw_serial()).to_vec(),
        })
    }

    /// The serial number as lowercase hex (as in `index.json`).
    pub fn serial_hex(&self) -> String {
        self.serial.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Checks that `cert_der` is a partner certificate issued by the federation
/// CA whose certificate is `ca_der` (issuer name, CA signature, validity
/// period now) and returns the partner it names. Key holders use it to check
/// who signed an encrypted update the coordinator relays. Revocation is not
/// checked here: the coordinator checks it on every connection.
pub fn verify_partner_certificate(ca_der: &[u8], cert_der: &[u8]) -> Result<PeerIdentity, String> {
    let (_, ca) = X509Certificate::from_der(ca_der)
        .map_err(|e| format!("cannot parse the CA certificate: {e}"))?;
    let (rest, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| format!("cannot parse the partner certificate: {e}"))?;
    if !rest.is_empty() {
        return Err("trailing bytes after the partner certificate".into());
    }
    if cert.issuer().as_raw() != ca.subject().as_raw() {
        return Err("the certificate was issued by another CA".into());
    }
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|e| format!("the certificate's CA signature does not verify: {e}"))?;
    if !cert.validity().is_valid() {
        return Err("the certificate is outside its validity period".into());
    }
    let identity = PeerIdentity::from_certificate(&CertificateDer::from(cert_der))?;
    if identity.name == "coordinator" {
        return Err("the coordinator's certificate is not a partner certificate".into());
    }
    if crate::console::console_role(cert_der)?.is_some() {
        return Err("a console certificate is not a partner certificate".into());
    }
    Ok(identity)
}

/// The federation CA's certificate (DER) from a PEM file's first certificate.
pub fn read_ca_certificate(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_file(path)
        .map(|c| c.to_vec())
        .map_err(|e| format!("{}: cannot read a PEM certificate: {e}", path.display()))
}

/// Connection information attached by the server to every request received
/// on a [`crate::PeerStream`] (tonic puts it in the request extensions).
#[derive(Debug, Clone)]
pub struct PeerConnectInfo {
    pub(crate) remote_addr: SocketAddr,
    pub(crate) local_addr: Option<SocketAddr>,
    pub(crate) identity: PeerIdentity,
    pub(crate) certs: Arc<Vec<CertificateDer<'static>>>,
}

impl PeerConnectInfo {
    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote_addr
    }

    /// The local address the peer connected to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The verified identity of the peer.
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }

    /// The certificate chain the peer presented, end-entity first.
    pub fn peer_certs(&self) -> Arc<Vec<CertificateDer<'static>>> {
        Arc::clone(&self.certs)
    }
}

/// The connection information of a request served over a
/// [`crate::PeerStream`], if any.
pub fn peer_connect_info<T>(req: &tonic::Request<T>) -> Option<&PeerConnectInfo> {
    req.extensions().get::<PeerConnectInfo>()
}

/// The authenticated partner that sent `req`.
///
/// Returns `UNAUTHENTICATED` when the request did not arrive over a mutually
/// authenticated connection accepted by [`crate::ServerTls::incoming`].
pub fn peer_identity<T>(req: &tonic::Request<T>) -> Result<PeerIdentity, tonic::Status> {
    peer_connect_info(req)
        .map(|info| info.identity.clone())
        .ok_or_else(|| {
            tonic::Status::unauthenticated(
                "no client certificate: connect over mutual TLS with a partner certificate",
            )
        })
}
