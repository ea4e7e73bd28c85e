//! Identity and transport for a Consortia federation.
//!
//! This crate has one job: decide *who* is on the other end of a connection.
//! It runs the federation certificate authority (a directory of PEM files,
//! see [`store`]), issues and revokes partner certificates, and builds the
//! mutual-TLS 1.3 plumbing the coordinator's gRPC server ([`server`]) and the
//! partners' client agents ([`client`]) speak over. It also issues the console
//! certificates of the coordinator's web console ([`console`]).
//!
//! All keys are ECDSA P-256 in PKCS#8 PEM; all TLS is rustls with the `ring`
//! provider, TLS 1.3 only, ALPN `h2`. Revocation is by CRL, re-read by the
//! server when the file changes, so revoking a partner needs no restart.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod console;
mod crl;
pub mod error;
mod files;
pub mod identity;
pub mod names;
pub mod server;
pub mod store;

pub use client::{ClientTls, ClientTlsFiles, TlsConnector};
pub use console::{ConsoleRole, console_role};
pub use error::PkiError;
pub use identity::{
    PeerConnectInfo, PeerIdentity, peer_connect_info, peer_identity, read_ca_certificate,
    verify_partner_certificate,
};
pub use server::{HandshakeRefusal, PeerStream, RefusalObserver, ServerTls, ServerTlsFiles};
pub use store::{CertRecord, IssuedCert, Pki, Role};
