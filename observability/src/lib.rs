//! consortia-observability: the `/metrics` listener the coordinator and the agent share.
//!
//! Each side keeps its own [`Registry`] of metric families (the coordinator's
//! `telemetry` module, the agent's); this crate only serves one over plain HTTP/1.1
//! on a listener of its own, apart from the federation's mutual-TLS port:
//!
//! ```toml
//! [observability]
//! metrics_listen = "127.0.0.1:9464"
//! ```
//!
//! Off unless configured. The listener answers `GET /metrics` and nothing else (404
//! for another path, 405 for another method), reads at most a few KiB of request
//! head within a few seconds, serves a few connections at a time and closes each
//! after a minute. Metrics say how the federation runs (rounds, partners, ε spent),
//! not what it learns from private rows; an address beyond loopback is still logged
//! as a warning, naming it, since anyone who reaches it can read them.

#![forbid(unsafe_code)]

pub mod logging;
pub mod progress;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ACCEPT, ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
pub use prometheus_client;
use prometheus_client::encoding::{prometheus_text, text};
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

pub use logging::LogFormat;

/// The path metrics are served at.
pub const METRICS_PATH: &str = "/metrics";
/// The most request-head bytes read from one connection (hyper's smallest buffer).
pub const MAX_REQUEST_HEAD_BYTES: usize = 8192;
/// The most headers one request may carry.
pub const MAX_REQUEST_HEADERS: usize = 32;
/// How long a client may take to send a request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection is served (keep-alive included) before it is closed.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// How many connections are served at once; further ones wait to be accepted.
pub const MAX_CONNECTIONS: usize = 16;
/// The OpenMetrics text format's content type, served when a scraper asks for it.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `[observability]` table of the coordinator's and the agent's configuration files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservabilityConfig {
    /// Where to serve Prometheus metrics (`GET /metrics`), e.g. `127.0.0.1:9464`; port 0
    /// picks a free port (the bound address is logged). Absent: no metrics listener.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// How log events are written: `"text"` (the default, for people) or `"json"`
    /// (one JSON object per line, for a log pipeline; see [`logging`]).
    #[serde(default)]
    pub log_format: LogFormat,
}

/// Buckets for durations in seconds: 10 ms doubling to about 11 minutes.
pub fn seconds_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.01, 2.0, 17)
}

/// A running metrics listener; dropping it stops the listener.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves `registry` at `GET /metrics` until the returned server is
/// dropped. `who` names the process in the log line ("coordinator", "agent").
///
/// Logs the bound address at info, and a warning naming it when it is not a loopback
/// address. Must be called within a Tokio runtime.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    who: &str,
) -> std::io::Result<MetricsServer> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        tracing::warn!(
            addr = %bound,
            "metrics endpoint listens beyond this host on {bound} ([observability] metrics_listen): \
             anyone who reaches it reads the {who}'s metrics (rounds, partners, ε spent); \
             restrict it with a firewall or listen on 127.0.0.1"
        );
    }
    tracing::info!(addr = %bound, "{who} metrics listening on http://{bound}{METRICS_PATH}");
    let task = tokio::spawn(accept_loop(listener, registry));
    Ok(MetricsServer { addr: bound, task })
}

async fn accept_loop(listener: TcpListener, registry: Arc<Registry>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::debug!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let registry = Arc::clone(&registry);
                async move { Ok::<_, Infallible>(respond(&req, &registry)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_REQUEST_HEAD_BYTES)
                .max_headers(MAX_REQUEST_HEADERS)
                .serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
            drop(permit);
        });
    }
}

/// The answer to one request: the metrics for `GET /metrics`, 405 for another method
/// on that path, 404 for any other path. The request's body is never read.
fn respond(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    if req.uri().path() != METRICS_PATH {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET {
        let mut r = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served at /metrics\n",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    let openmetrics = req
        .headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (body, content_type) = match encode(registry, openmetrics) {
        Ok(x) => x,
        Err(_) => {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the metrics could not be encoded\n",
            );
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// `registry` in the Prometheus text format (version 0.0.4), or in OpenMetrics text
/// when `openmetrics`; with its content type.
pub fn encode(
    registry: &Registry,
    openmetrics: bool,
) -> Result<(String, &'static str), std::fmt::Error> {
    let mut body = String::new();
    if openmetrics {
        text::encode(&mut body, registry)?;
        Ok((body, OPENMETRICS_CONTENT_TYPE))
    } else {
        prometheus_text::encode(&mut body, registry)?;
        Ok((body, prometheus_text::CONTENT_TYPE))
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out));
        read.await.expect("answered in time").unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn server() -> (MetricsServer, Counter) {
        let mut registry = Registry::with_prefix("consortia");
        let counter = Counter::default();
        registry.register("things", "Things counted", counter.clone());
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let s = serve(addr, Arc::new(registry), "test").await.unwrap();
        (s, counter)
    }

    #[tokio::test]
    async fn serves_get_metrics_and_refuses_everything_else() {
        let (s, counter) = server().await;
        counter.inc_by(3);
        let addr = s.local_addr();
        assert!(addr.ip().is_loopback());
        let ok = exchange(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("text/plain; version=0.0.4"), "{ok}");
        assert!(ok.contains("\nconsortia_things_total 3\n"), "{ok}");
        let om = exchange(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(om.contains("application/openmetrics-text"), "{om}");
        assert!(om.contains("# EOF"), "{om}");
        let missing = exchange(
            addr,
            b"GET /secrets HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let post = exchange(
            addr,
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        assert!(post.contains("allow: GET"), "{post}");
    }

    #[tokio::test]
    async fn an_oversized_request_head_is_refused_without_an_answer_of_metrics() {
        let (s, _) = server().await;
        let mut request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
        request.extend(std::iter::repeat_n(b'a', 64 * 1024));
        request.extend_from_slice(b"\r\n\r\n");
        let mut tcp = tokio::net::TcpStream::connect(s.local_addr())
            .await
            .unwrap();
        // The server may close while the head is still being written.
        let _ = tcp.write_all(&request).await;
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out));
        let _ = read.await.expect("closed in time");
        let out = String::from_utf8_lossy(&out);
        assert!(!out.contains("consortia_things_total"), "{out}");
        assert!(out.is_empty() || out.starts_with("HTTP/1.1 431"), "{out}");
    }

    #[tokio::test]
    async fn dropping_the_server_closes_the_listener() {
        let (s, _) = server().await;
        let addr = s.local_addr();
        drop(s);
        tokio::task::yield_now().await;
        let mut refused = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(refused, "still listening on {addr}");
    }

    #[test]
    fn the_table_is_optional_and_strict() {
        let c: ObservabilityConfig = toml::from_str("").unwrap();
        assert_eq!(c.metrics_listen, None);
        let c: ObservabilityConfig = toml::from_str("metrics_listen = \"127.0.0.1:9464\"").unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(toml::from_str::<ObservabilityConfig>("metrics = 1").is_err());
        assert!(toml::from_str::<ObservabilityConfig>("metrics_listen = \"localhost\"").is_err());
        assert_eq!(c.log_format, LogFormat::Text);
        let c: ObservabilityConfig = toml::from_str("log_format = \"json\"").unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(toml::from_str::<ObservabilityConfig>("log_format = \"xml\"").is_err());
    }
}
