//! The coordinator's side of mutual TLS.
//!
//! [`ServerTls`] builds a rustls server configuration (TLS 1.3 only, ALPN
//! `h2`) that demands a client certificate chained to the federation CA and
//! not listed in the CRL. The CRL is re-read whenever `crl.pem` changes
//! (checked with one `stat` per handshake), so `consortia pki revoke` takes
//! effect on the next connection without a restart.
//!
//! [`ServerTls::incoming`] turns a TCP listener into a stream of
//! authenticated [`PeerStream`]s for
//! `tonic::transport::Server::serve_with_incoming_shutdown`. Handshakes run
//! concurrently under a timeout; a failed handshake is logged with the peer
//! address and the reason and is skipped, never yielded as an error.

use std::fmt;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::PkiError;
use crate::crl::{LoadedCrl, parse_crl};
use crate::files::{MAX_PEM_BYTES, read_limited, read_open_limited};
use crate::identity::{PeerConnectInfo, PeerIdentity};
use crate::store::Pki;

/// Default limit on one TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default limit on handshakes in progress at once; further connections wait
/// in the kernel's accept queue.
pub const DEFAULT_MAX_CONCURRENT_HANDSHAKES: usize = 256;
/// Authenticated connections waiting for the server to pick them up.
const READY_QUEUE: usize = 64;
/// Pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The files the coordinator's TLS server reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// The federation CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// The coordinator certificate (PEM).
    pub cert: PathBuf,
    /// The coordinator private key (PKCS#8 PEM).
    pub key: PathBuf,
    /// The CRL (PEM), re-read when it changes.
    pub crl: PathBuf,
}

impl ServerTlsFiles {
    /// The coordinator's files in a PKI directory.
    pub fn from_pki(pki: &Pki) -> Self {
        ServerTlsFiles {
            ca_cert: pki.ca_cert_path(),
            cert: pki.coordinator_cert_path(),
            key: pki.coordinator_key_path(),
            crl: pki.crl_path(),
        }
    }
}

/// TLS for the coordinator: a rustls server configuration with a client
/// verifier that follows `crl.pem`. Cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    verifier: Arc<CrlReloadingVerifier>,
    handshake_timeout: Duration,
    max_concurrent_handshakes: usize,
    on_refusal: Option<RefusalObserver>,
}

/// Why a TLS handshake was refused, as a stable code for metrics
/// ([`ServerTls::with_refusal_observer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeRefusal {
    /// The client presented no certificate.
    NoCertificate,
    /// The certificate is not signed by the federation CA (another CA, or one of the same name).
    OtherCa,
    /// The certificate has expired.
    Expired,
    /// The certificate is not valid yet.
    NotValidYet,
    /// The certificate is on the revocation list.
    Revoked,
    /// The certificate is not for TLS client authentication.
    WrongPurpose,
    /// The handshake did not finish in time.
    Timeout,
    /// Anything else: an incompatible client, a closed connection, another TLS error.
    Other,
}

impl HandshakeRefusal {
    /// The code, in snake case (a metric label value).
    pub fn code(self) -> &'static str {
        match self {
            HandshakeRefusal::NoCertificate => "no_certificate",
            HandshakeRefusal::OtherCa => "other_ca",
            HandshakeRefusal::Expired => "expired",
            HandshakeRefusal::NotValidYet => "not_valid_yet",
            HandshakeRefusal::Revoked => "revoked",
            HandshakeRefusal::WrongPurpose => "wrong_purpose",
            HandshakeRefusal::Timeout => "timeout",
            HandshakeRefusal::Other => "other",
        }
    }
}

/// Called with the reason of each refused handshake.
pub type RefusalObserver = Arc<dyn Fn(HandshakeRefusal) + Send + Sync>;

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("crl", &self.verifier.crl_path)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_concurrent_handshakes", &self.max_concurrent_handshakes)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the CA, the server certificate and key and the CRL, and builds
    /// the configuration: TLS 1.3 only, ALPN `h2`, client certificates
    /// required, no session resumption (so every connection's certificate
    /// is checked against the current CRL). Console certificates
    /// ([`crate::console`]) are refused: only partners connect here.
    pub fn new(files: ServerTlsFiles) -> Result<ServerTls, PkiError> {
        Self::build(files, Accept::Partners)
    }

    /// The same for the coordinator's web console: ALPN `http/1.1`, and only
    /// console certificates ([`crate::console`]) of the federation CA are
    /// accepted; a partner's certificate is refused at the handshake.
    pub fn for_console(files: ServerTlsFiles) -> Result<ServerTls, PkiError> {
        Self::build(files, Accept::Console)
    }

    fn build(files: ServerTlsFiles, accept: Accept) -> Result<ServerTls, PkiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca_der = load_single_cert(&files.ca_cert, "PEM CA certificate")?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca_der.clone())
            .map_err(|e| PkiError::parse(&files.ca_cert, "PEM CA certificate", e))?;
        let roots = Arc::new(roots);
        let verifier = Arc::new(CrlReloadingVerifier::new(
            Arc::clone(&roots),
            Arc::clone(&provider),
            ca_der,
            files.crl.clone(),
            accept,
        )?);

        let chain = load_cert_chain(&files.cert)?;
        let key = load_private_key(&files.key)?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![match accept {
            Accept::Partners => b"h2".to_vec(),
            Accept::Console => b"http/1.1".to_vec(),
        }];
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(ServerTls {
            config: Arc::new(config),
            verifier,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_concurrent_handshakes: DEFAULT_MAX_CONCURRENT_HANDSHAKES,
            on_refusal: None,
        })
    }

    /// Calls `observer` with the reason of every handshake [`incoming`](Self::incoming)
    /// refuses (the coordinator counts them).
    pub fn with_refusal_observer(mut self, observer: RefusalObserver) -> Self {
        self.on_refusal = Some(observer);
        self
    }

    /// Sets the limit on one TLS handshake (default 10 s).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets how many handshakes may run at once (default 256, at least 1).
    pub fn with_max_concurrent_handshakes(mut self, max: usize) -> Self {
        self.max_concurrent_handshakes = max.max(1);
        self
    }

    /// The rustls configuration, for use with `tokio_rustls::TlsAcceptor`.
    pub fn rustls_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config)
    }

    /// Re-reads the CRL now, whether or not the file looks changed (e.g. on
    /// SIGHUP). On error the previous CRL stays in force.
    pub fn reload_crl(&self) -> Result<(), PkiError> {
        self.verifier.reload()
    }

    /// Whether the certificate with this serial number is revoked by the
    /// current CRL (re-read first if the file changed). Lets the coordinator
    /// end the session of a partner revoked after it connected.
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        self.verifier.refresh_if_changed();
        self.verifier.current().crl.contains(serial)
    }

    /// The caller of `req`, if its certificate is still good: returns
    /// `UNAUTHENTICATED` when the request carries no client certificate and
    /// `PERMISSION_DENIED` when the certificate was revoked after the
    /// connection was made (the current CRL is consulted).
    pub fn authorize<T>(&self, req: &tonic::Request<T>) -> Result<PeerIdentity, tonic::Status> {
        let identity = crate::identity::peer_identity(req)?;
        if self.is_revoked(&identity.serial) {
            return Err(tonic::Status::permission_denied(format!(
                "the certificate of {:?} (serial {}) has been revoked",
                identity.name,
                identity.serial_hex()
            )));
        }
        Ok(identity)
    }

    /// Accepts TCP connections from `listener` and runs the TLS handshakes,
    /// yielding only authenticated connections.
    ///
    /// Handshakes run concurrently (at most
    /// [`with_max_concurrent_handshakes`](Self::with_max_concurrent_handshakes)
    /// at once), each under the handshake timeout. A failed or timed-out
    /// handshake is logged with `tracing::warn!` (peer address and reason)
    /// and skipped; the stream never yields an error, so a bad client cannot
    /// stop tonic's server. Dropping the stream stops accepting and closes
    /// the listener.
    ///
    /// Must be called within a Tokio runtime (it spawns the accept task).
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> impl Stream<Item = Result<PeerStream, io::Error>> + Send + 'static {
        let (tx, rx) = mpsc::channel(READY_QUEUE);
        let acceptor = TlsAcceptor::from(Arc::clone(&self.config));
        tokio::spawn(accept_loop(
            listener,
            acceptor,
            tx,
            self.handshake_timeout,
            Arc::new(Semaphore::new(self.max_concurrent_handshakes)),
            self.on_refusal.clone(),
        ));
        ReceiverStream::new(rx)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<Result<PeerStream, io::Error>>,
    handshake_timeout: Duration,
    handshakes: Arc<Semaphore>,
    on_refusal: Option<RefusalObserver>,
) {
    loop {
        let permit = tokio::select! {
            () = tx.closed() => break,
            permit = Arc::clone(&handshakes).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            () = tx.closed() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a TCP connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        // Best effort: gRPC traffic is latency-bound.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        let on_refusal = on_refusal.clone();
        tokio::spawn(async move {
            let outcome = handshake(acceptor, tcp, peer, handshake_timeout).await;
            drop(permit);
            match outcome {
                Ok(stream) => {
                    tracing::debug!(
                        peer = %peer,
                        partner = %stream.info.identity.name,
                        "mutual TLS handshake complete"
                    );
                    // Fails only when the server has stopped.
                    let _ = tx.send(Ok(stream)).await;
                }
                Err((code, reason)) => {
                    tracing::warn!(peer = %peer, reason = code.code(), detail = %reason, "TLS handshake refused");
                    if let Some(observe) = &on_refusal {
                        observe(code);
                    }
                }
            }
        });
    }
    tracing::debug!("stopped accepting TLS connections");
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<PeerStream, (HandshakeRefusal, String)> {
    let local_addr = tcp.local_addr().ok();
    let tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Err(_) => {
            let why = format!("handshake timed out after {timeout:?}");
            return Err((HandshakeRefusal::Timeout, why));
        }
        Ok(Err(e)) => return Err(describe_handshake_error(&e)),
        Ok(Ok(tls)) => tls,
    };
    let certs: Vec<CertificateDer<'static>> = match tls.get_ref().1.peer_certificates() {
        Some(certs) if !certs.is_empty() => certs.iter().map(|c| c.clone().into_owned()).collect(),
        _ => {
            let why = "no client certificate".to_string();
            return Err((HandshakeRefusal::NoCertificate, why));
        }
    };
    let identity =
        PeerIdentity::from_certificate(&certs[0]).map_err(|why| (HandshakeRefusal::Other, why))?;
    Ok(PeerStream {
        inner: tls,
        info: PeerConnectInfo {
            remote_addr: peer,
            local_addr,
            identity,
            certs: Arc::new(certs),
        },
    })
}

/// Why a server handshake failed: its code, and a short, operator-facing reason.
fn describe_handshake_error(e: &io::Error) -> (HandshakeRefusal, String) {
    let code = handshake_refusal(e);
    (code, describe_handshake_failure(e))
}

/// The code of a failed server handshake.
fn handshake_refusal(e: &io::Error) -> HandshakeRefusal {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return HandshakeRefusal::Other;
    };
    match tls {
        rustls::Error::NoCertificatesPresented => HandshakeRefusal::NoCertificate,
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                HandshakeRefusal::OtherCa
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                HandshakeRefusal::Expired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                HandshakeRefusal::NotValidYet
            }
            CertificateError::Revoked => HandshakeRefusal::Revoked,
            CertificateError::InvalidPurpose
            | CertificateError::InvalidPurposeContext { .. }
            | CertificateError::ApplicationVerificationFailure => HandshakeRefusal::WrongPurpose,
            _ => HandshakeRefusal::Other,
        },
        _ => HandshakeRefusal::Other,
    }
}

/// A short, operator-facing reason for a failed server handshake.
fn describe_handshake_failure(e: &io::Error) -> String {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                "the client closed the connection during the handshake (it may reject our certificate)"
                    .into()
            }
            _ => format!("connection error during the handshake: {e}"),
        };
    };
    match tls {
        rustls::Error::NoCertificatesPresented => "no client certificate presented".into(),
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => {
                "client certificate has an unknown issuer (not signed by the federation CA)".into()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "client certificate expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "client certificate not valid yet".into()
            }
            CertificateError::Revoked => "client certificate revoked".into(),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "certificate not valid for TLS client authentication".into()
            }
            CertificateError::ApplicationVerificationFailure => {
                "the certificate is for another service (a console certificate at the \
                 federation port, or a partner's at the console)"
                    .into()
            }
            CertificateError::BadSignature => {
                "client certificate signature does not verify (issued by another CA of the same name?)"
                    .into()
            }
            other => format!("invalid client certificate: {other}"),
        },
        rustls::Error::PeerIncompatible(why) => {
            format!("incompatible client (TLS 1.3 with ECDSA P-256 is required): {why:?}")
        }
        rustls::Error::AlertReceived(alert) => format!("the client aborted with alert {alert:?}"),
        other => format!("TLS error: {other}"),
    }
}

/// An authenticated TLS connection accepted by [`ServerTls::incoming`].
///
/// It implements tonic's [`Connected`], attaching a [`PeerConnectInfo`] to
/// every request, which [`crate::peer_identity`] reads.
pub struct PeerStream {
    inner: TlsStream<TcpStream>,
    info: PeerConnectInfo,
}

impl fmt::Debug for PeerStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerStream")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl PeerStream {
    /// Who is connected.
    pub fn identity(&self) -> &PeerIdentity {
        &self.info.identity
    }

    /// Connection details (addresses, identity, certificate chain).
    pub fn connect_info(&self) -> &PeerConnectInfo {
        &self.info
    }

    /// The underlying tokio-rustls stream.
    pub fn get_ref(&self) -> &TlsStream<TcpStream> {
        &self.inner
    }

    /// Unwraps the tokio-rustls stream.
    pub fn into_inner(self) -> TlsStream<TcpStream> {
        self.inner
    }
}

impl Connected for PeerStream {
    type ConnectInfo = PeerConnectInfo;

    fn connect_info(&self) -> PeerConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Identifies one version of a file: a rename, a rewrite or a touch changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl FileStamp {
    fn of(meta: &fs::Metadata) -> Self {
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok(),
        }
    }
}

/// The verifier in force, built from one version of the CRL.
#[derive(Debug)]
struct CrlSnapshot {
    stamp: FileStamp,
    crl: LoadedCrl,
    verifier: Arc<dyn ClientCertVerifier>,
}

/// Which client certificates a listener takes, beyond the CA's checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accept {
    /// Partners' (and no console certificate): the federation's gRPC port.
    Partners,
    /// Console certificates only: the web console.
    Console,
}

impl Accept {
    /// Refuses a certificate of the wrong kind with
    /// `CertificateError::ApplicationVerificationFailure`.
    fn check(self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let role = crate::console::console_role(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        match (self, role) {
            (Accept::Partners, None) | (Accept::Console, Some(_)) => Ok(()),
            _ => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
        }
    }
}

/// A client-certificate verifier that rebuilds rustls's
/// [`WebPkiClientVerifier`] whenever the CRL file changes.
#[derive(Debug)]
struct CrlReloadingVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    ca_der: CertificateDer<'static>,
    crl_path: PathBuf,
    accept: Accept,
    root_hints: Vec<DistinguishedName>,
    current: RwLock<Arc<CrlSnapshot>>,
    /// The last CRL version that failed to load, so it is reported once.
    failed: RwLock<Option<FileStamp>>,
}

impl CrlReloadingVerifier {
    fn new(
        roots: Arc<RootCertStore>,
        provider: Arc<CryptoProvider>,
        ca_der: CertificateDer<'static>,
        crl_path: PathBuf,
        accept: Accept,
    ) -> Result<Self, PkiError> {
        let snapshot = build_snapshot(&roots, &provider, &ca_der, &crl_path)?;
        Ok(CrlReloadingVerifier {
            root_hints: roots.subjects(),
            roots,
            provider,
            ca_der,
            crl_path,
            accept,
            current: RwLock::new(Arc::new(snapshot)),
            failed: RwLock::new(None),
        })
    }

    fn current(&self) -> Arc<CrlSnapshot> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn reload(&self) -> Result<(), PkiError> {
        let snapshot = build_snapshot(&self.roots, &self.provider, &self.ca_der, &self.crl_path)?;
        tracing::info!(
            crl = %self.crl_path.display(),
            revoked = snapshot.crl.revoked.len(),
            "certificate revocation list loaded"
        );
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(snapshot);
        *self.failed.write().unwrap_or_else(PoisonError::into_inner) = None;
        Ok(())
    }

    /// One `stat`; reloads if the file differs from the version in force.
    /// On failure the previous CRL stays in force and the error is logged.
    fn refresh_if_changed(&self) {
        let stamp = match fs::metadata(&self.crl_path) {
            Ok(meta) => FileStamp::of(&meta),
            Err(e) => {
                self.report_failure(None, &PkiError::io("read", &self.crl_path, e));
                return;
            }
        };
        if self.current().stamp == stamp {
            return;
        }
        if *self.failed.read().unwrap_or_else(PoisonError::into_inner) == Some(stamp) {
            return;
        }
        if let Err(e) = self.reload() {
            self.report_failure(Some(stamp), &e);
        }
    }

    fn report_failure(&self, stamp: Option<FileStamp>, e: &PkiError) {
        let mut failed = self.failed.write().unwrap_or_else(PoisonError::into_inner);
        if stamp.is_none() || *failed != stamp {
            tracing::error!(error = %e, "cannot reload the CRL; the previous CRL stays in force");
        }
        *failed = stamp;
    }
}

fn build_snapshot(
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    ca_der: &CertificateDer<'static>,
    crl_path: &Path,
) -> Result<CrlSnapshot, PkiError> {
    let file = fs::File::open(crl_path).map_err(|e| PkiError::io("read", crl_path, e))?;
    // Stamp the very file read, so a concurrent replacement is noticed later.
    let meta = file
        .metadata()
        .map_err(|e| PkiError::io("read", crl_path, e))?;
    let pem = read_open_limited(file, crl_path, MAX_PEM_BYTES)?;
    let crl = parse_crl(&pem, crl_path, ca_der)?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(roots), Arc::clone(provider))
            .with_crls([crl.der.clone()])
            .build()?;
    Ok(CrlSnapshot {
        stamp: FileStamp::of(&meta),
        crl,
        verifier,
    })
}

impl ClientCertVerifier for CrlReloadingVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.root_hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.refresh_if_changed();
        let verified =
            self.current()
                .verifier
                .verify_client_cert(end_entity, intermediates, now)?;
        self.accept.check(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Reads a PEM file holding exactly one certificate.
pub(crate) fn load_single_cert(
    path: &Path,
    what: &'static str,
) -> Result<CertificateDer<'static>, PkiError> {
    let mut chain = load_cert_chain(path)?;
    if chain.len() != 1 {
        return Err(PkiError::parse(
            path,
            what,
            format!("expected one certificate, found {}", chain.len()),
        ));
    }
    Ok(chain.remove(0))
}

/// Reads a PEM file holding one or more certificates.
pub(crate) fn load_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    const WHAT: &str = "PEM certificate file";
    let pem = read_limited(path, MAX_PEM_BYTES)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::parse(path, WHAT, e))?;
    if chain.is_empty() {
        return Err(PkiError::parse(path, WHAT, "no certificate found"));
    }
    Ok(chain)
}

/// Reads a PEM private key (PKCS#8). The buffer is zeroized after parsing.
pub(crate) fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    let pem = zeroize::Zeroizing::new(read_limited(path, MAX_PEM_BYTES)?);
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        PkiError::parse(
            path,
            "PEM PKCS#8 private key (-----BEGIN PRIVATE KEY-----)",
            e,
        )
    })
}
