//! The web console: a read-only view of the running federation for its operator and
//! its auditors, served by the coordinator over HTTPS on a listener of its own.
//!
//! ```toml
//! [console]                    # optional; off by default
//! listen = "127.0.0.1:7444"    # port 0: a free port, logged
//! ```
//!
//! Who may look is decided by the federation PKI: the listener takes only console
//! certificates of the federation CA (`consortia pki issue NAME --role operator|auditor`,
//! see [`consortia_pki::console`]); a connection without a certificate, with a
//! partner's certificate or with another CA's is refused at the handshake, and the
//! revocation list applies as on the federation port. The certificate's role decides
//! what is shown: an operator sees every page; an auditor sees the privacy budgets,
//! the ledger and its verification, and the stored models, not the federation's
//! internals (partners, phases, key holders, handshakes, per-round training figures).
//!
//! Pages ([`pages`]), each with the JSON behind it ([`views`], at `/api/v1/...`):
//!
//! * **Federation** (`/federation`, `/api/v1/federation`; operator): the task, the round
//!   and phase with its deadline, partners connected, selected and contributing, key
//!   holders and the ones a secure round waits for, the key holders' reachability and
//!   answers, the latest decryptions (who decrypted, who did not answer, who was away)
//!   and automatic re-keys ([`crate::key_holders`]), refused handshakes and sessions.
//! * **Training** (`/training`, `/api/v1/training`): per-round figures as SVG charts and
//!   a table (operator), and every stored model version with a download of its export
//!   (`/api/v1/models/ROUND.json`, what `consortia model export` writes).
//! * **Privacy** (`/privacy`, `/api/v1/privacy`): each partner's cumulative ε against its
//!   budget as a chart and a table, and the ledger verified against the coordinator's
//!   certificate at every request (head hash shown; an alarm that stays up once a
//!   verification fails); downloads of the ledger (`/api/v1/ledger.json`) and of the
//!   HTML report `consortia audit report` writes (`/api/v1/ledger-report.html`).
//!
//! The pages refresh themselves every 2 s (a little embedded script fetches the page's
//! main part again). Every asset is compiled in; nothing is loaded from another host
//! (the Content-Security-Policy says so to the browser). Only what the coordinator
//! already keeps is served: aggregates, evaluations, budgets, the ledger, global
//! models — never a partner's rows, update or key share. Requests are GET only, with
//! the same bounds as the metrics listener (request head size, header count, time to
//! send it, connections at once, connection lifetime).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use consortia_observability::{
    CONNECTION_LIFETIME, HEADER_READ_TIMEOUT, MAX_CONNECTIONS, MAX_REQUEST_HEAD_BYTES,
    MAX_REQUEST_HEADERS,
};
use consortia_pki::{ConsoleRole, ServerTls, ServerTlsFiles};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

use crate::hub::Hub;
use crate::store::Store;
use crate::{CoordinatorConfig, CoordinatorError};

mod charts;
pub mod export;
mod ledger;
mod pages;
pub mod views;

pub use export::model_export;

/// How often an open page fetches itself again, in milliseconds.
pub const REFRESH_MS: u64 = 2000;

/// The `[console]` table of the coordinator's configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Where to serve the web console over HTTPS, e.g. `127.0.0.1:7444`; port 0 picks a
    /// free port (the bound address is logged). Absent: no console.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

/// Who is looking: the console certificate's common name and role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Viewer {
    /// The certificate's common name.
    pub name: String,
    /// What it may see.
    #[serde(serialize_with = "role_str")]
    pub role: ConsoleRole,
}

fn role_str<S: serde::Serializer>(role: &ConsoleRole, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(role.as_str())
}

impl Viewer {
    /// Whether the viewer sees the operator-only parts.
    pub fn is_operator(&self) -> bool {
        self.role == ConsoleRole::Operator
    }
}

/// What the console reads: the hub's live state, the store, and the ledger export.
/// Cheap to clone.
#[derive(Clone)]
pub struct Console {
    hub: Arc<Hub>,
    store: Arc<Store>,
    ledger: ledger::LedgerWatch,
}

impl Console {
    /// The console of the coordinator whose hub, store and configuration these are.
    pub fn new(hub: Arc<Hub>, store: Arc<Store>, cfg: &CoordinatorConfig) -> Self {
        Console {
            hub,
            store,
            ledger: ledger::LedgerWatch::new(
                cfg.state_dir.join("privacy-ledger.json"),
                cfg.tls.cert.clone(),
            ),
        }
    }
}

/// A running console listener; dropping it stops the listener.
#[derive(Debug)]
pub struct ConsoleServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl ConsoleServer {
    /// The address the console listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ConsoleServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the console when `cfg.console.listen` is set; `None` when it is not.
///
/// Logs `console listening on https://ADDR/`, and a warning naming the address when it
/// is not a loopback address. Must be called within a Tokio runtime.
pub async fn serve(
    cfg: &CoordinatorConfig,
    hub: Arc<Hub>,
    store: Arc<Store>,
) -> Result<Option<ConsoleServer>, CoordinatorError> {
    let Some(addr) = cfg.console.listen else {
        return Ok(None);
    };
    let tls = ServerTls::for_console(ServerTlsFiles {
        ca_cert: cfg.tls.ca_cert.clone(),
        cert: cfg.tls.cert.clone(),
        key: cfg.tls.key.clone(),
        crl: cfg.tls.crl.clone(),
    })
    .map_err(|e| CoordinatorError::Tls(format!("[console]: {e}")))?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        CoordinatorError::Network(std::io::Error::new(
            e.kind(),
            format!("cannot listen for the console on {addr} ([console] listen): {e}"),
        ))
    })?;
    let bound = listener.local_addr().map_err(CoordinatorError::Network)?;
    if !bound.ip().is_loopback() {
        tracing::warn!(
            addr = %bound,
            "the web console listens beyond this host on {bound} ([console] listen): only \
             console certificates of the federation CA get in, but restrict it with a firewall \
             if it need not be reached from elsewhere"
        );
    }
    tracing::info!(addr = %bound, "console listening on https://{bound}/");
    let console = Arc::new(Console::new(hub, store, cfg));
    let task = tokio::spawn(accept_loop(tls, listener, console));
    Ok(Some(ConsoleServer { addr: bound, task }))
}

async fn accept_loop(tls: ServerTls, listener: tokio::net::TcpListener, console: Arc<Console>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut incoming = Box::pin(tls.incoming(listener));
    while let Some(next) = incoming.next().await {
        let Ok(stream) = next else { continue };
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let certs = stream.connect_info().peer_certs();
        let role = certs
            .first()
            .and_then(|c| consortia_pki::console_role(c).ok().flatten());
        let Some(role) = role else {
            // The verifier takes console certificates only; never reached.
            continue;
        };
        let viewer = Arc::new(Viewer {
            name: stream.identity().name.clone(),
            role,
        });
        let console = Arc::clone(&console);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let console = Arc::clone(&console);
                let viewer = Arc::clone(&viewer);
                async move { Ok::<_, Infallible>(console.handle(&viewer, &req).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_REQUEST_HEAD_BYTES)
                .max_headers(MAX_REQUEST_HEADERS);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
            drop(permit);
        });
    }
}

/// One response: status, content type, body, and the console's security headers.
fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// A download: the body as an attachment named `file`, sandboxed if opened.
fn download(
    content_type: &'static str,
    file: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = respond(StatusCode::OK, content_type, body);
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'; style-src 'unsafe-inline'"),
    );
    response
}

const HTML: &str = "text/html; charset=utf-8";
const JSON: &str = "application/json";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// The stylesheet, compiled in.
pub const STYLE: &str = include_str!("assets/console.css");
/// The refresh script, compiled in.
pub const SCRIPT: &str = include_str!("assets/console.js");

fn json<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => respond(StatusCode::OK, JSON, body),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode: {e}"),
        ),
    }
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    respond(status, TEXT, format!("{message}\n"))
}

fn forbidden() -> Response<Full<Bytes>> {
    error(
        StatusCode::FORBIDDEN,
        "operators only: this console certificate has the auditor role",
    )
}

impl Console {
    /// Answers one request of `viewer`.
    async fn handle(&self, viewer: &Viewer, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET {
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "the console is read-only: GET only",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
            return r;
        }
        let path = req.uri().path().to_owned();
        let part = req.uri().query() == Some("part=main");
        // Store and ledger reads block on disk: off the async workers.
        let console = self.clone();
        let viewer = viewer.clone();
        tokio::task::spawn_blocking(move || console.route(&viewer, &path, part))
            .await
            .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}")))
    }

    /// The response to GET `path` (`part`: only the page's main part, for the refresh).
    fn route(&self, viewer: &Viewer, path: &str, part: bool) -> Response<Full<Bytes>> {
        let page = |html: String| respond(StatusCode::OK, HTML, html);
        let failed = |e: CoordinatorError| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot read the coordinator's state: {e}"),
            )
        };
        match path {
            "/" => {
                let to = if viewer.is_operator() {
                    "/federation"
                } else {
                    "/privacy"
                };
                let mut r = respond(StatusCode::SEE_OTHER, TEXT, format!("see {to}\n"));
                r.headers_mut()
                    .insert(header::LOCATION, HeaderValue::from_static(to));
                r
            }
            "/assets/console.css" => respond(StatusCode::OK, CSS, STYLE),
            "/assets/console.js" => respond(StatusCode::OK, JS, SCRIPT),
            "/federation" | "/api/v1/federation" if !viewer.is_operator() => forbidden(),
            "/federation" => page(pages::federation(
                viewer,
                &views::federation(&self.hub, &self.store),
                part,
            )),
            "/api/v1/federation" => json(&views::federation(&self.hub, &self.store)),
            "/training" => match views::training(viewer, &self.hub, &self.store) {
                Ok(v) => page(pages::training(viewer, &v, part)),
                Err(e) => failed(e),
            },
            "/api/v1/training" => match views::training(viewer, &self.hub, &self.store) {
                Ok(v) => json(&v),
                Err(e) => failed(e),
            },
            "/privacy" => page(pages::privacy(
                viewer,
                &views::privacy(&self.hub, &self.ledger),
                part,
            )),
            "/api/v1/privacy" => json(&views::privacy(&self.hub, &self.ledger)),
            "/api/v1/whoami" => json(viewer),
            "/api/v1/ledger.json" => match self.ledger.raw() {
                Some(bytes) => download(JSON, "privacy-ledger.json", bytes),
                None => error(
                    StatusCode::NOT_FOUND,
                    "no privacy ledger yet (the task has no [privacy] table, or nothing was charged yet)",
                ),
            },
            "/api/v1/ledger-report.html" => match self.ledger.report_html(&self.hub.task.name) {
                Some(html) => download(HTML, "ledger-report.html", html),
                None => error(
                    StatusCode::NOT_FOUND,
                    "no privacy ledger yet (the task has no [privacy] table, or nothing was charged yet)",
                ),
            },
            other => match model_round(other) {
                Some(round) => match model_export(&self.store, round) {
                    Ok(Some(doc)) => match serde_json::to_vec_pretty(&doc) {
                        Ok(body) => download(JSON, &format!("model-round-{round}.json"), body),
                        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                    },
                    Ok(None) => error(
                        StatusCode::NOT_FOUND,
                        &format!("no model stored for round {round}"),
                    ),
                    Err(e) => failed(e),
                },
                None => error(
                    StatusCode::NOT_FOUND,
                    "no such page: see /federation, /training, /privacy",
                ),
            },
        }
    }
}

/// `ROUND` of `/api/v1/models/ROUND.json`.
fn model_round(path: &str) -> Option<u64> {
    let digits = path
        .strip_prefix("/api/v1/models/")?
        .strip_suffix(".json")?;
    if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_paths() {
        assert_eq!(model_round("/api/v1/models/0.json"), Some(0));
        assert_eq!(model_round("/api/v1/models/12.json"), Some(12));
        for bad in [
            "/api/v1/models/.json",
            "/api/v1/models/-1.json",
            "/api/v1/models/1.json/x",
            "/api/v1/models/../x.json",
            "/api/v1/models/99999999999999999999.json",
        ] {
            assert_eq!(model_round(bad), None, "{bad}");
        }
    }

    #[test]
    fn console_config_defaults_off() {
        let cfg: ConsoleConfig = toml::from_str("").unwrap();
        assert_eq!(cfg.listen, None);
        let cfg: ConsoleConfig = toml::from_str("listen = \"127.0.0.1:0\"").unwrap();
        assert!(cfg.listen.is_some());
        assert!(toml::from_str::<ConsoleConfig>("address = \"x\"").is_err());
    }
}
