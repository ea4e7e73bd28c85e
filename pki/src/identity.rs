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
