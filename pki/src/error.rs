//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while managing the PKI or setting up TLS.
///
/// Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// The directory holds no PKI.
    #[error("no PKI at {}: run `consortia pki init` first", dir.display())]
    NotInitialised {
        /// The directory looked at.
        dir: PathBuf,
    },

    /// `init` found an existing PKI and will not overwrite it.
    #[error(
        "a PKI already exists at {} ({} is present): refusing to overwrite it; \
         choose another directory, or remove the old one deliberately",
        dir.display(), found.display()
    )]
    AlreadyExists {
        /// The directory given to `init`.
        dir: PathBuf,
        /// The file that shows a PKI is there.
        found: PathBuf,
    },

    /// A partner name breaks the naming rules.
    #[error("invalid partner name {name:?}: {reason}")]
    InvalidName {
        /// The offending name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// The same partner name appears twice in one `init`.
    #[error("partner name {name:?} is given more than once (names are compared ignoring case)")]
    DuplicateName {
        /// The repeated name.
        name: String,
    },

    /// `issue` was asked for a name that already has an active certificate.
    #[error(
        "{name:?} already has an active certificate: revoke it first with \
         `consortia pki revoke {name}` if you mean to replace it"
    )]
    NameTaken {
        /// The name asked for.
        name: String,
    },

    /// No certificate by that name.
    #[error("no partner certificate named {name:?}: see `consortia pki list`")]
    UnknownName {
        /// The name asked for.
        name: String,
    },

    /// The certificate is already revoked.
    #[error("the certificate of {name:?} is already revoked; nothing to do")]
    AlreadyRevoked {
        /// The name asked for.
        name: String,
    },

    /// A coordinator host is neither a DNS name nor an IP address.
    #[error("invalid coordinator host {host:?}: give a DNS name or an IP address")]
    InvalidHost {
        /// The offending host.
        host: String,
    },

    /// `init` was given no coordinator host.
    #[error("no coordinator host given: give at least one DNS name or IP address")]
    NoHosts,

    /// A validity period that ends before it starts.
    #[error("invalid validity period: not_after must be later than not_before")]
    InvalidValidity,

    /// A file system operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done ("read", "create", …).
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A file is too big to be what it claims to be.
    #[error("{} is larger than {limit} bytes: it is not a certificate, key, CRL or index file", path.display())]
    TooLarge {
        /// The file concerned.
        path: PathBuf,
        /// The size limit.
        limit: u64,
    },

    /// A PEM/DER/JSON file could not be understood.
    #[error("cannot use {}: {reason}; check that it is a {what}", path.display())]
    Parse {
        /// The file concerned.
        path: PathBuf,
        /// What the file should be.
        what: &'static str,
        /// Why it was rejected.
        reason: String,
    },

    /// Certificate or CRL generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),

    /// rustls refused the configuration (e.g. key and certificate do not match).
    #[error("TLS configuration rejected: {0}; check that the key file belongs to the certificate")]
    Tls(#[from] rustls::Error),

    /// The client-certificate verifier could not be built.
    #[error(
        "client certificate verifier rejected its configuration: {0}; check the CA and CRL files"
    )]
    Verifier(#[from] rustls::server::VerifierBuilderError),

    /// The endpoint string is not a usable URI.
    #[error("invalid endpoint {endpoint:?}: {reason}; expected e.g. https://127.0.0.1:7000")]
    Endpoint {
        /// The endpoint given.
        endpoint: String,
        /// Why it was rejected.
        reason: String,
    },

    /// The server name is not a DNS name or IP address.
    #[error(
        "invalid server name {name:?}: give a DNS name or IP address listed in the coordinator certificate"
    )]
    ServerName {
        /// The name given.
        name: String,
    },

    /// Connecting to the coordinator failed.
    #[error(
        "cannot connect to {endpoint}: {source}; check that the coordinator is running, \
         that the server name matches its certificate and that your certificate is not revoked"
    )]
    Connect {
        /// The endpoint dialled.
        endpoint: String,
        /// The underlying error.
        #[source]
        source: tonic::transport::Error,
    },
}

impl PkiError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        PkiError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn parse(
        path: impl Into<PathBuf>,
        what: &'static str,
        reason: impl ToString,
    ) -> Self {
        PkiError::Parse {
            path: path.into(),
            what,
            reason: reason.to_string(),
        }
    }
}
