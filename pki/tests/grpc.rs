//! End to end through tonic: `ServerTls::incoming` feeding a tonic server,
//! `ClientTls::connect` giving a tonic `Channel`, and `peer_identity` seeing
//! the caller's common name.

use std::convert::Infallible;
use std::future::{Ready, poll_fn, ready};
use std::task::{Context, Poll};
use std::time::Duration;

use consortia_pki::{
    ClientTls, ClientTlsFiles, Pki, PkiError, ServerTls, ServerTlsFiles, peer_identity,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::{Channel, Server};
use tower::Service;

const WAIT: Duration = Duration::from_secs(10);

/// Answers every call with the caller's identity (as `ServerTls::authorize`
/// sees it) in an `x-peer` header.
#[derive(Clone)]
struct WhoAmI(ServerTls);

impl NamedService for WhoAmI {
    const NAME: &'static str = "test.WhoAmI";
}

impl Service<http::Request<Body>> for WhoAmI {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let req = tonic::Request::from_http(req);
        let who = match self.0.authorize(&req) {
            Ok(id) => {
                // `authorize` and `peer_identity` agree on who called.
                let same = peer_identity(&req).is_ok_and(|p| p == id);
                format!(
                    "{}/{}{}",
                    id.name,
                    id.serial_hex(),
                    if same { "" } else { "?" }
                )
            }
            Err(status) => format!("error {:?}", status.code()),
        };
        let response = http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "0")
            .header("x-peer", who)
            .body(Body::default())
            .unwrap();
        ready(Ok(response))
    }
}

async fn call(channel: &mut Channel, port: u16) -> Result<String, String> {
    poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(|e| e.to_string())?;
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("https://127.0.0.1:{port}/test.WhoAmI/Who"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Body::default())
        .unwrap();
    let response = channel.call(request).await.map_err(|e| e.to_string())?;
    Ok(response
        .headers()
        .get("x-peer")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned())
}

#[tokio::test]
async fn tonic_server_sees_the_partner_identity() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let mut pki = Pki::init(dir.path(), &hosts, &["alice".into(), "bob".into()]).unwrap();
    let server_tls = ServerTls::new(ServerTlsFiles::from_pki(&pki)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::builder()
            .add_service(WhoAmI(server_tls.clone()))
            .serve_with_incoming_shutdown(server_tls.incoming(listener), async {
                let _ = tokio::time::timeout(Duration::from_secs(60), stopped).await;
            }),
    );
    let endpoint = format!("https://127.0.0.1:{port}");

    let alice = ClientTls::new(ClientTlsFiles::for_partner(&pki, "alice")).unwrap();
    let mut channel = tokio::time::timeout(WAIT, alice.connect(&endpoint, "127.0.0.1"))
        .await
        .unwrap()
        .unwrap();
    let serial = pki.partner("alice").unwrap().serial.clone();
    let who = tokio::time::timeout(WAIT, call(&mut channel, port))
        .await
        .unwrap();
    assert_eq!(who, Ok(format!("alice/{serial}")));

    // A lazy channel connects on first use; "localhost" is also in the certificate.
    let bob = ClientTls::new(ClientTlsFiles::for_partner(&pki, "bob")).unwrap();
    let mut lazy = bob.connect_lazy(&endpoint, "localhost").unwrap();
    let who = tokio::time::timeout(WAIT, call(&mut lazy, port))
        .await
        .unwrap();
    assert!(who.unwrap().starts_with("bob/"));

    // The client checks the server's name.
    let wrong = tokio::time::timeout(WAIT, bob.connect(&endpoint, "evil.example"))
        .await
        .unwrap();
    assert!(matches!(wrong, Err(PkiError::Connect { .. })), "{wrong:?}");

    // Revoked: a new connection cannot make calls.
    pki.revoke("bob").unwrap();
    let outcome = tokio::time::timeout(WAIT, async {
        let mut channel = bob
            .connect(&endpoint, "localhost")
            .await
            .map_err(|e| e.to_string())?;
        call(&mut channel, port).await
    })
    .await
    .unwrap();
    assert!(outcome.is_err(), "revoked partner got {outcome:?}");

    // Alice's existing connection still works; the coordinator would consult
    // `is_revoked` to end sessions of partners revoked after connecting.
    let who = tokio::time::timeout(WAIT, call(&mut channel, port))
        .await
        .unwrap();
    assert_eq!(who, Ok(format!("alice/{serial}")));
    assert!(server_tls.is_revoked(&pki.partner("bob").unwrap().serial_bytes()));

    drop(channel);
    let _ = stop.send(());
    tokio::time::timeout(WAIT, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn bad_endpoints_and_server_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::init(dir.path(), &["localhost".into()], &["alice".into()]).unwrap();
    let alice = ClientTls::new(ClientTlsFiles::for_partner(&pki, "alice")).unwrap();
    assert!(matches!(
        alice.connect_lazy("http://127.0.0.1:1", "localhost"),
        Err(PkiError::Endpoint { .. })
    ));
    assert!(matches!(
        alice.connect_lazy("not a uri", "localhost"),
        Err(PkiError::Endpoint { .. })
    ));
    assert!(matches!(
        alice.connect_lazy("https://127.0.0.1:1", "bad name!"),
        Err(PkiError::ServerName { .. })
    ));
}
