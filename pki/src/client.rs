//! The partner's side of mutual TLS: a tonic [`Channel`] over tokio-rustls.
//!
//! tonic is built without its own TLS features; [`ClientTls`] supplies a
//! connector ([`TlsConnector`]) that dials TCP, runs a TLS 1.3 handshake
//! (ALPN `h2`, server verified against the federation CA, our partner
//! certificate presented) and hands the stream to hyper.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint};

use crate::PkiError;
use crate::server::{load_cert_chain, load_private_key, load_single_cert};
use crate::store::Pki;

/// Default limit on dialling plus the TLS handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The files a partner's client agent reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// The federation CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// The partner certificate (PEM).
    pub cert: PathBuf,
    /// The partner private key (PKCS#8 PEM).
    pub key: PathBuf,
}

impl ClientTlsFiles {
    /// Partner `name`'s files in a PKI directory.
    pub fn for_partner(pki: &Pki, name: &str) -> Self {
        ClientTlsFiles {
            ca_cert: pki.ca_cert_path(),
            cert: pki.partner_cert_path(name),
            key: pki.partner_key_path(name),
        }
    }
}

/// TLS for a partner's client agent. Cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Loads the CA, the partner certificate and key, and builds the rustls
    /// configuration: TLS 1.3 only, ALPN `h2`, the server must present a
    /// certificate for the dialled name chained to the CA.
    pub fn new(files: ClientTlsFiles) -> Result<ClientTls, PkiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca = load_single_cert(&files.ca_cert, "PEM CA certificate")?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca)
            .map_err(|e| PkiError::parse(&files.ca_cert, "PEM CA certificate", e))?;
        let chain = load_cert_chain(&files.cert)?;
        let key = load_private_key(&files.key)?;
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }

    /// The rustls configuration, for use with `tokio_rustls::TlsConnector`.
    pub fn rustls_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }

    /// A tower connector that dials and runs TLS, verifying the server
    /// against `server_name` (a DNS name or IP address in its certificate).
    pub fn connector(&self, server_name: &str) -> Result<TlsConnector, PkiError> {
        let server_name =
            ServerName::try_from(server_name.to_owned()).map_err(|_| PkiError::ServerName {
                name: server_name.to_owned(),
            })?;
        Ok(TlsConnector {
            config: self.rustls_config(),
            server_name,
        })
    }

    /// Connects to the coordinator at `endpoint` (e.g.
    /// `https://127.0.0.1:7000`), verifying its certificate for
    /// `server_name`. Uses a 10 s connect timeout and TCP_NODELAY; use
    /// [`ClientTls::channel`] for other settings.
    pub async fn connect(&self, endpoint: &str, server_name: &str) -> Result<Channel, PkiError> {
        self.channel(default_endpoint(endpoint)?, server_name).await
    }

    /// Like [`ClientTls::connect`] but connects on first use (and reconnects
    /// after failures) instead of now.
    pub fn connect_lazy(&self, endpoint: &str, server_name: &str) -> Result<Channel, PkiError> {
        let connector = self.connector(server_name)?;
        Ok(default_endpoint(endpoint)?.connect_with_connector_lazy(connector))
    }

    /// Connects through a caller-configured [`Endpoint`] (timeouts,
    /// keep-alive, …).
    pub async fn channel(
        &self,
        endpoint: Endpoint,
        server_name: &str,
    ) -> Result<Channel, PkiError> {
        let connector = self.connector(server_name)?;
        let uri = endpoint.uri().to_string();
        endpoint
            .connect_with_connector(connector)
            .await
            .map_err(|source| PkiError::Connect {
                endpoint: uri,
                source,
            })
    }
}

/// HTTP/2 flow-control window of one stream.
pub const STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
/// HTTP/2 flow-control window of one connection.
pub const CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

fn default_endpoint(endpoint: &str) -> Result<Endpoint, PkiError> {
    let invalid = |reason: String| PkiError::Endpoint {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let parsed = Endpoint::from_shared(endpoint.to_owned()).map_err(|e| invalid(e.to_string()))?;
    if parsed.uri().host().is_none() {
        return Err(invalid("no host".into()));
    }
    match parsed.uri().scheme_str() {
        Some("https") => {}
        _ => return Err(invalid("the scheme must be https".into())),
    }
    // Models and ciphertexts stream in megabyte messages: HTTP/2 windows of a
    // few MiB keep the pipe full instead of waiting on window updates.
    Ok(parsed
        .connect_timeout(DEFAULT_CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES)))
}

/// A tower service from a URI to a TLS stream: dials the URI's host and port
/// (443 if absent) and runs the TLS 1.3 handshake. Given to
/// [`Endpoint::connect_with_connector`].
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl tower::Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.config));
        let server_name = self.server_name.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "URI has no host"))?;
            // IPv6 literals come bracketed in URIs.
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}
