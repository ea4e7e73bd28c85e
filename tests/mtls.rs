//! The coordinator admits only partners with a valid, unrevoked certificate
//! from the federation CA, and bounds message sizes before decoding.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Federation, task_with, wait_until};
use consortia_pki::{ClientTls, ClientTlsFiles, Pki};
use consortia_proto::federation_client::FederationClient;
use consortia_proto::{ClientMessage, Hello, UpdateChunk, client_message::Kind as Up};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs a TLS handshake and the HTTP/2 preface against `addr`; Ok when the
/// server answered with HTTP/2 frames, Err with the reason otherwise.
async fn tls_attempt(addr: &str, config: rustls::ClientConfig) -> Result<(), String> {
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await {
        Err(_) => Err("no answer".into()),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Ok(Ok(0)) => Err("closed".into()),
        Ok(Ok(_)) => Ok(()),
    }
}

fn roots(ca: &std::path::Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

fn builder() -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
}

fn config_with_cert(
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> rustls::ClientConfig {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    builder()
        .with_root_certificates(roots(ca))
        .with_client_auth_cert(chain, key)
        .unwrap()
}

fn coordinator_log_shows(fed: &Federation, needle: &str) -> bool {
    wait_until(Duration::from_secs(10), || {
        fed.read(&fed.coordinator_log(1))
            .to_lowercase()
            .contains(needle)
            .then_some(())
    })
    .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_that_are_missing_foreign_expired_or_revoked_are_refused() {
    // min_partners 3 and no agents: the coordinator waits, serving handshakes.
    let mut fed = Federation::new(&task_with(1, 3, 60));
    let addr = fed.start_coordinator();
    let ca = fed.pki.ca_cert_path();
    let name = fed.partners[0].0.clone();
    let cert = fed.pki.partner_cert_path(&name);
    let key = fed.pki.partner_key_path(&name);

    // Control: the partner's own certificate is admitted at the TLS layer.
    tls_attempt(&addr, config_with_cert(&ca, &cert, &key))
        .await
        .expect("a valid partner certificate must be accepted");

    // No client certificate.
    let none = builder()
        .with_root_certificates(roots(&ca))
        .with_no_client_auth();
    assert!(
        tls_attempt(&addr, none).await.is_err(),
        "no client certificate was accepted"
    );

    // A certificate for the same name from another CA.
    let other_dir = fed.path("other-pki");
    let other = Pki::init(
        &other_dir,
        &["localhost".to_string()],
        std::slice::from_ref(&name),
    )
    .unwrap();
    let foreign = config_with_cert(
        &ca,
        &other.partner_cert_path(&name),
        &other.partner_key_path(&name),
    );
    assert!(
        tls_attempt(&addr, foreign).await.is_err(),
        "a foreign CA was accepted"
    );

    // An expired certificate.
    let day = Duration::from_secs(86_400);
    let now = std::time::SystemTime::now();
    fed.pki
        .issue_with_validity("expired-partner", now - 30 * day, now - day)
        .unwrap();
    let expired = config_with_cert(
        &ca,
        &fed.pki.partner_cert_path("expired-partner"),
        &fed.pki.partner_key_path("expired-partner"),
    );
    assert!(
        tls_attempt(&addr, expired).await.is_err(),
        "an expired certificate was accepted"
    );

    // Revoked while the coordinator runs: refused without a restart.
    fed.pki.revoke(&name).unwrap();
    let revoked = config_with_cert(&ca, &cert, &key);
    assert!(
        tls_attempt(&addr, revoked).await.is_err(),
        "a revoked certificate was accepted"
    );

    // Every refusal is logged with its reason.
    assert!(coordinator_log_shows(&fed, "revoked"), "{}", fed.logs());
    assert!(coordinator_log_shows(&fed, "expired"), "{}", fed.logs());
    assert!(coordinator_log_shows(&fed, "certificate"), "{}", fed.logs());
    fed.kill_coordinator();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_out_of_round_messages_are_refused_without_changing_state() {
    let mut fed = Federation::new(&task_with(1, 3, 60));
    let addr = fed.start_coordinator();
    let name = fed.partners[0].0.clone();
    let tls = ClientTls::new(ClientTlsFiles {
        ca_cert: fed.pki.ca_cert_path(),
        cert: fed.pki.partner_cert_path(&name),
        key: fed.pki.partner_key_path(&name),
    })
    .unwrap();

    // An update for a round that is not open: refused with a reason, session stays up.
    let channel = tls
        .connect(&format!("https://{addr}"), "127.0.0.1")
        .await
        .unwrap();
    let mut client = FederationClient::new(channel).max_encoding_message_size(usize::MAX);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(ClientMessage {
        kind: Some(Up::Hello(Hello {
            agent_version: "test".into(),
            protocol_version: consortia_proto::PROTOCOL_VERSION,
        })),
    })
    .await
    .unwrap();
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let welcome = inbound.message().await.unwrap().unwrap();
    assert!(
        matches!(welcome.kind, Some(consortia_proto::server_message::Kind::Welcome(ref w)) if w.partner == name)
    );
    tx.send(ClientMessage {
        kind: Some(Up::Update(UpdateChunk {
            round: 99,
            index: 0,
            chunk_count: 1,
            example_count: 10,
            values: vec![0.0; 3],
            train_loss: 0.1,
        })),
    })
    .await
    .unwrap();
    let reply = inbound.message().await.unwrap().unwrap();
    match reply.kind {
        Some(consortia_proto::server_message::Kind::Rejection(r)) => {
            assert!(r.reason.contains("round 99"), "{}", r.reason)
        }
        other => panic!("expected a rejection, got {other:?}"),
    }

    // A message over the size limit: RESOURCE_EXHAUSTED before decoding.
    tx.send(ClientMessage {
        kind: Some(Up::Update(UpdateChunk {
            round: 1,
            index: 0,
            chunk_count: 1,
            example_count: 10,
            values: vec![0.5; 400_000],
            train_loss: 0.1,
        })),
    })
    .await
    .unwrap();
    let status = loop {
        match inbound.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without a status"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    fed.kill_coordinator();
}
