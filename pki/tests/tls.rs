//! The TLS layer on real sockets: who gets in, who is refused, and why.
//!
//! A small echo server takes authenticated streams from
//! `ServerTls::incoming`, writes the peer's common name back and closes. A
//! client that reads its own name back was accepted; one that gets an
//! error or nothing was refused. Every wait is bounded.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use consortia_pki::{ClientTls, ClientTlsFiles, Pki, ServerTls, ServerTlsFiles};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;

const WAIT: Duration = Duration::from_secs(10);

/// Log lines written during a test (the runtime is single-threaded, so a
/// thread-local subscriber sees the server's tasks).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Waits (bounded) until a warning containing `needle` was logged.
    async fn wait_for(&self, needle: &str) {
        for _ in 0..500 {
            if self.text().contains(needle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no log line containing {needle:?}; logs:\n{}", self.text());
    }
}

fn capture_logs() -> (Logs, tracing::subscriber::DefaultGuard) {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

struct Fixture {
    dir: tempfile::TempDir,
    pki: Pki,
    server: ServerTls,
    addr: SocketAddr,
    accepted: mpsc::Receiver<String>,
    _stop: oneshot::Sender<()>,
}

async fn start(partners: &[&str], timeout: Option<Duration>) -> Fixture {
    start_server(partners, timeout, false).await
}

/// The echo server with the console's TLS (`ServerTls::for_console`) when `console`.
async fn start_server(partners: &[&str], timeout: Option<Duration>, console: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let partners: Vec<String> = partners.iter().map(|s| s.to_string()).collect();
    let hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let pki = Pki::init(dir.path().join("pki"), &hosts, &partners).unwrap();
    let files = ServerTlsFiles::from_pki(&pki);
    let mut server = if console {
        ServerTls::for_console(files).unwrap()
    } else {
        ServerTls::new(files).unwrap()
    };
    if let Some(t) = timeout {
        server = server.with_handshake_timeout(t);
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = Box::pin(server.incoming(listener));
    let (accepted_tx, accepted) = mpsc::channel(16);
    let (stop, mut stopped) = oneshot::channel::<()>();
    // Echo server: stops when the test drops `_stop`, or after 60 s.
    tokio::spawn(tokio::time::timeout(Duration::from_secs(60), async move {
        loop {
            let next = tokio::select! {
                _ = &mut stopped => break,
                next = incoming.next() => next,
            };
            let Some(Ok(mut stream)) = next else { break };
            let name = stream.identity().name.clone();
            let _ = stream.write_all(format!("{name}\n").as_bytes()).await;
            let _ = stream.shutdown().await;
            let _ = accepted_tx.send(name).await;
        }
    }));
    Fixture {
        dir,
        pki,
        server,
        addr,
        accepted,
        _stop: stop,
    }
}

impl Fixture {
    fn partner(&self, name: &str) -> Arc<ClientConfig> {
        ClientTls::new(ClientTlsFiles::for_partner(&self.pki, name))
            .unwrap()
            .rustls_config()
    }

    /// Connects, and returns the name the server echoed, or why not.
    async fn attempt(&self, config: Arc<ClientConfig>) -> Result<String, String> {
        let addr = self.addr;
        let result = tokio::time::timeout(WAIT, async move {
            let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let name = ServerName::try_from("localhost").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            let mut echoed = String::new();
            tls.read_to_string(&mut echoed)
                .await
                .map_err(|e| e.to_string())?;
            Ok(echoed)
        })
        .await
        .map_err(|_| "client timed out".to_string())?;
        match result {
            Ok(echoed) if echoed.is_empty() => Err("closed without a word".into()),
            Ok(echoed) => Ok(echoed.trim_end().to_owned()),
            Err(e) => Err(e),
        }
    }

    async fn expect_accepted(&mut self, config: Arc<ClientConfig>, name: &str) {
        assert_eq!(self.attempt(config).await.as_deref(), Ok(name));
        let seen = tokio::time::timeout(WAIT, self.accepted.recv())
            .await
            .unwrap();
        assert_eq!(seen.as_deref(), Some(name), "the server saw the CN");
    }

    async fn expect_refused(&mut self, config: Arc<ClientConfig>) {
        let outcome = self.attempt(config).await;
        assert!(outcome.is_err(), "expected a refusal, got {outcome:?}");
        assert!(self.accepted.try_recv().is_err(), "nothing may be yielded");
    }
}

fn config_from(
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Arc<ClientConfig> {
    ClientTls::new(ClientTlsFiles {
        ca_cert: ca.to_owned(),
        cert: cert.to_owned(),
        key: key.to_owned(),
    })
    .unwrap()
    .rustls_config()
}

fn no_client_cert(pki: &Pki) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(pki.ca_cert_path()).unwrap())
        .unwrap();
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    Arc::new(config)
}

#[tokio::test]
async fn valid_partner_is_accepted_and_identified() {
    let mut f = start(&["alice", "bob"], None).await;
    let alice = f.partner("alice");
    f.expect_accepted(alice, "alice").await;
    let bob = f.partner("bob");
    f.expect_accepted(bob, "bob").await;
}

#[tokio::test]
async fn client_without_certificate_is_refused_and_logged() {
    let (logs, _guard) = capture_logs();
    let mut f = start(&["alice"], None).await;
    f.expect_refused(no_client_cert(&f.pki)).await;
    logs.wait_for("no client certificate").await;
    assert!(
        logs.text().contains("127.0.0.1"),
        "the peer address is logged"
    );
    // The refusal did not stop the server.
    let alice = f.partner("alice");
    f.expect_accepted(alice, "alice").await;
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let (logs, _guard) = capture_logs();
    let mut f = start(&["alice"], None).await;
    let other = Pki::init(
        f.dir.path().join("other"),
        &["localhost".into()],
        &["alice".into()],
    )
    .unwrap();
    // Trusts the real CA (so it accepts the server) but presents a foreign certificate.
    let config = config_from(
        &f.pki.ca_cert_path(),
        &other.partner_cert_path("alice"),
        &other.partner_key_path("alice"),
    );
    f.expect_refused(config).await;
    logs.wait_for("unknown issuer").await;
    let alice = f.partner("alice");
    f.expect_accepted(alice, "alice").await;
}

#[tokio::test]
async fn expired_certificate_is_refused() {
    let (logs, _guard) = capture_logs();
    let mut f = start(&[], None).await;
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    f.pki
        .issue_with_validity("late", now - 30 * day, now - day)
        .unwrap();
    let late = f.partner("late");
    f.expect_refused(late).await;
    logs.wait_for("expired").await;
}

#[tokio::test]
async fn server_certificate_is_not_a_client_certificate() {
    let (logs, _guard) = capture_logs();
    let mut f = start(&[], None).await;
    let config = config_from(
        &f.pki.ca_cert_path(),
        &f.pki.coordinator_cert_path(),
        &f.pki.coordinator_key_path(),
    );
    f.expect_refused(config).await;
    logs.wait_for("not valid for TLS client authentication")
        .await;
}

#[tokio::test]
async fn revocation_applies_without_restart() {
    let (logs, _guard) = capture_logs();
    let mut f = start(&["alice", "bob"], None).await;
    let alice = f.partner("alice");
    let alice_serial = f.pki.partner("alice").unwrap().serial_bytes();
    let bob_serial = f.pki.partner("bob").unwrap().serial_bytes();
    f.expect_accepted(Arc::clone(&alice), "alice").await;
    assert!(!f.server.is_revoked(&alice_serial));

    f.pki.revoke("alice").unwrap();

    // Same client configuration (it may try to resume): refused all the same.
    f.expect_refused(Arc::clone(&alice)).await;
    logs.wait_for("revoked").await;
    assert!(f.server.is_revoked(&alice_serial));
    assert!(!f.server.is_revoked(&bob_serial));
    let bob = f.partner("bob");
    f.expect_accepted(bob, "bob").await;

    // A CRL that cannot be read leaves the previous one in force.
    std::fs::write(f.pki.crl_path(), b"not a CRL").unwrap();
    assert!(f.server.reload_crl().is_err());
    f.expect_refused(alice).await;
    assert!(f.server.is_revoked(&alice_serial));
}

#[tokio::test]
async fn silent_client_does_not_block_others_and_times_out() {
    let (logs, _guard) = capture_logs();
    let mut f = start(&["alice"], Some(Duration::from_millis(300))).await;
    let mut silent = TcpStream::connect(f.addr).await.unwrap();
    let alice = f.partner("alice");
    f.expect_accepted(alice, "alice").await;
    // The server gives up on the silent client: its socket is closed.
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(WAIT, silent.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    logs.wait_for("timed out").await;
}

/// `config` offering ALPN `http/1.1`, as a browser does at the console.
fn http1(config: Arc<ClientConfig>) -> Arc<ClientConfig> {
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

#[tokio::test]
async fn console_certificate_cannot_connect_as_a_partner() {
    let (logs, _guard) = capture_logs();
    let mut f = start(&["alice"], None).await;
    let issued = f
        .pki
        .issue_console("ops", consortia_pki::ConsoleRole::Operator)
        .unwrap();
    assert_eq!(issued.cert_path, f.pki.console_cert_path("ops"));
    let config = config_from(&f.pki.ca_cert_path(), &issued.cert_path, &issued.key_path);
    f.expect_refused(config).await;
    logs.wait_for("for another service").await;
    // Key holders refuse it too as the signer of an update.
    let ca = consortia_pki::read_ca_certificate(&f.pki.ca_cert_path()).unwrap();
    let der = CertificateDer::from_pem_file(&issued.cert_path).unwrap();
    let why = consortia_pki::verify_partner_certificate(&ca, &der).unwrap_err();
    assert!(why.contains("console certificate"), "{why}");
    let alice = f.partner("alice");
    f.expect_accepted(alice, "alice").await;
}

#[tokio::test]
async fn console_takes_console_certificates_of_its_ca_only() {
    let (logs, _guard) = capture_logs();
    let mut f = start_server(&["alice"], None, true).await;
    let ca = f.pki.ca_cert_path();
    for (name, role) in [
        ("ops", consortia_pki::ConsoleRole::Operator),
        ("audit", consortia_pki::ConsoleRole::Auditor),
    ] {
        let issued = f.pki.issue_console(name, role).unwrap();
        let der = CertificateDer::from_pem_file(&issued.cert_path).unwrap();
        assert_eq!(consortia_pki::console_role(&der), Ok(Some(role)));
        let config = http1(config_from(&ca, &issued.cert_path, &issued.key_path));
        f.expect_accepted(config, name).await;
    }
    // A partner's certificate, none, and another CA's console certificate are refused.
    f.expect_refused(http1(f.partner("alice"))).await;
    logs.wait_for("for another service").await;
    f.expect_refused(http1(no_client_cert(&f.pki))).await;
    let mut other = Pki::init(f.dir.path().join("other"), &["localhost".into()], &[]).unwrap();
    let foreign = other
        .issue_console("ops", consortia_pki::ConsoleRole::Operator)
        .unwrap();
    f.expect_refused(http1(config_from(
        &ca,
        &foreign.cert_path,
        &foreign.key_path,
    )))
    .await;
    // A revoked console certificate is refused from the next connection on.
    f.pki.revoke("ops").unwrap();
    let (cert, key) = (
        f.pki.console_cert_path("ops"),
        f.pki.console_key_path("ops"),
    );
    f.expect_refused(http1(config_from(&ca, &cert, &key))).await;
    // The name space is shared with partners.
    let taken = f
        .pki
        .issue_console("alice", consortia_pki::ConsoleRole::Auditor)
        .unwrap_err();
    assert!(
        taken
            .to_string()
            .contains("already has an active certificate")
    );
}
